//! The child process of the journal crash test (`persistence/tests/journal_crash.rs`).
//!
//! `journal-crash-child <data_dir> <seed> <round> <sync|async>` runs the engine on a
//! RocksJournal in `data_dir` and drives concurrent purchases, cancels and payments until it
//! is killed. It prints one line per fact the test needs, flushed before it goes on:
//!
//! - `READY` once recovery has finished and the promotion exists;
//! - `P <order_id> <user> <sku> <quantity> <request_id>` after a purchase was acknowledged;
//! - `c <order_id>` before asking to cancel, `C <order_id>` once the cancel was acknowledged;
//! - `y <order_id> <ref>` before asking to pay, `Y <order_id> <ref>` once acknowledged.
//!
//! `journal-crash-child append <data_dir> <count>` appends `count` one-event batches with
//! durability sync, prints `APPENDED <last_seq>` and waits to be killed: the torn-write test
//! then has a WAL that no clean shutdown flushed away.
//!
//! The attempt lines (`c`, `y`) come first because a change can be durable without its
//! acknowledgement having been printed (the kill fell in between); the test accepts such a
//! change only if it was at least attempted.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seckill_engine::{
    Engine, EngineConfig, ItemSpec, NullSink, Ports, PromotionSpec, PurchaseRequest, SystemClock,
};
use seckill_persistence::journal::{Durability, JournalOptions, PersistenceError, RocksJournal};

/// The promotion every round sells from.
const PROMOTION_ID: &str = "crash";
/// Items: one that sells out at once (oversell under cancels and restarts), two that keep
/// selling for the whole test.
const ITEMS: [(&str, u64); 3] = [
    ("scarce", 40),
    ("plenty-a", 1_000_000),
    ("plenty-b", 1_000_000),
];
const PER_USER_LIMIT: u32 = 2;
/// Shoppers of every round: they meet their per-user limits and bans across restarts.
const USERS_SHARED: u32 = 500;
/// Shoppers new in each round, so that every round still has buyers who may buy.
const USERS_PER_ROUND: u32 = 5_000;
const WORKERS: usize = 16;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe means the test is gone; nothing useful is left to do but stop.
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, data_dir, count] = args.as_slice() {
        if mode == "append" {
            return match append_and_wait(data_dir, count) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("journal-crash-child: {error}");
                    ExitCode::from(1)
                }
            };
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("journal-crash-child: cannot start tokio: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("journal-crash-child: {error}");
            ExitCode::from(1)
        }
    }
}

