//! What every handler shares: the engine (once recovery has finished), the credentials, the
//! rate limiters, the trusted proxies, the human-check settings and the metrics registry.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use seckill_engine::Engine;

use crate::auth::{AuthSource, JwtClaimRules, ShopperAuth};
use crate::client_addr::{TrustedProxies, TrustedProxySource};
use crate::config::{AuthMode, CaptchaConfig, Config, RateLimitConfig};
use crate::error::AppError;
use crate::human::captcha::{CaptchaSetupError, CaptchaVerifier};
use crate::human::pow::PowIssuer;
use crate::limit::RateLimits;
use crate::live::LiveBoard;
use crate::owner_calls::OwnerCalls;
use crate::sale_report::SqlReader;

/// Histogram buckets for latencies, in seconds: 50 us to 10 s.
const LATENCY_BUCKETS_S: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];
/// Histogram buckets for batch sizes and other counts.
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];

/// The handlers' shared state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Set once recovery has finished and the flusher runs; until then every engine route
    /// answers 503 and `/readyz` says not ready.
    engine: OnceLock<Engine>,
    admin_key: Vec<u8>,
    shopper_auth: ShopperAuth,
    limits: RateLimits,
    /// Whose forwarding headers name the client (`--trusted-proxies`).
    trusted_proxies: TrustedProxies,
    /// Zero bits a proof-of-work answer needs (`--pow-difficulty-bits`).
    pow_difficulty_bits: u8,
    /// Where captcha answers are verified; None: no captcha verifier is configured.
    captcha: Option<CaptchaConfig>,
    /// Issues and checks the proof-of-work challenges.
    pow: PowIssuer,
    /// Asks the captcha verifier; None: none is configured.
    captcha_verifier: Option<CaptchaVerifier>,
    metrics: PrometheusHandle,
    request_timeout: Duration,
    /// The meters of the promotions being watched live; leaked, so that the request path
    /// holds a plain reference (see `routes::layers::ObserveLayer`).
    live_board: &'static LiveBoard,
    /// The SQL flusher's lag and the sale report; set once the flusher runs (never with the
    /// memory journal).
    sql_reader: OnceLock<Arc<dyn SqlReader>>,
    /// A cluster node's way to the owners of the items it does not own (`--cluster`).
    owner_calls: OnceLock<Arc<dyn OwnerCalls>>,
    /// Flips to true when the server shuts down: endless answers (the live stream) end
    /// then, so the shutdown does not wait out its grace for them.
    closing: tokio::sync::watch::Sender<bool>,
}

/// A receiver of the server's shutdown, for answers that would otherwise never end.
#[derive(Debug, Clone)]
pub struct Closing(tokio::sync::watch::Receiver<bool>);

impl Closing {
    /// Resolves once the server shuts down (at once if it already has).
    pub async fn closed(&mut self) {
        // An error means the state is gone: closed too.
        let _ = self.0.wait_for(|closing| *closing).await;
    }
}

/// What [`AppState::new`] needs; [`Settings::from_config`] takes it from the resolved config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub admin_key: String,
    pub auth: AuthMode,
    pub user_secret: Option<String>,
    /// `--jwt-audience`: the `aud` shoppers' tokens must name (None: no `aud` allowed).
    pub jwt_audience: Option<String>,
    /// `--jwt-issuer`: the `iss` shoppers' tokens must carry (None: not checked).
    pub jwt_issuer: Option<String>,
    pub rate_limit: RateLimitConfig,
    pub request_timeout_ms: u64,
    /// `--trusted-proxies`: whose X-Forwarded-For / Forwarded are believed (empty: nobody's).
    pub trusted_proxies: TrustedProxies,
    /// `--pow-difficulty-bits`: leading zero bits a proof-of-work answer needs.
    pub pow_difficulty_bits: u8,
    /// `--captcha-verify-url` and `--captcha-secret`; None: no captcha verifier.
    pub captcha: Option<CaptchaConfig>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Settings {
            admin_key: config.admin_key.clone(),
            auth: config.auth,
            user_secret: config.user_secret.clone(),
            jwt_audience: config.jwt_audience.clone(),
            jwt_issuer: config.jwt_issuer.clone(),
            rate_limit: config.rate_limit,
            request_timeout_ms: config.request_timeout_ms,
            trusted_proxies: config.trusted_proxies.clone(),
            pow_difficulty_bits: config.pow_difficulty_bits,
            captcha: config.captcha.clone(),
        }
    }
}

/// How long a proof-of-work challenge stays good: long enough for a slow phone to solve the
/// default difficulty, short enough that the used-challenge memory stays small.
pub const POW_CHALLENGE_LIFETIME_MS: i64 = 120_000;

/// The key challenges are signed with: from the admin key and the user secret, so every node
/// of a deployment (and a restarted one) verifies the challenges of the others, and rotating
/// either key voids the outstanding ones.
fn pow_secret(settings: &Settings) -> Vec<u8> {
    let mut secret = b"seckill-pow\0".to_vec();
    secret.extend_from_slice(settings.admin_key.as_bytes());
    secret.push(0);
    if let Some(user_secret) = &settings.user_secret {
        secret.extend_from_slice(user_secret.as_bytes());
    }
    secret
}

