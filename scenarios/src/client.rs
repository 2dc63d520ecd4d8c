//! A lean HTTP/1.1 keep-alive client for api.md: who is calling, and what came back.
//!
//! On a small machine the load generator shares the CPU with the server it measures, so the
//! client is kept as cheap as possible: a pool of plain TCP connections, one request written
//! in one `write`, the answer read with as few `read`s as it takes, nothing else (no TLS,
//! no redirects, no header map). It speaks only what the servers under test answer:
//! `Content-Length` or chunked bodies, keep-alive unless `Connection: close`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
pub use http::{Method, StatusCode};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::scenario::AuthMode;

/// How long one request may take before the runner gives up on it.
pub const REQUEST_TIMEOUT_S: u64 = 30;
/// Largest answer head the client accepts (status line + headers).
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Largest answer body the client accepts (the biggest is a 1,000-item promotion's stats).
const BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Who the runner speaks as.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub admin_key: String,
    pub auth: AuthMode,
    /// HS256 secret for `--auth jwt`.
    pub user_secret: String,
}

/// The answer to one request. Transport failures (refused, reset, timeout) are `Err`.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The api.md error `code`, or `http_<status>` when the body is not an api.md error.
    pub fn error_code(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            code: String,
        }
        match serde_json::from_slice::<Envelope>(&self.body) {
            Ok(envelope) => envelope.error.code,
            Err(_) => format!("http_{}", self.status.as_u16()),
        }
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("request timed out after {REQUEST_TIMEOUT_S} s")]
    Timeout,
    #[error("connection: {0}")]
    Connection(String),
}

/// The client: cheap to clone, shares one connection pool.
#[derive(Debug, Clone)]
pub struct Api {
    /// `host:port` to connect to and to send as `Host`.
    authority: Arc<str>,
    base_url: String,
    credentials: Credentials,
    /// Idle keep-alive connections, most recently used last.
    idle: Arc<Mutex<Vec<TcpStream>>>,
    /// How many idle connections are kept at most.
    idle_max: usize,
}