fn append_and_wait(data_dir: &str, count: &str) -> Result<(), BoxError> {
    use seckill_engine::{Event, Journal};

    let count: i64 = count.parse()?;
    let options = JournalOptions {
        data_dir: PathBuf::from(data_dir),
        ..JournalOptions::default()
    };
    let (journal, recovery) = open(&options)?;
    drop(recovery);
    let mut last_seq = 0;
    for at_ms in 1..=count {
        let event = Event::PromotionStopped {
            promotion_id: PROMOTION_ID.into(),
            at_ms,
        };
        last_seq = journal.append(&[event])?;
    }
    say(&format!("APPENDED {last_seq}"));
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Opens the journal, waiting out a lock that the test's own (just dropped) journal may
/// still hold for a moment.
fn open(
    options: &JournalOptions,
) -> Result<(Arc<RocksJournal>, seckill_engine::Recovery), BoxError> {
    let mut attempts = 0;
    loop {
        match RocksJournal::open(options) {
            Err(PersistenceError::Locked { .. }) if attempts < 200 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            other => return Ok(other?),
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let [_, data_dir, seed, round, durability] = args.as_slice() else {
        return Err("usage: journal-crash-child <data_dir> <seed> <round> <sync|async>".into());
    };
    let seed: u64 = seed.parse()?;
    let round: u64 = round.parse()?;
    let durability: Durability = durability.parse()?;
    let options = JournalOptions {
        data_dir: PathBuf::from(data_dir),
        durability,
        ..JournalOptions::default()
    };
    let (journal, recovery) = open(&options)?;
    // Stand in for the SQL flusher's cursor so that snapshots also trim the log: recovery
    // after a kill then really starts from a snapshot.
    journal.set_retain_floor(u64::MAX);
    let config = EngineConfig {
        shards: 2,
        snapshot_every_events: 400,
        expiry_tick_ms: 50,
        ..EngineConfig::default()
    };
    let ports = Ports {
        journal: journal.clone(),
        clock: Arc::new(SystemClock),
        sink: Arc::new(NullSink),
    };
    let engine = Engine::start(config, ports, recovery)?;
    ensure_promotion(&engine).await?;
    say("READY");

    let mut workers = Vec::with_capacity(WORKERS);
    for worker in 0..WORKERS {
        let engine = engine.clone();
        let rng = StdRng::seed_from_u64(seed ^ (round << 32) ^ worker as u64);
        workers.push(tokio::spawn(drive(engine, rng, round, worker)));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

async fn ensure_promotion(engine: &Engine) -> Result<(), BoxError> {
    if engine.public_promotion(PROMOTION_ID).is_ok() {
        return Ok(());
    }
    let now_ms = engine.now_ms();
    let spec = PromotionSpec {
        guard: Default::default(),
        id: Some(PROMOTION_ID.into()),
        name: "crash test".into(),
        starts_at_ms: now_ms - 1_000,
        ends_at_ms: now_ms + 3_600_000,
        // The shortest timeout api.md allows, so that orders of early rounds expire during
        // the test.
        payment_timeout_s: 10,
        require_token: false,
        token_multiplier: 1,
        items: ITEMS
            .iter()
            .map(|(sku, stock)| ItemSpec {
                sku: (*sku).into(),
                title: None,
                stock: *stock,
                price_cents: 1_000,
                per_user_limit: PER_USER_LIMIT,
            })
            .collect(),
    };
    engine.create_promotion(spec).await?;
    Ok(())
}

/// One shopper-simulating task: buys, and now and then cancels or pays one of its orders.
async fn drive(engine: Engine, mut rng: StdRng, round: u64, worker: usize) -> Result<(), BoxError> {
    let mut mine: Vec<(String, String)> = Vec::new();
    for attempt in 0u64.. {
        let user = if rng.random_bool(0.5) {
            format!("u{}", rng.random_range(0..USERS_SHARED))
        } else {
            format!("u{round}-{}", rng.random_range(0..USERS_PER_ROUND))
        };
        let (sku, _) = ITEMS[rng.random_range(0..ITEMS.len())];
        let quantity = rng.random_range(1..=PER_USER_LIMIT);
        let request_id = format!("r{round}-{worker}-{attempt}");
        let request = PurchaseRequest {
            request_id: request_id.clone(),
            quantity,
            token: None,
        };
        match engine.purchase(PROMOTION_ID, sku, &user, request).await {
            Ok(bought) if bought.created => {
                let id = &bought.order.order_id;
                say(&format!("P {id} {user} {sku} {quantity} {request_id}"));
                mine.push((id.clone(), user));
            }
            // Refusals at the gate answer without awaiting anything: yield so that a task
            // that only meets "sold out" cannot starve the others.
            _ => tokio::task::yield_now().await,
        }
        if mine.is_empty() || !rng.random_bool(0.3) {
            continue;
        }
        let (order_id, user) = mine.swap_remove(rng.random_range(0..mine.len()));
        if rng.random_bool(0.5) {
            say(&format!("c {order_id}"));
            if engine.cancel(&order_id, Some(&user)).await.is_ok() {
                say(&format!("C {order_id}"));
            }
        } else {
            let payment_ref = format!("pay-{order_id}");
            say(&format!("y {order_id} {payment_ref}"));
            if engine.pay(&order_id, &payment_ref, None).await.is_ok() {
                say(&format!("Y {order_id} {payment_ref}"));
            }
        }
    }
    Ok(())
}
