//! The JetStream journal in join mode (cluster plan, step 6), on a real JetStream cluster:
//! a node takes and releases partitions while it runs, one holder at a time; the next holder
//! replays exactly what the last one wrote; a lapsed lease loses its partition alone (the
//! batch's other partitions land); a batch decided under an earlier holding never reaches a
//! later holding's lane; and two engines hand a partition over mid-sale, cleanly and by a
//! lapsed lease, without overselling, losing or repeating an order; and each owner's SQL
//! flusher writes its partitions' rows, a new owner's going on from the old one's cursor.
//!
//! Needs `SECKILL_TEST_NATS_URLS` (comma-separated `nats://` URLs); skipped without it. The
//! SQL test needs `SECKILL_TEST_DATABASE_URL` (PostgreSQL) as well.

mod jetstream_common;
mod sql_common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetstream_common::{
    cluster_engine, delete_everything, nats_urls, options, sale_spec, unique_prefix, LEASE_TTL,
    PARTITIONS,
};
use seckill_engine::{
    item_key, partition_of, AppendOutcome, Engine, Error, Event, Journal, ManualClock, Ownership,
    PendingAppend, PurchaseRequest, Recovery,
};
use seckill_persistence::jetstream::{ClusterError, LaneEvent, PartitionJournal};

const T0_MS: i64 = 1_800_000_000_000;
/// A bound on a hang (a lease lapsing, an answer pending), not a performance figure.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// The cluster and a prefix of this test's own; `None` (skipped) without a cluster.
struct Setup {
    urls: Vec<String>,
    prefix: String,
}

impl Setup {
    fn new() -> Option<Setup> {
        Some(Setup {
            urls: nats_urls()?,
            prefix: unique_prefix(),
        })
    }

    /// Node `node_id` joins (blocking).
    fn join(&self, node_id: &str) -> (Arc<PartitionJournal>, Recovery) {
        let options = options(&self.urls, &self.prefix, node_id, None);
        PartitionJournal::join(&options)
            .unwrap_or_else(|e| panic!("{node_id} could not join under {}: {e}", self.prefix))
    }

    fn clean_up(&self) {
        delete_everything(&jetstream_common::runtime(), &self.urls, &self.prefix);
    }
}

/// A SKU of promotion `promotion` whose item falls in `partition`.
fn sku_in(promotion: &str, partition: u32) -> String {
    (0..)
        .map(|n| format!("s{n}"))
        .find(|sku| partition_of(item_key(promotion, sku), PARTITIONS) == partition)
        .unwrap_or_default()
}

/// One token event of an item in `partition`, told apart by `n`.
fn token(partition: u32, n: u32) -> Event {
    Event::TokenIssued {
        item_key: item_key("raw", &sku_in("raw", partition)),
        user_id: format!("u{n}"),
        token: format!("t{partition}-{n}"),
        expires_at_ms: T0_MS,
    }
}

/// Appends `events` as decided under the holdings `journal` has now, waiting out a pending
/// answer.
fn append_now(journal: &PartitionJournal, events: &[Event]) -> AppendOutcome {
    let holdings: Vec<Option<u64>> = (0..PARTITIONS).map(|p| journal.holding(p)).collect();
    append_under(journal, events, &holdings)
}

/// Appends `events` as decided under `holdings` (by partition), waiting out a pending
/// answer as a shard does.
fn append_under(
    journal: &PartitionJournal,
    events: &[Event],
    holdings: &[Option<u64>],
) -> AppendOutcome {
    let holding_of = |partition: u32| holdings.get(partition as usize).copied().flatten();
    let outcome = journal.append_held(events, &holding_of);
    if !matches!(outcome, AppendOutcome::Failed(_)) {
        return outcome;
    }
    let started = Instant::now();
    loop {
        match journal.pending_append() {
            PendingAppend::Waiting if started.elapsed() < WAIT_MAX => {
                std::thread::sleep(Duration::from_millis(20));
            }
            PendingAppend::Landed(seq) => return AppendOutcome::Durable(seq),
            PendingAppend::PartlyLost {
                seq,
                lost,
                partitions,
            } => {
                return AppendOutcome::PartlyLost {
                    seq,
                    lost,
                    partitions,
                    error: seckill_engine::JournalError("pending".into()),
                }
            }
            other => {
                return AppendOutcome::Failed(seckill_engine::JournalError(format!("{other:?}")))
            }
        }
    }
}

