//! A cluster's catalog is one (cluster plan, step 4): engines that share one catalog log
//! append their creates, starts and stops on the condition that the log still ends where
//! their catalog does, and apply the log in its order. Two creates that share a SKU, raced
//! on two nodes, never both succeed; the same create on another node is a retry; a change
//! made on one node is applied by the other; an append whose answer was lost is resolved by
//! what the log holds at its position.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{config, ports, request, spec, T0_MS, WINDOW_MS};
use seckill_engine::{
    item_key, partition_of, CatalogLog, ClusterPorts, Engine, EngineConfig, Error, ManualClock,
    MemoryCatalogLog, MemoryJournal, PartitionRecovery, PromotionStatus, Recovery, StaticOwnership,
};

const PARTITIONS: u32 = 2;

/// One cluster engine on its own journal and clock, over the shared catalog `log`.
struct Node {
    engine: Engine,
    journal: Arc<MemoryJournal>,
    ownership: Arc<StaticOwnership>,
}

fn node(log: &MemoryCatalogLog) -> Node {
    node_with(log, config(2))
}

fn node_with(log: &MemoryCatalogLog, config: EngineConfig) -> Node {
    let clock = ManualClock::new(T0_MS);
    let journal = MemoryJournal::with_partitions(PARTITIONS);
    let ownership = StaticOwnership::all_held(PARTITIONS);
    let cluster = ClusterPorts {
        ownership: ownership.clone(),
        catalog_log: Some(Arc::new(log.clone())),
    };
    let engine = Engine::start_cluster(config, ports(&clock, &journal), cluster, Recovery::empty())
        .expect("starts");
    Node {
        engine,
        journal,
        ownership,
    }
}

impl Node {
    /// Takes `partition` (empty lane) under `epoch`, after the catalog caught up with `log`.
    async fn take(&self, log: &MemoryCatalogLog, partition: u32, epoch: u64) -> usize {
        self.ownership.hold(partition, epoch);
        let part = self
            .engine
            .build_partition(empty_lane(partition, epoch, log.last_seq()))
            .expect("built");
        self.engine.adopt_partition(part).await.expect("adopted")
    }

    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .engine
            .public_promotions()
            .into_iter()
            .map(|p| p.id)
            .collect();
        ids.sort();
        ids
    }
}

fn empty_lane(partition: u32, epoch: u64, catalog_seq: u64) -> PartitionRecovery {
    PartitionRecovery {
        partition,
        items: Vec::new(),
        through_seq: 0,
        batches: Box::new(std::iter::empty()),
        epoch,
        catalog_seq,
    }
}

#[tokio::test]
async fn two_creates_sharing_a_sku_raced_on_two_nodes_never_both_succeed() {
    let log = MemoryCatalogLog::new();
    let (a, b) = (node(&log), node(&log));
    for round in 0..100 {
        let sku = format!("s{round}");
        // Both appends wait for each other: each was validated against the same catalog.
        log.rendezvous(2);
        let (on_a, on_b) = tokio::join!(
            a.engine
                .create_promotion(spec(&format!("a{round}"), &[(&sku, 5, 1)], false)),
            b.engine
                .create_promotion(spec(&format!("b{round}"), &[(&sku, 5, 1)], false)),
        );
        let outcomes = [on_a, on_b];
        let created = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(created, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Err(Error::SkuInOtherPromotion { .. }))),
            "round {round}: the loser sees the winner's promotion: {outcomes:?}"
        );
    }
    a.engine.catch_up_catalog().await.expect("caught up");
    b.engine.catch_up_catalog().await.expect("caught up");
    assert_eq!(a.ids().len(), 100);
    assert_eq!(a.ids(), b.ids(), "both catalogs hold the same promotions");
    assert_eq!(
        log.last_seq(),
        100,
        "one entry per round: the loser appended nothing"
    );
    assert_eq!(a.engine.catalog_seq(), 100);
    assert_eq!(b.engine.catalog_seq(), 100);
}

