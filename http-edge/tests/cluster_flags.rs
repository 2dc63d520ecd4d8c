//! `seckill serve --cluster ...` through the real binary: the flag combinations it refuses
//! (exit 2, one line), and, when NATS and PostgreSQL are at hand, a node whose order survives
//! a restart on the JetStream journal and a restart that names another partition count.
//!
//! The NATS test needs `SECKILL_TEST_NATS_URLS` (a JetStream cluster, see `./dev test`) and
//! `SECKILL_TEST_DATABASE_URL`; it is skipped without either. It runs under a random prefix
//! of its own in NATS and a schema of its own in PostgreSQL, so tests sharing both never meet.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::process::{free_port, path_arg, run_to_exit, seckill};
use common::{live_promotion, send, ADMIN_KEY};

/// A bound on any one process's start or exit; it means "hung", not "slow".
const PROCESS_LIMIT: Duration = Duration::from_secs(60);
/// A bound on one HTTP request to a node.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// The shopper of the NATS test.
const SHOPPER: &str = "alice";

/// The lines seckill wrote to stderr, without empty ones.
fn stderr_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Exit code 2 and exactly one line, `seckill: ...`, that contains every one of `needles`.
#[track_caller]
fn assert_refused(status: ExitStatus, stderr: &str, needles: &[&str]) {
    let lines = stderr_lines(stderr);
    assert_eq!(status.code(), Some(2), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "exactly one line on stderr, got {lines:?}");
    assert!(lines[0].starts_with("seckill: "), "{lines:?}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{:?} must mention {needle:?}",
            lines[0]
        );
    }
}

#[test]
fn a_cluster_without_postgres_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = path_arg(&dir.path().join("data"));
    let output = run_to_exit(
        &[
            "serve",
            "--auth",
            "header",
            "--admin-key",
            "k",
            "--data-dir",
            &data,
            "--cluster",
            "nats://127.0.0.1:1",
            "--node-id",
            "a",
            "--advertise",
            "http://127.0.0.1:1",
        ],
        PROCESS_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_refused(output.status, &stderr, &["PostgreSQL", "--database-url"]);
}

#[test]
fn cluster_flags_without_cluster_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = path_arg(&dir.path().join("data"));
    for (flag, value) in [("--node-id", "a"), ("--partitions", "3")] {
        let output = run_to_exit(
            &[
                "serve",
                "--auth",
                "header",
                "--admin-key",
                "k",
                "--data-dir",
                &data,
                flag,
                value,
            ],
            PROCESS_LIMIT,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_refused(output.status, &stderr, &[flag, "--cluster"]);
    }
}

/// What every node of the NATS test shares: the NATS servers, its prefix there, its
/// PostgreSQL schema, and a directory for the nodes' data directories and logs.
struct Deployment {
    nats_urls: String,
    database_url: String,
    prefix: String,
    dir: PathBuf,
}

/// A `seckill` child process. Dropping it kills it (by its pid), so no path of a test,
/// a panic included, leaves a process behind.
struct Node {
    child: Option<Child>,
    base: String,
    stderr_path: PathBuf,
    client: reqwest::Client,
}

