//! The child process of the JetStream journal's process tests (`persistence/tests/
//! jetstream_crash.rs`, `jetstream_fencing_processes.rs`): the node that a test kills or
//! pauses.
//!
//! `jetstream-child sell <urls> <prefix> <node_id> <seed> <round> [lease_ttl_ms]` opens the
//! journal on JetStream (`urls` comma-separated, 4 partitions, 3 replicas, every name under
//! `prefix`, leases held as `node_id`, waiting as long as it takes for leases another node
//! holds), starts the engine on it and drives concurrent purchases, cancels and payments
//! until it is killed. It prints one line per fact the test needs, flushed before it goes
//! on, as `journal-crash-child` does:
//!
//! - `READY` once recovery has finished and the promotion exists;
//! - `P <order_id> <user> <sku> <quantity> <request_id>` after a purchase was acknowledged;
//! - `c <order_id>` before asking to cancel, `C <order_id>` once the cancel was acknowledged;
//! - `y <order_id> <ref>` before asking to pay, `Y <order_id> <ref>` once acknowledged.
//!
//! The attempt lines (`c`, `y`) come first because a change can be durable without its
//! acknowledgement having been printed (the kill fell in between); the tests accept such a
//! change only if it was at least attempted.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seckill_engine::{
    Engine, EngineConfig, ItemSpec, NullSink, Ports, PromotionSpec, PurchaseRequest, SystemClock,
};
use seckill_persistence::jetstream::{ClusterOptions, JetStreamJournal};

const USAGE: &str =
    "usage: jetstream-child sell <urls> <prefix> <node_id> <seed> <round> [lease_ttl_ms]";
/// Every test on a prefix opens it with these: the partition count is fixed at creation.
const PARTITIONS: u32 = 4;
const REPLICAS: usize = 3;
/// Short, so that a test waits little for a killed child's leases to lapse. Every opener
/// of one prefix must use the same TTL (the lease bucket is made with it).
const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(2);
/// The promotion every round sells from (the tests check it by this id).
const PROMOTION_ID: &str = "crash";
/// Items: one that sells out at once (oversell under cancels and restarts), two that keep
/// selling for the whole test (the tests' own sales use `plenty-a`).
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
/// A fenced or suspended shard answers at once: pause instead of spinning on it.
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the command line asks for.
struct Args {
    urls: Vec<String>,
    prefix: String,
    node_id: String,
    seed: u64,
    round: u64,
    lease_ttl: Duration,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe means the test is gone; nothing useful is left to do but stop.
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("jetstream-child: {error}");
            ExitCode::from(1)
        }
    }
}

fn parse(args: &[String]) -> Result<Args, BoxError> {
    let (urls, prefix, node_id, seed, round, lease_ttl_ms) = match args {
        [_, mode, urls, prefix, node_id, seed, round] if mode == "sell" => {
            (urls, prefix, node_id, seed, round, None)
        }
        [_, mode, urls, prefix, node_id, seed, round, ttl] if mode == "sell" => {
            (urls, prefix, node_id, seed, round, Some(ttl))
        }
        _ => return Err(USAGE.into()),
    };
    let lease_ttl = match lease_ttl_ms {
        Some(ms) => Duration::from_millis(ms.parse()?),
        None => LEASE_TTL_DEFAULT,
    };
    Ok(Args {
        urls: urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect(),
        prefix: prefix.clone(),
        node_id: node_id.clone(),
        seed: seed.parse()?,
        round: round.parse()?,
        lease_ttl,
    })
}

fn run() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let args = parse(&args)?;
    let options = ClusterOptions {
        urls: args.urls.clone(),
        node_id: args.node_id.clone(),
        partitions: Some(PARTITIONS),
        replicas: REPLICAS,
        prefix: args.prefix.clone(),
        lease_ttl: args.lease_ttl,
        // A standby: the tests start a child while another node still holds the leases.
        lease_wait: None,
        ..ClusterOptions::default()
    };
    // Blocking, on the journal's own runtime: opened before ours exists.
    let (journal, recovery) = JetStreamJournal::open(&options)?;
    let config = EngineConfig {
        shards: 2,
        // Snapshots during the sale: a recovery after a kill then really starts from one.
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(sell(engine, args.seed, args.round))
}

async fn sell(engine: Engine, seed: u64, round: u64) -> Result<(), BoxError> {
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
        name: "jetstream crash test".into(),
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
            Ok(_) => tokio::task::yield_now().await,
            Err(error) if error.is_refusal() => tokio::task::yield_now().await,
            Err(_) => tokio::time::sleep(UNAVAILABLE_PAUSE).await,
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
