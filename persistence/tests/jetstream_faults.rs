//! The journal on JetStream through NATS server failures, on a three-server cluster of its
//! own (`.ci/nats-cluster start` on ports 15222-15224, so that killing servers disturbs no
//! other test). An engine in this process sells from several tasks the whole time:
//!
//! (i) one server SIGKILLed mid-sale: sales go on, after at most an election's pause;
//! (ii) every server stopped: purchases answer "unavailable" or "outcome unknown" within a
//! bound, reads (an order, the stats) answer from memory, nothing is acknowledged;
//! (iii) every server started again: the same engine sells again by itself, no restart.
//!
//! Then another node recovers the journal: every acknowledged order is there and the stock
//! adds up. Prints the figures it sees. Needs `SECKILL_TEST_NATS_URLS` (the sign that the
//! NATS tests are on and `.ci/nats-cluster bin` is installed); skipped without it.

mod jetstream_common;
mod nats_script;

use std::fs::OpenOptions;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jetstream_common::{check_stock_and_limits, open, runtime, seed, start_engine, stop_node};
use nats_script::{assert_ports_free, script, stop_quietly};
use seckill_engine::{
    Engine, Error as EngineError, ItemSpec, PromotionSpec, PurchaseRequest, SystemClock,
};
use seckill_persistence::jetstream::ClusterOptions;

/// Clients on 15222-15224, routes on 15232-15234, monitoring on 15242-15244.
const BASE_PORT: u16 = 15222;
const SERVERS: usize = 3;
const PARTITIONS: u32 = 3;
const PROMOTION: &str = "faults";
/// Several items, so that the sales touch every partition.
const SKUS: [&str; 6] = ["f0", "f1", "f2", "f3", "f4", "f5"];
const STOCK: u64 = 1_000_000;
/// Each task buys for a small set of shoppers, each of whom never reaches the limit.
const USERS_PER_TASK: u64 = 100;
const PER_USER_LIMIT: u32 = 1_000_000;
const SHOPPERS: usize = 8;
/// A shopper's pause after an error, so that a refusing engine is not spun on.
const ERROR_PAUSE: Duration = Duration::from_millis(20);
/// The steady sale measured before any fault.
const BEFORE: Duration = Duration::from_secs(5);
/// The window after the SIGKILL of one server in which sales must go on.
const AFTER_KILL: Duration = Duration::from_secs(20);
/// The longest stretch without an acknowledgement that one leader election may cause.
const GAP_MAX: Duration = Duration::from_secs(15);
/// A bound on any single answer of the engine while NATS is down or coming back.
const ANSWER_MAX: Duration = Duration::from_secs(10);
const PROBES_DOWN: usize = 3;
/// The outage lasts at least this: longer than the lease TTL, so the leases lapse in it.
const OUTAGE_MIN: Duration = Duration::from_secs(10);
/// An acknowledgement whose answer left the servers just before they stopped may reach its
/// caller this much later.
const IN_FLIGHT_SLACK: Duration = Duration::from_secs(1);
/// After every server is back, sales must resume within this.
const RECOVERY_MAX: Duration = Duration::from_secs(60);
/// How long a restarted server may take to catch up before the test goes on anyway.
const HEALTHY_WAIT_MAX: Duration = Duration::from_secs(30);
/// The sale measured after recovery.
const AFTER: Duration = Duration::from_secs(5);

