//! Three cluster nodes in one process, each with its journal in join mode, its engine and its
//! driver (cluster plan, step 7), on a real JetStream cluster: the first owns every
//! partition; joiners get their share by clean hand-overs; a node that dies (its driver,
//! heartbeats and lease renewals stop at once) has its partitions taken by the others after
//! the lease TTL, and itself sells nothing more; a node's SIGTERM hands its partitions over
//! before the TTL could. Buyers buy from whichever node owns their item, during the first
//! join's hand-overs too: no item sells more than its stock, a retry answers the order it
//! made wherever the partition went, and the last owner finds every order.
//!
//! Needs `SECKILL_TEST_NATS_URLS` (comma-separated `nats://` URLs); skipped without it.

mod jetstream_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetstream_common::{
    cluster_engine, delete_everything, nats_urls, options, sale_spec, unique_prefix, LEASE_TTL,
    PARTITIONS,
};
use seckill_engine::{item_key, partition_of, Engine, Error, ManualClock, PurchaseRequest};
use seckill_persistence::cluster::node::ClusterNode;
use seckill_persistence::cluster::owners::Owners;
use seckill_persistence::cluster::registry::{self, nodes_bucket, Registry};
use seckill_persistence::jetstream::PartitionJournal;

const T0_MS: i64 = 1_800_000_000_000;
const STOCK: u64 = 6;
/// A bound on a hang (a lease lapsing, a plan converging), not a performance figure.
const WAIT_MAX: Duration = Duration::from_secs(40);

struct Member {
    id: &'static str,
    journal: Arc<PartitionJournal>,
    engine: Engine,
    node: ClusterNode,
}

fn member(
    runtime: &tokio::runtime::Runtime,
    urls: &[String],
    prefix: &str,
    id: &'static str,
    clock: &Arc<ManualClock>,
) -> Member {
    let options = options(urls, prefix, id, None);
    let (journal, catalog) =
        PartitionJournal::join(&options).unwrap_or_else(|e| panic!("{id} joins: {e}"));
    let engine = cluster_engine(&journal, catalog, clock);
    let node = runtime.block_on(async {
        let js = registry::connect(&options).await.expect("NATS");
        let registry = Registry::start(&js, &options, &format!("127.0.0.1:{}", 7100 + id.len()))
            .await
            .expect("registered");
        let owners = Owners::start(&js, &options, PARTITIONS)
            .await
            .expect("the lease view");
        ClusterNode::start(journal.clone(), engine.clone(), registry, owners)
            .expect("the driver starts")
    });
    Member {
        id,
        journal,
        engine,
        node,
    }
}

/// Polls `check` every 20 ms until it holds; how long that took. Panics after
/// [`WAIT_MAX`], naming `what`.
fn eventually(what: &str, check: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < WAIT_MAX,
            "{what}: not within {WAIT_MAX:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Each member's partition count, by id.
fn split(members: &[&Member]) -> BTreeMap<&'static str, usize> {
    members
        .iter()
        .map(|m| (m.id, m.engine.owned_partitions().len()))
        .collect()
}

/// Every partition is installed on exactly one of `members`, and the counts are `counts`.
fn settled(members: &[&Member], counts: &[usize]) -> bool {
    let owned: Vec<Vec<u32>> = members
        .iter()
        .map(|m| m.engine.owned_partitions())
        .collect();
    let all: BTreeSet<u32> = owned.iter().flatten().copied().collect();
    let total: usize = owned.iter().map(Vec::len).sum();
    all.len() == PARTITIONS as usize
        && total == PARTITIONS as usize
        && owned.iter().map(Vec::len).collect::<Vec<_>>() == counts
}

/// The SKU of promotion "sale" in each partition.
fn skus() -> Vec<String> {
    (0..PARTITIONS)
        .map(|partition| {
            (0..)
                .map(|n| format!("s{n}"))
                .find(|sku| partition_of(item_key("sale", sku), PARTITIONS) == partition)
                .unwrap_or_default()
        })
        .collect()
}

