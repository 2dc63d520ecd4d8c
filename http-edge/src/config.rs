//! `seckill serve`'s settings: flags, environment variables, the TOML file and defaults.
//!
//! Precedence (api.md): a flag beats the environment, which beats the file, which beats the
//! default. clap reads flag and environment together (each flag has `env = SECKILL_*`), so
//! every clap field is an `Option` without a default; the file fills what is still `None`;
//! [`Config::resolve`] fills the rest with the `DEFAULT_*` values and checks the whole.
//! One exception: `--events` is repeatable and its variable `SECKILL_EVENTS` is a
//! comma-separated list, so `resolve` reads that variable itself (a flag value is one
//! target, commas included). The targets are parsed here, with the persistence crate's
//! parser, so that a malformed one exits 2 before anything is opened.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use thiserror::Error;

use crate::client_addr::TrustedProxies;

#[cfg(feature = "persistence")]
use seckill_persistence::events::{split_env_list, EventTarget};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default data directory (journal, snapshots, embedded SQLite).
pub const DEFAULT_DATA_DIR: &str = "./seckill-data";
/// Default bound on one request's handling, body read included.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Default time given to in-flight requests and the flusher at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE_S: u64 = 10;
/// Default shopper rate limits (per shopper, per route).
pub const DEFAULT_TOKEN_PER_S: u32 = 5;
pub const DEFAULT_TOKEN_BURST: u32 = 10;
pub const DEFAULT_PURCHASE_PER_S: u32 = 5;
pub const DEFAULT_PURCHASE_BURST: u32 = 10;
pub const DEFAULT_ORDERS_PER_S: u32 = 20;
pub const DEFAULT_ORDERS_BURST: u32 = 40;
/// Default per-address limit (`[rate_limit.ip]`): off, so that shoppers behind one NAT or
/// proxy are not refused until the operator sizes it for them.
pub const DEFAULT_IP_PER_S: u32 = 0;
pub const DEFAULT_IP_BURST: u32 = 0;
/// Default leading zero bits a proof-of-work answer needs: about a million hashes, under a
/// second in a browser, while a bot asking a million times pays 10^12 of them.
pub const DEFAULT_POW_DIFFICULTY_BITS: u8 = 20;
/// Most zero bits accepted: beyond 40 (about 10^12 hashes) no honest browser finishes.
pub const POW_DIFFICULTY_BITS_MAX: u8 = 40;
/// Default bound on one captcha siteverify call.
pub const DEFAULT_CAPTCHA_TIMEOUT_MS: u64 = 3_000;
/// Shortest captcha timeout accepted: below it a healthy verifier across the internet fails.
pub const CAPTCHA_TIMEOUT_MS_MIN: u64 = 100;
/// Longest captcha timeout accepted: a shopper waits this long at most for a token.
pub const CAPTCHA_TIMEOUT_MS_MAX: u64 = 60_000;
/// Most shards accepted (the engine refuses more).
pub const SHARDS_MAX: u16 = 1024;
/// Default time an ended promotion stays in memory (its orders and stats stay readable after).
pub const DEFAULT_RETAIN_ENDED_S: u64 = 86_400;
/// Longest `retain_ended_s` accepted: ten years.
pub const RETAIN_ENDED_S_MAX: u64 = 10 * 365 * 86_400;
/// Most partitions a cluster may be cut into (`--partitions`).
pub const PARTITIONS_MAX: u32 = 4096;
/// Default copies of every stream on the NATS servers: three, so one server may be lost.
pub const DEFAULT_REPLICAS: u8 = 3;
/// Most copies accepted: JetStream itself replicates a stream at most five times.
pub const REPLICAS_MAX: u8 = 5;
/// Default name prefix of the journal's streams and buckets in NATS.
pub const DEFAULT_CLUSTER_PREFIX: &str = "SECKILL";
/// Longest prefix accepted: stream and bucket names are built from it and stay short.
pub const CLUSTER_PREFIX_LEN_MAX: usize = 32;
/// Default time a partition lease lives after its last renewal: a dead node's partitions
/// are taken over about this long after it died.
pub const DEFAULT_LEASE_TTL_S: u64 = 6;
/// Longest lease accepted: beyond a minute a dead node's items stay unavailable too long.
pub const LEASE_TTL_S_MAX: u64 = 60;
/// Longest `--node-id` accepted.
pub const NODE_ID_LEN_MAX: usize = 64;
/// The environment variable of `--events`: comma-separated targets. Read by
/// [`Config::resolve`] itself, not by clap: a flag value is one target as given (a comma in
/// it is the target's own), the variable's value is a list.
pub const EVENTS_ENV: &str = "SECKILL_EVENTS";
/// Default bound on one webhook delivery (one POST) of the order events.
pub const DEFAULT_EVENTS_WEBHOOK_TIMEOUT_MS: u64 = 5_000;
/// Shortest webhook timeout accepted: below it a healthy endpoint across a network fails.
pub const EVENTS_WEBHOOK_TIMEOUT_MS_MIN: u64 = 100;
/// Longest webhook timeout accepted: one slow endpoint holds its own events back this long
/// per attempt.
pub const EVENTS_WEBHOOK_TIMEOUT_MS_MAX: u64 = 60_000;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "seckill",
    version,
    about = "seckill: a flash-sale engine with an HTTP API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the HTTP server.
    Serve(ServeArgs),
}

/// How shoppers prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `Authorization: Bearer <HS256 JWT>` signed with the user secret.
    Jwt,
    /// `X-User-Id` trusted as is (behind the shop's own authenticating gateway).
    Header,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Jwt => "jwt",
            AuthMode::Header => "header",
        }
    }
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the fsync: a 2xx survives power loss.
    Sync,
    /// Before the fsync: a power loss can lose the last acknowledged writes.
    Async,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Async => "async",
        }
    }
}

