//! Start-up and shutdown, in order.
//!
//! Start: check the data directory and take its lock, answer `/healthz` (and 503 on
//! `/readyz`) while the engine recovers from the log, start the flusher (an unreachable
//! database stops everything here), then mark ready. Stop: stop accepting and let in-flight
//! requests finish (within the grace period), stop the shards after their current batch,
//! sync the log, let the flusher drain.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::{Duration, Instant};

use seckill_engine::{Engine, EngineConfig, Ports, SystemClock};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};

use crate::config::{AuthMode, Config, Durability};
use crate::limit::LIMITER_SWEEP_S;
use crate::listen;
use crate::routes::{dispatch, Dispatch};
use crate::start_error::StartError;
use crate::state::{AppState, Settings};
use crate::storage::Storage;

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits for
/// in-flight requests. `shutdown` is any future: Ctrl-C in the binary, a channel in tests.
///
/// The connections are served by [`http_workers`] threads, each a single-threaded tokio
/// runtime with its own epoll set and its own listening socket (`SO_REUSEPORT` siblings when
/// `listener` came from [`listen::bind`], see there), the way nginx runs one event loop per
/// worker process. A connection stays on the worker that accepted it, so a
/// request never needs a second thread to be woken: with a work-stealing pool on a 2-core
/// machine the futex wake-ups and task hand-offs between workers cost more CPU than the
/// requests themselves in a sold-out storm (see ARCHITECTURE.md, "Figures").
///
/// Every request carries its connection's peer address as axum's `ConnectInfo<SocketAddr>`,
/// which `client_addr::ClientAddr` reads.
pub async fn run(
    listener: TcpListener,
    app: impl Into<Dispatch>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    run_workers(listener, app, shutdown, http_workers()).await
}

/// The number of HTTP worker threads: one per core the process may use.
pub fn http_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// [`run`] with `workers` worker threads.
pub async fn run_workers(
    listener: TcpListener,
    app: impl Into<Dispatch>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    workers: usize,
) -> io::Result<()> {
    let app: Dispatch = app.into();
    let workers = workers.max(1);
    let addr = listener.local_addr()?;
    let listener = listener.into_std()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut finished = Vec::with_capacity(workers);
    for index in 0..workers {
        let socket = listener.try_clone()?;
        let app = app.clone();
        let mut stopped = stopped.clone();
        let (done, finished_rx) = oneshot::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name(format!("seckill-http-{index}"))
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| {
                        runtime.block_on(async move {
                            // Shards answer this thread's requests in one hand-over per
                            // batch instead of one cross-thread wake-up per request.
                            seckill_engine::ReplyPump::install_on_this_thread();
                            // The first worker accepts on the server's socket, the others
                            // on SO_REUSEPORT siblings of it (an accept queue each).
                            let listener = if index == 0 {
                                TcpListener::from_std(socket)?
                            } else {
                                listen::worker_listener(addr, socket)?
                            };
                            listen::serve_connections(listener, app, async move {
                                let _ = stopped.wait_for(|stop| *stop).await;
                            })
                            .await
                        })
                    });
                let _ = done.send(served);
            })?;
        finished.push(finished_rx);
    }
    drop(listener);
    shutdown.await;
    let _ = stop.send(true);
    let mut outcome = Ok(());
    for worker in finished {
        match worker.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => outcome = Err(error),
            Err(_) => outcome = Err(io::Error::other("an HTTP worker thread died")),
        }
    }
    outcome
}

/// Runs `seckill serve` with `config` on `listener` until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    serve_with_hook(config, listener, shutdown, |_engine| {}).await
}