/// The events of a take's recovery, batch by batch.
fn replayed(recovery: seckill_engine::PartitionRecovery) -> Vec<Vec<Event>> {
    recovery
        .batches
        .map(|batch| batch.expect("the lane reads back").1)
        .collect()
}

/// Takes `partition`, asking again while another node's lease is still there.
fn take_when_free(
    journal: &PartitionJournal,
    partition: u32,
) -> (seckill_engine::PartitionRecovery, Duration) {
    let started = Instant::now();
    loop {
        match journal.take_partition(partition) {
            Ok(recovery) => return (recovery, started.elapsed()),
            Err(ClusterError::LeaseHeld { .. }) if started.elapsed() < WAIT_MAX => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("partition {partition} was not taken: {error}"),
        }
    }
}

#[test]
fn a_partition_has_one_holder_and_the_next_one_replays_what_the_last_one_wrote() {
    let Some(t) = Setup::new() else { return };
    let (a, _) = t.join("a");
    let (b, _) = t.join("b");
    let first = a.take_partition(1).expect("A takes partition 1");
    let epoch_a = first.epoch;
    assert!(replayed(first).is_empty(), "a new lane holds nothing");
    assert_eq!(a.holding(1), Some(epoch_a));
    assert_eq!(a.owned_partitions(), vec![1]);
    assert!(
        matches!(b.take_partition(1), Err(ClusterError::LeaseHeld { .. })),
        "one holder at a time"
    );
    assert!(
        matches!(a.take_partition(1), Err(ClusterError::LeaseHeld { .. })),
        "a holder does not take its partition twice"
    );
    let written: Vec<Vec<Event>> = (0..3)
        .map(|n| vec![token(1, n), token(1, n + 10)])
        .collect();
    for batch in &written {
        assert!(
            matches!(append_now(&a, batch), AppendOutcome::Durable(_)),
            "A writes its partition"
        );
    }
    // A batch decided under another holding than the lane's never lands in it.
    let stale = [Some(epoch_a + 1000); PARTITIONS as usize];
    match append_under(&a, &[token(1, 99)], &stale) {
        AppendOutcome::PartlyLost { lost, .. } => assert_eq!(lost, vec![1]),
        other => panic!("a stale holding's batch is lost, not {other:?}"),
    }
    // Nor a batch of a partition not held here.
    match append_now(&a, &[token(1, 50), token(2, 50)]) {
        AppendOutcome::PartlyLost { lost, .. } => assert_eq!(lost, vec![2]),
        other => panic!("partition 2 is not A's: {other:?}"),
    }
    let mut expected = written.clone();
    expected.push(vec![token(1, 50)]);

    a.release_partition(1).expect("A releases");
    assert_eq!(a.holding(1), None, "released: not A's");
    let (second, waited) = take_when_free(&b, 1);
    println!("B took the released partition after {waited:?} (lease TTL {LEASE_TTL:?})");
    assert!(
        waited < LEASE_TTL,
        "a release frees the lease at once, not at its TTL"
    );
    assert!(
        second.epoch > epoch_a,
        "each holding numbers above the last"
    );
    assert_eq!(replayed(second), expected, "B replays exactly what A wrote");
    assert!(matches!(
        a.take_partition(1),
        Err(ClusterError::LeaseHeld { .. })
    ));
    b.release_all();
    t.clean_up();
}

