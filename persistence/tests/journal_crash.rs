//! The crash test: a child process sells on a RocksJournal and is SIGKILLed at random
//! points; after every kill the directory is reopened here and checked.
//!
//! Checked after each kill: every acknowledged order is there in its acknowledged state (or
//! a later one the child at least attempted, or an expiry), remaining + reserved + sold ==
//! stock for every item and matches the orders, no user holds more than the per-user limit,
//! a repeated request id finds its order, and the engine keeps selling. A failing run prints
//! its seed; `SECKILL_CRASH_SEED=<seed>` repeats its kill points and workloads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seckill_engine::{
    Clock, Engine, EngineConfig, ManualClock, NullSink, OrderStatus, Ports, PurchaseRequest,
    Recovery, SystemClock,
};
use seckill_persistence::journal::{Durability, JournalOptions, PersistenceError, RocksJournal};

const CHILD: &str = env!("CARGO_BIN_EXE_journal-crash-child");
const PROMOTION_ID: &str = "crash";
const KILLS: u64 = 6;
/// Only a guard against a hung child, never a performance assertion.
const READY_WAIT_MAX: Duration = Duration::from_secs(120);

/// What the child acknowledged (or attempted) about one order.
#[derive(Debug, Clone)]
struct Acked {
    user: String,
    sku: String,
    quantity: u32,
    request_id: String,
    cancel_attempted: bool,
    cancel_acked: bool,
    pay_attempted: Option<String>,
    pay_acked: Option<String>,
}

#[derive(Debug, Default)]
struct Ledger {
    orders: BTreeMap<String, Acked>,
    purchases_by_round: Vec<usize>,
}