#[test]
fn the_journal_rides_out_nats_server_failures() {
    if jetstream_common::nats_urls().is_none() {
        return;
    }
    // RUST_LOG=seckill_persistence=warn shows what the journal went through.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let seed = seed("nats faults");
    let mut cluster = Cluster::start();
    println!("own cluster: {}", cluster.urls.join(","));
    let prefix = jetstream_common::unique_prefix();
    let runtime = runtime();
    let options = cluster_options(&cluster.urls, &prefix, "faults-1");
    println!(
        "lease ttl {:?}, append patience {:?}",
        options.lease_ttl, options.append_patience
    );
    let (journal, recovery) = open(&options);
    let engine = start_engine(&journal, recovery, Arc::new(SystemClock));
    runtime
        .block_on(engine.create_promotion(promotion(engine.now_ms())))
        .expect("the promotion is created");

    let tally = Arc::new(Mutex::new(Vec::<Sale>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let shoppers: Vec<_> = (0..SHOPPERS)
        .map(|task| {
            runtime.spawn(shop(
                engine.clone(),
                task,
                Arc::clone(&stop),
                Arc::clone(&tally),
            ))
        })
        .collect();

    let started = Instant::now();
    std::thread::sleep(BEFORE);
    let before = acks_between(&tally, started, Instant::now()).len();
    println!(
        "before any fault: {:.0} acks/s",
        before as f64 / BEFORE.as_secs_f64()
    );
    assert!(before > 0, "seed {seed}: nothing sold before any fault");

    one_server_killed(&mut cluster, &tally, seed);
    let reference = last_sale(&tally).expect("a sale before the outage");
    every_server_stopped(&mut cluster, &runtime, &engine, &tally, &reference, seed);
    every_server_back(&mut cluster, &runtime, &engine, &tally, seed);

    stop.store(true, Ordering::Relaxed);
    for shopper in shoppers {
        runtime
            .block_on(async { tokio::time::timeout(ANSWER_MAX * 3, shopper).await })
            .expect("a shopper stops")
            .expect("a shopper task");
    }
    stop_node(&runtime, engine, journal);
    let sales = std::mem::take(&mut *lock(&tally));
    recovered_by_another_node(&cluster, &runtime, &prefix, &sales, seed);
    drop(cluster);
}

/// (i) SIGKILLs one server mid-sale: sales go on (at most one election's pause), then the
/// server is started again.
fn one_server_killed(cluster: &mut Cluster, tally: &Mutex<Vec<Sale>>, seed: u64) {
    let victim = (seed % SERVERS as u64) as usize;
    let killed_at = Instant::now();
    cluster.kill(victim);
    std::thread::sleep(AFTER_KILL);
    let acks = acks_between(tally, killed_at, killed_at + AFTER_KILL);
    let gap = longest_gap(killed_at, killed_at + AFTER_KILL, &acks);
    println!(
        "(i) s{victim} SIGKILLed: {} acks in the {AFTER_KILL:?} after, longest gap {gap:?}",
        acks.len()
    );
    assert!(
        !acks.is_empty(),
        "seed {seed}: nothing sold in the {AFTER_KILL:?} after s{victim} died"
    );
    assert!(
        gap <= GAP_MAX,
        "seed {seed}: {gap:?} without a sale after s{victim} died (at most {GAP_MAX:?})"
    );
    let restarted_at = Instant::now();
    cluster.restart(victim);
    if cluster.wait_healthy(victim, HEALTHY_WAIT_MAX) {
        println!(
            "    s{victim} back and healthy in {:?}",
            restarted_at.elapsed()
        );
    } else {
        println!("    s{victim} back, not healthy within {HEALTHY_WAIT_MAX:?}; going on");
    }
}

/// (ii) Stops every server: purchases are refused or of unknown outcome within a bound,
/// reads answer, nothing is acknowledged.
fn every_server_stopped(
    cluster: &mut Cluster,
    runtime: &tokio::runtime::Runtime,
    engine: &Engine,
    tally: &Mutex<Vec<Sale>>,
    reference: &Sale,
    seed: u64,
) {
    cluster.stop_all();
    let outage_at = Instant::now();
    for probe in 0..PROBES_DOWN {
        let asked_at = Instant::now();
        let answer = runtime.block_on(async {
            tokio::time::timeout(
                ANSWER_MAX,
                engine.purchase(
                    PROMOTION,
                    SKUS[0],
                    "prober",
                    request(format!("probe-down-{probe}")),
                ),
            )
            .await
        });
        match answer {
            Ok(Err(error @ (EngineError::Unavailable(_) | EngineError::OutcomeUnknown))) => {
                println!("(ii) purchase {probe} with NATS down: {error} ({:?})", asked_at.elapsed());
            }
            Ok(other) => panic!("seed {seed}: a purchase with every NATS server down answered {other:?}"),
            Err(_) => panic!("seed {seed}: a purchase with every NATS server down did not answer within {ANSWER_MAX:?}"),
        }
    }
    let order = runtime
        .block_on(async {
            tokio::time::timeout(ANSWER_MAX, engine.order(&reference.order_id, None)).await
        })
        .unwrap_or_else(|_| panic!("seed {seed}: an order read hung with NATS down"))
        .unwrap_or_else(|e| panic!("seed {seed}: an order read failed with NATS down: {e}"));
    assert_eq!(order.user_id, reference.user, "seed {seed}");
    let stats = runtime
        .block_on(async {
            tokio::time::timeout(ANSWER_MAX, engine.promotion_stats(PROMOTION)).await
        })
        .unwrap_or_else(|_| panic!("seed {seed}: the stats hung with NATS down"))
        .unwrap_or_else(|e| panic!("seed {seed}: the stats failed with NATS down: {e}"));
    for item in &stats.items {
        assert_eq!(
            item.remaining + item.reserved + item.sold,
            item.stock,
            "seed {seed}: {}",
            item.sku
        );
    }
    println!(
        "    reads answer with NATS down: order {} and the stats",
        order.order_id
    );
    if let Some(left) = (outage_at + OUTAGE_MIN).checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
    let acknowledged = acks_between(tally, outage_at + IN_FLIGHT_SLACK, Instant::now());
    assert!(
        acknowledged.is_empty(),
        "seed {seed}: {} purchases acknowledged with every NATS server down",
        acknowledged.len()
    );
}

/// (iii) Starts every server again: the same engine sells again within a bound.
fn every_server_back(
    cluster: &mut Cluster,
    runtime: &tokio::runtime::Runtime,
    engine: &Engine,
    tally: &Mutex<Vec<Sale>>,
    seed: u64,
) {
    for n in 0..SERVERS {
        cluster.restart(n);
    }
    let back_at = Instant::now();
    let deadline = back_at + RECOVERY_MAX;
    for probe in 0u64.. {
        let request_id = format!("probe-up-{probe}");
        let answer = runtime.block_on(async {
            tokio::time::timeout(
                ANSWER_MAX,
                engine.purchase(PROMOTION, SKUS[0], "prober", request(request_id)),
            )
            .await
        });
        match answer {
            Ok(Ok(bought)) => {
                record(tally, bought.order.order_id, "prober", SKUS[0]);
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "seed {seed}: no purchase succeeded within {RECOVERY_MAX:?} of every server's restart (last answer {other:?})"
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let first = acks_between(tally, back_at, Instant::now())
        .first()
        .map(|at| *at - back_at);
    println!("(iii) every server started again: first ack after {first:?}");
    let measured_from = Instant::now();
    std::thread::sleep(AFTER);
    let after = acks_between(tally, measured_from, Instant::now()).len();
    println!(
        "    after recovery: {:.0} acks/s",
        after as f64 / AFTER.as_secs_f64()
    );
}

/// Another node takes the journal over: every acknowledged order is there, and the stock
/// adds up.
fn recovered_by_another_node(
    cluster: &Cluster,
    runtime: &tokio::runtime::Runtime,
    prefix: &str,
    sales: &[Sale],
    seed: u64,
) {
    let started = Instant::now();
    let (journal, recovery) = open(&cluster_options(&cluster.urls, prefix, "faults-2"));
    let engine = start_engine(&journal, recovery, Arc::new(SystemClock));
    println!(
        "recovered by faults-2 in {:?}; checking {} acknowledged orders",
        started.elapsed(),
        sales.len()
    );
    runtime.block_on(async {
        for sale in sales {
            let order = engine
                .order(&sale.order_id, None)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "seed {seed}: acknowledged order {} lost: {e}",
                        sale.order_id
                    )
                });
            assert_eq!(order.user_id, sale.user, "seed {seed}: {}", sale.order_id);
            assert_eq!(order.sku, sale.sku, "seed {seed}: {}", sale.order_id);
        }
        let context = format!("seed {seed}: after the faults");
        check_stock_and_limits(&engine, PROMOTION, &context).await;
        let stats = engine
            .promotion_stats(PROMOTION)
            .await
            .expect("the promotion survives");
        let held: u64 = stats.items.iter().map(|i| i.reserved + i.sold).sum();
        // Purchases whose outcome was unknown may have landed too: at least, not equal.
        assert!(
            held >= sales.len() as u64,
            "{context}: {held} units held for {} acknowledged orders",
            sales.len()
        );
    });
    stop_node(runtime, engine, journal);
}

fn cluster_options(urls: &[String], prefix: &str, node_id: &str) -> ClusterOptions {
    ClusterOptions {
        urls: urls.to_vec(),
        node_id: node_id.to_owned(),
        partitions: Some(PARTITIONS),
        replicas: SERVERS,
        prefix: prefix.to_owned(),
        lease_wait: Some(jetstream_common::CHECKER_LEASE_WAIT),
        ..ClusterOptions::default()
    }
}

fn promotion(now_ms: i64) -> PromotionSpec {
    PromotionSpec {
        guard: Default::default(),
        id: Some(PROMOTION.into()),
        name: "nats faults".into(),
        starts_at_ms: now_ms - 1_000,
        ends_at_ms: now_ms + 3_600_000,
        // Longer than the test: every acknowledged order is still pending at the end.
        payment_timeout_s: 3_600,
        require_token: false,
        token_multiplier: 1,
        items: SKUS
            .iter()
            .map(|sku| ItemSpec {
                sku: (*sku).into(),
                title: None,
                stock: STOCK,
                price_cents: 100,
                per_user_limit: PER_USER_LIMIT,
            })
            .collect(),
    }
}

fn request(request_id: String) -> PurchaseRequest {
    PurchaseRequest {
        request_id,
        quantity: 1,
        token: None,
    }
}

/// An acknowledged purchase and when its answer came.
#[derive(Debug, Clone)]
struct Sale {
    order_id: String,
    user: String,
    sku: String,
    at: Instant,
}

fn lock(tally: &Mutex<Vec<Sale>>) -> std::sync::MutexGuard<'_, Vec<Sale>> {
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

fn record(tally: &Mutex<Vec<Sale>>, order_id: String, user: &str, sku: &str) {
    let sale = Sale {
        order_id,
        user: user.to_owned(),
        sku: sku.to_owned(),
        at: Instant::now(),
    };
    lock(tally).push(sale);
}

fn last_sale(tally: &Mutex<Vec<Sale>>) -> Option<Sale> {
    lock(tally).iter().max_by_key(|sale| sale.at).cloned()
}

/// When the acknowledgements between `from` and `to` came, in order.
fn acks_between(tally: &Mutex<Vec<Sale>>, from: Instant, to: Instant) -> Vec<Instant> {
    let mut acks: Vec<Instant> = lock(tally)
        .iter()
        .map(|sale| sale.at)
        .filter(|at| *at >= from && *at <= to)
        .collect();
    acks.sort();
    acks
}

/// The longest stretch of `from..to` without an acknowledgement.
fn longest_gap(from: Instant, to: Instant, acks: &[Instant]) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for &at in acks {
        longest = longest.max(at - last);
        last = at;
    }
    longest.max(to.saturating_duration_since(last))
}

/// One shopper: buys one unit after another until `stop`, recording what was acknowledged.
async fn shop(engine: Engine, task: usize, stop: Arc<AtomicBool>, tally: Arc<Mutex<Vec<Sale>>>) {
    let mut attempt = 0u64;
    while !stop.load(Ordering::Relaxed) {
        attempt += 1;
        let sku = SKUS[(attempt as usize + task) % SKUS.len()];
        let user = format!("w{task}-{}", attempt % USERS_PER_TASK);
        let answer = engine
            .purchase(PROMOTION, sku, &user, request(format!("w{task}-{attempt}")))
            .await;
        match answer {
            Ok(bought) if bought.created => record(&tally, bought.order.order_id, &user, sku),
            Ok(_) => {}
            Err(_) => tokio::time::sleep(ERROR_PAUSE).await,
        }
    }
}

/// The test's own NATS cluster, stopped (every server, by pid) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    /// The nats-server binary (`.ci/nats-cluster bin`).
    bin: String,
    urls: Vec<String>,
    servers: Vec<Server>,
}