#[test]
fn a_lapsed_lease_loses_its_partition_alone_and_its_late_batch_never_lands() {
    let Some(t) = Setup::new() else { return };
    let (a, _) = t.join("a");
    let (b, _) = t.join("b");
    let mut lanes = a.lane_events();
    a.take_partition(0).expect("A takes 0");
    let epoch_a1 = a.take_partition(1).expect("A takes 1").epoch;
    let early = vec![token(1, 1)];
    assert!(matches!(append_now(&a, &early), AppendOutcome::Durable(_)));
    let holdings_a: Vec<Option<u64>> = (0..PARTITIONS).map(|p| a.holding(p)).collect();

    // A stops renewing partition 1 (as if paused): it stops deciding for it, and after the
    // TTL B takes it.
    a.pause_renewals(1, true);
    let (taken, waited) = take_when_free(&b, 1);
    println!("B took the lapsed partition after {waited:?} (lease TTL {LEASE_TTL:?})");
    assert_eq!(a.holding(1), None, "A no longer holds 1 for sure");
    assert!(a.holding(0).is_some(), "A still holds 0");
    assert_eq!(replayed(taken), vec![early.clone()], "B replays A's batch");
    let by_b = vec![token(1, 2)];
    assert!(matches!(append_now(&b, &by_b), AppendOutcome::Durable(_)));

    // A wakes up with a batch it decided before: partition 0's part lands, 1's is lost.
    a.pause_renewals(1, false);
    let late = vec![token(0, 3), token(1, 3)];
    match append_under(&a, &late, &holdings_a) {
        AppendOutcome::PartlyLost { lost, seq, .. } => {
            assert_eq!(lost, vec![1], "only partition 1 is lost");
            assert!(seq > 0, "partition 0's part landed");
        }
        other => panic!("A's late batch lands in part: {other:?}"),
    }
    let event = wait_for_event(&mut lanes);
    assert_eq!(
        event,
        LaneEvent::Lost {
            partition: 1,
            epoch: epoch_a1
        }
    );

    // What each lane holds: 0 has A's late part, 1 has none of it.
    b.release_partition(1).expect("B releases 1");
    a.release_partition(0).expect("A releases 0");
    let (lane0, _) = take_when_free(&b, 0);
    assert_eq!(replayed(lane0), vec![vec![token(0, 3)]]);
    let (lane1, _) = take_when_free(&a, 1);
    assert_eq!(
        replayed(lane1),
        vec![early.clone(), by_b.clone()],
        "the late batch of the lost holding is not in the lane"
    );
    // A holds 1 again, under a new holding: a batch decided under the old one (a shard
    // that was stuck all along) must not slip into the new lane after its replay.
    match append_under(&a, &[token(1, 4)], &holdings_a) {
        AppendOutcome::PartlyLost { lost, .. } => assert_eq!(lost, vec![1]),
        other => panic!("the old holding's batch is lost, not {other:?}"),
    }
    a.release_partition(1).expect("A releases 1");
    let (again, _) = take_when_free(&b, 1);
    assert_eq!(
        replayed(again),
        vec![early, by_b],
        "nothing of the old holding came after"
    );
    a.release_all();
    b.release_all();
    t.clean_up();
}

fn wait_for_event(lanes: &mut tokio::sync::broadcast::Receiver<LaneEvent>) -> LaneEvent {
    let started = Instant::now();
    loop {
        match lanes.try_recv() {
            Ok(event) => return event,
            Err(_) if started.elapsed() < WAIT_MAX => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => panic!("no lane event: {error}"),
        }
    }
}

/// A node: its journal and the cluster engine on it.
struct Node {
    journal: Arc<PartitionJournal>,
    engine: Engine,
}

fn node(t: &Setup, node_id: &str, clock: &Arc<ManualClock>) -> Node {
    let (journal, catalog) = t.join(node_id);
    let engine = cluster_engine(&journal, catalog, clock);
    Node { journal, engine }
}

impl Node {
    /// Takes, builds and adopts `partition` (blocking).
    fn take(&self, runtime: &tokio::runtime::Runtime, partition: u32) {
        let (recovery, _) = take_when_free(&self.journal, partition);
        runtime
            .block_on(self.engine.catch_up_catalog())
            .expect("caught up");
        let part = self.engine.build_partition(recovery).expect("built");
        runtime
            .block_on(self.engine.adopt_partition(part))
            .expect("adopted");
    }

    /// The clean hand-over: the engine lets go, then the journal.
    fn release(&self, runtime: &tokio::runtime::Runtime, partition: u32) {
        let released = runtime
            .block_on(self.engine.release_partition(partition))
            .expect("released");
        assert!(!released.waited_out, "nothing stalls here");
        self.journal
            .release_partition(partition)
            .expect("lease released");
    }

    fn buy(
        &self,
        runtime: &tokio::runtime::Runtime,
        sku: &str,
        user: &str,
    ) -> Result<String, Error> {
        let request = PurchaseRequest {
            request_id: format!("r-{user}-{sku}"),
            quantity: 1,
            token: None,
        };
        runtime
            .block_on(self.engine.purchase("sale", sku, user, request))
            .map(|bought| bought.order.order_id)
    }
}

