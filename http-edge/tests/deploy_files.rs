//! The files of deploy/ against the server they deploy:
//! - every metric the Grafana dashboard and the Prometheus alert rules name is documented
//!   (`METRIC_NAMES`) and shows in a real `/metrics` scrape of the binary after a small sale
//!   (RocksDB journal, SQLite flusher, a webhook events target), but for a listed few that
//!   only special conditions produce;
//! - every metric the code emits is documented, and every documented one is emitted;
//! - deploy/seckill.toml loads with the config loader as it is, and with every commented-out
//!   key put in, and it names every key the loader knows, each with its default.
//!
//! `.ci/deploy-check` checks the same files with the tools that read them (promtool, nginx,
//! systemd-analyze).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use seckill_http_edge::config::{
    AuthMode, Durability, FileConfig, RateLimitConfig, RouteLimit, DEFAULT_CAPTCHA_TIMEOUT_MS,
    DEFAULT_CLUSTER_PREFIX, DEFAULT_EVENTS_WEBHOOK_TIMEOUT_MS, DEFAULT_LEASE_TTL_S,
    DEFAULT_POW_DIFFICULTY_BITS, DEFAULT_REPLICAS, DEFAULT_REQUEST_TIMEOUT_MS,
    DEFAULT_RETAIN_ENDED_S, DEFAULT_SHUTDOWN_GRACE_S,
};
use seckill_http_edge::{Config, METRIC_NAMES};

const DASHBOARD: &str = "deploy/grafana/seckill-dashboard.json";
const ALERT_RULES: &str = "deploy/prometheus/seckill-alerts.yml";
const EXAMPLE_CONFIG: &str = "deploy/seckill.toml";

/// Metrics the deploy files use that a small sale does not produce, with the reason. They
/// are checked against `METRIC_NAMES` only.
const ONLY_IN_SPECIAL_CONDITIONS: &[(&str, &str)] = &[
    (
        "seckill_snapshot_seconds",
        "recorded when a snapshot is saved: one is due after 1,000,000 journal events \
         (the engine's snapshot_every_events), not after a sale of one order",
    ),
    (
        "seckill_snapshot_bytes",
        "recorded with seckill_snapshot_seconds, when a snapshot is saved",
    ),
    (
        "seckill_log_trimmed_through",
        "set when a saved snapshot lets the log be trimmed",
    ),
    (
        "seckill_events_gaps_skipped_total",
        "labelled by target, and counted only when a hole in the journal (an append that \
         failed after taking its sequence number) is passed after 30 s",
    ),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("http-edge sits in the workspace")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_'
}

/// Every `seckill_...` name in `text`, as written (a histogram's `_bucket`, `_sum` or
/// `_count` included). The whole file is read, comments and descriptions too: a name is a
/// name wherever the file mentions it.
fn metric_tokens(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "seckill_";
    let bytes = text.as_bytes();
    let mut tokens = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = text[from..].find(PREFIX) {
        let at = from + found;
        let end = at + bytes[at..].iter().take_while(|b| is_name_byte(**b)).count();
        let starts_a_word = at == 0 || !is_name_byte(bytes[at - 1]);
        if starts_a_word && end > at + PREFIX.len() {
            tokens.insert(text[at..end].to_owned());
        }
        from = end;
    }
    tokens
}

/// The documented metric a token names: itself, or a histogram's or summary's series.
fn base_name(token: &str) -> &str {
    if METRIC_NAMES.contains(&token) {
        return token;
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| token.strip_suffix(suffix))
        .find(|base| METRIC_NAMES.contains(base))
        .unwrap_or(token)
}

/// The metric names of the dashboard and of the alert rules, as written.
fn deploy_metric_tokens() -> BTreeSet<String> {
    let dashboard = read(DASHBOARD);
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(
        parsed["panels"].as_array().is_some_and(|p| !p.is_empty()),
        "the dashboard has no panels"
    );
    let mut tokens = metric_tokens(&dashboard);
    let rules = read(ALERT_RULES);
    assert!(
        rules.contains("groups:"),
        "{ALERT_RULES} has no rule groups"
    );
    tokens.extend(metric_tokens(&rules));
    tokens
}

