//! `seckill serve`'s settings: flags, environment variables, the TOML file and defaults.
//!
//! Precedence (api.md): a flag beats the environment, which beats the file, which beats the
//! default. clap reads flag and environment together (each flag has `env = SECKILL_*`), so
//! every clap field is an `Option` without a default; the file fills what is still `None`;
//! [`Config::resolve`] fills the rest with the `DEFAULT_*` values and checks the whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use thiserror::Error;

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
/// Most shards accepted (the engine refuses more).
pub const SHARDS_MAX: u16 = 1024;

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
    #[arg(
        long,
        env = "SECKILL_ADMIN_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub admin_key: Option<String>,
    /// HS256 secret shoppers' JWTs are signed with (required with --auth jwt)
    #[arg(
        long,
        env = "SECKILL_USER_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub user_secret: Option<String>,
    /// How shoppers authenticate [default: jwt]
    #[arg(long, env = "SECKILL_AUTH", value_enum)]
    pub auth: Option<AuthMode>,
    /// Where orders go [default: sqlite://DATA_DIR/orders.db]
    #[arg(
        long,
        env = "SECKILL_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// sync: a 2xx means fsync'd; async: acknowledged before the fsync [default: sync]
    #[arg(long, env = "SECKILL_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// Number of engine shards (threads owning items) [default: number of cores]
    #[arg(long, env = "SECKILL_SHARDS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(SHARDS_MAX)))]
    pub shards: Option<u16>,
    /// TOML file with the same keys (and `[rate_limit]`, `request_timeout_ms`)
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

/// `[rate_limit]` of the TOML file: per shopper and per route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// `POST /promotions/{id}/items/{sku}/token`
    pub token: RouteLimit,
    /// `POST /promotions/{id}/items/{sku}/purchase`
    pub purchase: RouteLimit,
    /// `GET /orders/{id}` and `POST /orders/{id}/cancel`
    pub orders: RouteLimit,
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
        }
    }
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
    pub database_url: Option<String>,
    pub durability: Option<Durability>,
    pub shards: Option<u16>,
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
    pub database_url: String,
    pub durability: Durability,
    /// None: the engine's default (number of cores).
    pub shards: Option<usize>,
    pub request_timeout_ms: u64,
    pub shutdown_grace_s: u64,
    pub rate_limit: RateLimitConfig,
    pub unsafe_memory_journal: bool,
}

impl std::fmt::Debug for Config {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("auth", &self.auth)
            .field("durability", &self.durability)
            .field("shards", &self.shards)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("rate_limit", &self.rate_limit)
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
    pub fn resolve(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let auth = args.auth.or(file.auth).unwrap_or(AuthMode::Jwt);
        let user_secret = args.user_secret.or(file.user_secret);
        if auth == AuthMode::Jwt {
            match &user_secret {
                None => return Err(ConfigError::MissingUserSecret),
                Some(s) if s.is_empty() => {
                    return Err(ConfigError::Empty {
                        field: "user_secret",
                    })
                }
                Some(_) => {}
            }
        }
        let (admin_key, admin_key_generated) = match args.admin_key.or(file.admin_key) {
            Some(key) if key.is_empty() => return Err(ConfigError::Empty { field: "admin_key" }),
            Some(key) => (key, false),
            None => (generate_admin_key(), true),
        };
        let database_url = match args.database_url.or(file.database_url) {
            Some(url) if url.is_empty() => {
                return Err(ConfigError::Empty {
                    field: "database_url",
                })
            }
            Some(url) => url,
            None => format!("sqlite://{}", data_dir.join("orders.db").display()),
        };
        let shards = match args.shards.or(file.shards) {
            Some(n) if n == 0 || n > SHARDS_MAX => {
                return Err(ConfigError::OutOfRange {
                    field: "shards",
                    reason: format!("must be 1..={SHARDS_MAX}"),
                })
            }
            other => other.map(usize::from),
        };
        let request_timeout_ms = file
            .request_timeout_ms
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS);
        if request_timeout_ms == 0 {
            return Err(ConfigError::OutOfRange {
                field: "request_timeout_ms",
                reason: "must be at least 1".into(),
            });
        }
        let rate_limit = file.rate_limit.unwrap_or_default();
        for (name, limit) in [
            ("rate_limit.token", rate_limit.token),
            ("rate_limit.purchase", rate_limit.purchase),
            ("rate_limit.orders", rate_limit.orders),
        ] {
            if limit.per_s > 0 && limit.burst == 0 {
                return Err(ConfigError::OutOfRange {
                    field: match name {
                        "rate_limit.token" => "rate_limit.token.burst",
                        "rate_limit.purchase" => "rate_limit.purchase.burst",
                        _ => "rate_limit.orders.burst",
                    },
                    reason: "must be at least 1 when per_s > 0".into(),
                });
            }
        }
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
            database_url,
            durability: args
                .durability
                .or(file.durability)
                .unwrap_or(Durability::Sync),
            shards,
            request_timeout_ms,
            shutdown_grace_s: file.shutdown_grace_s.unwrap_or(DEFAULT_SHUTDOWN_GRACE_S),
            rate_limit,
            unsafe_memory_journal: args.unsafe_memory_journal,
        })
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
}
