//! The crash test on JetStream: a child process (`jetstream-child sell`) sells on a
//! JetStreamJournal and is SIGKILLed at a random point; after every kill this process opens
//! the journal as another node, once the dead child's leases lapsed, and checks it.
//!
//! Checked after each kill: while the child runs, a second opener is refused; every
//! acknowledged order is there in its acknowledged state (or a later one the child at least
//! attempted, or an expiry), remaining + reserved + sold == stock for every item and matches
//! the orders, no user holds more than the per-user limit, a repeated request id finds its
//! order, and the engine keeps selling. At the end: expiries are journaled like any write.
//!
//! Needs `SECKILL_TEST_NATS_URLS`; skipped without it. A failing run prints its seed;
//! `SECKILL_JETSTREAM_SEED=<seed>` repeats its kill points and workloads.

mod jetstream_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jetstream_common::{
    check_reopened, delete_everything, nats_urls, open, options, runtime, seed, start_engine,
    stop_node, unique_prefix, ChildProcess, Ledger, PROMOTION_ID,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seckill_engine::{Clock, ManualClock, OrderStatus, SystemClock};
use seckill_persistence::jetstream::{ClusterError, JetStreamJournal};

const ROUNDS: u64 = 20;
/// How long a child sells before the kill, in ms (drawn from the seed).
const SELL_MS_MIN: u64 = 200;
const SELL_MS_MAX: u64 = 1_500;
/// The child's payment timeout (10 s) and a margin: past it every order has expired.
const PAST_EVERY_DEADLINE_MS: i64 = 11_000;

#[test]
fn acknowledged_orders_survive_sigkill_on_jetstream() {
    let Some(urls) = nats_urls() else { return };
    let seed = seed("jetstream crash test");
    let prefix = unique_prefix();
    let mut rng = StdRng::seed_from_u64(seed);
    let runtime = runtime();
    let mut ledger = Ledger::default();
    let started = Instant::now();

    for round in 0..ROUNDS {
        let node_id = format!("child-{round}");
        let mut child = ChildProcess::sell(&urls, &prefix, &node_id, seed, round);
        let ready_at = child.wait_ready(seed);
        assert_second_opener_refused(&urls, &prefix, round, seed);

        let sell_ms = rng.random_range(SELL_MS_MIN..=SELL_MS_MAX);
        let kill_at = ready_at + Duration::from_millis(sell_ms);
        if let Some(left) = kill_at.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
        let lines = child.kill(seed);
        drop(child);
        let purchases = ledger.read(&lines);
        println!("round {round}: killed after {sell_ms} ms of selling, {purchases} acknowledged purchases");
        check_reopened(
            &runtime,
            &urls,
            &prefix,
            &format!("checker-{round}"),
            &mut ledger,
            seed,
            round,
        );
    }
    let total: usize = ledger.purchases_by_round.iter().sum();
    assert!(
        total > 0,
        "seed {seed}: no purchase was acknowledged in {ROUNDS} rounds"
    );

    // Down past every payment deadline: the restart expires the pending orders at once and
    // gives their stock back...
    let later_ms = SystemClock.now_ms() + PAST_EVERY_DEADLINE_MS;
    let expired = expire_all(
        &runtime,
        &urls,
        &prefix,
        "expirer-1",
        later_ms,
        &ledger,
        true,
    );
    println!("after the deadlines: {expired} acknowledged orders expired");
    // ...and the expiries are journaled: a restart on a clock before every deadline, which
    // expires nothing itself, still finds them.
    let again = expire_all(&runtime, &urls, &prefix, "expirer-2", 1, &ledger, false);
    assert_eq!(again, expired, "seed {seed}: expiries were not durable");
    println!(
        "{ROUNDS} rounds, {total} acknowledged purchases, in {:?}",
        started.elapsed()
    );
    delete_everything(&runtime, &urls, &prefix);
}

/// While the child holds the leases, another node that will not wait is refused, and
/// appends nothing.
fn assert_second_opener_refused(urls: &[String], prefix: &str, round: u64, seed: u64) {
    let intruder = options(
        urls,
        prefix,
        &format!("intruder-{round}"),
        Some(Duration::ZERO),
    );
    match JetStreamJournal::open(&intruder) {
        Err(ClusterError::LeaseHeld { .. }) => {}
        Err(error) => {
            panic!("seed {seed} round {round}: a second opener failed otherwise: {error}")
        }
        Ok(_) => {
            panic!("seed {seed} round {round}: a second opener took the running child's leases")
        }
    }
}

/// Restarts on a clock at `now_ms` (running the expiry pass if `tick`) and checks that no
/// acknowledged order is pending and no stock is reserved. Returns the number of expired
/// acknowledged orders.
fn expire_all(
    runtime: &tokio::runtime::Runtime,
    urls: &[String],
    prefix: &str,
    node_id: &str,
    now_ms: i64,
    ledger: &Ledger,
    tick: bool,
) -> usize {
    let (journal, recovery) = open(&options(
        urls,
        prefix,
        node_id,
        Some(jetstream_common::CHECKER_LEASE_WAIT),
    ));
    let clock: Arc<dyn Clock> = ManualClock::new(now_ms);
    let engine = start_engine(&journal, recovery, clock);
    let expired = runtime.block_on(async {
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
        expired
    });
    stop_node(runtime, engine, journal);
    expired
}