#[test]
fn the_dashboard_and_the_alert_rules_name_only_documented_metrics() {
    let tokens = deploy_metric_tokens();
    assert!(tokens.len() > 10, "too few metrics found: {tokens:?}");
    let undocumented: Vec<&String> = tokens
        .iter()
        .filter(|token| !METRIC_NAMES.contains(&base_name(token)))
        .collect();
    assert!(
        undocumented.is_empty(),
        "{DASHBOARD} or {ALERT_RULES} name metrics seckill does not emit: {undocumented:?}"
    );
    for (name, why) in ONLY_IN_SPECIAL_CONDITIONS {
        assert!(METRIC_NAMES.contains(name), "stale exception {name}");
        assert!(!why.is_empty(), "{name} needs its reason");
    }
}

/// The metric names in the `counter!`, `gauge!` and `histogram!` calls of `source` (the
/// name is the macro's first argument, a string literal, possibly on the next line).
fn emitted_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for call in ["counter!(", "gauge!(", "histogram!("] {
        let mut rest = source;
        while let Some(at) = rest.find(call) {
            rest = &rest[at + call.len()..];
            let Some(literal) = rest.trim_start().strip_prefix('"') else {
                continue;
            };
            if let Some(end) = literal.find('"') {
                names.push(literal[..end].to_owned());
            }
        }
    }
    names
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            into.push(path);
        }
    }
}

