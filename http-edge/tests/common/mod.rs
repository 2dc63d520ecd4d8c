//! A real server on a free loopback port, and a reqwest client that speaks to it as an
//! operator or as a shopper in either auth mode.
#![allow(dead_code)]

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use seckill_engine::Engine;
use seckill_http_edge::{serve_with_hook, Config, StartError};

pub const ADMIN_KEY: &str = "test-admin-key";
pub const USER_SECRET: &str = "test-user-secret-0123456789";

/// Rate limits high enough that scenario tests never meet them.
pub const GENEROUS_LIMITS: &str = "[rate_limit.token]\nper_s = 1000\nburst = 1000\n\
    [rate_limit.purchase]\nper_s = 1000\nburst = 1000\n\
    [rate_limit.orders]\nper_s = 1000\nburst = 1000\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Jwt,
    Header,
}

/// A running server. Dropping it without [`TestServer::stop`] aborts it.
pub struct TestServer {
    pub base: String,
    pub mode: Mode,
    pub client: reqwest::Client,
    /// The server's engine, handed over once it was ready: for tests that inject faults.
    pub engine: Option<Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StartError>>>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(mode: Mode) -> TestServer {
        TestServer::start_with(mode, GENEROUS_LIMITS).await
    }

    /// Starts a server whose TOML file is `toml`.
    pub async fn start_with(mode: Mode, toml: &str) -> TestServer {
        TestServer::start_with_args(mode, toml, &[]).await
    }