/// One server: its pid, and its process handle when this test started it.
struct Server {
    pid: u32,
    own: Option<Child>,
}

impl Cluster {
    fn start() -> Cluster {
        assert_ports_free(BASE_PORT);
        let bin = script(BASE_PORT, "bin", None);
        let mut cluster = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            bin,
            urls: Vec::new(),
            servers: Vec::new(),
        };
        // The guard exists before the servers do: a failure from here on stops them.
        let urls = script(BASE_PORT, "start", Some(cluster.dir.path()));
        cluster.urls = urls.split(',').map(str::to_owned).collect();
        for n in 0..SERVERS {
            let pid = std::fs::read_to_string(cluster.pid_file(n))
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or_else(|| panic!("no pid in {}", cluster.pid_file(n).display()));
            cluster.servers.push(Server { pid, own: None });
        }
        cluster
    }

    fn pid_file(&self, n: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("s{n}.pid"))
    }

    /// SIGKILLs server `n` and waits until it is gone.
    fn kill(&mut self, n: usize) {
        signal(self.servers[n].pid, "KILL");
        assert!(
            self.servers[n].wait_exit(Duration::from_secs(10)),
            "s{n} outlived SIGKILL"
        );
        assert_port_closed(n);
    }

    /// SIGTERMs every server and waits until all are gone.
    fn stop_all(&mut self) {
        for server in &self.servers {
            signal(server.pid, "TERM");
        }
        for (n, server) in self.servers.iter_mut().enumerate() {
            if !server.wait_exit(Duration::from_secs(20)) {
                println!("    s{n} ignored SIGTERM for 20 s; SIGKILL");
                signal(server.pid, "KILL");
                assert!(
                    server.wait_exit(Duration::from_secs(10)),
                    "s{n} outlived SIGKILL"
                );
            }
        }
        for n in 0..SERVERS {
            assert_port_closed(n);
        }
    }

    /// Starts server `n` again on its configuration and store, as the script did.
    fn restart(&mut self, n: usize) {
        let dir = self.dir.path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("s{n}.log")))
            .expect("the server's log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(dir.join(format!("s{n}.conf")))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("the server's log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start nats-server");
        let pid = child.id();
        // The script's `stop` kills by these files: keep them true.
        std::fs::write(self.pid_file(n), pid.to_string()).expect("the pid file");
        self.servers[n] = Server {
            pid,
            own: Some(child),
        };
    }

    /// Waits until server `n`'s monitoring port says it is healthy (caught up).
    fn wait_healthy(&self, n: usize, within: Duration) -> bool {
        let url = format!("http://127.0.0.1:{}/healthz", BASE_PORT + 20 + n as u16);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let healthy = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "--max-time", "2"])
                .arg(&url)
                .status()
                .is_ok_and(|status| status.success());
            if healthy {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(child) = server.own.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        stop_quietly(BASE_PORT, self.dir.path());
    }
}

impl Server {
    /// Waits up to `within` until the process is gone (or a zombie: reaped here if ours).
    fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if !is_running(self.pid) {
                if let Some(mut child) = self.own.take() {
                    let _ = child.wait();
                }
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// True while `pid` runs: a zombie has ended (the script's servers are not our children,
/// and whoever adopted them may reap late).
fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`: comm may hold spaces and parentheses, the state follows the
    // last `)`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

/// Server `n`'s client port stops answering once its pid is gone; if it does not, the pid
/// was not the server's (a wrapper), and the faults would not be what this test says.
fn assert_port_closed(n: usize) {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], BASE_PORT + n as u16));
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "s{n} still answers on {address} after its pid ended: is s{n}.pid the server's?"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `signal` (a name such as `KILL` or `TERM`) to `pid`. No libc: the workspace forbids
/// `unsafe`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}
