//! What the tests of `seckill serve --cluster` through the real binary share: a deployment
//! (NATS servers, a prefix there, a PostgreSQL schema, a directory), `seckill` nodes as
//! child processes killed by pid when dropped, buyers running beside a test, and the checks
//! made after every fault (every acknowledged order readable, no unit sold twice, SQL equal
//! to the engine, no shopper over the limit).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::process::{free_port, path_arg, seckill};
use crate::common::{send, ADMIN_KEY};

/// The shopper of the single-shopper tests.
pub const SHOPPER: &str = "alice";
/// A bound on any one process's start or exit; it means "hung", not "slow".
pub const PROCESS_LIMIT: Duration = Duration::from_secs(60);
/// A bound on one HTTP request to a node.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// What every node of the NATS test shares: the NATS servers, its prefix there, its
/// PostgreSQL schema, and a directory for the nodes' data directories and logs.
pub struct Deployment {
    pub nats_urls: String,
    pub database_url: String,
    pub prefix: String,
    pub dir: PathBuf,
    /// Every node's `--lease-ttl-s`: 3 by default, so that a lease left behind by a node
    /// that died in a failed run lapses quickly instead of holding the next start.
    pub lease_ttl_s: u32,
}

/// A `seckill` child process. Dropping it kills it (by its pid), so no path of a test,
/// a panic included, leaves a process behind.
pub struct Node {
    pub child: Option<Child>,
    pub base: String,
    pub stderr_path: PathBuf,
    pub client: reqwest::Client,
}

impl Node {
    /// Spawns node `node_id` with `--partitions partitions`; stderr goes to a file (a pipe
    /// nobody reads could fill and stall the child), logging at `log_level`.
    pub fn spawn(deployment: &Deployment, node_id: &str, partitions: u32, log_level: &str) -> Node {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let base = format!("http://{listen}");
        let data = path_arg(&deployment.dir.join(format!("data-{node_id}")));
        let stderr_path = deployment
            .dir
            .join(format!("{node_id}-p{partitions}-{port}.stderr"));
        let stderr = File::create(&stderr_path).expect("stderr file");
        let partitions = partitions.to_string();
        let child = seckill()
            .args(["serve", "--auth", "header", "--admin-key", ADMIN_KEY])
            .args(["--data-dir", &data, "--listen", &listen])
            .args(["--database-url", &deployment.database_url])
            .args(["--cluster", &deployment.nats_urls])
            .args(["--cluster-prefix", &deployment.prefix])
            .args(["--node-id", node_id, "--advertise", &base])
            .args(["--partitions", &partitions, "--replicas", "3"])
            .args(["--lease-ttl-s", &deployment.lease_ttl_s.to_string()])
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn seckill");
        seckill_http_edge::human::captcha::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(REQUEST_LIMIT)
            .build()
            .expect("HTTP client");
        Node {
            child: Some(child),
            base,
            stderr_path,
            client,
        }
    }