/// [`serve`], handing `on_ready` the engine once the server is ready (`/readyz` answers
/// 200 from then on). For in-process tests that need the engine itself, e.g. to inject a
/// fault; the binary uses [`serve`].
pub async fn serve_with_hook(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(Engine) + Send + 'static,
) -> Result<(), StartError> {
    let listen_addr = listener
        .local_addr()
        .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
    let mut shutdown = Box::pin(shutdown);
    // Before the journal is opened: a setting that cannot be put to use stops the start
    // with nothing taken (no lock, no lease).
    let state = AppState::new(Settings::from_config(&config))
        .map_err(|e| StartError::Config(e.to_string()))?;
    let Some(mut storage) = open_storage(&config, &mut shutdown).await? else {
        tracing::info!("seckill stopped while it waited for the journal");
        return Ok(());
    };

    let serving = Serving::start(listener, &state);

    let started = Instant::now();
    let engine = match start_engine(&config, &mut storage).await {
        Ok(engine) => engine,
        Err(error) => {
            serving.abort().await;
            return Err(error);
        }
    };
    if let Err(error) = storage.start_flusher(&config, &engine).await {
        serving.abort().await;
        let _ = engine.shutdown().await;
        storage.shutdown(Duration::ZERO).await;
        return Err(error);
    }
    if let Some(reader) = storage.sql_reader() {
        state.set_sql_reader(reader);
    }
    match storage.start_cluster_link(&engine).await {
        Ok(Some(calls)) => state.set_owner_calls(calls),
        Ok(None) => {}
        Err(error) => {
            serving.abort().await;
            let _ = engine.shutdown().await;
            storage.shutdown(Duration::ZERO).await;
            return Err(error);
        }
    }
    state.set_ready(engine.clone());
    announce(&config, &listen_addr, &storage, &engine, started.elapsed());
    on_ready(engine.clone());

    let grace = Duration::from_secs(config.shutdown_grace_s);
    // A cluster node hands its partitions over first, while it still serves: the requests
    // that reach it meanwhile go to the partitions' new owners.
    let handing_over = async {
        shutdown.await;
        storage.hand_over().await;
    };
    let http_outcome = serving.until_shutdown(handing_over, grace).await;
    if let Err(error) = engine.shutdown().await {
        tracing::warn!(%error, "engine shutdown");
    }
    storage.shutdown(grace).await;
    tracing::info!("seckill stopped");
    match http_outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(StartError::Serve(error.to_string())),
        Err(error) => Err(StartError::Serve(error.to_string())),
    }
}

/// Opens the storage on a blocking thread (RocksDB reads files; JetStream's open waits on
/// the network). With `--cluster` a standby waits there for as long as another node holds
/// the partitions, so `shutdown` is watched meanwhile: `None` when it came first (the open
/// left behind ends with the process).
async fn open_storage<S>(
    config: &Config,
    shutdown: &mut Pin<Box<S>>,
) -> Result<Option<Storage>, StartError>
where
    S: Future<Output = ()> + Send,
{
    let open_config = config.clone();
    let mut opening = tokio::task::spawn_blocking(move || Storage::open(&open_config));
    let opened = if config.cluster.is_some() {
        tokio::select! {
            opened = &mut opening => opened,
            () = shutdown.as_mut() => return Ok(None),
        }
    } else {
        opening.await
    };
    opened
        .map_err(|e| StartError::Journal(e.to_string()))?
        .map(Some)
}

/// The HTTP workers and the limiter sweeper: they answer (`/healthz`, and 503 on the rest)
/// while the engine recovers, and serve once it is ready.
struct Serving {
    state: AppState,
    http: JoinHandle<io::Result<()>>,
    stop_http: oneshot::Sender<()>,
    sweeper: JoinHandle<()>,
}

impl Serving {
    fn start(listener: TcpListener, state: &AppState) -> Serving {
        let (stop_http, stop_http_rx) = oneshot::channel::<()>();
        let http = tokio::spawn(run(listener, dispatch(state.clone()), async move {
            let _ = stop_http_rx.await;
        }));
        Serving {
            state: state.clone(),
            http,
            stop_http,
            sweeper: spawn_limiter_sweeper(state.clone()),
        }
    }

    /// Start-up failed: stop answering.
    async fn abort(self) {
        self.state.close_streams();
        self.sweeper.abort();
        let _ = self.stop_http.send(());
        let _ = self.http.await;
    }