/// `seckill serve` flags; each also reads its `SECKILL_*` environment variable.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "SECKILL_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory of the journal, snapshots and embedded SQLite [default: ./seckill-data]
    #[arg(long, env = "SECKILL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Operator key for `Authorization: Bearer`; a random one is made and printed if absent
    #[arg(long, env = "SECKILL_ADMIN_KEY", value_name = "KEY")]
    #[arg(hide_env_values = true)]
    pub admin_key: Option<String>,
    /// HS256 secret shoppers' JWTs are signed with (required with --auth jwt)
    #[arg(long, env = "SECKILL_USER_SECRET", value_name = "SECRET")]
    #[arg(hide_env_values = true)]
    pub user_secret: Option<String>,
    /// How shoppers authenticate [default: jwt]
    #[arg(long, env = "SECKILL_AUTH", value_enum)]
    pub auth: Option<AuthMode>,
    /// Where orders go [default: sqlite://DATA_DIR/orders.db]
    #[arg(long, env = "SECKILL_DATABASE_URL", value_name = "URL")]
    #[arg(hide_env_values = true)]
    pub database_url: Option<String>,
    /// sync: a 2xx means fsync'd; async: acknowledged before the fsync [default: sync]
    #[arg(long, env = "SECKILL_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// Number of engine shards (threads owning items) [default: number of cores]
    #[arg(long, env = "SECKILL_SHARDS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(SHARDS_MAX)))]
    pub shards: Option<u16>,
    /// The `aud` shoppers' JWTs must name (a string, or a list containing it); without this
    /// flag a token that carries `aud` is refused
    #[arg(long, env = "SECKILL_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// The `iss` shoppers' JWTs must carry; without this flag `iss` is not checked
    #[arg(long, env = "SECKILL_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Seconds after its end an ended promotion stops costing memory; its orders and stats
    /// stay readable [default: 86400]
    #[arg(long, env = "SECKILL_RETAIN_ENDED_S", value_name = "SECONDS")]
    pub retain_ended_s: Option<u64>,
    /// Runs this node in a cluster whose journal is NATS JetStream: the NATS servers,
    /// comma-separated (nats://HOST:4222,...); needs --node-id, --advertise and a PostgreSQL
    /// --database-url
    #[arg(long, env = "SECKILL_CLUSTER", value_name = "URLS")]
    #[arg(hide_env_values = true)]
    pub cluster: Option<String>,
    /// This node's name in the cluster (1 to 64 of A-Z a-z 0-9 - _), unique among its nodes
    #[arg(long, env = "SECKILL_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// Where the other nodes reach this one: http://HOST:PORT
    #[arg(long, env = "SECKILL_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
    /// Partitions of the item space, fixed when the cluster is first started (1..=4096)
    /// [default: the cluster's own count, or 64 for a new cluster]
    #[arg(long, env = "SECKILL_PARTITIONS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(PARTITIONS_MAX)))]
    pub partitions: Option<u32>,
    /// Copies of every stream on the NATS servers; a write is acknowledged once a quorum of
    /// them has it (1..=5) [default: 3]
    #[arg(long, env = "SECKILL_REPLICAS", value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=i64::from(REPLICAS_MAX)))]
    pub replicas: Option<u8>,
    /// Name prefix of the journal's streams and buckets in NATS (A-Z 0-9 _), so that several
    /// deployments or tests can share one NATS cluster [default: SECKILL]
    #[arg(long, env = "SECKILL_CLUSTER_PREFIX", value_name = "NAME")]
    pub cluster_prefix: Option<String>,
    /// Seconds a partition lease lives after its last renewal: a dead node's partitions are
    /// taken over after about this long (1..=60) [default: 6]
    #[arg(long, env = "SECKILL_LEASE_TTL_S", value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=LEASE_TTL_S_MAX))]
    pub lease_ttl_s: Option<u64>,
    /// Proxies whose X-Forwarded-For / Forwarded headers name the client: CIDR[,CIDR...],
    /// a bare address being one host [default: none; the client is the TCP peer]
    #[arg(long, env = "SECKILL_TRUSTED_PROXIES", value_name = "CIDRS")]
    pub trusted_proxies: Option<String>,
    /// Leading zero bits of SHA-256 a proof-of-work answer needs (1..=40) [default: 20]
    #[arg(long, env = "SECKILL_POW_DIFFICULTY_BITS", value_name = "N")]
    pub pow_difficulty_bits: Option<u64>,
    /// The captcha provider's siteverify URL (hCaptcha, Turnstile, reCAPTCHA), http:// or
    /// https://; needs --captcha-secret
    #[arg(long, env = "SECKILL_CAPTCHA_VERIFY_URL", value_name = "URL")]
    pub captcha_verify_url: Option<String>,
    /// The secret the captcha provider issued for this site; needs --captcha-verify-url
    #[arg(long, env = "SECKILL_CAPTCHA_SECRET", value_name = "SECRET")]
    #[arg(hide_env_values = true)]
    pub captcha_secret: Option<String>,
    /// Where the order events go; repeat it for several targets: nats://HOST:4222,
    /// amqp://USER:PASS@HOST:5672/VHOST, or http(s)://HOST/PATH (a webhook, signed with
    /// --events-secret). SECKILL_EVENTS takes a comma-separated list [default: none]
    #[arg(long = "events", value_name = "TARGET")]
    pub events: Vec<String>,
    /// The secret that signs every webhook delivery (`Seckill-Signature`); needed by a
    /// webhook --events target
    #[arg(long, env = "SECKILL_EVENTS_SECRET", value_name = "SECRET")]
    #[arg(hide_env_values = true)]
    pub events_secret: Option<String>,
    /// TOML file with the same keys (and `[rate_limit]`, `request_timeout_ms`,
    /// `captcha_timeout_ms`, `events_webhook_timeout_ms`)
    #[arg(long, env = "SECKILL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Development only: keep the log in memory. Nothing survives a restart.
    #[arg(long, env = "SECKILL_UNSAFE_MEMORY_JOURNAL", hide = true)]
    pub unsafe_memory_journal: bool,
}

/// One route's limit: `per_s` sustained, `burst` at once; `per_s = 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimit {
    pub per_s: u32,
    pub burst: u32,
}

/// `[rate_limit]` of the TOML file: per shopper and per route, and per client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// `POST /promotions/{id}/items/{sku}/token`
    pub token: RouteLimit,
    /// `POST /promotions/{id}/items/{sku}/purchase`
    pub purchase: RouteLimit,
    /// `GET /orders/{id}` and `POST /orders/{id}/cancel`
    pub orders: RouteLimit,
    /// `[rate_limit.ip]`: per client address, one budget shared by the token and purchase
    /// routes; off (`per_s = 0`) by default.
    pub ip: RouteLimit,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            token: RouteLimit {
                per_s: DEFAULT_TOKEN_PER_S,
                burst: DEFAULT_TOKEN_BURST,
            },
            purchase: RouteLimit {
                per_s: DEFAULT_PURCHASE_PER_S,
                burst: DEFAULT_PURCHASE_BURST,
            },
            orders: RouteLimit {
                per_s: DEFAULT_ORDERS_PER_S,
                burst: DEFAULT_ORDERS_BURST,
            },
            ip: RouteLimit {
                per_s: DEFAULT_IP_PER_S,
                burst: DEFAULT_IP_BURST,
            },
        }
    }
}

/// `trusted_proxies` in the TOML file: the flag's `"CIDR,CIDR"` string, or an array with
/// one range per string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "trusted_proxies must be a string \"CIDR,CIDR\" or an array of CIDR strings"
)]
pub enum ProxyList {
    Joined(String),
    Each(Vec<String>),
}

/// The TOML file: the flags' keys plus settings that only live here.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub admin_key: Option<String>,
    pub user_secret: Option<String>,
    pub auth: Option<AuthMode>,
    pub jwt_audience: Option<String>,
    pub jwt_issuer: Option<String>,
    pub database_url: Option<String>,
    pub durability: Option<Durability>,
    pub shards: Option<u16>,
    pub retain_ended_s: Option<u64>,
    pub cluster: Option<String>,
    pub node_id: Option<String>,
    pub advertise: Option<String>,
    pub partitions: Option<u32>,
    pub replicas: Option<u8>,
    pub cluster_prefix: Option<String>,
    pub lease_ttl_s: Option<u64>,
    pub trusted_proxies: Option<ProxyList>,
    pub pow_difficulty_bits: Option<u64>,
    pub captcha_verify_url: Option<String>,
    pub captcha_secret: Option<String>,
    pub captcha_timeout_ms: Option<u64>,
    pub events: Option<Vec<String>>,
    pub events_secret: Option<String>,
    pub events_webhook_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub shutdown_grace_s: Option<u64>,
    pub rate_limit: Option<RateLimitConfig>,
}

/// Everything `seckill serve` runs with, resolved and checked.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_key: String,
    /// True when no key was given and [`Config::resolve`] made one: the binary prints it.
    pub admin_key_generated: bool,
    pub user_secret: Option<String>,
    pub auth: AuthMode,
    /// The `aud` shoppers' JWTs must name; None: a token carrying `aud` is refused.
    pub jwt_audience: Option<String>,
    /// The `iss` shoppers' JWTs must carry; None: not checked.
    pub jwt_issuer: Option<String>,
    pub database_url: String,
    pub durability: Durability,
    /// None: the engine's default (number of cores).
    pub shards: Option<usize>,
    /// Seconds after its end an ended promotion stops costing memory.
    pub retain_ended_s: u64,
    pub request_timeout_ms: u64,
    pub shutdown_grace_s: u64,
    pub rate_limit: RateLimitConfig,
    pub unsafe_memory_journal: bool,
    /// Some: this node is part of a cluster and its journal is NATS JetStream.
    pub cluster: Option<ClusterConfig>,
    /// The proxies whose forwarding headers name the client; empty: the client is the peer.
    pub trusted_proxies: TrustedProxies,
    /// Leading zero bits a proof-of-work answer needs (1..=40).
    pub pow_difficulty_bits: u8,
    /// Some: promotions may ask for a captcha, checked at this verifier.
    pub captcha: Option<CaptchaConfig>,
    /// The `--events` targets, parsed and checked (their secrets stay out of `Debug`);
    /// empty: no order events. A build without persistence refuses `--events`, so it has
    /// none.
    #[cfg(feature = "persistence")]
    pub events: Vec<EventTarget>,
    /// Bound on one webhook delivery (one POST).
    pub events_webhook_timeout_ms: u64,
}

/// `--captcha-verify-url` and `--captcha-secret`, checked: where and how a captcha answer
/// is verified (the siteverify protocol of hCaptcha, Turnstile and reCAPTCHA).
#[derive(Clone, PartialEq, Eq)]
pub struct CaptchaConfig {
    /// The siteverify endpoint, `http://` or `https://`.
    pub verify_url: String,
    /// The site's secret, sent with every verification; never logged.
    pub secret: String,
    /// Bound on one verification call; past it the check fails closed (503).
    pub timeout_ms: u64,
}