#[tokio::test]
async fn a_create_repeated_on_another_node_is_a_retry_and_another_body_is_refused() {
    let log = MemoryCatalogLog::new();
    let (a, b) = (node(&log), node(&log));
    let body = spec("p1", &[("sku", 5, 1)], false);
    assert!(
        a.engine
            .create_promotion(body.clone())
            .await
            .expect("created")
            .created
    );
    // B has not heard of p1: its append is behind, and what it catches up is the same body.
    let again = b
        .engine
        .create_promotion(body.clone())
        .await
        .expect("a retry");
    assert!(!again.created, "the same body on another node is a retry");
    let mut other = body;
    other.name = "another name".into();
    assert_eq!(
        b.engine.create_promotion(other).await.map(|c| c.created),
        Err(Error::AlreadyExists)
    );
    assert_eq!(log.last_seq(), 1, "only the first create is in the log");
}

#[tokio::test]
async fn a_start_and_a_stop_on_one_node_are_applied_by_the_other() {
    let log = MemoryCatalogLog::new();
    let (a, b) = (node(&log), node(&log));
    let mut later = spec("p1", &[("sku", 5, 1)], false);
    later.starts_at_ms = T0_MS + WINDOW_MS;
    later.ends_at_ms = T0_MS + 2 * WINDOW_MS;
    a.engine.create_promotion(later).await.expect("created");
    assert_eq!(b.engine.catch_up_catalog().await, Ok(1));
    let status = |n: &Node| n.engine.public_promotion("p1").expect("known").status;
    assert_eq!(status(&b), PromotionStatus::Upcoming);

    a.engine.start_promotion("p1").await.expect("started");
    assert_eq!(
        status(&b),
        PromotionStatus::Upcoming,
        "not applied before B reads the log"
    );
    assert_eq!(b.engine.catch_up_catalog().await, Ok(2));
    assert_eq!(status(&b), PromotionStatus::Live);

    // B's start changes nothing now that it knows: nothing is appended.
    b.engine.start_promotion("p1").await.expect("live already");
    assert_eq!(log.last_seq(), 2);

    b.engine.stop_promotion("p1").await.expect("stopped");
    assert_eq!(a.engine.catch_up_catalog().await, Ok(3));
    assert_eq!(status(&a), PromotionStatus::Ended);
    assert_eq!(
        a.engine.start_promotion("p1").await.map(drop),
        Err(Error::Ended),
        "A knows B's stop"
    );
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_resolved_by_what_the_log_holds() {
    let log = MemoryCatalogLog::new();
    let (a, b) = (node(&log), node(&log));

    // Written, answer lost: the entry at its position is ours.
    log.lose_next_answer(true);
    let landed = a
        .engine
        .create_promotion(spec("p1", &[("s1", 5, 1)], false))
        .await;
    assert!(landed.expect("resolved as created").created);
    assert_eq!(log.last_seq(), 1);

    // Not written, nothing at its position: unknown; the retry then creates it once.
    log.lose_next_answer(false);
    let lost = a
        .engine
        .create_promotion(spec("p2", &[("s2", 5, 1)], false))
        .await;
    assert_eq!(lost.map(|c| c.created), Err(Error::OutcomeUnknown));
    let retried = a
        .engine
        .create_promotion(spec("p2", &[("s2", 5, 1)], false))
        .await;
    assert!(retried.expect("created by the retry").created);
    assert_eq!(log.last_seq(), 2);

    // Not written, and another node's create shares its SKU: that one may land, and then
    // the retry finds the conflict; the unknown one never blocks the SKU for good.
    log.lose_next_answer(false);
    let lost = a
        .engine
        .create_promotion(spec("p3", &[("s3", 5, 1)], false))
        .await;
    assert_eq!(lost.map(|c| c.created), Err(Error::OutcomeUnknown));
    assert!(
        b.engine
            .create_promotion(spec("q3", &[("s3", 5, 1)], false))
            .await
            .expect("created")
            .created
    );
    assert!(matches!(
        a.engine
            .create_promotion(spec("p3", &[("s3", 5, 1)], false))
            .await,
        Err(Error::SkuInOtherPromotion { .. })
    ));

    // The answer lost while another entry took the position: not ours, decided again.
    assert!(
        b.engine
            .create_promotion(spec("q4", &[("s4", 5, 1)], false))
            .await
            .expect("created")
            .created
    );
    log.lose_next_answer(true);
    let behind = a
        .engine
        .create_promotion(spec("p5", &[("s5", 5, 1)], false))
        .await;
    assert!(behind.expect("created at the next position").created);

    b.engine.catch_up_catalog().await.expect("caught up");
    assert_eq!(a.ids(), vec!["p1", "p2", "p5", "q3", "q4"]);
    assert_eq!(a.ids(), b.ids());
    let creates = log
        .entries()
        .iter()
        .flat_map(|(_, events)| events.iter())
        .filter(|event| event.created_promotion().is_some())
        .count();
    assert_eq!(creates, 5, "every promotion is in the log once");
}

#[tokio::test]
async fn entries_without_catalog_events_move_the_position() {
    let log = MemoryCatalogLog::new();
    let a = node(&log);
    // A takeover record another writer left in the log.
    log.push(Vec::new());
    assert!(
        a.engine
            .create_promotion(spec("p1", &[("s1", 5, 1)], false))
            .await
            .expect("created")
            .created
    );
    assert_eq!(log.last_seq(), 2);
    assert_eq!(a.engine.catalog_seq(), 2);
}

#[tokio::test]
async fn a_partition_is_built_only_once_the_catalog_holds_its_takeover_and_takes_later_creates() {
    let log = MemoryCatalogLog::new();
    let (a, b) = (node(&log), node(&log));
    let sku = (0..64)
        .map(|n| format!("s{n}"))
        .find(|sku| partition_of(item_key("p1", sku), PARTITIONS) == 0)
        .expect("a sku in partition 0");
    b.engine
        .create_promotion(spec("p1", &[(&sku, 5, 1)], false))
        .await
        .expect("created");

    a.ownership.hold(0, 2);
    let behind = a.engine.build_partition(empty_lane(0, 2, log.last_seq()));
    assert!(matches!(behind, Err(Error::Unavailable(_))), "{behind:?}");
    a.engine.catch_up_catalog().await.expect("caught up");
    assert_eq!(
        a.take(&log, 0, 2).await,
        1,
        "p1's item of partition 0 is adopted"
    );
    let bought = a
        .engine
        .purchase("p1", &sku, "u1", request("r1", 1, None))
        .await
        .expect("bought on the owner");
    assert_eq!(bought.order.sku, sku);

    // A promotion B creates later reaches A's shards when A applies it.
    let sku2 = (0..64)
        .map(|n| format!("t{n}"))
        .find(|sku| partition_of(item_key("p2", sku), PARTITIONS) == 0)
        .expect("a sku in partition 0");
    b.engine
        .create_promotion(spec("p2", &[(&sku2, 5, 1)], false))
        .await
        .expect("created");
    a.engine.catch_up_catalog().await.expect("caught up");
    a.engine
        .purchase("p2", &sku2, "u1", request("r2", 1, None))
        .await
        .expect("the item of a promotion created on B is installed on A");
    let journaled = a.journal.batches();
    assert!(
        journaled
            .iter()
            .flat_map(|(_, events)| events.iter())
            .all(|e| e.created_promotion().is_none()),
        "catalog events go to the catalog log only"
    );
    assert!(!journaled.is_empty(), "the purchases are journaled");
}

#[test]
fn the_memory_log_appends_only_at_the_expected_position() {
    let log = MemoryCatalogLog::new();
    assert_eq!(log.append_if(0, &[]), Ok(1));
    assert_eq!(
        log.append_if(0, &[]),
        Err(seckill_engine::CatalogAppendError::Behind { last_seq: 1 })
    );
    assert_eq!(log.read_after(0).map(|e| e.len()), Ok(1));
    assert_eq!(log.read_after(1).map(|e| e.len()), Ok(0));
}

/// A bound on waits that must end at once; generous, since the machine is shared.
const MUST_ANSWER: Duration = Duration::from_secs(10);

/// A sku of promotion `promotion_id` whose item is in partition 0.
fn sku_in_partition_0(promotion_id: &str, prefix: &str) -> String {
    (0..64)
        .map(|n| format!("{prefix}{n}"))
        .find(|sku| partition_of(item_key(promotion_id, sku), PARTITIONS) == 0)
        .expect("a sku in partition 0")
}

async fn poll_once<F: Future>(mut call: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await
}

#[tokio::test]
async fn applying_another_node_s_create_never_waits_for_a_stuck_shard() {
    let log = MemoryCatalogLog::new();
    let small = EngineConfig {
        mailbox_capacity: 4,
        ..config(1)
    };
    let (a, b) = (node_with(&log, small), node(&log));
    let s0 = sku_in_partition_0("p1", "s");
    b.engine
        .create_promotion(spec("p1", &[(&s0, 100, 1)], false))
        .await
        .expect("created");
    a.engine.catch_up_catalog().await.expect("caught up");
    a.take(&log, 0, 2).await;
    // A's only shard gets stuck inside a journal append, its mailbox full behind it.
    a.journal.set_stalled(true);
    let users: Vec<String> = (0..8).map(|n| format!("u{n}")).collect();
    let mut queued = Vec::new();
    for user in &users {
        let mut call = Box::pin(a.engine.purchase("p1", &s0, user, request("r1", 1, None)));
        match poll_once(call.as_mut()).await {
            Poll::Pending => queued.push(call),
            Poll::Ready(Err(Error::Overloaded)) => break,
            Poll::Ready(other) => panic!("a purchase answered while stuck: {other:?}"),
        }
    }
    let t0 = sku_in_partition_0("p2", "t");
    b.engine
        .create_promotion(spec("p2", &[(&t0, 5, 1)], false))
        .await
        .expect("created");
    // Its item is for the stuck shard: the control thread applies the create without
    // waiting for it, so releases and creates behind it go on.
    let applied = tokio::time::timeout(MUST_ANSWER, a.engine.catch_up_catalog())
        .await
        .expect("applying the log does not wait for a stuck shard");
    assert_eq!(applied, Ok(2));
    assert!(a.engine.public_promotion("p2").is_ok(), "A knows p2");
    a.journal.set_stalled(false);
    for call in queued {
        tokio::time::timeout(MUST_ANSWER, call)
            .await
            .expect("answered")
            .expect("bought once the journal came back");
    }
    // The install reaches the shard once there is room; until then a call is "retry".
    let started = Instant::now();
    loop {
        match a
            .engine
            .purchase("p2", &t0, "v1", request("r1", 1, None))
            .await
        {
            Ok(bought) => {
                assert_eq!(bought.order.sku, t0);
                break;
            }
            Err(Error::Unavailable(_) | Error::Overloaded) => {
                assert!(started.elapsed() < MUST_ANSWER, "the install never arrives");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(other) => panic!("the item of p2 is refused: {other}"),
        }
    }
}

#[tokio::test]
async fn entries_read_off_the_control_thread_apply_in_order_and_a_gap_is_refused() {
    let log = MemoryCatalogLog::new();
    let (a, b) = (node(&log), node(&log));
    b.engine
        .create_promotion(spec("p1", &[("s1", 5, 1)], false))
        .await
        .expect("created");
    b.engine.start_promotion("p1").await.expect("live already");
    let entries = log.read_after(a.engine.catalog_seq()).expect("read");
    assert_eq!(a.engine.apply_catalog(entries.clone()).await, Ok(1));
    assert_eq!(
        a.engine.apply_catalog(entries).await,
        Ok(1),
        "applied already: skipped"
    );
    assert!(a.engine.public_promotion("p1").is_ok());
    let gap = a.engine.apply_catalog(vec![(3, Vec::new())]).await;
    assert!(matches!(gap, Err(Error::Unavailable(_))), "{gap:?}");
    assert_eq!(a.engine.catalog_seq(), 1, "nothing applied past the gap");
}