#[test]
fn every_metric_the_code_emits_is_documented_and_every_documented_one_is_emitted() {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in ["engine/src", "persistence/src", "http-edge/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut emitted = BTreeSet::new();
    // metric_docs.rs describes and registers by variable, never by literal.
    for file in files.iter().filter(|f| !f.ends_with("metric_docs.rs")) {
        let source = std::fs::read_to_string(file).expect("read a source file");
        emitted.extend(emitted_names(&source));
    }
    assert!(emitted.len() > 10, "too few metrics found: {emitted:?}");
    let undocumented: Vec<&String> = emitted
        .iter()
        .filter(|name| !METRIC_NAMES.contains(&name.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "metrics without an entry in http-edge/src/metric_docs.rs: {undocumented:?}"
    );
    let never_emitted: Vec<&&str> = METRIC_NAMES
        .iter()
        .filter(|name| !emitted.contains(**name))
        .collect();
    assert!(
        never_emitted.is_empty(),
        "metric_docs.rs documents metrics no code emits: {never_emitted:?}"
    );
}

#[cfg(feature = "persistence")]
mod live {
    //! The real binary after a small sale, with a webhook events target.

    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::Router;
    use serde_json::{json, Value};

    use super::common::process::{free_port, path_arg, ServerProcess};
    use super::common::{at, client, send};

    /// What a `/metrics` text holds: families (`# TYPE`), families with help text (`# HELP`),
    /// and sample names (`_bucket`, `_sum`, `_count` included).
    #[derive(Debug, Default)]
    pub struct Scrape {
        pub families: BTreeSet<String>,
        pub helped: BTreeSet<String>,
        pub samples: BTreeSet<String>,
    }

    impl Scrape {
        pub fn parse(text: &str) -> Scrape {
            let first_word = |rest: &str| rest.split(' ').next().unwrap_or_default().to_owned();
            let mut scrape = Scrape::default();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    scrape.families.insert(first_word(rest));
                } else if let Some(rest) = line.strip_prefix("# HELP ") {
                    scrape.helped.insert(first_word(rest));
                } else if !line.is_empty() && !line.starts_with('#') {
                    let end = line.find(['{', ' ']).unwrap_or(line.len());
                    scrape.samples.insert(line[..end].to_owned());
                }
            }
            scrape
        }

        /// A name as the deploy files write it: a sample's, or a family's (a histogram's name
        /// in a description).
        pub fn has(&self, token: &str) -> bool {
            self.samples.contains(token) || self.families.contains(token)
        }
    }

    pub const ADMIN: &str = "deploy-files-admin-key";
    const HOOK_SECRET: &str = "deploy-files-webhook-secret";
    /// Bound on waiting for every series (the flusher and the deliverer publish on their
    /// own schedules); not a timing assertion.
    const SCRAPE_WAIT: Duration = Duration::from_secs(60);

    /// A webhook receiver that refuses the first delivery with 400 (so that the refusal
    /// and failure counters have a series) and accepts every later one.
    pub struct Webhook {
        pub url: String,
        task: tokio::task::JoinHandle<()>,
    }

    impl Webhook {
        pub async fn start() -> Webhook {
            let refused_first = Arc::new(AtomicBool::new(false));
            let app = Router::new()
                .route("/hooks/seckill", post(receive))
                .with_state(refused_first);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a port");
            let port = listener.local_addr().expect("its address").port();
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Webhook {
                url: format!("http://127.0.0.1:{port}/hooks/seckill"),
                task,
            }
        }
    }

    impl Drop for Webhook {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn receive(State(refused_first): State<Arc<AtomicBool>>, _event: Bytes) -> StatusCode {
        if refused_first.swap(true, Ordering::SeqCst) {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::BAD_REQUEST
        }
    }

    /// `seckill serve --auth header` with real storage (RocksDB, SQLite) and `hook` as an
    /// events target.
    pub async fn start_server(data_dir: &std::path::Path, hook: &Webhook) -> ServerProcess {
        let data = path_arg(data_dir);
        let args = [
            "--auth",
            "header",
            "--admin-key",
            ADMIN,
            "--data-dir",
            &data,
            "--shards",
            "2",
            "--events",
            &hook.url,
            "--events-secret",
            HOOK_SECRET,
        ];
        ServerProcess::start(&args, free_port()).await
    }

    /// Create, start, token, purchase, read, pay; and one 404.
    pub async fn small_sale(base: &str) {
        let http = client();
        let admin = |path: &str| http.post(format!("{base}{path}")).bearer_auth(ADMIN);
        let shopper = |path: &str| {
            http.post(format!("{base}{path}"))
                .header("X-User-Id", "deploy-alice")
        };
        let answer = |(status, body): (reqwest::StatusCode, Value), expected: u16| {
            assert_eq!(status.as_u16(), expected, "{body}");
            body
        };
        let promotion = json!({
            "id": "deploy-files", "name": "Deploy files",
            "starts_at": at(3600), "ends_at": at(7200),
            "items": [{"sku": "mug", "stock": 10, "price_cents": 1500, "per_user_limit": 2}],
        });
        answer(send(admin("/admin/promotions").json(&promotion)).await, 201);
        answer(
            send(admin("/admin/promotions/deploy-files/start")).await,
            200,
        );
        let grant = answer(
            send(shopper("/promotions/deploy-files/items/mug/token")).await,
            200,
        );
        let token = grant["token"].as_str().expect("a token").to_owned();
        let order = answer(
            send(
                shopper("/promotions/deploy-files/items/mug/purchase")
                    .json(&json!({"request_id": "deploy-1", "quantity": 1, "token": token})),
            )
            .await,
            201,
        );
        let order_id = order["order_id"].as_str().expect("an order id").to_owned();
        let read = http
            .get(format!("{base}/orders/{order_id}"))
            .header("X-User-Id", "deploy-alice");
        answer(send(read).await, 200);
        let pay = admin(&format!("/admin/orders/{order_id}/pay"))
            .json(&json!({"payment_ref": "deploy-psp-1"}));
        answer(send(pay).await, 200);
        answer(
            send(http.get(format!("{base}/promotions/no-such-promotion"))).await,
            404,
        );
    }

    /// Scrapes until `wanted` all show (or the wait is over), and returns the last scrape.
    pub async fn scrape_until(base: &str, wanted: &[String]) -> Scrape {
        let http = client();
        let deadline = tokio::time::Instant::now() + SCRAPE_WAIT;
        loop {
            let response = http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .expect("GET /metrics");
            assert_eq!(response.status(), reqwest::StatusCode::OK);
            let scrape = Scrape::parse(&response.text().await.expect("the metrics"));
            let complete = wanted.iter().all(|token| scrape.has(token));
            if complete || tokio::time::Instant::now() > deadline {
                return scrape;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(feature = "persistence")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_of_the_deploy_files_are_in_a_real_scrape_after_a_small_sale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = live::Webhook::start().await;
    let server = live::start_server(&dir.path().join("data"), &hook).await;
    live::small_sale(&server.base).await;

    let special: Vec<&str> = ONLY_IN_SPECIAL_CONDITIONS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let wanted: Vec<String> = deploy_metric_tokens()
        .into_iter()
        .filter(|token| !special.contains(&base_name(token)))
        .collect();
    let scrape = live::scrape_until(&server.base, &wanted).await;

    let missing: Vec<&String> = wanted.iter().filter(|token| !scrape.has(token)).collect();
    assert!(
        missing.is_empty(),
        "named by {DASHBOARD} or {ALERT_RULES} but not in /metrics after a sale: {missing:?} \
         (a metric only special conditions produce belongs in ONLY_IN_SPECIAL_CONDITIONS, \
         with its reason)"
    );
    let without_help: Vec<&String> = scrape.families.difference(&scrape.helped).collect();
    assert!(
        without_help.is_empty(),
        "families of /metrics without # HELP (metric_docs::describe_all): {without_help:?}"
    );
    let undocumented: Vec<&String> = scrape
        .families
        .iter()
        .filter(|family| family.starts_with("seckill_") && !METRIC_NAMES.contains(&family.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "families of /metrics missing from METRIC_NAMES: {undocumented:?}"
    );
}

// --- deploy/seckill.toml ----------------------------------------------------------------------

/// The field names serde's derive gives a struct (the ones its TOML table takes): the
/// derived `Deserialize` hands them to `deserialize_struct`, which this deserializer records
/// before it refuses to produce anything.
mod field_names {
    use serde::de::{self, Deserialize, Deserializer, Visitor};

    #[derive(Debug)]
    pub struct Recorded;

    impl std::fmt::Display for Recorded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the field names were recorded; no value is made")
        }
    }

    impl std::error::Error for Recorded {}

    impl de::Error for Recorded {
        fn custom<T: std::fmt::Display>(_message: T) -> Self {
            Recorded
        }
    }

    struct FieldRecorder<'a> {
        fields: &'a mut &'static [&'static str],
    }

    impl<'de> Deserializer<'de> for FieldRecorder<'_> {
        type Error = Recorded;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Recorded> {
            Err(Recorded)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Recorded> {
            *self.fields = fields;
            Err(Recorded)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    pub fn of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(FieldRecorder {
            fields: &mut fields,
        });
        assert!(!fields.is_empty(), "no struct fields recorded");
        fields
    }
}

/// The example with every commented-out setting (`#key = value`, no space after the `#`)
/// put in; prose comments (`# ...`) stay.
fn with_every_key(example: &str) -> String {
    example
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn load(path: &Path, extra: &[&str]) -> Result<Config, String> {
    let path = path.display().to_string();
    let mut args = vec!["seckill", "serve", "--config", path.as_str()];
    args.extend_from_slice(extra);
    Config::from_args(args)
}

#[test]
fn the_example_config_loads_as_it_is_with_the_secrets_given_apart() {
    // The systemd unit gives the secrets in the environment (EnvironmentFile); flags stand
    // for it here, because a test must not change its process's environment.
    let path = workspace_root().join(EXAMPLE_CONFIG);
    let secrets = [
        "--admin-key",
        "from-the-env-file",
        "--user-secret",
        "from-the-env-file",
    ];
    let config = load(&path, &secrets).unwrap_or_else(|e| panic!("{EXAMPLE_CONFIG}: {e}"));
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/seckill"));
    assert_eq!(config.database_url, "sqlite:///var/lib/seckill/orders.db");
    assert_eq!(config.auth, AuthMode::Jwt);
    assert_eq!(config.durability, Durability::Sync);
    assert_eq!(config.shards, None);
    assert_eq!(config.retain_ended_s, DEFAULT_RETAIN_ENDED_S);
    assert_eq!(config.request_timeout_ms, DEFAULT_REQUEST_TIMEOUT_MS);
    assert_eq!(config.shutdown_grace_s, DEFAULT_SHUTDOWN_GRACE_S);
    assert_eq!(config.rate_limit, RateLimitConfig::default());
    assert_eq!(config.pow_difficulty_bits, DEFAULT_POW_DIFFICULTY_BITS);
    assert_eq!(
        config.events_webhook_timeout_ms,
        DEFAULT_EVENTS_WEBHOOK_TIMEOUT_MS
    );
    assert!(config
        .trusted_proxies
        .contains(std::net::Ipv4Addr::LOCALHOST.into()));
    assert!(config.captcha.is_none());
    assert!(config.cluster.is_none());
    assert_eq!(config.jwt_audience, None);

    // As shipped it holds no secret: they belong in /etc/seckill/seckill.env.
    let file: FileConfig = toml::from_str(&read(EXAMPLE_CONFIG)).expect("the example parses");
    assert!(file.admin_key.is_none());
    assert!(file.user_secret.is_none());
    assert!(file.captcha_secret.is_none());
    assert!(file.events_secret.is_none());
    assert!(file.database_url.is_none(), "its URL may carry a password");
}

#[test]
fn the_example_config_with_every_key_put_in_is_a_valid_cluster_node() {
    let full = with_every_key(&read(EXAMPLE_CONFIG));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("every-key.toml");
    std::fs::write(&path, &full).expect("write");
    let config = load(&path, &[]).unwrap_or_else(|e| panic!("every key put in: {e}"));
    assert!(!config.admin_key_generated);
    assert!(config.database_url.starts_with("postgres://"));
    assert_eq!(config.shards, Some(4));
    assert!(config.jwt_audience.is_some() && config.jwt_issuer.is_some());
    let cluster = config.cluster.expect("a cluster node");
    assert_eq!(cluster.node_id, "node-1");
    assert_eq!(cluster.urls.len(), 3);
    assert_eq!(cluster.partitions, Some(64));
    assert_eq!(cluster.replicas, usize::from(DEFAULT_REPLICAS));
    assert_eq!(cluster.prefix, DEFAULT_CLUSTER_PREFIX);
    assert_eq!(cluster.lease_ttl_s, DEFAULT_LEASE_TTL_S);
    let captcha = config.captcha.expect("a captcha verifier");
    assert_eq!(captcha.timeout_ms, DEFAULT_CAPTCHA_TIMEOUT_MS);
    #[cfg(feature = "persistence")]
    assert_eq!(config.events.len(), 2);
}

#[test]
fn the_example_config_names_every_key_the_loader_knows_each_with_its_default() {
    let example = read(EXAMPLE_CONFIG);
    let full: toml::Table = toml::from_str(&with_every_key(&example)).expect("TOML");
    // Every key of the file is one the loader takes (it refuses unknown ones)...
    let _: FileConfig = toml::from_str(&with_every_key(&example)).expect("known keys");
    // ...and every key the loader takes is in the file.
    for key in field_names::of::<FileConfig>() {
        assert!(full.contains_key(*key), "{EXAMPLE_CONFIG} lacks {key}");
    }
    let rate_limit = full
        .get("rate_limit")
        .and_then(toml::Value::as_table)
        .expect("[rate_limit]");
    for route in field_names::of::<RateLimitConfig>() {
        let limit = rate_limit
            .get(*route)
            .and_then(toml::Value::as_table)
            .unwrap_or_else(|| panic!("{EXAMPLE_CONFIG} lacks [rate_limit.{route}]"));
        for key in field_names::of::<RouteLimit>() {
            assert!(limit.contains_key(*key), "[rate_limit.{route}] lacks {key}");
        }
    }

    // Each setting once, after a comment that gives its default.
    let lines: Vec<&str> = example.lines().collect();
    let mut settings: Vec<String> = field_names::of::<FileConfig>()
        .iter()
        .filter(|key| **key != "rate_limit")
        .map(|key| format!("{key} = "))
        .collect();
    settings.extend(
        field_names::of::<RateLimitConfig>()
            .iter()
            .map(|route| format!("[rate_limit.{route}]")),
    );
    for setting in &settings {
        let at: Vec<usize> = (0..lines.len())
            .filter(|&i| {
                lines[i]
                    .trim_start_matches('#')
                    .starts_with(setting.as_str())
            })
            .collect();
        assert_eq!(
            at.len(),
            1,
            "{setting:?} must be in {EXAMPLE_CONFIG} once: {at:?}"
        );
        let documented = lines[..at[0]]
            .iter()
            .rev()
            .take_while(|line| **line == "#" || line.starts_with("# "))
            .any(|line| line.contains("Default"));
        assert!(
            documented,
            "{setting:?} in {EXAMPLE_CONFIG} needs a comment above it that gives its default"
        );
    }
}
