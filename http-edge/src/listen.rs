//! The listening sockets and each HTTP worker's accept loop.
//!
//! One listening socket per worker thread, all bound to one address with `SO_REUSEPORT`: the
//! kernel hashes each new connection to one of them, so every worker accepts from its own
//! queue. With clones of one socket (one queue), whichever thread epoll woke first took the
//! connection, and the two workers' CPU split 50/50 to 60/40 in a storm, leaving one core
//! partly idle. Linux (and Android) only: elsewhere `SO_REUSEPORT` does not spread TCP
//! connections, and the workers share one socket's queue as before.
//!
//! `SO_REUSEPORT` also lets another process of the same user bind the same port and take a
//! share of the connections. [`bind`] refuses a port that any socket already holds (ours
//! included: a second seckill on one port still fails to start), by binding it without
//! `SO_REUSEPORT` first; port 0 needs no probe, as the kernel never picks a port that has a
//! listener. A process of the same user that binds the port *later* with `SO_REUSEPORT`
//! does join; run seckill under a user of its own (deploy/systemd does). A socket handed to
//! [`crate::server::run`] gets siblings only if it has `SO_REUSEPORT` itself (the sibling's
//! bind succeeds only then), made with the platform's defaults for every other option.
//!
//! Each worker serves its connections with hyper's HTTP/1.1 server directly rather than
//! `axum::serve`: no HTTP/2 preface sniffing, no per-connection `MakeService` call,
//! `TCP_NODELAY` on every connection (an answer is one small write; Nagle would hold a
//! second one until the peer's delayed ACK).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};

use crate::routes::{Dispatch, DispatchFuture};

/// Pending connections per listening socket (the kernel caps it at `net.core.somaxconn`):
/// a flash sale opens thousands of connections in its first second.
const ACCEPT_BACKLOG: u32 = 4096;

/// How long a worker waits before accepting again after an error that is not one
/// connection's (e.g. out of file descriptors), so it does not spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// Binds the server's listening socket on `addr` with `SO_REUSEPORT`, so each worker can
/// bind a sibling of its own ([`worker_listener`]). Refuses, like a plain bind, an address
/// that another socket holds: it binds `addr` without `SO_REUSEPORT` first, then lets go
/// and binds the port it got (the same, or the one the kernel chose for port 0).
///
/// Must be called within a tokio runtime (the socket registers with its reactor).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if addr.port() != 0 {
        // Dropped at once: a listening socket that never accepted leaves no TIME_WAIT.
        drop(std::net::TcpListener::bind(addr)?);
    }
    reuseport_listener(addr)
}

/// A listening socket on `addr`, with `SO_REUSEPORT` where it spreads TCP connections
/// (Linux, Android). Elsewhere it is one socket, whose queue the workers share: a sibling's
/// bind fails and [`worker_listener`] falls back to the clone.
fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// The listening socket for one more worker, made on that worker's runtime: a sibling bound
/// to `addr` with `SO_REUSEPORT` when the server's socket came from [`bind`], otherwise
/// (a socket bound some other way, as an embedding shop may hand in) `shared`, a clone of
/// the server's socket whose one queue the workers share.
pub fn worker_listener(addr: SocketAddr, shared: std::net::TcpListener) -> io::Result<TcpListener> {
    match reuseport_listener(addr) {
        Ok(own) => Ok(own),
        Err(error) => {
            tracing::debug!(%error, "no SO_REUSEPORT sibling; the workers share one accept queue");
            TcpListener::from_std(shared)
        }
    }
}