    /// Starts a server whose TOML file is `toml`, with `extra` flags after the usual ones.
    pub async fn start_with_args(mode: Mode, toml: &str, extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("seckill.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let data_dir = dir.path().join("data");
        let mut args: Vec<String> = [
            "seckill",
            "serve",
            "--admin-key",
            ADMIN_KEY,
            "--shards",
            "2",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push("--data-dir".into());
        args.push(data_dir.display().to_string());
        args.push("--config".into());
        args.push(config_path.display().to_string());
        match mode {
            Mode::Jwt => {
                args.extend(["--auth".into(), "jwt".into()]);
                args.extend(["--user-secret".into(), USER_SECRET.into()]);
            }
            Mode::Header => args.extend(["--auth".into(), "header".into()]),
        }
        if cfg!(not(feature = "persistence")) {
            args.push("--unsafe-memory-journal".into());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let config = Config::from_args(args).expect("valid config");
        // The binary's own bind (SO_REUSEPORT, a socket per worker), not a plain one.
        let listener =
            seckill_http_edge::listen::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, ready_rx) = oneshot::channel::<Engine>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let on_ready = move |engine: Engine| {
            let _ = ready.send(engine);
        };
        let task = tokio::spawn(serve_with_hook(config, listener, shutdown, on_ready));
        let mut server = TestServer {
            base: format!("http://{addr}"),
            mode,
            client: client(),
            engine: None,
            stop: Some(stop),
            task: Some(task),
            dir,
        };
        server.wait_ready().await;
        server.engine = Some(ready_rx.await.expect("the engine, once ready"));
        server
    }

    async fn wait_ready(&self) {
        for _ in 0..600 {
            if let Ok(response) = self.client.get(self.url("/readyz")).send().await {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not become ready");
    }

    /// Graceful stop; returns what `serve` returned.
    pub async fn stop(mut self) -> Result<(), StartError> {
        self.engine = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_KEY)
    }

    /// A request as shopper `user` in this server's auth mode.
    pub fn shopper(&self, user: &str, method: Method, path: &str) -> RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match self.mode {
            Mode::Jwt => request.bearer_auth(jwt(user, 3600)),
            Mode::Header => request.header("X-User-Id", user),
        }
    }

    pub async fn create_promotion(&self, body: Value) -> Value {
        let response = self
            .admin(Method::POST, "/admin/promotions")
            .json(&body)
            .send()
            .await
            .expect("send");
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    pub async fn token(&self, user: &str, promotion: &str, sku: &str) -> String {
        let path = format!("/promotions/{promotion}/items/{sku}/token");
        let (status, body) = send(self.shopper(user, Method::POST, &path)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    /// Buys one unit without a token (for promotions with `require_token: false`).
    pub async fn buy(
        &self,
        user: &str,
        promotion: &str,
        sku: &str,
        request_id: &str,
    ) -> (StatusCode, Value) {
        let path = format!("/promotions/{promotion}/items/{sku}/purchase");
        send(
            self.shopper(user, Method::POST, &path)
                .json(&json!({"request_id": request_id})),
        )
        .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: i64,
}

/// An HS256 JWT for `user`, valid for `ttl_s` seconds (negative: already expired).
pub fn jwt(user: &str, ttl_s: i64) -> String {
    jwt_signed(user, ttl_s, USER_SECRET.as_bytes(), Algorithm::HS256)
}

pub fn jwt_signed(user: &str, ttl_s: i64, secret: &[u8], alg: Algorithm) -> String {
    let exp = OffsetDateTime::now_utc().unix_timestamp() + ttl_s;
    encode(
        &Header::new(alg),
        &Claims { sub: user, exp },
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

/// Unix seconds now.
pub fn now_s() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// An HS256 JWT signed with the user secret whose claims are exactly `claims` (a JSON
/// object: `sub`, `exp`, `nbf`, `iat`, `aud`, `iss`, as the test wants them).
pub fn jwt_with_claims(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(USER_SECRET.as_bytes()),
    )
    .expect("sign")
}

/// RFC 3339 UTC, `offset_s` from now.
pub fn at(offset_s: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(offset_s))
        .format(&Rfc3339)
        .expect("format")
}

/// A live promotion (started a minute ago, ends in an hour) with one item per `(sku, stock)`.
pub fn live_promotion(id: &str, items: &[(&str, u64)], require_token: bool) -> Value {
    promotion_between(id, items, require_token, -60, 3600)
}

pub fn promotion_between(
    id: &str,
    items: &[(&str, u64)],
    require_token: bool,
    starts_s: i64,
    ends_s: i64,
) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(sku, stock)| json!({"sku": sku, "stock": stock, "price_cents": 1999, "per_user_limit": 1}))
        .collect();
    json!({
        "id": id,
        "name": format!("Promotion {id}"),
        "starts_at": at(starts_s),
        "ends_at": at(ends_s),
        "require_token": require_token,
        "items": items,
    })
}

/// Sends and reads the answer as JSON (Null when the body is not JSON).
pub async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    read(request.send().await.expect("send")).await
}

pub async fn read(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

/// Asserts an error answer: status, api.md code, and a message.
#[track_caller]
pub fn assert_error(answer: &(StatusCode, Value), status: u16, code: &str) {
    let (got_status, body) = answer;
    assert_eq!(got_status.as_u16(), status, "status for {code}: {body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// The built `seckill` binary, run as a child process.
pub mod process {
    use std::path::Path;
    use std::process::{Child, Command, ExitStatus, Output, Stdio};
    use std::time::{Duration, Instant};

    /// A `seckill` command with a clean environment (no `SECKILL_*` of the developer's).
    pub fn seckill() -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_seckill"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SECKILL_") {
                command.env_remove(key);
            }
        }
        command.env("RUST_LOG", "info");
        command
    }

    /// Runs `args` and waits at most `limit` for the process to exit on its own.
    pub fn run_to_exit(args: &[&str], limit: Duration) -> Output {
        let child = seckill()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn seckill");
        wait_with_limit(child, limit)
    }

    pub fn wait_with_limit(mut child: Child, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait().expect("try_wait") {
                Some(_) => return child.wait_with_output().expect("output"),
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let output = child.wait_with_output().expect("output");
                    panic!(
                        "seckill did not exit within {limit:?}; stderr: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// A loopback port that was free a moment ago.
    pub fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    /// A server child process on `port`, ready (its `/readyz` said 200).
    pub struct ServerProcess {
        pub child: Option<Child>,
        pub base: String,
    }

    impl ServerProcess {
        pub async fn start(args: &[&str], port: u16) -> ServerProcess {
            let listen = format!("127.0.0.1:{port}");
            let child = seckill()
                .arg("serve")
                .args(args)
                .args(["--listen", &listen])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn seckill");
            let mut server = ServerProcess {
                child: Some(child),
                base: format!("http://{listen}"),
            };
            let client = super::client();
            for _ in 0..600 {
                if let Some(child) = server.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        let output = server.child.take().expect("child").wait_with_output();
                        let stderr =
                            output.map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
                        panic!("seckill exited at start with {status}: {stderr:?}");
                    }
                }
                let ready = client.get(format!("{}/readyz", server.base)).send().await;
                if ready.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                    return server;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("seckill did not become ready");
        }

        /// SIGTERM, then the exit status and output.
        pub fn terminate(mut self) -> (ExitStatus, Output) {
            let child = self.child.take().expect("running");
            let pid = child.id().to_string();
            let killed = Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill");
            assert!(killed.success());
            let output = wait_with_limit(child, Duration::from_secs(30));
            (output.status, output)
        }
    }

    impl Drop for ServerProcess {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    pub fn path_arg(path: &Path) -> String {
        path.display().to_string()
    }
}

/// A reqwest client. This build's reqwest has TLS without a built-in crypto provider (see
/// `human::captcha`), so the provider is installed before the client is made.
pub fn client() -> reqwest::Client {
    seckill_http_edge::human::captcha::install_crypto_provider();
    reqwest::Client::new()
}