    /// Spawns the node and waits until it answers `/readyz` 200 (and `/healthz` 200).
    pub async fn start(deployment: &Deployment, node_id: &str, partitions: u32) -> Node {
        let mut node = Node::spawn(deployment, node_id, partitions, "info");
        node.wait_ready().await;
        node
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the node is running")
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + PROCESS_LIMIT;
        loop {
            if let Ok(Some(status)) = self.child().try_wait() {
                panic!("seckill exited at start with {status}: {}", self.stderr());
            }
            let ready = self.client.get(self.url("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seckill not ready within {PROCESS_LIMIT:?}: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let health = self.client.get(self.url("/healthz")).send().await;
        assert!(
            health.is_ok_and(|r| r.status() == StatusCode::OK),
            "/healthz after /readyz 200"
        );
    }

    /// Waits at most [`PROCESS_LIMIT`] for the process to exit on its own.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PROCESS_LIMIT;
        loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "seckill did not exit within {PROCESS_LIMIT:?}: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (to its pid), then its exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child().id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        self.wait_exit().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_KEY)
    }

    pub fn shopper(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("X-User-Id", SHOPPER)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill signals this child's own pid, nothing else.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A PostgreSQL schema for this test alone; the URL puts the server's tables in it.
pub struct TestSchema {
    pub admin: sqlx::PgPool,
    pub name: String,
    pub url: String,
}

impl TestSchema {
    pub async fn create(base_url: &str) -> TestSchema {
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(base_url)
            .await
            .expect("PostgreSQL from SECKILL_TEST_DATABASE_URL reachable");
        let name = format!(
            "seckill_cluster_{}_{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&admin)
            .await
            .expect("create schema");
        let separator = if base_url.contains('?') { '&' } else { '?' };
        let url = format!("{base_url}{separator}options=-c%20search_path%3D{name}");
        TestSchema { admin, name, url }
    }

    pub async fn drop_schema(self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&self.admin)
            .await
            .expect("drop schema");
        self.admin.close().await;
    }
}

/// What a NATS test of this file runs on: a prefix of its own in NATS, a schema of its own
/// in PostgreSQL, a directory for the nodes (kept while the returned guard lives). `None`
/// (the test is skipped, and says so) without the persistence feature, NATS or PostgreSQL.
pub async fn deployment() -> Option<(Deployment, TestSchema, tempfile::TempDir)> {
    let nats_urls = nats_tests_on()?;
    deployment_on(nats_urls).await
}

/// The test NATS cluster's URLs when the NATS tests are on (`SECKILL_TEST_NATS_URLS`, and
/// the persistence feature built in); `None`, said on stdout, otherwise.
pub fn nats_tests_on() -> Option<String> {
    if cfg!(not(feature = "persistence")) {
        println!("skipped: built without the persistence feature (no JetStream journal)");
        return None;
    }
    let nats_urls = env_value("SECKILL_TEST_NATS_URLS");
    if nats_urls.is_none() {
        println!("skipped: SECKILL_TEST_NATS_URLS not set");
    }
    nats_urls
}

/// [`deployment`] on the NATS servers at `nats_urls` (a cluster the test started itself).
pub async fn deployment_on(
    nats_urls: String,
) -> Option<(Deployment, TestSchema, tempfile::TempDir)> {
    let Some(base_database_url) = env_value("SECKILL_TEST_DATABASE_URL") else {
        println!("skipped: SECKILL_TEST_DATABASE_URL not set");
        return None;
    };
    let prefix = format!("T{:016X}", rand::random::<u64>());
    println!("NATS prefix {prefix}");
    let schema = TestSchema::create(&base_database_url).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let deployment = Deployment {
        nats_urls,
        database_url: schema.url.clone(),
        prefix,
        dir: dir.path().to_owned(),
        lease_ttl_s: 3,
    };
    Some((deployment, schema, dir))
}

pub fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// The nodes' view of the cluster: node id -> the partitions it holds.
pub async fn cluster_view(node: &Node) -> Option<(u64, Vec<(String, usize)>)> {
    let (status, body) = send(node.admin(Method::GET, "/admin/cluster")).await;
    if status != StatusCode::OK {
        return None;
    }
    let partitions = body["partitions"].as_u64()?;
    let nodes = body["nodes"]
        .as_array()?
        .iter()
        .map(|n| {
            let held = n["partitions"].as_array().map_or(0, Vec::len);
            (n["node_id"].as_str().unwrap_or_default().to_owned(), held)
        })
        .collect();
    Some((partitions, nodes))
}

/// Polls `node`'s `/admin/cluster` until `check` holds; panics after [`PROCESS_LIMIT`].
pub async fn wait_for_view(node: &Node, what: &str, check: impl Fn(&[(String, usize)]) -> bool) {
    let deadline = Instant::now() + PROCESS_LIMIT;
    loop {
        if let Some((_, nodes)) = cluster_view(node).await {
            if check(&nodes) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PROCESS_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `user` buys one unit of `sku` through `node`: the status and body.
pub async fn buy(node: &Node, sku: &str, user: &str) -> (StatusCode, Value) {
    send(
        node.client
            .post(node.url(&format!("/promotions/spread/items/{sku}/purchase")))
            .header("X-User-Id", user)
            .json(&json!({"request_id": format!("{user}-{sku}")})),
    )
    .await
}

/// A node's address and client, for buyers running beside the test.
#[derive(Clone)]
pub struct Endpoint {
    pub client: reqwest::Client,
    pub base: String,
}

impl Node {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            client: self.client.clone(),
            base: self.base.clone(),
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the node's pid.
    pub fn signal(&mut self, signal: &str) {
        let pid = self.child().id().to_string();
        let sent = Command::new("kill")
            .args([format!("-{signal}"), pid.clone()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid}");
    }
}

/// Who buys in [`keep_buying`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shoppers {
    /// A new shopper for every request: every refusal seen is a fault's.
    NewEach,
    /// One pool for every buyer: the `n`th request is shopper `s{n/2}`'s, for one item,
    /// and buyers running through different nodes ask for the same shoppers at about the
    /// same time. The per-user limit (1) is then put to the test across nodes.
    Shared,
}

/// The shopper, the item and the request id of a buyer's `n`th request.
fn nth_request<'a>(
    shoppers: Shoppers,
    tag: &str,
    skus: &'a [String],
    n: usize,
) -> (String, &'a str, String) {
    match shoppers {
        Shoppers::NewEach => {
            let user = format!("{tag}{n}");
            let sku = &skus[n % skus.len()];
            let request_id = format!("{user}-{sku}");
            (user, sku, request_id)
        }
        Shoppers::Shared => (
            format!("s{}", n / 2),
            &skus[(n / 2) % skus.len()],
            format!("{tag}-{n}"),
        ),
    }
}

/// One answer a buyer got.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Answer {
    pub status: u16,
    /// The error's code; empty for a sale.
    pub code: String,
    /// When the answer came.
    pub at: Instant,
}

/// What a buyer ends with: every acknowledged order (201) as `(user, order)`, and every
/// answer seen.
pub type Bought = (Vec<(String, Value)>, Vec<Answer>);

/// Creates promotion "storm" through `node`: items `k0`..`k3` of `stock` units each; their
/// skus.
pub async fn create_storm(node: &Node, stock: u64) -> Vec<String> {
    let skus: Vec<String> = (0..4).map(|n| format!("k{n}")).collect();
    let items: Vec<(&str, u64)> = skus.iter().map(|sku| (sku.as_str(), stock)).collect();
    let (status, body) = send(
        node.admin(Method::POST, "/admin/promotions")
            .json(&crate::common::live_promotion("storm", &items, false)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    skus
}

/// Buys `skus` of promotion "storm" through `endpoints` in turn until `stop`.
pub async fn keep_buying(
    endpoints: Vec<Endpoint>,
    skus: Vec<String>,
    stop: tokio::sync::watch::Receiver<bool>,
    tag: &'static str,
    shoppers: Shoppers,
) -> Bought {
    let (mut acked, mut statuses) = (Vec::new(), Vec::new());
    let mut n = 0usize;
    while !*stop.borrow() {
        let endpoint = &endpoints[n % endpoints.len()];
        let (user, sku, request_id) = nth_request(shoppers, tag, &skus, n);
        let answer = endpoint
            .client
            .post(format!(
                "{}/promotions/storm/items/{sku}/purchase",
                endpoint.base
            ))
            .header("X-User-Id", &user)
            .json(&json!({"request_id": request_id}))
            .send()
            .await;
        if let Ok(answer) = answer {
            let status = answer.status().as_u16();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            let code = body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            statuses.push(Answer {
                status,
                code,
                at: Instant::now(),
            });
            if status == 201 {
                acked.push((user, body));
            }
        }
        n += 1;
    }
    (acked, statuses)
}

/// Every acknowledged order is readable through `nodes` (in turn), no order id was
/// acknowledged twice, and every item of `promotion` holds at least its acknowledged orders
/// and at most `stock`. The owners' figures per sku, as `node[0]` gathers them.
pub async fn assert_acked_present(
    nodes: &[&Node],
    promotion: &str,
    acked: &[(String, Value)],
    stock: u64,
) -> BTreeMap<String, Value> {
    let ids: BTreeSet<&str> = acked
        .iter()
        .map(|(_, order)| order["order_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids.len(), acked.len(), "no order id acknowledged twice");
    let mut per_sku: BTreeMap<String, u64> = BTreeMap::new();
    for (i, (user, order)) in acked.iter().enumerate() {
        let id = order["order_id"].as_str().expect("an order id");
        let node = nodes[i % nodes.len()];
        let (status, seen) = send(
            node.client
                .get(node.url(&format!("/orders/{id}")))
                .header("X-User-Id", user.as_str()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "acknowledged {id} is gone: {seen}");
        *per_sku
            .entry(seen["sku"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let (status, stats) =
        send(nodes[0].admin(Method::GET, &format!("/admin/promotions/{promotion}"))).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    let mut items = BTreeMap::new();
    for item in stats["items"].as_array().expect("items") {
        let sku = item["sku"].as_str().unwrap_or_default().to_owned();
        let taken = live_units(item);
        // At least the acknowledged ones: a request whose answer never came (one waiting in
        // a paused node's socket past the client's timeout) may have bought as well.
        assert!(
            taken >= per_sku.get(&sku).copied().unwrap_or(0),
            "{sku}: an acknowledged order is missing from its owner's figures: {item}"
        );
        assert!(taken <= stock, "{sku} oversold: {item}");
        items.insert(sku, item.clone());
    }
    items
}

/// The units an item's orders hold (pending payment or paid), by its stats.
fn live_units(item: &Value) -> u64 {
    item["reserved"].as_u64().unwrap_or(u64::MAX) + item["sold"].as_u64().unwrap_or(0)
}

/// How long SQL may take to catch up with the engine before the check fails: api.md's 5 s
/// "while the database is reachable", with room for a takeover's flusher to start.
const SQL_CATCH_UP: Duration = Duration::from_secs(30);

/// SQL converges to the engine: every acknowledged order is a row, each item's live rows
/// (pending payment or paid) add up to its owner's figures in `items`, and no shopper holds
/// more than the per-user limit (1) of an item. Polls until it holds, [`SQL_CATCH_UP`] at
/// most; the time it took.
pub async fn assert_sql_matches(
    schema: &TestSchema,
    promotion: &str,
    acked: &[(String, Value)],
    items: &BTreeMap<String, Value>,
) -> Duration {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&schema.url)
        .await
        .expect("the test's schema");
    let started = Instant::now();
    loop {
        let rows: Vec<(String, String, String, i32, String)> = sqlx::query_as(
            "SELECT order_id, sku, user_id, quantity, status FROM orders WHERE promotion_id = $1",
        )
        .bind(promotion)
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        let Some(mismatch) = sql_mismatch(&rows, acked, items) else {
            break;
        };
        assert!(
            started.elapsed() < SQL_CATCH_UP,
            "SQL did not converge to the engine within {SQL_CATCH_UP:?}: {mismatch}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pool.close().await;
    started.elapsed()
}

/// What SQL's `rows` of a promotion still lack against the engine; `None` when they match.
fn sql_mismatch(
    rows: &[(String, String, String, i32, String)],
    acked: &[(String, Value)],
    items: &BTreeMap<String, Value>,
) -> Option<String> {
    let ids: BTreeSet<&str> = rows.iter().map(|row| row.0.as_str()).collect();
    let missing = acked
        .iter()
        .filter_map(|(_, order)| order["order_id"].as_str())
        .filter(|id| !ids.contains(id))
        .count();
    if missing > 0 {
        return Some(format!("{missing} acknowledged orders not in SQL yet"));
    }
    let mut live: BTreeMap<&str, u64> = BTreeMap::new();
    let mut held: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (_, sku, user, quantity, status) in rows {
        if status == "pending_payment" || status == "paid" {
            let units = u64::try_from(*quantity).unwrap_or(u64::MAX);
            *live.entry(sku).or_default() += units;
            *held.entry((user, sku)).or_default() += units;
        }
    }
    if let Some(((user, sku), units)) = held.iter().find(|(_, units)| **units > 1) {
        // Never converges away: a real breach, reported at the deadline.
        return Some(format!("{user} holds {units} units of {sku} (limit 1)"));
    }
    for (sku, item) in items {
        let in_sql = live.get(sku.as_str()).copied().unwrap_or(0);
        if in_sql != live_units(item) {
            return Some(format!("{sku}: {in_sql} live units in SQL, engine {item}"));
        }
    }
    None
}

/// The answers that were not sales, as `(status, code)` with their counts, for a report.
pub fn refusals(answers: &[Answer]) -> BTreeMap<(u16, &str), usize> {
    let mut seen = BTreeMap::new();
    for answer in answers.iter().filter(|a| a.status != 201) {
        *seen
            .entry((answer.status, answer.code.as_str()))
            .or_default() += 1;
    }
    seen
}

/// True for what a buyer may see while a fault lasts: a sale, 503 (nothing done, or
/// outcome unknown), and, for shared shoppers, the per-user limit.
pub fn fault_answer(answer: &Answer) -> bool {
    matches!(answer.status, 201 | 503) || (answer.status == 409 && answer.code == "limit_exceeded")
}

/// The longest stretch in `from..to` without a sale among `answers` (of any buyer).
pub fn longest_gap(answers: &[Answer], from: Instant, to: Instant) -> Duration {
    let mut sales: Vec<Instant> = answers
        .iter()
        .filter(|a| a.status == 201 && a.at > from && a.at < to)
        .map(|a| a.at)
        .collect();
    sales.sort();
    let mut gap = Duration::ZERO;
    let mut last = from;
    for at in sales.into_iter().chain([to]) {
        gap = gap.max(at - last);
        last = at;
    }
    gap
}

/// One buyer per node of `nodes` (tagged with `tags`, in order), each buying through its
/// node alone as `shoppers` until `stop`.
pub fn buyer_per_node(
    nodes: &[Node],
    tags: &[&'static str],
    skus: &[String],
    stop: &tokio::sync::watch::Receiver<bool>,
    shoppers: Shoppers,
) -> Vec<tokio::task::JoinHandle<Bought>> {
    nodes
        .iter()
        .zip(tags)
        .map(|(node, tag)| {
            tokio::spawn(keep_buying(
                vec![node.endpoint()],
                skus.to_vec(),
                stop.clone(),
                tag,
                shoppers,
            ))
        })
        .collect()
}