#[test]
fn two_engines_move_partitions_mid_sale_and_never_oversell_lose_or_repeat_an_order() {
    let Some(t) = Setup::new() else { return };
    let runtime = jetstream_common::runtime();
    let clock = ManualClock::new(T0_MS);
    let nodes = [node(&t, "a", &clock), node(&t, "b", &clock)];
    const STOCK: u64 = 5;
    let (handed, lapsed) = (sku_in("sale", 1), sku_in("sale", 2));
    let spec = sale_spec(&[handed.clone(), lapsed.clone()], STOCK, T0_MS);
    runtime
        .block_on(nodes[0].engine.create_promotion(spec))
        .expect("created on A");
    for partition in 0..PARTITIONS {
        nodes[0].take(&runtime, partition);
    }
    let mut orders: Vec<String> = Vec::new();
    for user in ["u0", "u1", "u2"] {
        for sku in [&handed, &lapsed] {
            orders.push(nodes[0].buy(&runtime, sku, user).expect("A sells"));
        }
    }

    // The clean hand-over of partition 1: B replays A's three orders and sells the rest.
    let started = Instant::now();
    nodes[0].release(&runtime, 1);
    assert!(matches!(
        nodes[0].buy(&runtime, &handed, "u9"),
        Err(Error::NotOwner { .. })
    ));
    nodes[1].take(&runtime, 1);
    println!(
        "hand-over of partition 1 (release, take, build, adopt): {:?}",
        started.elapsed()
    );
    let retried = nodes[1].buy(&runtime, &handed, "u0").expect("a retry on B");
    assert_eq!(
        retried, orders[0],
        "a retry on the new owner answers A's order"
    );
    let mut sold_b = 0;
    for n in 3..10 {
        match nodes[1].buy(&runtime, &handed, &format!("u{n}")) {
            Ok(order) => {
                orders.push(order);
                sold_b += 1;
            }
            Err(Error::SoldOut) => {}
            Err(other) => panic!("B refuses only when sold out: {other}"),
        }
    }
    assert_eq!(sold_b, STOCK - 3, "B sells exactly what A left");

    // Partition 2's lease lapses under A (paused); B takes it and sells the rest of its
    // item, while A decides nothing for it.
    let epoch_a2 = nodes[0].engine.partition_epoch(2).expect("A adopted 2");
    nodes[0].journal.pause_renewals(2, true);
    let mut lanes = nodes[0].journal.lane_events();
    let started = Instant::now();
    nodes[1].take(&runtime, 2);
    println!(
        "takeover of the lapsed partition 2 (TTL {LEASE_TTL:?}): {:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            nodes[0].buy(&runtime, &lapsed, "u20"),
            Err(Error::NotOwner { .. })
        ),
        "A's holding of 2 is in doubt: it does not sell"
    );
    let mut sold_lapsed = 3;
    for n in 10..20 {
        if let Ok(order) = nodes[1].buy(&runtime, &lapsed, &format!("u{n}")) {
            orders.push(order);
            sold_lapsed += 1;
        }
    }
    assert_eq!(
        sold_lapsed, STOCK,
        "B sells what A left of the lapsed partition"
    );
    nodes[0].journal.pause_renewals(2, false);
    let lost = LaneEvent::Lost {
        partition: 2,
        epoch: epoch_a2,
    };
    assert_eq!(wait_for_event(&mut lanes), lost, "A hears of its loss");
    nodes[0].engine.lose_partition(2, epoch_a2);
    assert!(matches!(
        nodes[0].buy(&runtime, &lapsed, "u21"),
        Err(Error::NotOwner { .. })
    ));
    let unique: BTreeSet<&String> = orders.iter().collect();
    assert_eq!(unique.len(), orders.len(), "no order id twice");
    assert_eq!(orders.len() as u64, 2 * STOCK, "every unit sold once");

    // A third engine that takes both partitions finds exactly those orders.
    nodes[1].release(&runtime, 1);
    nodes[1].release(&runtime, 2);
    let c = node(&t, "c", &clock);
    c.take(&runtime, 1);
    c.take(&runtime, 2);
    let stats = runtime
        .block_on(c.engine.promotion_stats("sale"))
        .expect("stats");
    for item in &stats.items {
        assert_eq!(item.remaining, 0, "{item:?}");
        assert_eq!(item.reserved, STOCK, "{item:?}");
    }
    for node in [&nodes[0], &nodes[1], &c] {
        runtime.block_on(node.engine.shutdown()).expect("stops");
        node.journal.release_all();
    }
    t.clean_up();
}