impl std::fmt::Debug for CaptchaConfig {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptchaConfig")
            .field("verify_url", &without_credentials(&self.verify_url))
            .field("secret", &"***")
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// `--cluster` and its companions, checked: this node's place in a cluster whose journal is
/// NATS JetStream.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The NATS servers, each `nats://` or `tls://`.
    pub urls: Vec<String>,
    /// This node's name: the holder its partition leases name.
    pub node_id: String,
    /// `http://HOST:PORT`, where the other nodes reach this one.
    pub advertise: String,
    /// None: the count the cluster stored when it was created, or the journal's default
    /// for a new cluster.
    pub partitions: Option<u32>,
    /// Copies of every stream and bucket; an append is acknowledged on a quorum of them.
    pub replicas: usize,
    /// Prefix of every stream and bucket name in NATS.
    pub prefix: String,
    /// A partition lease lapses this long after its last renewal.
    pub lease_ttl_s: u64,
}

impl ClusterConfig {
    /// The NATS URLs for a log line: comma-separated, without credentials.
    pub fn urls_for_log(&self) -> String {
        let urls: Vec<String> = self.urls.iter().map(|u| without_credentials(u)).collect();
        urls.join(",")
    }
}

impl std::fmt::Debug for ClusterConfig {
    // A NATS URL may carry a user and password: they never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("urls", &self.urls_for_log())
            .field("node_id", &self.node_id)
            .field("advertise", &self.advertise)
            .field("partitions", &self.partitions)
            .field("replicas", &self.replicas)
            .field("prefix", &self.prefix)
            .field("lease_ttl_s", &self.lease_ttl_s)
            .finish()
    }
}

/// `url` with any `user:password@` replaced by `***@`, for logs and messages.
pub fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl std::fmt::Debug for Config {
    // Secrets never reach a log line (an events target shows only its label).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Config");
        debug
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("auth", &self.auth)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("durability", &self.durability)
            .field("shards", &self.shards)
            .field("retain_ended_s", &self.retain_ended_s)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("rate_limit", &self.rate_limit)
            .field("cluster", &self.cluster)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("pow_difficulty_bits", &self.pow_difficulty_bits)
            .field("captcha", &self.captcha);
        #[cfg(feature = "persistence")]
        {
            let labels: Vec<&str> = self.events.iter().map(|t| t.label.as_str()).collect();
            debug.field("events", &labels);
        }
        debug
            .field("events_webhook_timeout_ms", &self.events_webhook_timeout_ms)
            .finish_non_exhaustive()
    }
}

/// Why the settings cannot be used; each is one line for a person.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    FileUnreadable { path: String, reason: String },
    #[error("bad config file {path}: {reason}")]
    FileInvalid { path: String, reason: String },
    #[error(
        "--auth jwt needs the secret shoppers' tokens are signed with: pass --user-secret SECRET, \
         set SECKILL_USER_SECRET, or put user_secret in the config file"
    )]
    MissingUserSecret,
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field}: {reason}")]
    OutOfRange { field: &'static str, reason: String },
    #[error(
        "{flag} only applies to a node of a cluster: add --cluster nats://HOST:4222,... or \
         leave {flag} out"
    )]
    NeedsCluster { flag: &'static str },
    #[error("--cluster needs {flag}: pass {flag} {value} or set {env}")]
    ClusterNeeds {
        flag: &'static str,
        value: &'static str,
        env: &'static str,
    },
    #[error(
        "a cluster needs PostgreSQL (--database-url postgres://...): every node writes the \
         same orders database, and the SQLite default is one node's file"
    )]
    ClusterNeedsPostgres,
    #[error(
        "--cluster and --unsafe-memory-journal cannot be used together: a cluster's journal is \
         NATS JetStream"
    )]
    ClusterWithMemoryJournal,
    /// A setting given but unusable, named by its flag (its TOML key is the same in
    /// snake_case).
    #[error("{flag}: {reason}")]
    BadFlag { flag: &'static str, reason: String },
    #[error(
        "{given} needs {flag}: pass {flag} {value} or set {env} (a captcha is checked with \
         both the verify URL and the secret)"
    )]
    CaptchaNeeds {
        given: &'static str,
        flag: &'static str,
        value: &'static str,
        env: &'static str,
    },
    /// A malformed `--events` value, a webhook without `--events-secret`, a target given
    /// twice: the message names `--events` and never repeats a password.
    #[error("{0}")]
    Events(String),
    #[error(
        "--events cannot be used with --unsafe-memory-journal: the order events are read \
         from the durable journal, and the memory journal keeps no batches to read"
    )]
    EventsWithMemoryJournal,
    #[error(
        "--events: this build has no durable journal (built without the `persistence` \
         feature), which the order events are delivered from"
    )]
    EventsNeedPersistence,
}

impl Config {
    /// Parses `seckill serve ARGS...` (as the binary does) and resolves it; for tests.
    pub fn from_args<I, T>(args: I) -> Result<Config, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args).map_err(|e| first_line(&e.to_string()))?;
        let Command::Serve(serve) = cli.command;
        Config::resolve(serve).map_err(|e| e.to_string())
    }

    /// Fills what flags and environment left unset from the file, then from the defaults.
    pub fn resolve(mut args: ServeArgs) -> Result<Config, ConfigError> {
        let mut file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let cluster = ClusterInput::take(&mut args, &mut file);
        let env_events = std::env::var(EVENTS_ENV).ok();
        let events_input = EventsInput::take(&mut args, &mut file, env_events.as_deref());
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let auth = args.auth.or(file.auth).unwrap_or(AuthMode::Jwt);
        let user_secret = resolve_user_secret(auth, args.user_secret.or(file.user_secret))?;
        let (admin_key, admin_key_generated) =
            resolve_admin_key(args.admin_key.or(file.admin_key))?;
        let database_url = args.database_url.or(file.database_url);
        let database_url = resolve_database_url(database_url, &data_dir)?;
        let cluster = resolve_cluster(cluster, &database_url, args.unsafe_memory_journal)?;
        let shards = resolve_shards(args.shards.or(file.shards))?;
        let request_timeout_ms = resolve_request_timeout_ms(file.request_timeout_ms)?;
        let rate_limit = resolve_rate_limit(file.rate_limit)?;
        let trusted_proxies = args.trusted_proxies.map(ProxyList::Joined);
        let trusted_proxies = resolve_trusted_proxies(trusted_proxies.or(file.trusted_proxies))?;
        let pow_difficulty_bits =
            resolve_pow_difficulty_bits(args.pow_difficulty_bits.or(file.pow_difficulty_bits))?;
        let captcha = resolve_captcha(
            args.captcha_verify_url.or(file.captcha_verify_url),
            args.captcha_secret.or(file.captcha_secret),
            file.captcha_timeout_ms,
        )?;
        let events_webhook_timeout_ms =
            resolve_events_webhook_timeout_ms(events_input.webhook_timeout_ms)?;
        #[cfg(feature = "persistence")]
        let events = resolve_events(events_input, args.unsafe_memory_journal)?;
        #[cfg(not(feature = "persistence"))]
        refuse_events(&events_input)?;
        Ok(Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir,
            admin_key,
            admin_key_generated,
            user_secret,
            auth,
            jwt_audience: non_empty("jwt_audience", args.jwt_audience.or(file.jwt_audience))?,
            jwt_issuer: non_empty("jwt_issuer", args.jwt_issuer.or(file.jwt_issuer))?,
            database_url,
            durability: args
                .durability
                .or(file.durability)
                .unwrap_or(Durability::Sync),
            shards,
            retain_ended_s: resolve_retain_ended_s(args.retain_ended_s.or(file.retain_ended_s))?,
            request_timeout_ms,
            shutdown_grace_s: file.shutdown_grace_s.unwrap_or(DEFAULT_SHUTDOWN_GRACE_S),
            rate_limit,
            unsafe_memory_journal: args.unsafe_memory_journal,
            cluster,
            trusted_proxies,
            pow_difficulty_bits,
            captcha,
            #[cfg(feature = "persistence")]
            events,
            events_webhook_timeout_ms,
        })
    }
}

/// The cluster settings as given (flag or environment, else the file), not yet checked.
#[derive(Debug, Default)]
struct ClusterInput {
    urls: Option<String>,
    node_id: Option<String>,
    advertise: Option<String>,
    partitions: Option<u32>,
    replicas: Option<u8>,
    prefix: Option<String>,
    lease_ttl_s: Option<u64>,
}