impl Ledger {
    /// Reads the child's lines. Only the very last line can be torn by the kill; a line that
    /// does not parse is skipped, and an acknowledgement for an unknown order is a bug.
    fn read(&mut self, lines: &[String]) {
        let mut purchases = 0;
        for line in lines {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["P", id, user, sku, quantity, request_id] => {
                    let Ok(quantity) = quantity.parse() else {
                        continue;
                    };
                    purchases += 1;
                    self.orders.insert(
                        (*id).to_owned(),
                        Acked {
                            user: (*user).to_owned(),
                            sku: (*sku).to_owned(),
                            quantity,
                            request_id: (*request_id).to_owned(),
                            cancel_attempted: false,
                            cancel_acked: false,
                            pay_attempted: None,
                            pay_acked: None,
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
    }

    fn order(&mut self, id: &str) -> &mut Acked {
        self.orders
            .get_mut(id)
            .unwrap_or_else(|| panic!("the child acted on order {id} it never acknowledged"))
    }
}

/// A running child and the thread collecting its stdout.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: JoinHandle<Vec<String>>,
}

fn spawn_child(data_dir: &Path, seed: u64, round: u64, durability: Durability) -> Running {
    let mut child = Command::new(CHILD)
        .arg(data_dir)
        .arg(seed.to_string())
        .arg(round.to_string())
        .arg(durability.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the crash child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    Running {
        child,
        lines: rx,
        reader,
    }
}

fn wait_ready(running: &mut Running, seed: u64) {
    loop {
        match running.lines.recv_timeout(READY_WAIT_MAX) {
            Ok(line) if line == "READY" => return,
            Ok(_) => continue,
            Err(_) => {
                let status = running.child.try_wait();
                panic!("seed {seed}: the child never became ready (status {status:?})");
            }
        }
    }
}

fn open_retrying(data_dir: &Path) -> (Arc<RocksJournal>, Recovery) {
    let options = JournalOptions {
        data_dir: data_dir.to_path_buf(),
        ..JournalOptions::default()
    };
    for _ in 0..400 {
        match RocksJournal::open(&options) {
            Ok(opened) => return opened,
            // The killed child's lock goes with its process; give the kernel a moment.
            Err(PersistenceError::Locked { .. }) => std::thread::sleep(Duration::from_millis(25)),
            Err(error) => panic!("reopening after a kill failed: {error}"),
        }
    }
    panic!("the data directory stayed locked after the child was killed");
}

#[test]
fn acknowledged_orders_survive_sigkill() {
    let seed = std::env::var("SECKILL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("crash test seed: {seed} (SECKILL_CRASH_SEED={seed} repeats it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let mut ledger = Ledger::default();

    for round in 0..KILLS {
        // Async mode also loses nothing to a killed process (its writes are in the kernel);
        // every third round runs it to check exactly that.
        let durability = if round % 3 == 2 {
            Durability::Async
        } else {
            Durability::Sync
        };
        let mut running = spawn_child(&data_dir, seed, round, durability);
        wait_ready(&mut running, seed);

        // Two writers are never allowed: the running child holds the directory.
        match RocksJournal::open(&JournalOptions {
            data_dir: data_dir.clone(),
            ..JournalOptions::default()
        }) {
            Err(PersistenceError::Locked { .. }) => {}
            other => panic!("seed {seed}: a second opener was not refused: {other:?}"),
        }

        std::thread::sleep(Duration::from_millis(rng.random_range(30..900)));
        running.child.kill().expect("SIGKILL the child");
        let status = running.child.wait().expect("reap the child");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "seed {seed}: the child ended on its own ({status:?}) before the kill"
        );
        let lines = running.reader.join().expect("reader thread");
        ledger.read(&lines);
        println!(
            "round {round} ({durability}): {} acknowledged purchases",
            ledger.purchases_by_round[round as usize]
        );

        let (journal, recovery) = open_retrying(&data_dir);
        println!(
            "  reopened: snapshot through {:?}, log trimmed through {}, last batch {}",
            recovery.image.as_ref().map(|image| image.through_seq),
            journal.trimmed_through(),
            journal.stats().last_seq
        );
        runtime.block_on(verify(&journal, recovery, &mut ledger, seed, round));
        drop(journal);
    }
    let total: usize = ledger.purchases_by_round.iter().sum();
    assert!(
        total > 0,
        "seed {seed}: no purchase was acknowledged in {KILLS} rounds"
    );

    // Down past every payment deadline: the restart expires the pending orders at once and
    // gives their stock back...
    let later_ms = SystemClock.now_ms() + 11_000;
    let (journal, recovery) = open_retrying(&data_dir);
    let expired = runtime.block_on(expire_all(journal, recovery, later_ms, &ledger, true));
    println!("after the deadlines: {expired} acknowledged orders expired");
    // ...and the expiries are journaled: a restart on a clock before every deadline, which
    // expires nothing itself, still finds them.
    let (journal, recovery) = open_retrying(&data_dir);
    let again = runtime.block_on(expire_all(journal, recovery, 1, &ledger, false));
    assert_eq!(again, expired, "seed {seed}: expiries were not durable");
}

/// Restarts on a clock at `now_ms` (running the expiry pass if `tick`) and checks that no
/// acknowledged order is pending and no stock is reserved. Returns the number of expired
/// acknowledged orders.
async fn expire_all(
    journal: Arc<RocksJournal>,
    recovery: Recovery,
    now_ms: i64,
    ledger: &Ledger,
    tick: bool,
) -> usize {
    let ports = Ports {
        journal,
        clock: ManualClock::new(now_ms),
        sink: Arc::new(NullSink),
    };
    let config = EngineConfig {
        shards: 2,
        snapshot_every_events: 0,
        ..EngineConfig::default()
    };
    let engine = Engine::start(config, ports, recovery).expect("recovery");
    if tick {
        engine.tick().await.expect("expiry pass");
    }
    let mut expired = 0;
    for order_id in ledger.orders.keys() {
        let order = engine.order(order_id, None).await.expect("order survives");
        assert_ne!(
            order.status,
            OrderStatus::PendingPayment,
            "{order_id} outlived its deadline"
        );
        if order.status == OrderStatus::Expired {
            expired += 1;
        }
    }
    let stats = engine.promotion_stats(PROMOTION_ID).await.expect("stats");
    for item in &stats.items {
        assert_eq!(
            item.reserved, 0,
            "{} still holds stock for dead orders",
            item.sku
        );
        assert_eq!(item.remaining + item.sold, item.stock, "{}", item.sku);
    }
    engine.shutdown().await.expect("shutdown");
    expired
}

/// Restarts an engine on the directory and checks everything the child acknowledged.
async fn verify(
    journal: &Arc<RocksJournal>,
    recovery: Recovery,
    ledger: &mut Ledger,
    seed: u64,
    round: u64,
) {
    let config = EngineConfig {
        shards: 2,
        // No snapshot thread: it could still hold the journal for a moment after shutdown.
        snapshot_every_events: 0,
        ..EngineConfig::default()
    };
    let ports = Ports {
        journal: journal.clone(),
        clock: Arc::new(SystemClock),
        sink: Arc::new(NullSink),
    };
    let engine = Engine::start(config, ports, recovery)
        .unwrap_or_else(|e| panic!("seed {seed} round {round}: recovery failed: {e}"));
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

    check_stock_and_limits(&engine, seed, round).await;

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
                assert!(
                    !bought.created,
                    "seed {seed} round {round}: {order_id} bought twice"
                );
                assert_eq!(&bought.order.order_id, order_id);
            }
            Err(error) => panic!("seed {seed} round {round}: repeat of {order_id}: {error}"),
        }
    }

    // The engine keeps selling after the restart, and what it sells here is checked after
    // the next kill like the child's orders.
    let user = format!("verifier-{round}");
    let request_id = format!("verify-{round}");
    let bought = engine
        .purchase(
            PROMOTION_ID,
            "plenty-a",
            &user,
            PurchaseRequest {
                request_id: request_id.clone(),
                quantity: 1,
                token: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("seed {seed} round {round}: no sale after restart: {e}"));
    assert!(bought.created);
    let payment_ref = format!("pay-verify-{round}");
    let paid = engine
        .pay(&bought.order.order_id, &payment_ref, None)
        .await
        .expect("pay after restart");
    assert_eq!(paid.status, OrderStatus::Paid);
    ledger.orders.insert(
        bought.order.order_id.clone(),
        Acked {
            user,
            sku: "plenty-a".into(),
            quantity: 1,
            request_id,
            cancel_attempted: false,
            cancel_acked: false,
            pay_attempted: Some(payment_ref.clone()),
            pay_acked: Some(payment_ref),
        },
    );
    check_stock_and_limits(&engine, seed, round).await;
    engine.shutdown().await.expect("shutdown");
}

/// Stock adds up per item and from the orders, and nobody is over the per-user limit.
async fn check_stock_and_limits(engine: &Engine, seed: u64, round: u64) {
    let stats = engine
        .promotion_stats(PROMOTION_ID)
        .await
        .expect("the promotion survives");
    for item in &stats.items {
        assert_eq!(
            item.remaining + item.reserved + item.sold,
            item.stock,
            "seed {seed} round {round}: stock of {} does not add up",
            item.sku
        );
    }
    let image = engine.snapshot().await.expect("snapshot");
    for item in &image.items {
        let sku = &item.item.sku;
        let mut reserved = 0u64;
        let mut sold = 0u64;
        let mut live_by_user: HashMap<&str, u32> = HashMap::new();
        let mut order_ids = BTreeSet::new();
        for order in item.orders.iter() {
            assert!(
                order_ids.insert(&order.order_id),
                "duplicate order id {}",
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
        assert_eq!(
            item.reserved, reserved,
            "seed {seed} round {round}: {sku} reserved"
        );
        assert_eq!(item.sold, sold, "seed {seed} round {round}: {sku} sold");
        assert_eq!(
            item.remaining + reserved + sold,
            item.item.stock,
            "seed {seed} round {round}: {sku} oversold or lost stock"
        );
        for (user, quantity) in live_by_user {
            assert!(
                quantity <= item.item.per_user_limit,
                "seed {seed} round {round}: {user} holds {quantity} of {sku}"
            );
        }
    }
}