impl Node {
    /// Spawns node `node_id` with `--partitions partitions`; stderr goes to a file (a pipe
    /// nobody reads could fill and stall the child), logging at `log_level`.
    fn spawn(deployment: &Deployment, node_id: &str, partitions: u32, log_level: &str) -> Node {
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
            // Short leases: a lease left behind by a node that died in a failed run lapses
            // quickly instead of holding the next start for the default TTL.
            .args(["--lease-ttl-s", "3"])
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
    async fn start(deployment: &Deployment, node_id: &str, partitions: u32) -> Node {
        let mut node = Node::spawn(deployment, node_id, partitions, "info");
        node.wait_ready().await;
        node
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the node is running")
    }

    async fn wait_ready(&mut self) {
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
    async fn wait_exit(&mut self) -> ExitStatus {
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
    async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child().id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        self.wait_exit().await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_KEY)
    }

    fn shopper(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
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
struct TestSchema {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl TestSchema {
    async fn create(base_url: &str) -> TestSchema {
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

    async fn drop_schema(self) {
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
async fn deployment() -> Option<(Deployment, TestSchema, tempfile::TempDir)> {
    if cfg!(not(feature = "persistence")) {
        println!("skipped: built without the persistence feature (no JetStream journal)");
        return None;
    }
    let Some(nats_urls) = env_value("SECKILL_TEST_NATS_URLS") else {
        println!("skipped: SECKILL_TEST_NATS_URLS not set");
        return None;
    };
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
    };
    Some((deployment, schema, dir))
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Creates a live promotion and buys one unit of it; the order as answered.
async fn buy_one(node: &Node) -> Value {
    let (status, body) = send(
        node.admin(Method::POST, "/admin/promotions")
            .json(&live_promotion("cluster-sale", &[("mug", 5)], false)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, order) = send(
        node.shopper(Method::POST, "/promotions/cluster-sale/items/mug/purchase")
            .json(&json!({"request_id": "alice-1"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert!(order["order_id"].is_string(), "{order}");
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_survives_a_restart_and_another_partition_count_is_refused() {
    let Some((deployment, schema, _dir)) = deployment().await else {
        return;
    };

    let mut first = Node::start(&deployment, "node-a", 3).await;
    let order = buy_one(&first).await;
    let status = first.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", first.stderr());

    // The cluster stored 3 partitions: 4 is refused before anything is changed. Logged at
    // `warn` so the NATS client's connection lines do not count as lines of the refusal.
    let mut refused = Node::spawn(&deployment, "node-b", 4, "warn");
    let status = refused.wait_exit().await;
    assert_refused(
        status,
        &refused.stderr(),
        &["3 partitions", "--partitions 4"],
    );

    // Another node, with the stored count and a data directory of its own, reads the order
    // from the journal.
    let mut second = Node::start(&deployment, "node-b", 3).await;
    let order_id = order["order_id"].as_str().expect("order id");
    let (status, seen) = send(second.shopper(Method::GET, &format!("/orders/{order_id}"))).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["order_id"], order["order_id"]);
    assert_eq!(seen["status"], order["status"]);
    assert_eq!(seen["status"], "pending_payment");
    let status = second.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", second.stderr());

    schema.drop_schema().await;
    assert_data_dirs_hold_no_journal(&deployment.dir);
}

/// With `--cluster` nothing durable goes to the data directory: no RocksDB there.
fn assert_data_dirs_hold_no_journal(dir: &Path) {
    for node in ["data-node-a", "data-node-b"] {
        let data = dir.join(node);
        let entries: Vec<String> = std::fs::read_dir(&data)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            !entries
                .iter()
                .any(|name| name.contains("journal") || name.ends_with(".db")),
            "{}: {entries:?}",
            data.display()
        );
    }
}

/// The nodes' view of the cluster: node id -> the partitions it holds.
async fn cluster_view(node: &Node) -> Option<(u64, Vec<(String, usize)>)> {
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
async fn wait_for_view(node: &Node, what: &str, check: impl Fn(&[(String, usize)]) -> bool) {
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
async fn buy(node: &Node, sku: &str, user: &str) -> (StatusCode, Value) {
    send(
        node.client
            .post(node.url(&format!("/promotions/spread/items/{sku}/purchase")))
            .header("X-User-Id", user)
            .json(&json!({"request_id": format!("{user}-{sku}")})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_for_every_item_and_the_others_take_over_a_killed_one() {
    const PARTITIONS: u32 = 4;
    const STOCK: u64 = 6;
    let Some((deployment, schema, _dir)) = deployment().await else {
        return;
    };
    let mut nodes = vec![Node::start(&deployment, "node-a", PARTITIONS).await];
    let skus: Vec<String> = (0..8).map(|n| format!("s{n}")).collect();
    let items: Vec<(&str, u64)> = skus.iter().map(|sku| (sku.as_str(), STOCK)).collect();
    let (status, body) = send(
        nodes[0]
            .admin(Method::POST, "/admin/promotions")
            .json(&live_promotion("spread", &items, false)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    nodes.push(Node::start(&deployment, "node-b", PARTITIONS).await);
    nodes.push(Node::start(&deployment, "node-c", PARTITIONS).await);
    wait_for_view(&nodes[0], "three nodes share the partitions", |view| {
        view.len() == 3 && view.iter().all(|(_, held)| *held >= 1)
    })
    .await;

    // Every node sells every item (most of them owned elsewhere), and reads every order.
    let mut orders: Vec<(String, Value)> = Vec::new();
    for (n, sku) in skus.iter().enumerate() {
        for round in 0..3 {
            let node = &nodes[(n + round) % 3];
            let (status, order) = buy(node, sku, &format!("u{round}")).await;
            assert_eq!(
                status,
                StatusCode::CREATED,
                "{sku} through node {}: {order}",
                (n + round) % 3
            );
            orders.push((format!("u{round}"), order));
        }
    }
    for (i, (user, order)) in orders.iter().enumerate() {
        let id = order["order_id"].as_str().expect("an order id");
        let node = &nodes[(i + 1) % 3];
        let (status, seen) = send(
            node.client
                .get(node.url(&format!("/orders/{id}")))
                .header("X-User-Id", user.as_str()),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{id} read through another node: {seen}"
        );
        assert_eq!(&seen, order, "the owner's answer, whichever node is asked");
    }
    // A promotion that requires a token: the token through one node, the purchase through
    // another, neither of them (for most items) the owner.
    let tokened: Vec<String> = (0..4).map(|n| format!("t{n}")).collect();
    let tokened_items: Vec<(&str, u64)> = tokened.iter().map(|sku| (sku.as_str(), STOCK)).collect();
    let (status, body) = send(
        nodes[2]
            .admin(Method::POST, "/admin/promotions")
            .json(&live_promotion("tokened", &tokened_items, true)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for (n, sku) in tokened.iter().enumerate() {
        let asked = &nodes[(n + 1) % 3];
        let (status, grant) = send(
            asked
                .client
                .post(asked.url(&format!("/promotions/tokened/items/{sku}/token")))
                .header("X-User-Id", "holder"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "a token for {sku}: {grant}");
        let buyer = &nodes[(n + 2) % 3];
        let (status, order) = send(
            buyer
                .client
                .post(buyer.url(&format!("/promotions/tokened/items/{sku}/purchase")))
                .header("X-User-Id", "holder")
                .json(&json!({"request_id": format!("holder-{sku}"), "token": grant["token"]})),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{sku} bought with its token: {order}"
        );
    }

    let (status, stats) = send(nodes[1].admin(Method::GET, "/admin/promotions/spread")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    for item in stats["items"].as_array().expect("items") {
        assert_eq!(
            item["reserved"], 3,
            "every item's figures from its owner: {item}"
        );
    }

    // kill -9 of node-b: the others take its partitions; writes to its items answer 503
    // for a while, then succeed.
    let killed = Instant::now();
    if let Some(mut child) = nodes[1].child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let survivors = [&nodes[0], &nodes[2]];
    let mut gap = Duration::ZERO;
    for (n, sku) in skus.iter().enumerate() {
        let node = survivors[n % 2];
        loop {
            let (status, order) = buy(node, sku, "after").await;
            if status == StatusCode::CREATED {
                gap = gap.max(killed.elapsed());
                orders.push(("after".into(), order));
                break;
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{sku}: {order}");
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "{sku} never sold again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "after kill -9 of one node of three, every item sold again within {gap:?} (lease TTL 3 s)"
    );
    assert!(gap < Duration::from_secs(15), "api.md: at most 15 s of 503");
    // Nothing acknowledged was lost, and nothing sold twice.
    for (user, order) in &orders {
        let id = order["order_id"].as_str().expect("an order id");
        let (status, seen) = send(
            nodes[2]
                .client
                .get(nodes[2].url(&format!("/orders/{id}")))
                .header("X-User-Id", user.as_str()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{id} after the takeover: {seen}");
    }
    let (status, stats) = send(nodes[0].admin(Method::GET, "/admin/promotions/spread")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    for item in stats["items"].as_array().expect("items") {
        assert_eq!(
            item["reserved"], 4,
            "three before, one after, each once: {item}"
        );
    }
    for index in [0, 2] {
        let status = nodes[index].terminate().await;
        assert_eq!(status.code(), Some(0), "{}", nodes[index].stderr());
    }
    schema.drop_schema().await;
}

/// A node's address and client, for buyers running beside the test.
#[derive(Clone)]
struct Endpoint {
    client: reqwest::Client,
    base: String,
}

impl Node {
    fn endpoint(&self) -> Endpoint {
        Endpoint {
            client: self.client.clone(),
            base: self.base.clone(),
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the node's pid.
    fn signal(&mut self, signal: &str) {
        let pid = self.child().id().to_string();
        let sent = Command::new("kill")
            .args([format!("-{signal}"), pid.clone()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid}");
    }
}

/// Buys `skus` through `endpoints` in turn until `stop`, one new shopper a request: every
/// acknowledged order (201) as `(user, order)`, and the statuses seen.
async fn keep_buying(
    endpoints: Vec<Endpoint>,
    skus: Vec<String>,
    stop: tokio::sync::watch::Receiver<bool>,
    tag: &'static str,
) -> (Vec<(String, Value)>, Vec<u16>) {
    let (mut acked, mut statuses) = (Vec::new(), Vec::new());
    let mut n = 0usize;
    while !*stop.borrow() {
        let endpoint = &endpoints[n % endpoints.len()];
        let sku = &skus[n % skus.len()];
        let user = format!("{tag}{n}");
        let answer = endpoint
            .client
            .post(format!(
                "{}/promotions/storm/items/{sku}/purchase",
                endpoint.base
            ))
            .header("X-User-Id", &user)
            .json(&json!({"request_id": format!("{user}-{sku}")}))
            .send()
            .await;
        if let Ok(answer) = answer {
            let status = answer.status().as_u16();
            statuses.push(status);
            if status == 201 {
                let order: Value = answer.json().await.unwrap_or(Value::Null);
                acked.push((user, order));
            }
        }
        n += 1;
    }
    (acked, statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_mid_sale_and_a_node_paused_past_its_leases_lose_and_repeat_nothing() {
    const PARTITIONS: u32 = 4;
    // More than the buyers can buy in the test's seconds: every refusal seen is a fault's.
    const STOCK: u64 = 100_000;
    let Some((deployment, schema, _dir)) = deployment().await else {
        return;
    };
    let mut nodes = vec![
        Node::start(&deployment, "node-a", PARTITIONS).await,
        Node::start(&deployment, "node-b", PARTITIONS).await,
    ];
    let skus: Vec<String> = (0..4).map(|n| format!("k{n}")).collect();
    let items: Vec<(&str, u64)> = skus.iter().map(|sku| (sku.as_str(), STOCK)).collect();
    let (status, body) = send(
        nodes[0]
            .admin(Method::POST, "/admin/promotions")
            .json(&live_promotion("storm", &items, false)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // (d) a third node joins while buyers buy through the first two.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let buyers = tokio::spawn(keep_buying(
        vec![nodes[0].endpoint(), nodes[1].endpoint()],
        skus.clone(),
        stopped.clone(),
        "d",
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes.push(Node::start(&deployment, "node-c", PARTITIONS).await);
    wait_for_view(&nodes[0], "three nodes share the partitions", |view| {
        view.len() == 3 && view.iter().all(|(_, held)| *held >= 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);
    let (mut acked, statuses) = buyers.await.expect("the buyers end");
    let refused = statuses.iter().filter(|s| **s != 201).count();
    println!(
        "(d) a node joined mid-sale: {} purchases, {} acknowledged, {refused} refused ({:?})",
        statuses.len(),
        acked.len(),
        statuses
            .iter()
            .filter(|s| **s != 201)
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 503),
        "only sales and 503 during the hand-overs: {statuses:?}"
    );

    // (b) node-a is paused past its leases while buyers buy through every node, node-a
    // included (those requests wait in its socket), then goes on.
    // One buyer a node: the ones of the running nodes go on while node-a's waits.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let buyers: Vec<_> = nodes
        .iter()
        .zip(["ba", "bb", "bc"])
        .map(|(node, tag)| {
            tokio::spawn(keep_buying(
                vec![node.endpoint()],
                skus.clone(),
                stopped.clone(),
                tag,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes[0].signal("STOP");
    tokio::time::sleep(Duration::from_secs(7)).await;
    nodes[0].signal("CONT");
    wait_for_view(
        &nodes[1],
        "node-a rejoins and holds partitions again",
        |view| view.len() == 3 && view.iter().all(|(_, held)| *held >= 1),
    )
    .await;
    stop.send_replace(true);
    for (buyer, tag) in
        buyers
            .into_iter()
            .zip(["through node-a", "through node-b", "through node-c"])
    {
        let (more, statuses) = buyer.await.expect("the buyers end");
        let refused: std::collections::BTreeSet<u16> =
            statuses.iter().copied().filter(|s| *s != 201).collect();
        println!(
            "(b) node-a paused 7 s (lease TTL 3 s), then rejoined; {tag}: {} purchases, {} acknowledged, refused with {refused:?}",
            statuses.len(),
            more.len()
        );
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 503),
            "{tag}: only sales and 503 while a node is paused: {refused:?}"
        );
        acked.extend(more);
    }

    // Every acknowledged order is there, on any node, and no unit was sold twice.
    let mut per_sku: std::collections::BTreeMap<String, u64> = Default::default();
    let ids: std::collections::BTreeSet<String> = acked
        .iter()
        .map(|(_, order)| order["order_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids.len(), acked.len(), "no order id acknowledged twice");
    for (i, (user, order)) in acked.iter().enumerate() {
        let id = order["order_id"].as_str().expect("an order id");
        let node = &nodes[i % 3];
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
    let (status, stats) = send(nodes[2].admin(Method::GET, "/admin/promotions/storm")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    for item in stats["items"].as_array().expect("items") {
        let sku = item["sku"].as_str().unwrap_or_default();
        let reserved = item["reserved"].as_u64().unwrap_or(u64::MAX);
        // At least the acknowledged ones: a request whose answer never came (one waiting in
        // the paused node's socket past the client's timeout) may have bought as well.
        assert!(
            reserved >= per_sku.get(sku).copied().unwrap_or(0),
            "{sku}: an acknowledged order is missing from its owner's figures: {item}"
        );
        assert!(reserved <= STOCK, "{sku} oversold: {item}");
    }
    for node in nodes.iter_mut() {
        let status = node.terminate().await;
        assert_eq!(status.code(), Some(0), "{}", node.stderr());
    }
    schema.drop_schema().await;
}