impl ClusterInput {
    fn take(args: &mut ServeArgs, file: &mut FileConfig) -> ClusterInput {
        ClusterInput {
            urls: args.cluster.take().or(file.cluster.take()),
            node_id: args.node_id.take().or(file.node_id.take()),
            advertise: args.advertise.take().or(file.advertise.take()),
            partitions: args.partitions.or(file.partitions),
            replicas: args.replicas.or(file.replicas),
            prefix: args.cluster_prefix.take().or(file.cluster_prefix.take()),
            lease_ttl_s: args.lease_ttl_s.or(file.lease_ttl_s),
        }
    }

    /// The first setting given that only a cluster node uses, as its flag.
    fn first_cluster_only_flag(&self) -> Option<&'static str> {
        [
            ("--node-id", self.node_id.is_some()),
            ("--advertise", self.advertise.is_some()),
            ("--partitions", self.partitions.is_some()),
            ("--replicas", self.replicas.is_some()),
            ("--cluster-prefix", self.prefix.is_some()),
            ("--lease-ttl-s", self.lease_ttl_s.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }
}

/// `None` without `--cluster` (and then no cluster-only setting may be given); otherwise
/// every cluster setting checked, with PostgreSQL and a durable journal required.
fn resolve_cluster(
    input: ClusterInput,
    database_url: &str,
    unsafe_memory_journal: bool,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let urls = match input.urls.as_deref() {
        None => {
            return match input.first_cluster_only_flag() {
                Some(flag) => Err(ConfigError::NeedsCluster { flag }),
                None => Ok(None),
            };
        }
        Some(urls) => resolve_cluster_urls(urls)?,
    };
    if unsafe_memory_journal {
        return Err(ConfigError::ClusterWithMemoryJournal);
    }
    if !is_postgres(database_url) {
        return Err(ConfigError::ClusterNeedsPostgres);
    }
    Ok(Some(ClusterConfig {
        urls,
        node_id: resolve_node_id(input.node_id)?,
        advertise: resolve_advertise(input.advertise)?,
        partitions: resolve_partitions(input.partitions)?,
        replicas: resolve_replicas(input.replicas)?,
        prefix: resolve_cluster_prefix(input.prefix)?,
        lease_ttl_s: resolve_lease_ttl_s(input.lease_ttl_s)?,
    }))
}

fn is_postgres(database_url: &str) -> bool {
    database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")
}

/// The comma-separated NATS URLs; each must name a host after `nats://` or `tls://`.
fn resolve_cluster_urls(list: &str) -> Result<Vec<String>, ConfigError> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err(ConfigError::Empty { field: "cluster" });
    }
    for url in &urls {
        let host = url
            .strip_prefix("nats://")
            .or_else(|| url.strip_prefix("tls://"));
        if host.is_none_or(str::is_empty) {
            return Err(ConfigError::OutOfRange {
                field: "cluster",
                reason: format!(
                    "{} is not a NATS URL: each must start with nats:// (or tls://)",
                    without_credentials(url)
                ),
            });
        }
    }
    Ok(urls)
}

fn resolve_node_id(node_id: Option<String>) -> Result<String, ConfigError> {
    let Some(node_id) = node_id else {
        return Err(ConfigError::ClusterNeeds {
            flag: "--node-id",
            value: "NAME",
            env: "SECKILL_NODE_ID",
        });
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if node_id.is_empty() || node_id.len() > NODE_ID_LEN_MAX || !node_id.chars().all(allowed) {
        return Err(ConfigError::OutOfRange {
            field: "node_id",
            reason: format!("must be 1 to {NODE_ID_LEN_MAX} of A-Z, a-z, 0-9, - and _"),
        });
    }
    Ok(node_id)
}

fn resolve_advertise(advertise: Option<String>) -> Result<String, ConfigError> {
    let Some(url) = advertise else {
        return Err(ConfigError::ClusterNeeds {
            flag: "--advertise",
            value: "http://HOST:PORT",
            env: "SECKILL_ADVERTISE",
        });
    };
    http_host_port(&url).ok_or_else(|| ConfigError::OutOfRange {
        field: "advertise",
        reason: format!("{url:?} must be http://HOST:PORT"),
    })
}

/// `url` as `http://HOST:PORT` (a trailing `/` dropped), or None when it is not one: the
/// address the other nodes call, so it needs a host and a port and nothing else.
fn http_host_port(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':')?;
    let host_ok =
        !host.is_empty() && !host.contains(|c: char| c == '/' || c == '@' || c.is_whitespace());
    let port_ok = port.parse::<u16>().is_ok_and(|port| port > 0);
    (host_ok && port_ok).then(|| format!("http://{rest}"))
}

fn resolve_partitions(partitions: Option<u32>) -> Result<Option<u32>, ConfigError> {
    match partitions {
        Some(n) if n == 0 || n > PARTITIONS_MAX => Err(ConfigError::OutOfRange {
            field: "partitions",
            reason: format!("must be 1..={PARTITIONS_MAX}"),
        }),
        other => Ok(other),
    }
}

fn resolve_replicas(replicas: Option<u8>) -> Result<usize, ConfigError> {
    match replicas.unwrap_or(DEFAULT_REPLICAS) {
        n if n == 0 || n > REPLICAS_MAX => Err(ConfigError::OutOfRange {
            field: "replicas",
            reason: format!("must be 1..={REPLICAS_MAX}"),
        }),
        n => Ok(usize::from(n)),
    }
}

fn resolve_cluster_prefix(prefix: Option<String>) -> Result<String, ConfigError> {
    let prefix = prefix.unwrap_or_else(|| DEFAULT_CLUSTER_PREFIX.to_owned());
    let allowed = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    if prefix.is_empty() || prefix.len() > CLUSTER_PREFIX_LEN_MAX || !prefix.chars().all(allowed) {
        return Err(ConfigError::OutOfRange {
            field: "cluster_prefix",
            reason: format!("must be 1 to {CLUSTER_PREFIX_LEN_MAX} of A-Z, 0-9 and _"),
        });
    }
    Ok(prefix)
}

fn resolve_lease_ttl_s(ttl_s: Option<u64>) -> Result<u64, ConfigError> {
    match ttl_s.unwrap_or(DEFAULT_LEASE_TTL_S) {
        ttl_s if ttl_s == 0 || ttl_s > LEASE_TTL_S_MAX => Err(ConfigError::OutOfRange {
            field: "lease_ttl_s",
            reason: format!("must be 1..={LEASE_TTL_S_MAX}"),
        }),
        ttl_s => Ok(ttl_s),
    }
}

/// `value`, refused when it is given but empty.
fn non_empty(field: &'static str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value {
        Some(text) if text.is_empty() => Err(ConfigError::Empty { field }),
        other => Ok(other),
    }
}

/// The user secret: required (and not empty) with `--auth jwt`.
fn resolve_user_secret(
    auth: AuthMode,
    secret: Option<String>,
) -> Result<Option<String>, ConfigError> {
    if auth == AuthMode::Header {
        return Ok(secret);
    }
    match non_empty("user_secret", secret)? {
        None => Err(ConfigError::MissingUserSecret),
        secret => Ok(secret),
    }
}

/// The operator key, or a generated one (and `true`) when none was given.
fn resolve_admin_key(key: Option<String>) -> Result<(String, bool), ConfigError> {
    match non_empty("admin_key", key)? {
        Some(key) => Ok((key, false)),
        None => Ok((generate_admin_key(), true)),
    }
}

/// The orders database; the embedded SQLite file in the data directory by default.
fn resolve_database_url(url: Option<String>, data_dir: &Path) -> Result<String, ConfigError> {
    match non_empty("database_url", url)? {
        Some(url) => Ok(url),
        None => Ok(format!("sqlite://{}", data_dir.join("orders.db").display())),
    }
}

fn resolve_shards(shards: Option<u16>) -> Result<Option<usize>, ConfigError> {
    match shards {
        Some(n) if n == 0 || n > SHARDS_MAX => Err(ConfigError::OutOfRange {
            field: "shards",
            reason: format!("must be 1..={SHARDS_MAX}"),
        }),
        other => Ok(other.map(usize::from)),
    }
}

fn resolve_request_timeout_ms(timeout_ms: Option<u64>) -> Result<u64, ConfigError> {
    match timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS) {
        0 => Err(ConfigError::OutOfRange {
            field: "request_timeout_ms",
            reason: "must be at least 1".into(),
        }),
        timeout_ms => Ok(timeout_ms),
    }
}

