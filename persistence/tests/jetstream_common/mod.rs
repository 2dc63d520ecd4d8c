//! Set-up shared by the JetStream journal's process tests (crash, fencing between
//! processes, NATS faults): the cluster's URLs, the options every opener of one prefix must
//! agree on, the child process and its timestamped stdout, the ledger of what a child
//! acknowledged, and the checks an engine recovered from the journal must pass.
//!
//! The ledger and the checks are those of `journal_crash.rs` (the RocksDB crash test), made
//! to run on an engine recovered from JetStream by another node.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::ServerAddr;
use seckill_engine::{
    Clock, Engine, EngineConfig, NullSink, OrderStatus, Ports, PurchaseRequest, Recovery,
};
use seckill_persistence::jetstream::{all_lanes, ClusterOptions, JetStreamJournal, Names};

pub const CHILD: &str = env!("CARGO_BIN_EXE_jetstream-child");
/// The promotion the child sells from (see `src/bin/jetstream-child.rs`).
pub const PROMOTION_ID: &str = "crash";
/// The child's item that never sells out: the checks' own sales buy it.
pub const PLENTY_SKU: &str = "plenty-a";
/// The child's partition count; every opener of its prefix must give the same.
pub const PARTITIONS: u32 = 4;
/// The child's lease TTL, and so every opener's of its prefix (the lease bucket is made with
/// it and refuses another). Short: a killed child's leases lapse after it.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// How long a checker waits for a dead child's leases to lapse. A bound on a hang, not a
/// performance figure.
pub const CHECKER_LEASE_WAIT: Duration = Duration::from_secs(30);
/// A bound on a child's start (connect, leases, replay), against a hang.
pub const READY_WAIT_MAX: Duration = Duration::from_secs(60);

/// The cluster's URLs, or `None` (and a printed line) when the tests have no NATS.
pub fn nats_urls() -> Option<Vec<String>> {
    let urls: Vec<String> = std::env::var("SECKILL_TEST_NATS_URLS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        println!("skipped: SECKILL_TEST_NATS_URLS not set");
        return None;
    }
    Some(urls)
}

/// The seed of a randomized test: `SECKILL_JETSTREAM_SEED`, or a fresh one. Printed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("SECKILL_JETSTREAM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("{test}: seed {seed} (SECKILL_JETSTREAM_SEED={seed} repeats it)");
    seed
}

/// A prefix no other test (or earlier run) uses. Drawn apart from the seed: a repeated seed
/// must not meet the streams of the run it repeats.
pub fn unique_prefix() -> String {
    let prefix = format!("T{:016X}", rand::random::<u64>());
    println!("names under prefix {prefix}");
    prefix
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
}

/// The options of a node on the child's layout (4 partitions, 3 replicas, 2 s leases).
pub fn options(
    urls: &[String],
    prefix: &str,
    node_id: &str,
    lease_wait: Option<Duration>,
) -> ClusterOptions {
    ClusterOptions {
        urls: urls.to_vec(),
        node_id: node_id.to_owned(),
        partitions: Some(PARTITIONS),
        replicas: 3,
        prefix: prefix.to_owned(),
        lease_ttl: LEASE_TTL,
        lease_wait,
        ..ClusterOptions::default()
    }
}

/// Opens the journal (blocking: call it outside any tokio runtime).
pub fn open(options: &ClusterOptions) -> (Arc<JetStreamJournal>, Recovery) {
    match JetStreamJournal::open(options) {
        Ok(opened) => opened,
        Err(error) => panic!(
            "node {} could not open the journal under {}: {error}",
            options.node_id, options.prefix
        ),
    }
}

/// An engine on `journal` without automatic snapshots (the checks take one when they mean
/// to).
pub fn start_engine(
    journal: &Arc<JetStreamJournal>,
    recovery: Recovery,
    clock: Arc<dyn Clock>,
) -> Engine {
    let config = EngineConfig {
        shards: 2,
        snapshot_every_events: 0,
        ..EngineConfig::default()
    };
    let ports = Ports {
        journal: journal.clone(),
        clock,
        sink: Arc::new(NullSink),
    };
    match Engine::start(config, ports, recovery) {
        Ok(engine) => engine,
        Err(error) => panic!("recovery on {} failed: {error}", journal.node_id()),
    }
}