/// Serves `app` over HTTP/1.1 on `listener` until `stop` completes, then stops accepting and
/// waits until every connection has finished its in-flight request (idle keep-alive
/// connections are closed at once).
pub async fn serve_connections(
    listener: TcpListener,
    app: Dispatch,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    // No header read timeout: hyper arms it (a boxed timer, a wheel entry) for every
    // request head, which cost a storm more than the rest of the accept loop; idle and slow
    // clients are bounded by the proxy in front (nginx: client_header_timeout, 60 s) and
    // by the file descriptor limit, as they were with `axum::serve`.
    let http = http1::Builder::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tokio::select! {
                    biased;
                    () = &mut stop => break,
                    () = pause_after(&error) => continue,
                }
            }
        };
        // A failure here leaves Nagle on: slower, still correct.
        let _ = stream.set_nodelay(true);
        let service = PeerService {
            app: app.clone(),
            peer,
        };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A connection's error (a reset, a malformed request hyper answered 400) is that
            // client's; nothing to do for the server.
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// After a failed accept: at once for an error of that one connection (it was reset before
/// we took it), after a pause for the others (out of descriptors), which would repeat; those
/// are logged at most once a second per worker.
async fn pause_after(error: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    thread_local! {
        static LOGGED: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    if LOGGED
        .get()
        .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
    {
        LOGGED.set(Some(now));
        tracing::warn!(%error, "accept failed; pausing");
    }
    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
}

/// The API as one connection's hyper service: every request carries the connection's peer
/// address as axum's `ConnectInfo`, which `client_addr::ClientAddr` reads.
#[derive(Clone)]
struct PeerService {
    app: Dispatch,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for PeerService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = DispatchFuture;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        self.app.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[tokio::test]
    async fn a_port_another_socket_holds_is_refused() {
        let plain = std::net::TcpListener::bind(loopback()).expect("bind");
        let taken = plain.local_addr().expect("addr");
        let error = bind(taken).expect_err("a held port must be refused");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn a_second_server_on_the_same_port_is_refused() {
        let first = bind(loopback()).expect("bind");
        let port = first.local_addr().expect("addr");
        let error = bind(port).expect_err("two servers must not share a port");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }

    /// The kernel's socket behind a descriptor (`socket:[inode]`): equal for clones of one
    /// socket, different for two sockets.
    fn socket_identity(fd: &impl std::os::fd::AsRawFd) -> std::path::PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("fd link")
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn workers_bind_siblings_of_the_servers_socket() {
        let first = bind(loopback()).expect("bind");
        let addr = first.local_addr().expect("addr");
        let shared = first.into_std().expect("std");
        let sibling = worker_listener(addr, shared.try_clone().expect("clone")).expect("sibling");
        assert_eq!(sibling.local_addr().expect("addr"), addr);
        assert_ne!(
            socket_identity(&sibling),
            socket_identity(&shared),
            "a sibling is a socket (an accept queue) of its own, not a clone"
        );
    }

    #[tokio::test]
    async fn a_socket_bound_without_reuseport_is_shared_by_the_workers() {
        let plain = std::net::TcpListener::bind(loopback()).expect("bind");
        plain.set_nonblocking(true).expect("nonblocking");
        let addr = plain.local_addr().expect("addr");
        let worker = worker_listener(addr, plain.try_clone().expect("clone")).expect("shared");
        assert_eq!(worker.local_addr().expect("addr"), addr);
        assert_eq!(socket_identity(&worker), socket_identity(&plain));
    }

    #[tokio::test]
    async fn serving_ends_after_stop_once_the_in_flight_request_is_answered() {
        let listener = bind(loopback()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (entered, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let handler_side = std::sync::Arc::new(tokio::sync::Mutex::new(Some((entered, released))));
        let app = axum::Router::new().route(
            "/slow",
            axum::routing::get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
                let handler_side = handler_side.clone();
                async move {
                    if let Some((entered, released)) = handler_side.lock().await.take() {
                        let _ = entered.send(());
                        let _ = released.await;
                    }
                    format!("peer {}", peer.ip())
                }
            }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_connections(listener, app.into(), async move {
            let _ = stopped.await;
        }));
        let asked = tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("write");
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        });
        // An idle keep-alive connection must not hold the stop.
        let _idle = tokio::net::TcpStream::connect(addr).await.expect("idle");
        tokio::time::timeout(Duration::from_secs(10), entered_rx)
            .await
            .expect("the request reached its handler")
            .expect("entered");
        let _ = stop.send(());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!server.is_finished(), "a request in flight holds the stop");
        let _ = release.send(());
        let answer = tokio::time::timeout(Duration::from_secs(10), asked)
            .await
            .expect("answered")
            .expect("client");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("peer 127.0.0.1"), "{answer}");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server ends once the request is answered")
            .expect("join")
            .expect("served");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "nothing listens after the stop"
        );
    }
}