#[test]
fn each_owner_flushes_its_partitions_and_a_new_owner_goes_on_from_the_cursor() {
    let Some(t) = Setup::new() else { return };
    let Some(database_url) = sql_common::postgres_url("the cluster's SQL") else {
        return;
    };
    let runtime = jetstream_common::runtime();
    let db = runtime.block_on(sql_common::TestDb::postgres(&database_url));
    let clock = ManualClock::new(T0_MS);
    let nodes = [node(&t, "a", &clock), node(&t, "b", &clock)];
    const STOCK: u64 = 5;
    let skus = [sku_in("sale", 1), sku_in("sale", 2)];
    let spec = sale_spec(&skus, STOCK, T0_MS);
    runtime
        .block_on(nodes[0].engine.create_promotion(spec))
        .expect("created on A");
    for partition in 0..PARTITIONS {
        nodes[0].take(&runtime, partition);
    }
    let flushers = nodes.each_ref().map(|n| {
        let source: Arc<dyn seckill_persistence::sql::EventSource> = n.journal.clone();
        runtime
            .block_on(seckill_persistence::sql::Flusher::start(
                sql_common::options(db.flusher_url()),
                source,
                n.engine.clone(),
            ))
            .expect("the flusher starts")
    });
    // Each order with the node that owns its item at the end: sku 0's partition moves to B.
    let mut orders: Vec<(String, usize)> = Vec::new();
    for n in 0..3 {
        for (i, sku) in skus.iter().enumerate() {
            let order = nodes[0]
                .buy(&runtime, sku, &format!("u{n}"))
                .expect("A sells");
            orders.push((order, usize::from(i == 0)));
        }
    }
    nodes[0].release(&runtime, 1);
    nodes[1].take(&runtime, 1);
    for n in 3..5 {
        let user = format!("u{n}");
        orders.push((nodes[1].buy(&runtime, &skus[0], &user).expect("B sells"), 1));
        orders.push((nodes[0].buy(&runtime, &skus[1], &user).expect("A sells"), 0));
    }
    // Every order as its owner has it now, in SQL exactly once.
    let mut expected: Vec<sql_common::OrderRow> = orders
        .iter()
        .map(|(id, owner)| {
            let order = runtime
                .block_on(nodes[*owner].engine.order(id, None))
                .expect("its owner reads it");
            sql_common::OrderRow::of(&order)
        })
        .collect();
    expected.sort_by(|x, y| x.order_id.cmp(&y.order_id));
    let started = Instant::now();
    let rows = loop {
        let rows = runtime.block_on(db.orders());
        if rows == expected || started.elapsed() > WAIT_MAX {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "SQL held all {} orders {:?} after the last sale",
        rows.len(),
        started.elapsed()
    );
    assert_eq!(
        rows, expected,
        "every order in SQL once, as its owner has it"
    );
    // Each item's row by its owner: all sold (reserved), A's figure of the item it handed
    // over replaced by B's.
    let expected_items: Vec<sql_common::ItemRow> = {
        let mut items: Vec<_> = skus
            .iter()
            .map(|sku| sql_common::ItemRow {
                promotion_id: "sale".into(),
                sku: sku.clone(),
                stock: STOCK as i64,
                remaining: 0,
                reserved: STOCK as i64,
                sold: 0,
                tokens_issued: 0,
                tokens_outstanding: 0,
            })
            .collect();
        items.sort_by(|x, y| x.sku.cmp(&y.sku));
        items
    };
    let started = Instant::now();
    let items = loop {
        let mut items = runtime.block_on(db.items());
        items.sort_by(|x, y| x.sku.cmp(&y.sku));
        if items == expected_items || started.elapsed() > WAIT_MAX {
            break items;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        items, expected_items,
        "each item's row is its owner's figures"
    );
    let cursors = runtime.block_on(db.lane_cursors());
    let lanes: Vec<i64> = cursors.iter().map(|(lane, _)| *lane).collect();
    assert!(
        [1, 3, 4].iter().all(|lane| lanes.contains(lane)),
        "the catalog lane and both partitions' lanes have cursors: {cursors:?}"
    );
    for flusher in flushers {
        runtime
            .block_on(flusher.shutdown(Duration::from_secs(20)))
            .expect("the flusher drains");
    }
    for node in &nodes {
        runtime.block_on(node.engine.shutdown()).expect("stops");
        node.journal.release_all();
    }
    runtime.block_on(db.cleanup());
    t.clean_up();
}