/// Stops `engine`, then hands the journal's leases back so that the next node takes them
/// at once.
pub fn stop_node(
    runtime: &tokio::runtime::Runtime,
    engine: Engine,
    journal: Arc<JetStreamJournal>,
) {
    runtime
        .block_on(engine.shutdown())
        .expect("the engine shuts down");
    drop(engine);
    journal.shutdown();
}

/// A JetStream context of its own, for reading the streams directly.
pub async fn jetstream(urls: &[String]) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(client(urls).await)
}

/// A plain NATS connection to the cluster.
pub async fn client(urls: &[String]) -> async_nats::Client {
    let servers: Vec<ServerAddr> = urls
        .iter()
        .map(|url| url.parse().expect("a NATS URL"))
        .collect();
    async_nats::connect(servers).await.expect("NATS answers")
}

/// Deletes every stream and bucket under `prefix` (after a passing test: a failing one
/// leaves them to look at).
pub fn delete_everything(runtime: &tokio::runtime::Runtime, urls: &[String], prefix: &str) {
    let names = Names::new(prefix);
    let mut streams: Vec<String> = all_lanes(PARTITIONS)
        .into_iter()
        .map(|lane| names.stream(lane))
        .collect();
    streams.push(format!("KV_{}", names.lease_bucket()));
    streams.push(format!("KV_{}", names.meta_bucket()));
    streams.push(format!("OBJ_{}", names.snapshot_bucket()));
    runtime.block_on(async {
        let js = jetstream(urls).await;
        for stream in streams {
            // Best effort: what is left only takes disk space on the test cluster.
            let _ = js.delete_stream(&stream).await;
        }
    });
}

/// One line of a child's stdout and when this process read it.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

/// A running child, killed by its pid when dropped (on every path, panics included).
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    process: Child,
    reaped: bool,
    lines: mpsc::Receiver<Line>,
    /// Every line received so far, in order.
    seen: Vec<Line>,
    reader: Option<JoinHandle<()>>,
}