    /// Serves until `shutdown` completes (or the HTTP server dies on its own, which it should
    /// never do), then stops accepting and gives in-flight requests `grace` to finish.
    async fn until_shutdown(
        self,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> Result<io::Result<()>, JoinError> {
        let Serving {
            state,
            mut http,
            stop_http,
            sweeper,
        } = self;
        let served = tokio::select! {
            () = shutdown => None,
            result = &mut http => Some(result),
        };
        tracing::info!(
            grace_s = grace.as_secs(),
            "seckill shutting down: no new connections, finishing in-flight requests"
        );
        // Live streams never finish on their own: they end now, so the drain does not wait
        // out its grace for them.
        state.close_streams();
        let outcome = match served {
            Some(result) => result,
            None => {
                let _ = stop_http.send(());
                drain(http, grace).await
            }
        };
        sweeper.abort();
        outcome
    }
}

/// Waits at most `grace` for the HTTP workers to finish their in-flight requests.
async fn drain(
    mut http: JoinHandle<io::Result<()>>,
    grace: Duration,
) -> Result<io::Result<()>, JoinError> {
    match tokio::time::timeout(grace, &mut http).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("in-flight requests did not finish within the grace period");
            http.abort();
            Ok(Ok(()))
        }
    }
}

/// Rebuilds the engine from the log (on a blocking thread: replay is CPU work).
async fn start_engine(config: &Config, storage: &mut Storage) -> Result<Engine, StartError> {
    let mut engine_config = EngineConfig {
        retain_ended_s: config.retain_ended_s,
        ..EngineConfig::default()
    };
    if let Some(shards) = config.shards {
        engine_config.shards = shards;
    }
    let ports = Ports {
        journal: storage.journal(),
        clock: std::sync::Arc::new(SystemClock),
        sink: storage.sink(),
    };
    let recovery = storage.take_recovery();
    let cluster = storage.cluster_ports();
    tokio::task::spawn_blocking(move || match cluster {
        Some(cluster) => Engine::start_cluster(engine_config, ports, cluster, recovery),
        None => Engine::start(engine_config, ports, recovery),
    })
    .await
    .map_err(|e| StartError::Recovery(e.to_string()))?
    .map_err(|e| StartError::Recovery(e.to_string()))
}

/// The start-up line, and the warnings the operator must see once.
fn announce(
    config: &Config,
    listen_addr: &str,
    storage: &Storage,
    engine: &Engine,
    recovery: Duration,
) {
    tracing::info!(
        listen = %listen_addr,
        data_dir = %config.data_dir.display(),
        auth = config.auth.as_str(),
        durability = config.durability.as_str(),
        shards = engine.config().shards,
        recovery_ms = u64::try_from(recovery.as_millis()).unwrap_or(u64::MAX),
        "seckill ready"
    );
    if !config.trusted_proxies.is_empty() {
        tracing::info!(
            trusted_proxies = %config.trusted_proxies,
            "the client address of a request from these proxies is read from X-Forwarded-For \
             or Forwarded"
        );
    }
    if config.auth == AuthMode::Header {
        tracing::warn!(
            "--auth header: X-User-Id is trusted as is; run this server only behind a gateway \
             that authenticates shoppers and sets that header"
        );
    }
    if !storage.is_durable() {
        tracing::warn!(
            "--unsafe-memory-journal: the log is in memory; every promotion and order is lost \
             when the process stops (development only)"
        );
    } else if config.durability == Durability::Async {
        tracing::warn!(
            sync_interval_ms = storage.async_loss_window_ms().unwrap_or(0),
            "--durability async: writes are acknowledged before their fsync; a power loss or \
             kernel crash loses what was acknowledged in the last sync interval; a crash of \
             seckill alone loses nothing"
        );
    }
}

/// Drops idle shoppers and addresses from the rate limiters now and then, so they cannot
/// grow forever.
fn spawn_limiter_sweeper(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(LIMITER_SWEEP_S));
        every.tick().await;
        loop {
            every.tick().await;
            state.limits().sweep();
        }
    })
}