fn resolve_retain_ended_s(retain_s: Option<u64>) -> Result<u64, ConfigError> {
    match retain_s.unwrap_or(DEFAULT_RETAIN_ENDED_S) {
        retain_s if retain_s > RETAIN_ENDED_S_MAX => Err(ConfigError::OutOfRange {
            field: "retain_ended_s",
            reason: format!("must be 0..={RETAIN_ENDED_S_MAX}"),
        }),
        retain_s => Ok(retain_s),
    }
}

/// `[rate_limit]`: a limit that is on (`per_s > 0`) needs a burst of at least 1.
fn resolve_rate_limit(limits: Option<RateLimitConfig>) -> Result<RateLimitConfig, ConfigError> {
    let limits = limits.unwrap_or_default();
    for (field, limit) in [
        ("rate_limit.token.burst", limits.token),
        ("rate_limit.purchase.burst", limits.purchase),
        ("rate_limit.orders.burst", limits.orders),
        ("rate_limit.ip.burst", limits.ip),
    ] {
        if limit.per_s > 0 && limit.burst == 0 {
            return Err(ConfigError::OutOfRange {
                field,
                reason: "must be at least 1 when per_s > 0".into(),
            });
        }
    }
    Ok(limits)
}

/// `--trusted-proxies`, from the flag (or environment) string or the file's string or array.
fn resolve_trusted_proxies(list: Option<ProxyList>) -> Result<TrustedProxies, ConfigError> {
    let parsed = match &list {
        None => return Ok(TrustedProxies::default()),
        Some(ProxyList::Joined(text)) => TrustedProxies::parse(text),
        Some(ProxyList::Each(entries)) => {
            TrustedProxies::from_entries(entries.iter().map(String::as_str))
        }
    };
    parsed.map_err(|error| ConfigError::BadFlag {
        flag: "--trusted-proxies",
        reason: error.to_string(),
    })
}

fn resolve_pow_difficulty_bits(bits: Option<u64>) -> Result<u8, ConfigError> {
    let bits = bits.unwrap_or(u64::from(DEFAULT_POW_DIFFICULTY_BITS));
    match u8::try_from(bits) {
        Ok(bits) if (1..=POW_DIFFICULTY_BITS_MAX).contains(&bits) => Ok(bits),
        _ => Err(ConfigError::BadFlag {
            flag: "--pow-difficulty-bits",
            reason: format!("must be 1..={POW_DIFFICULTY_BITS_MAX}, not {bits}"),
        }),
    }
}

/// `None` without a captcha verifier; otherwise the URL and the secret, each needing the
/// other, and the timeout.
fn resolve_captcha(
    verify_url: Option<String>,
    secret: Option<String>,
    timeout_ms: Option<u64>,
) -> Result<Option<CaptchaConfig>, ConfigError> {
    let timeout_ms = resolve_captcha_timeout_ms(timeout_ms)?;
    match (verify_url, secret) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::CaptchaNeeds {
            given: "--captcha-verify-url",
            flag: "--captcha-secret",
            value: "SECRET",
            env: "SECKILL_CAPTCHA_SECRET",
        }),
        (None, Some(_)) => Err(ConfigError::CaptchaNeeds {
            given: "--captcha-secret",
            flag: "--captcha-verify-url",
            value: "URL",
            env: "SECKILL_CAPTCHA_VERIFY_URL",
        }),
        (Some(verify_url), Some(secret)) => {
            let verify_url = resolve_captcha_verify_url(verify_url)?;
            if secret.is_empty() {
                return Err(ConfigError::Empty {
                    field: "--captcha-secret",
                });
            }
            Ok(Some(CaptchaConfig {
                verify_url,
                secret,
                timeout_ms,
            }))
        }
    }
}

/// The verify URL: `http://` or `https://` and a host (plain http is for a verifier on the
/// same host or a test double; the secret crosses the network in the clear otherwise).
fn resolve_captcha_verify_url(url: String) -> Result<String, ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let names_a_host = rest.is_some_and(|rest| {
        !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace)
    });
    if names_a_host {
        Ok(url)
    } else {
        Err(ConfigError::BadFlag {
            flag: "--captcha-verify-url",
            reason: format!(
                "{:?} must be an http:// or https:// URL",
                without_credentials(&url)
            ),
        })
    }
}

fn resolve_captcha_timeout_ms(timeout_ms: Option<u64>) -> Result<u64, ConfigError> {
    match timeout_ms.unwrap_or(DEFAULT_CAPTCHA_TIMEOUT_MS) {
        timeout_ms if (CAPTCHA_TIMEOUT_MS_MIN..=CAPTCHA_TIMEOUT_MS_MAX).contains(&timeout_ms) => {
            Ok(timeout_ms)
        }
        _ => Err(ConfigError::OutOfRange {
            field: "captcha_timeout_ms",
            reason: format!("must be {CAPTCHA_TIMEOUT_MS_MIN}..={CAPTCHA_TIMEOUT_MS_MAX}"),
        }),
    }
}

/// The order-events settings as given (a flag or the environment, else the file), not yet
/// checked. No `Debug`: it holds the secret.
struct EventsInput {
    /// One target each, as given.
    values: Vec<String>,
    #[cfg_attr(not(feature = "persistence"), allow(dead_code))]
    secret: Option<String>,
    webhook_timeout_ms: Option<u64>,
}

impl EventsInput {
    /// The `--events` flags, else `SECKILL_EVENTS` (`env_list`, comma-separated), else the
    /// file's `events`; the secret from its flag or variable, else the file.
    fn take(args: &mut ServeArgs, file: &mut FileConfig, env_list: Option<&str>) -> EventsInput {
        let values = if args.events.is_empty() {
            env_list
                .map(split_env_list)
                .filter(|values| !values.is_empty())
                .or_else(|| file.events.take())
                .unwrap_or_default()
        } else {
            std::mem::take(&mut args.events)
        };
        EventsInput {
            values,
            secret: args.events_secret.take().or(file.events_secret.take()),
            webhook_timeout_ms: file.events_webhook_timeout_ms,
        }
    }
}

/// The same split as the persistence crate's, for a build without it, which only needs to
/// know whether any target was given (to refuse it).
#[cfg(not(feature = "persistence"))]
fn split_env_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The targets, parsed and checked: a malformed one stops the start here, before the
/// journal or anything else is opened. Whether a target is reachable is not checked (its
/// events wait in the journal).
#[cfg(feature = "persistence")]
fn resolve_events(
    input: EventsInput,
    unsafe_memory_journal: bool,
) -> Result<Vec<EventTarget>, ConfigError> {
    if input.values.is_empty() {
        return Ok(Vec::new());
    }
    if unsafe_memory_journal {
        return Err(ConfigError::EventsWithMemoryJournal);
    }
    EventTarget::parse_all(&input.values, input.secret.as_deref())
        .map_err(|error| ConfigError::Events(error.to_string()))
}

/// Without persistence there is no journal to deliver events from: any target is refused.
#[cfg(not(feature = "persistence"))]
fn refuse_events(input: &EventsInput) -> Result<(), ConfigError> {
    if input.values.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::EventsNeedPersistence)
    }
}