impl AppState {
    /// The handlers' state; fails only when the captcha verifier cannot be built.
    pub fn new(settings: Settings) -> Result<Self, CaptchaSetupError> {
        let captcha_verifier = settings
            .captcha
            .as_ref()
            .map(|c| CaptchaVerifier::new(c.verify_url.clone(), c.secret.clone(), c.timeout_ms))
            .transpose()?;
        let pow = PowIssuer::new(
            &pow_secret(&settings),
            settings.pow_difficulty_bits,
            POW_CHALLENGE_LIFETIME_MS,
        );
        let rules = JwtClaimRules {
            audience: settings.jwt_audience,
            issuer: settings.jwt_issuer,
        };
        let shopper_auth = match (settings.auth, &settings.user_secret) {
            (AuthMode::Jwt, Some(secret)) => ShopperAuth::jwt(secret.as_bytes(), rules),
            // Config::resolve refuses jwt without a secret; an empty-secret verifier here
            // would accept tokens signed with "", so refuse every token instead.
            (AuthMode::Jwt, None) => ShopperAuth::jwt(&rand::random::<[u8; 32]>(), rules),
            (AuthMode::Header, _) => ShopperAuth::Header,
        };
        Ok(AppState {
            inner: Arc::new(Inner {
                engine: OnceLock::new(),
                admin_key: settings.admin_key.into_bytes(),
                shopper_auth,
                limits: RateLimits::new(&settings.rate_limit),
                trusted_proxies: settings.trusted_proxies,
                pow_difficulty_bits: settings.pow_difficulty_bits,
                captcha: settings.captcha,
                metrics: metrics_handle(),
                request_timeout: Duration::from_millis(settings.request_timeout_ms.max(1)),
                pow,
                captcha_verifier,
                live_board: Box::leak(Box::default()),
                sql_reader: OnceLock::new(),
                owner_calls: OnceLock::new(),
                closing: tokio::sync::watch::Sender::new(false),
            }),
        })
    }

    pub fn pow(&self) -> &PowIssuer {
        &self.inner.pow
    }

    pub fn captcha(&self) -> Option<&CaptchaVerifier> {
        self.inner.captcha_verifier.as_ref()
    }

    /// Marks recovery finished: engine routes start answering and `/readyz` says 200.
    pub fn set_ready(&self, engine: Engine) {
        let _ = self.inner.engine.set(engine);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.engine.get().is_some()
    }

    /// The engine, or 503 while recovery runs.
    pub fn engine(&self) -> Result<&Engine, AppError> {
        self.inner.engine.get().ok_or(AppError::NotReady)
    }

    /// The live meters (`GET /admin/promotions/{id}/live`).
    pub fn live_board(&self) -> &'static LiveBoard {
        self.inner.live_board
    }

    /// Lets the routes hand calls to other nodes (a cluster node, before it is ready).
    pub fn set_owner_calls(&self, calls: Arc<dyn OwnerCalls>) {
        let _ = self.inner.owner_calls.set(calls);
    }

    /// The way to the other nodes; None outside a cluster.
    pub fn owner_calls(&self) -> Option<&Arc<dyn OwnerCalls>> {
        self.inner.owner_calls.get()
    }

    /// Gives the operator routes the SQL flusher's lag and the sale report.
    pub fn set_sql_reader(&self, reader: Arc<dyn SqlReader>) {
        let _ = self.inner.sql_reader.set(reader);
    }

    /// The SQL side, once the flusher runs; None with the memory journal.
    pub fn sql_reader(&self) -> Option<Arc<dyn SqlReader>> {
        self.inner.sql_reader.get().cloned()
    }

    /// What endless answers watch to end when the server shuts down.
    pub fn closing(&self) -> Closing {
        Closing(self.inner.closing.subscribe())
    }

    /// The server is shutting down: endless answers end now.
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    pub fn limits(&self) -> &RateLimits {
        &self.inner.limits
    }

    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// The proxies whose forwarding headers name the client (empty: the client is the peer).
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.inner.trusted_proxies
    }

    /// Leading zero bits of SHA-256 a proof-of-work answer needs.
    pub fn pow_difficulty_bits(&self) -> u8 {
        self.inner.pow_difficulty_bits
    }

    /// The captcha verifier's settings; None when none is configured.
    pub fn captcha_config(&self) -> Option<&CaptchaConfig> {
        self.inner.captcha.as_ref()
    }
}

impl TrustedProxySource for AppState {
    fn trusted_proxies(&self) -> &TrustedProxies {
        &self.inner.trusted_proxies
    }
}

impl AuthSource for AppState {
    fn admin_key(&self) -> &[u8] {
        &self.inner.admin_key
    }

    fn shopper_auth(&self) -> &ShopperAuth {
        &self.inner.shopper_auth
    }
}

/// The process-wide Prometheus recorder, installed on first use. The engine and persistence
/// crates record through the `metrics` facade, so they land here too. If another recorder
/// was installed first (an embedding program), `/metrics` shows only this one's series.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_S)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_events".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_requests".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_appends".into()), COUNT_BUCKETS)
                });
            let builder = match builder {
                Ok(builder) => builder,
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "another metrics recorder is installed; /metrics shows only the edge's own"
                );
            }
            // HELP lines, and the series alerts watch at 0 before anything happened.
            crate::metric_docs::describe_all();
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP_S: u64 = 5;

/// Folds the recorder's histogram samples into their buckets every few seconds. Without it
/// they pile up until a scrape (each request records one or two), so a server nobody scrapes
/// grows by about 16 bytes a request: 120 MiB over an 8-million-request soak.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("seckill-metrics".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(METRICS_UPKEEP_S));
            handle.run_upkeep();
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the metrics upkeep thread; histograms drain only when scraped");
    }
}