/// `user` buys `sku` from whichever member owns it, asking again while it moves; the
/// order id, or the final refusal.
fn buy(
    runtime: &tokio::runtime::Runtime,
    members: &[&Member],
    sku: &str,
    user: &str,
) -> Result<String, Error> {
    let partition = partition_of(item_key("sale", sku), PARTITIONS);
    let started = Instant::now();
    loop {
        let owner = members
            .iter()
            .find(|m| m.engine.owned_partitions().contains(&partition));
        if let Some(owner) = owner {
            let request = PurchaseRequest {
                request_id: format!("r-{user}-{sku}"),
                quantity: 1,
                token: None,
            };
            match runtime.block_on(owner.engine.purchase("sale", sku, user, request)) {
                Ok(bought) => return Ok(bought.order.order_id),
                Err(Error::NotOwner { .. } | Error::Unavailable(_)) => {}
                Err(refusal) => return Err(refusal),
            }
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "{user} found no owner of {sku} within {WAIT_MAX:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every user of `users` buys every SKU once (a second time: a retry), from whichever of
/// `members` owns it; each first answer is kept in `orders`, and a retry must repeat it.
fn record(
    runtime: &tokio::runtime::Runtime,
    skus: &[String],
    members: &[&Member],
    users: std::ops::Range<u32>,
    orders: &mut BTreeMap<(String, String), String>,
) {
    for sku in skus {
        for n in users.clone() {
            let user = format!("u{n}");
            match buy(runtime, members, sku, &user) {
                Ok(order) => {
                    let earlier = orders.insert((sku.clone(), user.clone()), order.clone());
                    if let Some(earlier) = earlier {
                        assert_eq!(
                            earlier, order,
                            "a retry of {user} on {sku} answers its order"
                        );
                    }
                }
                Err(Error::SoldOut) => {}
                Err(other) => panic!("{user} on {sku}: {other}"),
            }
        }
    }
}

#[test]
fn nodes_share_partitions_take_over_a_dead_one_and_hand_over_on_shutdown() {
    let Some(urls) = nats_urls() else { return };
    let prefix = unique_prefix();
    let runtime = jetstream_common::runtime();
    let clock = ManualClock::new(T0_MS);
    let skus = skus();
    // (sku, user) -> the order id the first answer gave.
    let mut orders: BTreeMap<(String, String), String> = BTreeMap::new();
    let a = member(&runtime, &urls, &prefix, "a", &clock);
    let took = eventually("a alone owns every partition", || settled(&[&a], &[4]));
    println!("a alone took all {PARTITIONS} partitions in {took:?}");
    let spec = sale_spec(&skus, STOCK, T0_MS);
    runtime
        .block_on(a.engine.create_promotion(spec))
        .expect("created on a");
    record(&runtime, &skus, &[&a], 0..2, &mut orders);

    // b joins while buyers buy (retries of the first orders among them): the hand-overs
    // happen under traffic.
    let b = member(&runtime, &urls, &prefix, "b", &clock);
    let balanced = std::thread::scope(|scope| {
        let buyers = scope.spawn(|| {
            let mut bought = BTreeMap::new();
            record(&runtime, &skus, &[&a, &b], 0..4, &mut bought);
            bought
        });
        let balanced = eventually("a and b share the partitions", || {
            settled(&[&a, &b], &[2, 2])
        });
        let bought = buyers.join().expect("the buyers finish");
        for (key, order) in bought {
            if let Some(earlier) = orders.insert(key.clone(), order.clone()) {
                assert_eq!(
                    earlier, order,
                    "{key:?}: a retry during the hand-overs answers its order"
                );
            }
        }
        balanced
    });
    println!("b joined: 2/2 after {balanced:?}");
    assert!(
        balanced < LEASE_TTL,
        "clean hand-overs, not lapsed leases: {balanced:?}"
    );

    let c = member(&runtime, &urls, &prefix, "c", &clock);
    let balanced = eventually("a, b and c share the partitions", || {
        settled(&[&a, &b, &c], &[2, 1, 1])
    });
    println!("c joined: 2/1/1 after {balanced:?}");
    assert!(
        balanced < LEASE_TTL,
        "clean hand-overs, not lapsed leases: {balanced:?}"
    );
    record(&runtime, &skus, &[&a, &b, &c], 2..5, &mut orders);

    // b dies: its driver, its heartbeats and its lease renewals stop at once.
    let b_had = b.engine.owned_partitions();
    runtime.block_on(b.node.stop());
    b.node.registry().stop();
    for partition in 0..PARTITIONS {
        b.journal.pause_renewals(partition, true);
    }
    let killed = Instant::now();
    eventually("a and c own b's partitions", || {
        let others: BTreeSet<u32> = [&a, &c]
            .iter()
            .flat_map(|m| m.engine.owned_partitions())
            .collect();
        b_had.iter().all(|p| others.contains(p))
    });
    println!(
        "b died holding {b_had:?}: a and c own them {:?} later (lease TTL {LEASE_TTL:?}); split {:?}",
        killed.elapsed(),
        split(&[&a, &c])
    );
    // The dead node decides nothing for what it lost, even asked directly.
    for partition in &b_had {
        let sku = &skus[*partition as usize];
        let request = PurchaseRequest {
            request_id: "r-ghost".into(),
            quantity: 1,
            token: None,
        };
        let asked = runtime.block_on(b.engine.purchase("sale", sku, "ghost", request));
        assert!(
            matches!(asked, Err(Error::NotOwner { .. })),
            "b sells {sku}: {asked:?}"
        );
    }
    record(&runtime, &skus, &[&a, &c], 0..10, &mut orders);

    // c's SIGTERM: it hands everything to a, the one live node left.
    let c_had = c.engine.owned_partitions().len();
    let handed = runtime.block_on(c.node.hand_over_all());
    let stopped = Instant::now();
    eventually("a owns every partition", || {
        a.engine.owned_partitions().len() == PARTITIONS as usize
    });
    println!(
        "c handed {handed} partitions over; a owned all {:?} after the hand-over",
        stopped.elapsed()
    );
    assert_eq!(handed, c_had, "c handed over everything it had");
    assert!(handed >= 1, "c held a partition to hand over");
    assert!(
        stopped.elapsed() < LEASE_TTL,
        "a SIGTERM hands over, leases are not left to lapse"
    );
    assert!(c.engine.owned_partitions().is_empty());

    // Every unit sold once, and the last owner's replay holds every order.
    let ids: BTreeSet<String> = orders.values().cloned().collect();
    assert_eq!(ids.len(), orders.len(), "no order id twice");
    for sku in &skus {
        let sold = orders.keys().filter(|(s, _)| s == sku).count() as u64;
        assert_eq!(sold, STOCK, "{sku} sold exactly its stock");
        assert_eq!(buy(&runtime, &[&a], sku, "late"), Err(Error::SoldOut));
    }
    let stats = runtime
        .block_on(a.engine.promotion_stats("sale"))
        .expect("stats");
    for item in &stats.items {
        assert_eq!((item.remaining, item.reserved), (0, STOCK), "{item:?}");
    }
    record(&runtime, &skus, &[&a], 0..10, &mut orders);
    assert_eq!(
        ids.len(),
        orders.len(),
        "retries on the last owner answer the same orders"
    );

    runtime.block_on(a.node.stop());
    for m in [&a, &b, &c] {
        runtime.block_on(m.engine.shutdown()).expect("stops");
        m.journal.release_all();
    }
    delete_everything(&runtime, &urls, &prefix);
    runtime.block_on(async {
        let js = jetstream_common::jetstream(&urls).await;
        let _ = js
            .delete_stream(format!("KV_{}", nodes_bucket(&prefix)))
            .await;
    });
}