fn resolve_events_webhook_timeout_ms(timeout_ms: Option<u64>) -> Result<u64, ConfigError> {
    match timeout_ms.unwrap_or(DEFAULT_EVENTS_WEBHOOK_TIMEOUT_MS) {
        timeout_ms
            if (EVENTS_WEBHOOK_TIMEOUT_MS_MIN..=EVENTS_WEBHOOK_TIMEOUT_MS_MAX)
                .contains(&timeout_ms) =>
        {
            Ok(timeout_ms)
        }
        _ => Err(ConfigError::OutOfRange {
            field: "events_webhook_timeout_ms",
            reason: format!(
                "must be {EVENTS_WEBHOOK_TIMEOUT_MS_MIN}..={EVENTS_WEBHOOK_TIMEOUT_MS_MAX}"
            ),
        }),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::FileUnreadable {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::FileInvalid {
        path: path.display().to_string(),
        // toml's message spans several lines (it quotes the file); the first one says it.
        reason: first_line(e.message()),
    })
}

/// A random operator key: 32 bytes from the OS generator, in hex.
fn generate_admin_key() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first non-empty line of a multi-line message, without clap's "error: " prefix.
pub fn first_line(message: &str) -> String {
    let line = message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid arguments");
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["seckill", "serve"];
        all.extend_from_slice(args);
        Config::from_args(all)
    }

    #[test]
    fn defaults_give_a_working_header_mode_server() {
        let config = parse(&["--auth", "header"]).expect("valid");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(config.durability, Durability::Sync);
        assert!(config.admin_key_generated);
        assert_eq!(config.admin_key.len(), 64);
        assert!(config.database_url.starts_with("sqlite://"));
        assert!(config.database_url.ends_with("orders.db"));
    }

    #[test]
    fn jwt_mode_without_secret_says_how_to_set_one() {
        let error = parse(&[]).expect_err("must refuse");
        assert!(error.contains("--user-secret"), "{error}");
        assert!(error.contains("SECKILL_USER_SECRET"), "{error}");
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("seckill.toml");
        std::fs::write(
            &file,
            "shards = 3\nauth = \"header\"\nadmin_key = \"from-file\"\n\
             [rate_limit.token]\nper_s = 1\nburst = 2\n",
        )
        .expect("write");
        let file = file.to_string_lossy().into_owned();
        let config = parse(&["--config", &file, "--admin-key", "from-flag"]).expect("valid");
        assert_eq!(config.admin_key, "from-flag");
        assert_eq!(config.shards, Some(3));
        assert_eq!(config.auth, AuthMode::Header);
        assert_eq!(config.rate_limit.token, RouteLimit { per_s: 1, burst: 2 });
        assert_eq!(config.rate_limit.purchase.per_s, DEFAULT_PURCHASE_PER_S);
    }

    #[test]
    fn jwt_rules_and_retention_come_from_flags_then_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("seckill.toml");
        std::fs::write(
            &file,
            "auth = \"header\"\njwt_audience = \"aud-file\"\njwt_issuer = \"iss-file\"\n\
             retain_ended_s = 60\n",
        )
        .expect("write");
        let file = file.to_string_lossy().into_owned();
        let config = parse(&["--config", &file, "--jwt-audience", "aud-flag"]).expect("valid");
        assert_eq!(config.jwt_audience.as_deref(), Some("aud-flag"));
        assert_eq!(config.jwt_issuer.as_deref(), Some("iss-file"));
        assert_eq!(config.retain_ended_s, 60);

        let config = parse(&["--auth", "header", "--retain-ended-s", "5"]).expect("valid");
        assert_eq!(config.retain_ended_s, 5);
        assert_eq!(config.jwt_audience, None);
        assert_eq!(config.jwt_issuer, None);
        let config = parse(&["--auth", "header"]).expect("valid");
        assert_eq!(config.retain_ended_s, DEFAULT_RETAIN_ENDED_S);

        let error = parse(&["--auth", "header", "--jwt-audience", ""]).expect_err("empty");
        assert!(error.contains("jwt_audience"), "{error}");
        let error = parse(&["--auth", "header", "--retain-ended-s", "-1"]).expect_err("negative");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn unknown_file_keys_and_bad_flags_are_refused_in_one_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("seckill.toml");
        std::fs::write(&file, "shardz = 3\n").expect("write");
        let file = file.to_string_lossy().into_owned();
        let error = parse(&["--auth", "header", "--config", &file]).expect_err("typo");
        assert!(error.contains("shardz"), "{error}");
        assert!(!error.contains('\n'));

        let error = parse(&["--auth", "header", "--shards", "0"]).expect_err("range");
        assert!(!error.contains('\n'));
        let error = parse(&["--nope"]).expect_err("unknown flag");
        assert!(error.contains("--nope"), "{error}");
    }

    /// A valid cluster node's flags, each with its value.
    const CLUSTER_NODE: [(&str, &str); 5] = [
        ("--auth", "header"),
        ("--cluster", "nats://127.0.0.1:4222, nats://127.0.0.1:4223"),
        ("--node-id", "node-1"),
        ("--advertise", "http://10.0.0.1:8080"),
        ("--database-url", "postgres://seckill@db.internal/seckill"),
    ];

    /// [`CLUSTER_NODE`] without the flag `without` (and its value), then `extra`.
    fn cluster_node(without: &str, extra: &[&str]) -> Result<Config, String> {
        let mut args: Vec<&str> = Vec::new();
        for &(flag, value) in CLUSTER_NODE.iter().filter(|(flag, _)| *flag != without) {
            args.push(flag);
            args.push(value);
        }
        args.extend_from_slice(extra);
        parse(&args)
    }

    #[test]
    fn a_cluster_node_gets_typed_settings_with_defaults() {
        let config = cluster_node("", &[]).expect("valid");
        let cluster = config.cluster.expect("a cluster node");
        assert_eq!(
            cluster.urls,
            ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
        );
        assert_eq!(cluster.node_id, "node-1");
        assert_eq!(cluster.advertise, "http://10.0.0.1:8080");
        assert_eq!(cluster.partitions, None, "None: the stored count, or 64");
        assert_eq!(cluster.replicas, usize::from(DEFAULT_REPLICAS));
        assert_eq!(cluster.prefix, DEFAULT_CLUSTER_PREFIX);
        assert_eq!(cluster.lease_ttl_s, DEFAULT_LEASE_TTL_S);

        let config = cluster_node(
            "",
            &[
                "--partitions",
                "3",
                "--replicas",
                "1",
                "--cluster-prefix",
                "T_0A",
                "--lease-ttl-s",
                "2",
            ],
        )
        .expect("valid");
        let cluster = config.cluster.expect("a cluster node");
        assert_eq!(cluster.partitions, Some(3));
        assert_eq!(cluster.replicas, 1);
        assert_eq!(cluster.prefix, "T_0A");
        assert_eq!(cluster.lease_ttl_s, 2);

        let single = parse(&["--auth", "header"]).expect("valid");
        assert!(single.cluster.is_none());
    }

    #[test]
    fn cluster_settings_come_from_the_file_too_and_are_checked_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("seckill.toml");
        std::fs::write(
            &file,
            "auth = \"header\"\ncluster = \"tls://nats.internal:4222\"\nnode_id = \"b\"\n\
             advertise = \"http://b.internal:8080/\"\npartitions = 8\nreplicas = 5\n\
             database_url = \"postgresql://db/seckill\"\n",
        )
        .expect("write");
        let file = file.to_string_lossy().into_owned();
        let config = parse(&["--config", &file, "--node-id", "from-flag"]).expect("valid");
        let cluster = config.cluster.expect("a cluster node");
        assert_eq!(cluster.urls, ["tls://nats.internal:4222"]);
        assert_eq!(cluster.node_id, "from-flag");
        assert_eq!(cluster.advertise, "http://b.internal:8080");
        assert_eq!(cluster.partitions, Some(8));
        assert_eq!(cluster.replicas, 5);

        let out_of_range = dir.path().join("bad.toml");
        std::fs::write(&out_of_range, "partitions = 5000\nreplicas = 0\n").expect("write");
        let out_of_range = out_of_range.to_string_lossy().into_owned();
        let error = cluster_node("", &["--config", &out_of_range]).expect_err("range");
        assert!(error.contains("partitions"), "{error}");
    }

    #[test]
    fn a_cluster_without_postgres_is_refused() {
        let error = cluster_node("--database-url", &[]).expect_err("SQLite default");
        assert!(error.contains("PostgreSQL"), "{error}");
        assert!(error.contains("--database-url postgres://"), "{error}");
        let error = cluster_node("--database-url", &["--database-url", "sqlite:///tmp/o.db"])
            .expect_err("SQLite named");
        assert!(error.contains("PostgreSQL"), "{error}");
    }

    #[test]
    fn a_cluster_needs_a_node_id_and_an_advertised_address() {
        let error = cluster_node("--node-id", &[]).expect_err("no node id");
        assert!(error.contains("--node-id"), "{error}");
        assert!(error.contains("SECKILL_NODE_ID"), "{error}");
        let error = cluster_node("--advertise", &[]).expect_err("no advertise");
        assert!(error.contains("--advertise"), "{error}");
        assert!(error.contains("SECKILL_ADVERTISE"), "{error}");
    }

    #[test]
    fn bad_node_ids_and_addresses_are_refused() {
        let too_long = "n".repeat(NODE_ID_LEN_MAX + 1);
        for node_id in ["", "node 1", "node/1", "nœud", too_long.as_str()] {
            let error =
                cluster_node("--node-id", &["--node-id", node_id]).expect_err("bad node id");
            assert!(error.contains("node_id"), "{node_id:?}: {error}");
        }
        let longest = "n".repeat(NODE_ID_LEN_MAX);
        cluster_node("--node-id", &["--node-id", &longest]).expect("64 characters are fine");
        for advertise in [
            "10.0.0.1:8080",
            "https://10.0.0.1:8080",
            "http://10.0.0.1",
            "http://10.0.0.1:0",
            "http://10.0.0.1:8080/path",
            "http://:8080",
        ] {
            let error = cluster_node("--advertise", &["--advertise", advertise])
                .expect_err("bad advertise");
            assert!(error.contains("http://HOST:PORT"), "{advertise:?}: {error}");
        }
    }

    #[test]
    fn every_cluster_url_must_be_a_nats_url() {
        for urls in [
            "http://127.0.0.1:4222",
            "nats://127.0.0.1:4222,127.0.0.1:4223",
            "nats://",
        ] {
            let error = cluster_node("--cluster", &["--cluster", urls]).expect_err("bad url");
            assert!(error.contains("nats://"), "{urls:?}: {error}");
        }
        let error = cluster_node("--cluster", &["--cluster", " , "]).expect_err("no url");
        assert!(error.contains("cluster"), "{error}");
        // A password in a refused URL is not repeated back.
        let error = cluster_node("--cluster", &["--cluster", "http://user:secret@nats:4222"])
            .expect_err("bad url");
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn a_cluster_with_the_memory_journal_is_refused() {
        let error = cluster_node("", &["--unsafe-memory-journal"]).expect_err("memory");
        assert!(error.contains("--unsafe-memory-journal"), "{error}");
    }

    #[test]
    fn cluster_only_flags_without_cluster_are_refused() {
        for (flag, value) in [
            ("--node-id", "node-1"),
            ("--advertise", "http://10.0.0.1:8080"),
            ("--partitions", "3"),
            ("--replicas", "3"),
            ("--cluster-prefix", "T1"),
            ("--lease-ttl-s", "3"),
        ] {
            let error = parse(&["--auth", "header", flag, value]).expect_err("no --cluster");
            assert!(error.contains(flag), "{flag}: {error}");
            assert!(error.contains("--cluster"), "{flag}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn cluster_numbers_and_prefix_out_of_range_are_refused_in_one_line() {
        for extra in [
            ["--partitions", "0"],
            ["--partitions", "4097"],
            ["--replicas", "0"],
            ["--replicas", "6"],
            ["--lease-ttl-s", "0"],
            ["--lease-ttl-s", "61"],
            ["--cluster-prefix", "lower"],
            ["--cluster-prefix", ""],
            ["--cluster-prefix", "A-B"],
        ] {
            let error = cluster_node("", &extra).expect_err("out of range");
            assert!(!error.contains('\n'), "{extra:?}: {error}");
        }
        cluster_node("", &["--partitions", "4096"]).expect("the largest count is fine");
    }

    /// `text` written to `name` in `dir`, as a `--config` argument.
    fn config_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("write");
        file.to_string_lossy().into_owned()
    }

    fn addr(text: &str) -> std::net::IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn bot_defences_are_off_by_default_with_twenty_pow_bits() {
        let config = parse(&["--auth", "header"]).expect("valid");
        assert!(config.trusted_proxies.is_empty());
        assert_eq!(config.pow_difficulty_bits, DEFAULT_POW_DIFFICULTY_BITS);
        assert!(config.captcha.is_none());
        assert_eq!(config.rate_limit.ip, RouteLimit { per_s: 0, burst: 0 });
    }

    #[test]
    fn the_per_address_limit_comes_from_the_rate_limit_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = config_file(
            &dir,
            "ip.toml",
            "auth = \"header\"\n[rate_limit.ip]\nper_s = 2\nburst = 4\n",
        );
        let config = parse(&["--config", &file]).expect("valid");
        assert_eq!(config.rate_limit.ip, RouteLimit { per_s: 2, burst: 4 });
        assert_eq!(config.rate_limit.token.per_s, DEFAULT_TOKEN_PER_S);

        let file = config_file(
            &dir,
            "no-burst.toml",
            "auth = \"header\"\n[rate_limit.ip]\nper_s = 2\nburst = 0\n",
        );
        let error = parse(&["--config", &file]).expect_err("no burst");
        assert!(error.contains("rate_limit.ip.burst"), "{error}");
    }

    #[test]
    fn trusted_proxies_come_from_the_flag_then_the_file_as_a_string_or_an_array() {
        let flag = [
            "--auth",
            "header",
            "--trusted-proxies",
            "10.0.0.0/8, 2001:db8::1",
        ];
        let config = parse(&flag).expect("valid");
        assert!(config.trusted_proxies.contains(addr("10.1.2.3")));
        assert!(config.trusted_proxies.contains(addr("2001:db8::1")));
        assert!(!config.trusted_proxies.contains(addr("2001:db8::2")));
        assert!(!config.trusted_proxies.contains(addr("192.168.0.1")));

        let dir = tempfile::tempdir().expect("tempdir");
        let array = config_file(
            &dir,
            "array.toml",
            "auth = \"header\"\ntrusted_proxies = [\"192.168.0.0/16\", \"10.0.0.1\"]\n",
        );
        let config = parse(&["--config", &array]).expect("valid");
        assert_eq!(
            config.trusted_proxies.to_string(),
            "192.168.0.0/16,10.0.0.1/32"
        );
        let config =
            parse(&["--config", &array, "--trusted-proxies", "172.16.0.0/12"]).expect("valid");
        assert_eq!(config.trusted_proxies.to_string(), "172.16.0.0/12");

        let joined = config_file(
            &dir,
            "joined.toml",
            "auth = \"header\"\ntrusted_proxies = \"192.168.0.0/16,10.0.0.1\"\n",
        );
        let config = parse(&["--config", &joined]).expect("valid");
        assert_eq!(
            config.trusted_proxies.to_string(),
            "192.168.0.0/16,10.0.0.1/32"
        );
    }

    #[test]
    fn malformed_trusted_proxies_are_refused_naming_the_flag() {
        for bad in [
            "10.0.0.300/8",
            "10.0.0.0/33",
            "proxy.internal",
            "10.0.0.0/8 192.168.0.0/16",
        ] {
            let error =
                parse(&["--auth", "header", "--trusted-proxies", bad]).expect_err("malformed");
            assert!(error.contains("--trusted-proxies"), "{bad}: {error}");
            assert!(error.contains(bad), "{bad}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = config_file(
            &dir,
            "bad-entry.toml",
            "auth = \"header\"\ntrusted_proxies = [\"10.0.0.0/8\", \"nope\"]\n",
        );
        let error = parse(&["--config", &file]).expect_err("malformed entry");
        assert!(error.contains("--trusted-proxies"), "{error}");
        let file = config_file(&dir, "bad-type.toml", "trusted_proxies = 8\n");
        let error = parse(&["--auth", "header", "--config", &file]).expect_err("a number");
        assert!(error.contains("trusted_proxies"), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn pow_difficulty_comes_from_the_flag_then_the_file_and_is_checked() {
        for bits in ["1", "40"] {
            let config = parse(&["--auth", "header", "--pow-difficulty-bits", bits]).expect("ok");
            assert_eq!(config.pow_difficulty_bits.to_string(), bits);
        }
        for bits in ["0", "41", "300"] {
            let error = parse(&["--auth", "header", "--pow-difficulty-bits", bits])
                .expect_err("out of range");
            assert!(error.contains("--pow-difficulty-bits"), "{bits}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = config_file(
            &dir,
            "pow.toml",
            "auth = \"header\"\npow_difficulty_bits = 12\n",
        );
        assert_eq!(
            parse(&["--config", &file]).expect("ok").pow_difficulty_bits,
            12
        );
        let config = parse(&["--config", &file, "--pow-difficulty-bits", "16"]).expect("ok");
        assert_eq!(config.pow_difficulty_bits, 16);
        let file = config_file(
            &dir,
            "hard.toml",
            "auth = \"header\"\npow_difficulty_bits = 99\n",
        );
        let error = parse(&["--config", &file]).expect_err("out of range");
        assert!(error.contains("--pow-difficulty-bits"), "{error}");
    }

    #[test]
    fn a_captcha_needs_both_its_url_and_its_secret_which_debug_hides() {
        const URL: &str = "https://hcaptcha.com/siteverify";
        let both = [
            "--auth",
            "header",
            "--captcha-verify-url",
            URL,
            "--captcha-secret",
            "s3cr3t-value",
        ];
        let config = parse(&both).expect("valid");
        let captcha = config.captcha.clone().expect("a captcha verifier");
        assert_eq!(captcha.verify_url, URL);
        assert_eq!(captcha.secret, "s3cr3t-value");
        assert_eq!(captcha.timeout_ms, DEFAULT_CAPTCHA_TIMEOUT_MS);
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
        assert!(debug.contains("hcaptcha.com"), "{debug}");

        let error = parse(&["--auth", "header", "--captcha-verify-url", URL]).expect_err("secret");
        assert!(error.contains("--captcha-secret"), "{error}");
        assert!(error.contains("SECKILL_CAPTCHA_SECRET"), "{error}");
        let error = parse(&["--auth", "header", "--captcha-secret", "s"]).expect_err("url");
        assert!(error.contains("--captcha-verify-url"), "{error}");
        assert!(error.contains("SECKILL_CAPTCHA_VERIFY_URL"), "{error}");
        for bad in [
            "ftp://hcaptcha.com/siteverify",
            "hcaptcha.com/siteverify",
            "https://",
            "http:///siteverify",
            "",
        ] {
            let args = [
                "--auth",
                "header",
                "--captcha-verify-url",
                bad,
                "--captcha-secret",
                "s",
            ];
            let error = parse(&args).expect_err("bad url");
            assert!(error.contains("--captcha-verify-url"), "{bad:?}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
        let args = [
            "--auth",
            "header",
            "--captcha-verify-url",
            URL,
            "--captcha-secret",
            "",
        ];
        let error = parse(&args).expect_err("empty secret");
        assert!(error.contains("--captcha-secret"), "{error}");
    }

    #[test]
    fn captcha_settings_come_from_the_file_with_a_checked_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = config_file(
            &dir,
            "captcha.toml",
            "auth = \"header\"\ncaptcha_verify_url = \"http://127.0.0.1:9/siteverify\"\n\
             captcha_secret = \"from-file\"\ncaptcha_timeout_ms = 500\n",
        );
        let captcha = parse(&["--config", &file]).expect("valid").captcha;
        let captcha = captcha.expect("a captcha verifier");
        assert_eq!(captcha.verify_url, "http://127.0.0.1:9/siteverify");
        assert_eq!(captcha.secret, "from-file");
        assert_eq!(captcha.timeout_ms, 500);
        let config = parse(&["--config", &file, "--captcha-secret", "from-flag"]).expect("valid");
        assert_eq!(config.captcha.expect("on").secret, "from-flag");

        for timeout_ms in [CAPTCHA_TIMEOUT_MS_MIN - 1, CAPTCHA_TIMEOUT_MS_MAX + 1] {
            let file = config_file(
                &dir,
                "timeout.toml",
                &format!("auth = \"header\"\ncaptcha_timeout_ms = {timeout_ms}\n"),
            );
            let error = parse(&["--config", &file]).expect_err("out of range");
            assert!(
                error.contains("captcha_timeout_ms"),
                "{timeout_ms}: {error}"
            );
        }
    }

    #[cfg(feature = "persistence")]
    #[test]
    fn each_events_flag_is_one_target_and_debug_hides_the_secret() {
        use seckill_persistence::events::TargetKind;
        let config = parse(&[
            "--auth",
            "header",
            "--events",
            "nats://127.0.0.1:4222",
            "--events",
            "http://127.0.0.1:9/hooks/orders",
            "--events-secret",
            "whsec-flag-1",
        ])
        .expect("valid");
        let labels: Vec<&str> = config.events.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels.len(), 2, "{labels:?}");
        assert_eq!(labels[0], "nats 127.0.0.1:4222");
        assert!(labels[1].starts_with("webhook 127.0.0.1:9 #"), "{labels:?}");
        assert!(matches!(
            &config.events[1].kind,
            TargetKind::Webhook { secret, .. } if secret == "whsec-flag-1"
        ));
        assert_eq!(
            config.events_webhook_timeout_ms,
            DEFAULT_EVENTS_WEBHOOK_TIMEOUT_MS
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains("whsec-flag-1"), "{debug}");
        assert!(debug.contains("nats 127.0.0.1:4222"), "{debug}");

        let none = parse(&["--auth", "header"]).expect("valid");
        assert!(none.events.is_empty());
    }

    #[cfg(feature = "persistence")]
    #[test]
    fn malformed_events_targets_are_refused_in_one_line_without_their_password() {
        for (value, says) in [
            ("ftp://127.0.0.1/events", "--events"),
            ("127.0.0.1:4222", "--events"),
            ("http://127.0.0.1:9/hook", "--events-secret"),
            // A flag value is one target: its comma is not a list separator.
            (
                "nats://127.0.0.1:4222,nats://127.0.0.1:4223",
                "one NATS server",
            ),
            ("amqp://shop:hunter2@/%2f", "--events"),
        ] {
            let error = parse(&["--auth", "header", "--events", value]).expect_err(value);
            assert!(error.contains(says), "{value}: {error}");
            assert!(!error.contains('\n'), "{value}: {error}");
            assert!(!error.contains("hunter2"), "{value}: {error}");
        }
        let twice = [
            "--auth",
            "header",
            "--events",
            "nats://127.0.0.1:4222",
            "--events",
            "nats://127.0.0.1",
        ];
        let error = parse(&twice).expect_err("the same target twice");
        assert!(error.contains("twice"), "{error}");
    }

    #[cfg(feature = "persistence")]
    #[test]
    fn events_with_the_memory_journal_are_refused() {
        let args = [
            "--auth",
            "header",
            "--unsafe-memory-journal",
            "--events",
            "nats://127.0.0.1:4222",
        ];
        let error = parse(&args).expect_err("no batches to read");
        assert!(error.contains("--unsafe-memory-journal"), "{error}");
        assert!(error.contains("--events"), "{error}");
    }

    #[test]
    fn the_events_flags_beat_the_environment_list_which_beats_the_file() {
        let file_only = || FileConfig {
            events: Some(vec!["nats://file:4222".to_owned()]),
            events_secret: Some("from-file".to_owned()),
            ..FileConfig::default()
        };
        let env_list = Some(" nats://env-a:4222, ,http://env-b/hook ");

        let mut args = ServeArgs {
            events: vec!["nats://flag:4222".to_owned()],
            events_secret: Some("from-flag".to_owned()),
            ..ServeArgs::default()
        };
        let input = EventsInput::take(&mut args, &mut file_only(), env_list);
        assert_eq!(input.values, ["nats://flag:4222"]);
        assert_eq!(input.secret.as_deref(), Some("from-flag"));

        let input = EventsInput::take(&mut ServeArgs::default(), &mut file_only(), env_list);
        assert_eq!(input.values, ["nats://env-a:4222", "http://env-b/hook"]);
        assert_eq!(input.secret.as_deref(), Some("from-file"));

        for blank in [None, Some(""), Some(" , ")] {
            let input = EventsInput::take(&mut ServeArgs::default(), &mut file_only(), blank);
            assert_eq!(input.values, ["nats://file:4222"], "{blank:?}");
        }
    }

    #[cfg(feature = "persistence")]
    #[test]
    fn events_settings_come_from_the_file_with_a_checked_webhook_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = config_file(
            &dir,
            "events.toml",
            "auth = \"header\"\nevents = [\"http://127.0.0.1:9/hook\"]\n\
             events_secret = \"file-secret\"\nevents_webhook_timeout_ms = 250\n",
        );
        let config = parse(&["--config", &file]).expect("valid");
        assert_eq!(config.events.len(), 1);
        assert!(config.events[0].label.starts_with("webhook 127.0.0.1:9"));
        assert_eq!(config.events_webhook_timeout_ms, 250);

        for timeout_ms in [
            EVENTS_WEBHOOK_TIMEOUT_MS_MIN - 1,
            EVENTS_WEBHOOK_TIMEOUT_MS_MAX + 1,
        ] {
            let file = config_file(
                &dir,
                "timeout.toml",
                &format!("auth = \"header\"\nevents_webhook_timeout_ms = {timeout_ms}\n"),
            );
            let error = parse(&["--config", &file]).expect_err("out of range");
            assert!(error.contains("events_webhook_timeout_ms"), "{error}");
        }
    }

    #[cfg(not(feature = "persistence"))]
    #[test]
    fn a_build_without_persistence_refuses_events() {
        let args = [
            "--auth",
            "header",
            "--unsafe-memory-journal",
            "--events",
            "nats://127.0.0.1:4222",
        ];
        let error = parse(&args).expect_err("no journal to read");
        assert!(error.contains("persistence"), "{error}");
    }
}