impl ChildProcess {
    /// Starts `jetstream-child sell` as node `node_id` on `prefix`.
    pub fn sell(urls: &[String], prefix: &str, node_id: &str, seed: u64, round: u64) -> Self {
        let mut process = Command::new(CHILD)
            .arg("sell")
            .arg(urls.join(","))
            .arg(prefix)
            .arg(node_id)
            .arg(seed.to_string())
            .arg(round.to_string())
            .arg(LEASE_TTL.as_millis().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the jetstream child");
        let stdout = process.stdout.take();
        let (tx, lines) = mpsc::channel();
        let reader = stdout.map(|stdout| std::thread::spawn(move || read_lines(stdout, tx)));
        ChildProcess {
            name: node_id.to_owned(),
            process,
            reaped: false,
            lines,
            seen: Vec::new(),
            reader,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Waits up to `timeout` for the line `text`; when it came, if it did.
    pub fn wait_line(&mut self, text: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            // Disconnected: the child is gone, nothing more will come.
            let line = self.lines.recv_timeout(left).ok()?;
            let found = (line.text == text).then_some(line.at);
            self.seen.push(line);
            if found.is_some() {
                return found;
            }
        }
    }

    /// Waits for `READY`; panics, naming the seed, when it does not come.
    pub fn wait_ready(&mut self, seed: u64) -> Instant {
        match self.wait_line("READY", READY_WAIT_MAX) {
            Some(at) => at,
            None => {
                let status = self.process.try_wait();
                panic!(
                    "seed {seed}: {} never became ready within {READY_WAIT_MAX:?} (status {status:?})",
                    self.name
                )
            }
        }
    }

    /// Every line received so far.
    pub fn lines_so_far(&mut self) -> &[Line] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// The child's exit status, if it ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.try_wait().ok().flatten()
    }

    /// Sends `signal` (a name such as `STOP` or `CONT`) to the child. No libc here: the
    /// workspace forbids `unsafe`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// SIGKILLs the child and returns every line it printed. Panics if it had ended on its
    /// own.
    pub fn kill(&mut self, seed: u64) -> Vec<Line> {
        self.process.kill().expect("SIGKILL the child");
        let status = self.process.wait().expect("reap the child");
        self.reaped = true;
        assert_eq!(
            status.signal(),
            Some(9),
            "seed {seed}: {} ended on its own ({status:?}) before the kill",
            self.name
        );
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.lines_so_far();
        std::mem::take(&mut self.seen)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if !self.reaped {
            // SIGKILL ends a stopped process too.
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// Sends every complete line of `stdout` with the moment it was read.
fn read_lines(stdout: ChildStdout, tx: mpsc::Sender<Line>) {
    let mut reader = BufReader::new(stdout);
    let mut text = String::new();
    loop {
        text.clear();
        match reader.read_line(&mut text) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // A line without its newline was cut by the kill: the child never finished saying it.
        let Some(complete) = text.strip_suffix('\n') else {
            return;
        };
        let line = Line {
            at: Instant::now(),
            text: complete.to_owned(),
        };
        if tx.send(line).is_err() {
            return;
        }
    }
}

/// True for a line that tells of an acknowledged write (`P`, `C`, `Y`).
pub fn is_ack(line: &str) -> bool {
    line.starts_with("P ") || line.starts_with("C ") || line.starts_with("Y ")
}

/// What a child acknowledged (or attempted) about one order.
#[derive(Debug, Clone)]
pub struct Acked {
    pub user: String,
    pub sku: String,
    pub quantity: u32,
    pub request_id: String,
    pub cancel_attempted: bool,
    pub cancel_acked: bool,
    pub pay_attempted: Option<String>,
    pub pay_acked: Option<String>,
}

impl Acked {
    /// A purchase of quantity 1, acknowledged and neither cancelled nor paid.
    pub fn purchase(user: &str, sku: &str, request_id: &str) -> Acked {
        Acked {
            user: user.to_owned(),
            sku: sku.to_owned(),
            quantity: 1,
            request_id: request_id.to_owned(),
            cancel_attempted: false,
            cancel_acked: false,
            pay_attempted: None,
            pay_acked: None,
        }
    }
}

/// Everything the children (and the checks) acknowledged, by order id.
#[derive(Debug, Default)]
pub struct Ledger {
    pub orders: BTreeMap<String, Acked>,
    pub purchases_by_round: Vec<usize>,
}

impl Ledger {
    /// Reads one child's lines; returns the purchases among them. A line that does not
    /// parse is skipped, and an acknowledgement for an unknown order is a bug.
    pub fn read(&mut self, lines: &[Line]) -> usize {
        let mut purchases = 0;
        for line in lines {
            let fields: Vec<&str> = line.text.split(' ').collect();
            match fields.as_slice() {
                ["P", id, user, sku, quantity, request_id] => {
                    let Ok(quantity) = quantity.parse() else {
                        continue;
                    };
                    purchases += 1;
                    self.orders.insert(
                        (*id).to_owned(),
                        Acked {
                            quantity,
                            ..Acked::purchase(user, sku, request_id)
                        },
                    );
                }
                ["c", id] => self.order(id).cancel_attempted = true,
                ["C", id] => self.order(id).cancel_acked = true,
                ["y", id, payment_ref] => {
                    self.order(id).pay_attempted = Some((*payment_ref).into())
                }
                ["Y", id, payment_ref] => self.order(id).pay_acked = Some((*payment_ref).into()),
                _ => {}
            }
        }
        self.purchases_by_round.push(purchases);
        purchases
    }

    fn order(&mut self, id: &str) -> &mut Acked {
        self.orders
            .get_mut(id)
            .unwrap_or_else(|| panic!("a child acted on order {id} it never acknowledged"))
    }
}

/// Opens the journal as `node_id` (waiting for a dead child's leases to lapse), checks
/// everything in `ledger` on an engine recovered from it (see [`verify`]), then stops and
/// hands the leases back at once.
pub fn check_reopened(
    runtime: &tokio::runtime::Runtime,
    urls: &[String],
    prefix: &str,
    node_id: &str,
    ledger: &mut Ledger,
    seed: u64,
    round: u64,
) {
    let started = Instant::now();
    let (journal, recovery) = open(&options(urls, prefix, node_id, Some(CHECKER_LEASE_WAIT)));
    let opened_in = started.elapsed();
    let engine = start_engine(&journal, recovery, Arc::new(seckill_engine::SystemClock));
    runtime.block_on(verify(&engine, ledger, seed, round));
    stop_node(runtime, engine, journal);
    println!(
        "  {node_id}: took the leases over in {opened_in:?}, {} acknowledged orders checked",
        ledger.orders.len()
    );
}

/// Checks on a recovered engine everything the ledger holds: every acknowledged order is
/// there in its acknowledged state (or a later one that was at least attempted, or an
/// expiry), the stock adds up, nobody is over the per-user limit, a repeated request id
/// finds its order, and the engine keeps selling (that sale joins the ledger).
pub async fn verify(engine: &Engine, ledger: &mut Ledger, seed: u64, round: u64) {
    let checked_at_ms = engine.now_ms();
    engine.tick().await.expect("expiry pass");

    for (order_id, acked) in &ledger.orders {
        let context = format!("seed {seed} round {round} order {order_id}");
        let order = match engine.order(order_id, None).await {
            Ok(order) => order,
            Err(error) => panic!("{context}: acknowledged order lost ({error})"),
        };
        assert_eq!(order.user_id, acked.user, "{context}");
        assert_eq!(order.sku, acked.sku, "{context}");
        assert_eq!(order.quantity, acked.quantity, "{context}");
        assert_eq!(order.request_id, acked.request_id, "{context}");
        match order.status {
            OrderStatus::Paid => {
                assert!(!acked.cancel_acked, "{context}: acknowledged cancel lost");
                let attempted = acked.pay_attempted.as_deref();
                assert!(attempted.is_some(), "{context}: paid without a payment");
                assert_eq!(order.payment_ref.as_deref(), attempted, "{context}");
            }
            OrderStatus::Cancelled => {
                assert!(
                    acked.pay_acked.is_none(),
                    "{context}: acknowledged payment lost"
                );
                assert!(
                    acked.cancel_attempted,
                    "{context}: cancelled without a cancel"
                );
            }
            OrderStatus::Expired => {
                assert!(
                    acked.pay_acked.is_none(),
                    "{context}: acknowledged payment lost"
                );
                assert!(!acked.cancel_acked, "{context}: acknowledged cancel lost");
                // The shards may expire it after `checked_at_ms` was read, so the engine's
                // own stamp and the clock now are what bound it.
                let closed_at_ms = order.closed_at_ms.unwrap_or(i64::MIN);
                assert!(
                    order.pay_before_ms <= closed_at_ms && closed_at_ms <= engine.now_ms(),
                    "{context}: expired before its deadline: {order:?}"
                );
            }
            OrderStatus::PendingPayment => {
                assert!(
                    acked.pay_acked.is_none(),
                    "{context}: acknowledged payment lost"
                );
                assert!(!acked.cancel_acked, "{context}: acknowledged cancel lost");
                assert!(
                    order.pay_before_ms > checked_at_ms,
                    "{context}: still pending after its deadline"
                );
            }
        }
    }

    let context = format!("seed {seed} round {round}");
    check_stock_and_limits(engine, PROMOTION_ID, &context).await;

    // A repeated request id answers its original order, whatever happened to it since.
    for (order_id, acked) in ledger.orders.iter().rev().take(20) {
        let again = engine
            .purchase(
                PROMOTION_ID,
                &acked.sku,
                &acked.user,
                PurchaseRequest {
                    request_id: acked.request_id.clone(),
                    quantity: acked.quantity,
                    token: None,
                },
            )
            .await;
        match again {
            Ok(bought) => {
                assert!(!bought.created, "{context}: {order_id} bought twice");
                assert_eq!(&bought.order.order_id, order_id, "{context}");
            }
            Err(error) => panic!("{context}: repeat of {order_id}: {error}"),
        }
    }

    // The engine keeps selling after the takeover, and what it sells here is checked by the
    // next check like the children's orders.
    let user = format!("verifier-{round}");
    let request_id = format!("verify-{round}");
    let bought = engine
        .purchase(
            PROMOTION_ID,
            PLENTY_SKU,
            &user,
            PurchaseRequest {
                request_id: request_id.clone(),
                quantity: 1,
                token: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{context}: no sale after the takeover: {e}"));
    assert!(bought.created, "{context}");
    let payment_ref = format!("pay-verify-{round}");
    let paid = engine
        .pay(&bought.order.order_id, &payment_ref, None)
        .await
        .unwrap_or_else(|e| panic!("{context}: no payment after the takeover: {e}"));
    assert_eq!(paid.status, OrderStatus::Paid, "{context}");
    ledger.orders.insert(
        bought.order.order_id.clone(),
        Acked {
            pay_attempted: Some(payment_ref.clone()),
            pay_acked: Some(payment_ref),
            ..Acked::purchase(&user, PLENTY_SKU, &request_id)
        },
    );
    check_stock_and_limits(engine, PROMOTION_ID, &context).await;
}

/// Stock adds up per item and from the orders, and nobody is over the per-user limit.
/// Takes a snapshot (the image is what lists the orders).
pub async fn check_stock_and_limits(engine: &Engine, promotion_id: &str, context: &str) {
    let stats = engine
        .promotion_stats(promotion_id)
        .await
        .unwrap_or_else(|e| panic!("{context}: the promotion is gone: {e}"));
    for item in &stats.items {
        assert_eq!(
            item.remaining + item.reserved + item.sold,
            item.stock,
            "{context}: stock of {} does not add up",
            item.sku
        );
    }
    let image = engine
        .snapshot()
        .await
        .unwrap_or_else(|e| panic!("{context}: snapshot: {e}"));
    for item in image
        .items
        .iter()
        .filter(|i| i.promotion_id == promotion_id)
    {
        let sku = &item.item.sku;
        let mut reserved = 0u64;
        let mut sold = 0u64;
        let mut live_by_user: HashMap<&str, u32> = HashMap::new();
        let mut order_ids = BTreeSet::new();
        for order in item.orders.iter() {
            assert!(
                order_ids.insert(&order.order_id),
                "{context}: duplicate order id {}",
                order.order_id
            );
            match order.status {
                OrderStatus::PendingPayment => reserved += u64::from(order.quantity),
                OrderStatus::Paid => sold += u64::from(order.quantity),
                OrderStatus::Cancelled | OrderStatus::Expired => {}
            }
            if order.status.is_live() {
                *live_by_user.entry(&order.user_id).or_default() += order.quantity;
            }
        }
        assert_eq!(item.reserved, reserved, "{context}: {sku} reserved");
        assert_eq!(item.sold, sold, "{context}: {sku} sold");
        assert_eq!(
            item.remaining + reserved + sold,
            item.item.stock,
            "{context}: {sku} oversold or lost stock"
        );
        for (user, quantity) in live_by_user {
            assert!(
                quantity <= item.item.per_user_limit,
                "{context}: {user} holds {quantity} of {sku}"
            );
        }
    }
}

/// A cluster engine on `journal` (its journal and its ownership) over the journal's catalog
/// log, started from `catalog`: two shards, no snapshots.
pub fn cluster_engine(
    journal: &Arc<seckill_persistence::jetstream::PartitionJournal>,
    catalog: Recovery,
    clock: &Arc<seckill_engine::ManualClock>,
) -> Engine {
    let catalog_log: Arc<dyn seckill_engine::CatalogLog> = journal.catalog_log();
    let ports = Ports {
        journal: journal.clone(),
        clock: clock.clone(),
        sink: Arc::new(NullSink),
    };
    let cluster = seckill_engine::ClusterPorts {
        ownership: journal.clone(),
        catalog_log: Some(catalog_log),
    };
    let config = EngineConfig {
        shards: 2,
        snapshot_every_events: 0,
        ..EngineConfig::default()
    };
    Engine::start_cluster(config, ports, cluster, catalog).expect("starts")
}

/// Promotion "sale", live from `t0_ms` for an hour: `skus`, each `stock` units, one a
/// shopper.
pub fn sale_spec(skus: &[String], stock: u64, t0_ms: i64) -> seckill_engine::PromotionSpec {
    seckill_engine::PromotionSpec {
        guard: Default::default(),
        id: Some("sale".into()),
        name: "sale".into(),
        starts_at_ms: t0_ms,
        ends_at_ms: t0_ms + 3_600_000,
        payment_timeout_s: 900,
        require_token: false,
        token_multiplier: 5,
        items: skus
            .iter()
            .map(|sku| seckill_engine::ItemSpec {
                sku: sku.clone(),
                title: None,
                stock,
                price_cents: 100,
                per_user_limit: 1,
            })
            .collect(),
    }
}