impl Api {
    /// `max_connections` bounds the idle connections kept (the keep-alive pool); the number
    /// open at once is the number of requests in flight.
    pub fn new(base_url: &str, credentials: Credentials, max_connections: usize) -> Api {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let authority = base_url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("127.0.0.1:80")
            .to_owned();
        Api {
            authority: Arc::from(authority),
            base_url,
            credentials,
            idle: Arc::new(Mutex::new(Vec::new())),
            idle_max: max_connections.max(1),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The shopper's credential header (name, value).
    pub fn shopper_header(&self, user: &str) -> (&'static str, String) {
        match self.credentials.auth {
            AuthMode::Header => ("x-user-id", user.to_owned()),
            AuthMode::Jwt => (
                "authorization",
                format!("Bearer {}", sign_jwt(user, &self.credentials.user_secret)),
            ),
        }
    }

    fn admin_header(&self) -> (&'static str, String) {
        (
            "authorization",
            format!("Bearer {}", self.credentials.admin_key),
        )
    }

    /// Sends one request; `auth` is the header to add, if any.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Option<(&'static str, String)>,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, TransportError> {
        let request = encode_request(&method, path, &self.authority, auth, body.as_deref());
        let exchange = async {
            // A pooled connection may have been closed by the server while idle; if it fails
            // before a single byte of answer, the request goes again on a fresh connection
            // (every api.md write is idempotent by request id, token or payment ref).
            if let Some(stream) = self.take_idle() {
                match exchange(stream, &request).await {
                    Ok((reply, stream)) => return Ok(self.finish(reply, stream)),
                    Err(Failure::BeforeAnswer(_)) => {}
                    Err(Failure::DuringAnswer(error)) => return Err(error),
                }
            }
            let stream = TcpStream::connect(&*self.authority)
                .await
                .map_err(|error| TransportError::Connection(error.to_string()))?;
            let _ = stream.set_nodelay(true);
            match exchange(stream, &request).await {
                Ok((reply, stream)) => Ok(self.finish(reply, stream)),
                Err(Failure::BeforeAnswer(error) | Failure::DuringAnswer(error)) => Err(error),
            }
        };
        tokio::time::timeout(Duration::from_secs(REQUEST_TIMEOUT_S), exchange)
            .await
            .map_err(|_| TransportError::Timeout)?
    }

    /// Opens up to `count` keep-alive connections ahead of the load, 32 at a time, so that
    /// a wave measures requests rather than a burst of connects (a SYN dropped in such a
    /// burst costs a 1 s retransmission and shows up as a latency outlier). Best effort.
    pub async fn warm(&self, count: usize) {
        let count = count.min(self.idle_max);
        let mut opened = 0;
        while opened < count {
            let batch = (count - opened).min(32);
            let mut connects = tokio::task::JoinSet::new();
            for _ in 0..batch {
                let authority = Arc::clone(&self.authority);
                connects.spawn(async move { TcpStream::connect(&*authority).await });
            }
            while let Some(joined) = connects.join_next().await {
                if let Ok(Ok(stream)) = joined {
                    let _ = stream.set_nodelay(true);
                    if let Ok(mut idle) = self.idle.lock() {
                        idle.push(stream);
                    }
                }
            }
            opened += batch;
        }
    }

    fn take_idle(&self) -> Option<TcpStream> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    /// Returns a connection that may be reused to the pool.
    fn finish(&self, reply: Reply, stream: Option<TcpStream>) -> Reply {
        if let (Some(stream), Ok(mut idle)) = (stream, self.idle.lock()) {
            if idle.len() < self.idle_max {
                idle.push(stream);
            }
        }
        reply
    }

    /// An operator request (`Authorization: Bearer <admin key>`).
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Reply, TransportError> {
        let body = body.map(|value| serde_json::to_vec(value).unwrap_or_default());
        self.send(method, path, Some(self.admin_header()), body)
            .await
    }

    /// A shopper request as `user`, with a credential made once by the caller.
    pub async fn shopper(
        &self,
        method: Method,
        path: &str,
        credential: &(&'static str, String),
        body: Option<&impl Serialize>,
    ) -> Result<Reply, TransportError> {
        let body = body.map(|value| serde_json::to_vec(value).unwrap_or_default());
        self.send(method, path, Some(credential.clone()), body)
            .await
    }

    /// `GET /readyz` answered 200.
    pub async fn is_ready(&self) -> bool {
        matches!(
            self.send(Method::GET, "/readyz", None, None).await,
            Ok(reply) if reply.status == StatusCode::OK
        )
    }
}

/// Why an exchange failed, and whether the server may have started answering.
#[derive(Debug)]
enum Failure {
    BeforeAnswer(TransportError),
    DuringAnswer(TransportError),
}

fn io_failure(error: std::io::Error) -> TransportError {
    TransportError::Connection(error.to_string())
}

fn protocol(message: &str) -> TransportError {
    TransportError::Connection(format!("malformed answer: {message}"))
}

/// The request bytes, written in one go.
fn encode_request(
    method: &Method,
    path: &str,
    authority: &str,
    auth: Option<(&'static str, String)>,
    body: Option<&[u8]>,
) -> Vec<u8> {
    let body = body.unwrap_or_default();
    let mut request = Vec::with_capacity(256 + body.len());
    request.extend_from_slice(method.as_str().as_bytes());
    request.push(b' ');
    request.extend_from_slice(path.as_bytes());
    request.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    request.extend_from_slice(authority.as_bytes());
    if let Some((name, value)) = auth {
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value.as_bytes());
    }
    if !body.is_empty() {
        request.extend_from_slice(b"\r\ncontent-type: application/json");
    }
    request.extend_from_slice(format!("\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
    request.extend_from_slice(body);
    request
}

/// Writes the request and reads the answer; hands the connection back when it may be
/// reused.
async fn exchange(
    mut stream: TcpStream,
    request: &[u8],
) -> Result<(Reply, Option<TcpStream>), Failure> {
    stream
        .write_all(request)
        .await
        .map_err(|error| Failure::BeforeAnswer(io_failure(error)))?;
    let mut buffer = Vec::with_capacity(1024);
    // Read until the head is complete.
    let head_end = loop {
        if let Some(position) = find(&buffer, b"\r\n\r\n") {
            break position + 4;
        }
        if buffer.len() > HEAD_BYTES_MAX {
            return Err(Failure::DuringAnswer(protocol("head too large")));
        }
        let read = read_more(&mut stream, &mut buffer)
            .await
            .map_err(|error| Failure::DuringAnswer(io_failure(error)))?;
        if read == 0 {
            let error = TransportError::Connection("closed before answering".into());
            return Err(if buffer.is_empty() {
                Failure::BeforeAnswer(error)
            } else {
                Failure::DuringAnswer(error)
            });
        }
    };
    let head = Head::parse(&buffer[..head_end]).map_err(Failure::DuringAnswer)?;
    let body = read_body(&mut stream, buffer, head_end, &head)
        .await
        .map_err(Failure::DuringAnswer)?;
    let reply = Reply {
        status: head.status,
        body,
    };
    Ok((reply, (!head.close).then_some(stream)))
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<usize> {
    if buffer.capacity() - buffer.len() < 1024 {
        buffer.reserve(buffer.capacity().max(4096));
    }
    stream.read_buf(buffer).await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// What the client needs from an answer's head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: StatusCode,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

impl Head {
    fn parse(head: &[u8]) -> Result<Head, TransportError> {
        let text = std::str::from_utf8(head).map_err(|_| protocol("head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(protocol("not HTTP/1.x"));
        }
        let status = parts
            .next()
            .and_then(|code| code.parse::<u16>().ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| protocol("bad status"))?;
        let mut head = Head {
            status,
            content_length: None,
            chunked: false,
            close: version == "HTTP/1.0",
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                head.content_length =
                    Some(value.parse().map_err(|_| protocol("bad content-length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                head.close = value.eq_ignore_ascii_case("close");
            }
        }
        Ok(head)
    }
}

/// Reads the body after `head_end` in `buffer` (which may already hold some of it).
async fn read_body(
    stream: &mut TcpStream,
    mut buffer: Vec<u8>,
    head_end: usize,
    head: &Head,
) -> Result<Bytes, TransportError> {
    let no_body = head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    if no_body {
        return Ok(Bytes::new());
    }
    if head.chunked {
        return read_chunked(stream, buffer, head_end).await;
    }
    match head.content_length {
        Some(length) => {
            if length > BODY_BYTES_MAX {
                return Err(protocol("body too large"));
            }
            while buffer.len() < head_end + length {
                if read_more(stream, &mut buffer).await.map_err(io_failure)? == 0 {
                    return Err(protocol("closed inside the body"));
                }
            }
            let mut bytes = Bytes::from(buffer);
            Ok(bytes.split_off(head_end).split_to(length))
        }
        None => {
            // No length and not chunked: the body runs to the end of the connection.
            while read_more(stream, &mut buffer).await.map_err(io_failure)? > 0 {
                if buffer.len() > head_end + BODY_BYTES_MAX {
                    return Err(protocol("body too large"));
                }
            }
            Ok(Bytes::from(buffer).split_off(head_end))
        }
    }
}

async fn read_chunked(
    stream: &mut TcpStream,
    mut buffer: Vec<u8>,
    mut position: usize,
) -> Result<Bytes, TransportError> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(offset) = find(&buffer[position..], b"\r\n") {
                break position + offset;
            }
            if read_more(stream, &mut buffer).await.map_err(io_failure)? == 0 {
                return Err(protocol("closed inside a chunk size"));
            }
        };
        let size_text =
            std::str::from_utf8(&buffer[position..line_end]).map_err(|_| protocol("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| protocol("chunk size"))?;
        let data_start = line_end + 2;
        // The chunk, its CRLF; the last chunk (0) is followed by an empty trailer line.
        let needed = data_start + size + 2;
        while buffer.len() < needed {
            if read_more(stream, &mut buffer).await.map_err(io_failure)? == 0 {
                return Err(protocol("closed inside a chunk"));
            }
        }
        if size == 0 {
            return Ok(Bytes::from(body));
        }
        if body.len() + size > BODY_BYTES_MAX {
            return Err(protocol("body too large"));
        }
        body.extend_from_slice(&buffer[data_start..data_start + size]);
        position = needed;
    }
}

/// A shopper JWT as a shop would sign it: HS256, `sub` = user, `exp` an hour from now.
pub fn sign_jwt(user: &str, secret: &str) -> String {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
        + 3600;
    // Signing HS256 with a non-empty key cannot fail; an empty token would show up as 401s.
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: user, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_case_insensitively() {
        let head = Head::parse(
            b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nCONTENT-LENGTH: 42\r\n\r\n",
        )
        .expect("valid head");
        assert_eq!(head.status, StatusCode::CONFLICT);
        assert_eq!(head.content_length, Some(42));
        assert!(!head.close);
        let chunked = Head::parse(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        )
        .expect("valid head");
        assert!(chunked.chunked && chunked.close);
        assert!(Head::parse(b"SSH-2.0 hello\r\n\r\n").is_err());
    }

    #[test]
    fn requests_carry_host_auth_and_length() {
        let request = encode_request(
            &Method::POST,
            "/p/1/purchase",
            "127.0.0.1:8080",
            Some(("x-user-id", "u1".into())),
            Some(b"{}"),
        );
        let text = String::from_utf8(request).expect("ascii");
        assert!(text.starts_with("POST /p/1/purchase HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n"));
        assert!(text.contains("\r\nx-user-id: u1\r\n"));
        assert!(text.ends_with("content-length: 2\r\n\r\n{}"));
    }

    #[tokio::test]
    async fn a_keep_alive_exchange_with_a_chunked_answer_reuses_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buffer = vec![0u8; 4096];
            for answer in [
                &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"[..],
                &b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"[..],
            ] {
                let _ = socket.read(&mut buffer).await;
                socket.write_all(answer).await.expect("write");
            }
        });
        let credentials = Credentials {
            admin_key: "k".into(),
            auth: AuthMode::Header,
            user_secret: String::new(),
        };
        let api = Api::new(&format!("http://{address}"), credentials, 4);
        let first = api
            .send(Method::GET, "/a", None, None)
            .await
            .expect("first");
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(&first.body[..], b"hi");
        // The listener accepts once: the second answer proves the connection was reused.
        let second = api
            .send(Method::GET, "/b", None, None)
            .await
            .expect("second");
        assert_eq!(second.status, StatusCode::CONFLICT);
        assert_eq!(&second.body[..], b"abcde");
    }

    #[test]
    fn error_code_reads_the_api_envelope_or_falls_back_to_the_status() {
        let refusal = Reply {
            status: StatusCode::CONFLICT,
            body: Bytes::from_static(br#"{"error":{"code":"sold_out","message":"x"}}"#),
        };
        assert_eq!(refusal.error_code(), "sold_out");
        let bare = Reply {
            status: StatusCode::BAD_GATEWAY,
            body: Bytes::from_static(b"upstream"),
        };
        assert_eq!(bare.error_code(), "http_502");
    }

    #[test]
    fn jwt_carries_sub_and_exp_and_verifies_with_the_secret() {
        let token = sign_jwt("u0000042", "s3cret");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        #[derive(serde::Deserialize)]
        struct Claims {
            sub: String,
        }
        let data = jsonwebtoken::decode::<Claims>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .expect("valid token");
        assert_eq!(data.claims.sub, "u0000042");
    }
}
