//! A cluster engine installs and drops partitions while it runs (cluster plan, step 3): a
//! partition sold on one engine is rebuilt on another from its lane with the same stats,
//! orders and buyers; payment deadlines that passed during the failover expire in the adopt
//! itself; a release waits for the journal and loses no answered purchase; a partition not
//! installed, or whose lease is not held for sure, answers "not the owner", never a 404 and
//! never a sale; and a lane whose epoch is not older than the new ownership's is refused.

mod common;

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use common::watched::Watched;
use common::{config, request, spec, T0_MS};
use seckill_engine::{
    item_key, parse_order_id, partition_of, ClusterPorts, Engine, EngineConfig, Error, Event,
    ManualClock, MemoryJournal, NoClaims, NullSink, Order, OrderStatus, PartitionPart,
    PartitionRecovery, Ports, Purchased, Recovery, Released, StaticOwnership,
};

/// A bound on waits that must end at once; generous, since the machine is shared.
const MUST_ANSWER: Duration = Duration::from_secs(10);
/// Long enough to tell "waits" from "answered at once" on a loaded machine.
const HELD_BACK: Duration = Duration::from_millis(200);
/// The partitions of every journal and every ownership here.
const PARTITIONS: u32 = 2;

/// One engine on its own manual clock and watched journal of [`PARTITIONS`] partitions.
struct Node {
    engine: Engine,
    clock: Arc<ManualClock>,
    log: Arc<MemoryJournal>,
    journal: Arc<Watched>,
    /// The leases a cluster engine asks about (all held at first).
    ownership: Arc<StaticOwnership>,
}

impl Node {
    /// An engine that runs alone ([`Engine::start`]), its orders made under `epoch`.
    fn alone(shards: usize, now_ms: i64, epoch: u64) -> Node {
        let clock = ManualClock::new(now_ms);
        let log = MemoryJournal::with_partitions(PARTITIONS);
        let journal = Watched::new(&log);
        let recovery = Recovery {
            image: None,
            batches: Box::new(std::iter::empty()),
            epoch,
        };
        let engine =
            Engine::start(config(shards), ports(&clock, &journal), recovery).expect("starts");
        Node {
            engine,
            clock,
            log,
            journal,
            ownership: StaticOwnership::all_held(PARTITIONS),
        }
    }

    /// A cluster engine ([`Engine::start_cluster`]) whose catalog is `catalog`, with no
    /// partition installed.
    fn cluster(shards: usize, now_ms: i64, catalog: Recovery) -> Node {
        Node::cluster_with(config(shards), now_ms, catalog)
    }

    /// [`Node::cluster`] with an engine configuration of the test's own.
    fn cluster_with(config: EngineConfig, now_ms: i64, catalog: Recovery) -> Node {
        let clock = ManualClock::new(now_ms);
        let log = MemoryJournal::with_partitions(PARTITIONS);
        let journal = Watched::new(&log);
        let ownership = StaticOwnership::all_held(PARTITIONS);
        let cluster = ClusterPorts {
            ownership: ownership.clone(),
            catalog_log: None,
        };
        let engine = Engine::start_cluster(config, ports(&clock, &journal), cluster, catalog)
            .expect("starts");
        Node {
            engine,
            clock,
            log,
            journal,
            ownership,
        }
    }

    /// Builds `partition` from what `source` (a journal that has written its lane) hands
    /// over, and adopts it; the items adopted.
    async fn take(&self, source: &MemoryJournal, partition: u32) -> usize {
        let part = self
            .build(source.partition_recovery(partition))
            .expect("built");
        self.engine.adopt_partition(part).await.expect("adopted")
    }

    /// Takes the lease of the recovery's partition under the recovery's epoch (a new
    /// holding, as the journal's take does), then builds the partition.
    fn build(&self, recovery: PartitionRecovery) -> seckill_engine::Result<PartitionPart> {
        self.ownership.hold(recovery.partition, recovery.epoch);
        self.engine.build_partition(recovery)
    }

    /// Stalls the journal and hands over a purchase of `sku` of promotion "p" by u0, whose
    /// batch is then inside the append: the call, not answered yet.
    async fn purchase_into_a_stalled_append<'a>(
        &'a self,
        sku: &'a str,
    ) -> Pin<Box<impl Future<Output = seckill_engine::Result<Purchased>> + 'a>> {
        self.log.set_stalled(true);
        let appends = self.journal.appends_started();
        let mut call = Box::pin(self.engine.purchase("p", sku, "u0", request("r1", 1, None)));
        hand_over(call.as_mut()).await;
        self.wait_for_append(appends + 1).await;
        call
    }

    /// u0's retry of its request r1 for `sku` of promotion "p" answers `order`, made before.
    async fn assert_retry_finds(&self, sku: &str, order: Order) {
        let retry = self
            .engine
            .purchase("p", sku, "u0", request("r1", 1, None))
            .await
            .expect("the retry");
        assert_eq!((retry.created, retry.order), (false, order));
    }

    /// Reports the loss of the lease holding `partition` is adopted under.
    fn lose(&self, partition: u32) {
        let epoch = self
            .engine
            .partition_epoch(partition)
            .expect("adopted under a holding");
        self.engine.lose_partition(partition, epoch);
    }

    /// One unit, bought without a token: the new order.
    async fn buy(&self, promotion_id: &str, sku: &str, user_id: &str, request_id: &str) -> Order {
        let bought = self
            .engine
            .purchase(promotion_id, sku, user_id, request(request_id, 1, None))
            .await
            .expect("bought");
        assert!(bought.created, "a new order");
        bought.order
    }

    /// Waits until a shard is inside the journal's `count`th append.
    async fn wait_for_append(&self, count: u64) {
        let started = Instant::now();
        while self.journal.appends_started() < count {
            assert!(started.elapsed() < MUST_ANSWER, "the shard never appended");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until `partition` is no longer installed here (a release under way is past its
    /// first step).
    async fn wait_until_not_owned(&self, partition: u32) {
        let started = Instant::now();
        while self.engine.owned_partitions().contains(&partition) {
            assert!(
                started.elapsed() < MUST_ANSWER,
                "the partition stayed owned"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn events(&self) -> Vec<Event> {
        self.log
            .batches()
            .into_iter()
            .flat_map(|(_, events)| events)
            .collect()
    }

    /// The orders this node's log placed for `user_id`.
    fn placed_by(&self, user_id: &str) -> Vec<Order> {
        self.events()
            .into_iter()
            .filter_map(|event| match event {
                Event::OrderPlaced { order, .. } if order.user_id == user_id => Some(order),
                _ => None,
            })
            .collect()
    }

    /// The orders this node's log expired.
    fn expired(&self) -> Vec<Order> {
        self.events()
            .into_iter()
            .filter_map(|event| match event {
                Event::OrderExpired { order, .. } => Some(order),
                _ => None,
            })
            .collect()
    }

    /// Every order this node's log placed, as it reads now.
    async fn orders_now(&self) -> Vec<Order> {
        let mut orders = Vec::new();
        for event in self.events() {
            if let Event::OrderPlaced { order, .. } = event {
                let now = self
                    .engine
                    .order(&order.order_id, None)
                    .await
                    .expect("read");
                orders.push(now);
            }
        }
        orders
    }
}

fn ports(clock: &Arc<ManualClock>, journal: &Arc<Watched>) -> Ports {
    Ports {
        journal: journal.clone(),
        clock: clock.clone(),
        sink: Arc::new(NullSink),
    }
}

/// `count` skus of promotion `promotion_id` whose items are in `partition`.
fn skus_in(promotion_id: &str, partition: u32, count: usize) -> Vec<String> {
    let skus: Vec<String> = (0..256)
        .map(|n| format!("{promotion_id}-s{n}"))
        .filter(|sku| partition_of(item_key(promotion_id, sku), PARTITIONS) == partition)
        .take(count)
        .collect();
    assert_eq!(skus.len(), count, "enough skus fall in each partition");
    skus
}

fn sku_in(promotion_id: &str, partition: u32) -> String {
    skus_in(promotion_id, partition, 1).remove(0)
}

/// Polls `call` once: far enough to hand its command over (an engine call does that before
/// its first wait), not to its answer.
async fn hand_over<F: Future>(mut call: Pin<&mut F>) {
    std::future::poll_fn(|cx| {
        assert!(
            call.as_mut().poll(cx).is_pending(),
            "answered while the journal was held"
        );
        Poll::Ready(())
    })
    .await;
}

fn epoch_of(order: &Order) -> u64 {
    parse_order_id(&order.order_id).expect("an order id").epoch
}

#[tokio::test]
async fn a_partition_moves_to_another_engine_with_its_stats_orders_and_buyers() {
    let a = Node::alone(1, T0_MS, 1);
    let p0 = skus_in("p", 0, 2);
    let (a0, b0) = (p0[0].as_str(), p0[1].as_str());
    let a1 = sku_in("p", 1);
    a.engine
        .create_promotion(spec(
            "p",
            &[(a0, 5, 2), (b0, 3, 1), (a1.as_str(), 5, 2)],
            false,
        ))
        .await
        .expect("created");
    let u1_a0 = a.buy("p", a0, "u1", "r1").await;
    a.buy("p", &a1, "u1", "r1").await;
    for user in ["u2", "u3", "u4"] {
        a.buy("p", b0, user, "r1").await;
    }
    a.engine
        .pay(&u1_a0.order_id, "pay-1", None)
        .await
        .expect("paid");
    // Three strikes for s: two in partition 0, one in partition 1.
    for (sku, request_id) in [(a0, "s1"), (a0, "s2"), (a1.as_str(), "s3")] {
        let order = a.buy("p", sku, "s", request_id).await;
        a.engine
            .cancel(&order.order_id, Some("s"))
            .await
            .expect("cancelled");
    }
    assert_eq!(
        a.engine.token_precheck("p", a0, "s", &NoClaims).map(|_| ()),
        Err(Error::Banned)
    );
    let orders = a.orders_now().await;
    let stats = a.engine.promotion_stats("p").await.expect("stats");

    // Three shards here, one there: the items are spread anew.
    let b = Node::cluster(3, T0_MS, a.log.catalog_recovery());
    assert_eq!(
        b.engine
            .purchase("p", a0, "x", request("r1", 1, None))
            .await
            .map(|_| ()),
        Err(Error::NotOwner { partition: 0 }),
        "nothing installed yet: not the owner, never a 404"
    );
    assert_eq!(
        b.engine.order(&u1_a0.order_id, None).await.map(|_| ()),
        Err(Error::NotOwner { partition: 0 })
    );
    assert!(b.engine.owned_partitions().is_empty());

    let part1 = b
        .build(a.log.partition_recovery(1))
        .expect("partition 1 built");
    let part0 = b
        .build(a.log.partition_recovery(0))
        .expect("partition 0 built");
    assert_eq!((part0.items(), part1.items()), (2, 1));
    let epoch0 = part0.epoch();
    assert_eq!(b.engine.adopt_partition(part0).await, Ok(2));
    assert_eq!(
        b.engine.token_precheck("p", a0, "s", &NoClaims).map(|_| ()),
        Ok(()),
        "partition 0's two strikes are on the board; partition 1, built, bans nobody yet"
    );
    assert_eq!(b.engine.adopt_partition(part1).await, Ok(1));
    assert_eq!(
        b.engine.token_precheck("p", a0, "s", &NoClaims).map(|_| ()),
        Err(Error::Banned),
        "all three strikes count once partition 1 is adopted"
    );
    assert_eq!(b.engine.owned_partitions(), vec![0, 1]);

    assert_eq!(b.engine.promotion_stats("p").await, Ok(stats));
    for order in &orders {
        assert_eq!(
            b.engine.order(&order.order_id, None).await.as_ref(),
            Ok(order)
        );
    }
    // The buyers came along: a retry answers its original order, not a new one.
    let retry = b
        .engine
        .purchase("p", a0, "u1", request("r1", 1, None))
        .await
        .expect("u1's retry");
    assert!(!retry.created);
    assert_eq!(retry.order.order_id, u1_a0.order_id);
    assert_eq!(retry.order.status, OrderStatus::Paid);
    let sold_out_retry = b
        .engine
        .purchase("p", b0, "u3", request("r1", 1, None))
        .await
        .expect("a buyer of the sold-out item gets their order back");
    assert!(!sold_out_retry.created);
    assert_eq!(
        b.engine
            .purchase("p", b0, "u5", request("r1", 1, None))
            .await
            .map(|_| ()),
        Err(Error::SoldOut)
    );
    // A new order is made under the new ownership's epoch: no id of A's comes again.
    let fresh = b.buy("p", a0, "u9", "r1").await;
    assert_eq!(epoch_of(&fresh), epoch0);
    assert!(orders.iter().all(|order| epoch_of(order) < epoch0));
    assert_eq!(b.placed_by("u9").len(), 1, "in B's journal");
    assert!(a.placed_by("u9").is_empty());

    // A release takes the partition's strikes off the board with it.
    let released = b.engine.release_partition(1).await.expect("released");
    assert_eq!(
        released,
        Released {
            partition: 1,
            items: 1,
            waited_out: false,
        }
    );
    assert_eq!(
        b.engine.token_precheck("p", a0, "s", &NoClaims).map(|_| ()),
        Ok(()),
        "partition 1's strike left with it"
    );
    a.engine.shutdown().await.expect("shutdown");
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn deadlines_that_passed_during_the_failover_expire_in_the_adopt() {
    let a = Node::alone(1, T0_MS, 1);
    let sku = sku_in("p", 1);
    a.engine
        .create_promotion(spec("p", &[(sku.as_str(), 2, 1)], false))
        .await
        .expect("created");
    let late = a.buy("p", &sku, "late", "r1").await;
    let paid = a.buy("p", &sku, "payer", "r1").await;
    a.engine
        .pay(&paid.order_id, "pay-1", None)
        .await
        .expect("paid");
    assert_eq!(late.pay_before_ms, T0_MS + 900_000);

    // The next owner starts after the deadline, and nobody ticks.
    let after = late.pay_before_ms + 1_000;
    let b = Node::cluster(2, after, a.log.catalog_recovery());
    assert_eq!(b.take(&a.log, 1).await, 1);
    // Looked at before any other command reaches a shard: the adopt's own batch journaled it.
    let expired = b.expired();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].order_id, late.order_id);
    assert_eq!(expired[0].closed_at_ms, Some(after));
    assert!(a.expired().is_empty(), "A never expired it");

    let read = b.engine.order(&late.order_id, None).await.expect("read");
    assert_eq!(read.status, OrderStatus::Expired);
    let read = b.engine.order(&paid.order_id, None).await.expect("read");
    assert_eq!(read.status, OrderStatus::Paid, "a paid order stays paid");
    let stats = b.engine.promotion_stats("p").await.expect("stats");
    let item = &stats.items[0];
    assert_eq!(
        (item.remaining, item.reserved, item.sold),
        (1, 0, 1),
        "the expired unit is back"
    );
    a.engine.shutdown().await.expect("shutdown");
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_token_keeps_its_expiry_on_the_next_owner() {
    let a = Node::alone(1, T0_MS, 1);
    let sku = sku_in("t", 0);
    a.engine
        .create_promotion(spec("t", &[(sku.as_str(), 5, 1)], true))
        .await
        .expect("created");
    let kept = a.engine.issue_token("t", &sku, "tk").await.expect("token");
    let unused = a
        .engine
        .issue_token("t", &sku, "late")
        .await
        .expect("token");

    let b = Node::cluster(1, T0_MS + 30_000, a.log.catalog_recovery());
    b.take(&a.log, 0).await;
    let bought = b
        .engine
        .purchase("t", &sku, "tk", request("r1", 1, Some(kept.token)))
        .await
        .expect("a token from the old owner is good until its own expiry");
    assert!(bought.created);
    b.clock.set_ms(unused.expires_at_ms);
    assert_eq!(
        b.engine
            .purchase("t", &sku, "late", request("r1", 1, Some(unused.token)))
            .await
            .map(|_| ()),
        Err(Error::TokenInvalid),
        "and no longer"
    );
    a.engine.shutdown().await.expect("shutdown");
    b.engine.shutdown().await.expect("shutdown");
}

/// A cluster node of one shard that owns both partitions, with promotion "p" of one item in
/// each: (the sku in partition 0, the sku in partition 1).
async fn owning_both() -> (Node, String, String) {
    owning_both_with(config(1)).await
}

/// [`owning_both`] run by `config`.
async fn owning_both_with(config: EngineConfig) -> (Node, String, String) {
    let node = Node::cluster_with(config, T0_MS, Recovery::empty());
    assert_eq!(node.take(&node.log, 0).await, 0);
    assert_eq!(node.take(&node.log, 1).await, 0);
    let (a0, c1) = (sku_in("p", 0), sku_in("p", 1));
    let creation = node
        .engine
        .create_promotion(spec(
            "p",
            &[(a0.as_str(), 10, 1), (c1.as_str(), 10, 1)],
            false,
        ))
        .await
        .expect("created");
    assert!(creation.created);
    (node, a0, c1)
}

#[tokio::test]
async fn a_release_waits_for_a_stalled_journal_and_answers_every_accepted_purchase() {
    let (b, a0, c1) = owning_both().await;
    b.log.set_stalled(true);
    let appends = b.journal.appends_started();
    let mut first = pin!(b.engine.purchase("p", &a0, "u0", request("r1", 1, None)));
    hand_over(first.as_mut()).await;
    b.wait_for_append(appends + 1).await;
    let mut second = pin!(b.engine.purchase("p", &a0, "u1", request("r1", 1, None)));
    let mut third = pin!(b.engine.purchase("p", &a0, "u2", request("r1", 1, None)));
    let mut other = pin!(b.engine.purchase("p", &c1, "u3", request("r1", 1, None)));
    hand_over(second.as_mut()).await;
    hand_over(third.as_mut()).await;
    hand_over(other.as_mut()).await;

    let mut release = pin!(b.engine.release_partition(0));
    hand_over(release.as_mut()).await;
    b.wait_until_not_owned(0).await;
    // From then on the partition is refused at once, stalled journal or not.
    let refused = tokio::time::timeout(
        MUST_ANSWER,
        b.engine.purchase("p", &a0, "late", request("r1", 1, None)),
    )
    .await
    .expect("answered without the shard");
    assert_eq!(refused.map(|_| ()), Err(Error::NotOwner { partition: 0 }));
    assert!(
        tokio::time::timeout(HELD_BACK, release.as_mut())
            .await
            .is_err(),
        "released while accepted purchases waited for the journal"
    );

    b.log.set_stalled(false);
    let released = tokio::time::timeout(MUST_ANSWER, release)
        .await
        .expect("released once the journal is back")
        .expect("released");
    assert_eq!(
        released,
        Released {
            partition: 0,
            items: 1,
            waited_out: false,
        }
    );
    for (answer, user) in [
        (first.await, "u0"),
        (second.await, "u1"),
        (third.await, "u2"),
        (other.await, "u3"),
    ] {
        let bought = answer.unwrap_or_else(|error| panic!("{user}'s purchase: {error}"));
        assert!(bought.created);
        assert_eq!(
            b.placed_by(user),
            vec![bought.order.clone()],
            "{user}'s answered order is in the log"
        );
    }
    assert!(b.placed_by("late").is_empty());
    assert_eq!(b.engine.owned_partitions(), vec![1]);
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_release_waits_for_an_append_the_journal_is_still_writing() {
    let (b, a0, _) = owning_both().await;
    b.journal.hold_next.store(true, Ordering::SeqCst);
    let held = b
        .engine
        .purchase("p", &a0, "u0", request("r1", 1, None))
        .await;
    assert_eq!(
        held.map(|_| ()),
        Err(Error::OutcomeUnknown),
        "its batch is still being written"
    );
    let mut release = pin!(b.engine.release_partition(0));
    hand_over(release.as_mut()).await;
    assert!(
        tokio::time::timeout(HELD_BACK, release.as_mut())
            .await
            .is_err(),
        "let memory go that is ahead of the log"
    );
    b.journal.release();
    let released = tokio::time::timeout(MUST_ANSWER, release)
        .await
        .expect("released once the batch landed")
        .expect("released");
    assert_eq!(
        released,
        Released {
            partition: 0,
            items: 1,
            waited_out: false,
        }
    );
    assert_eq!(b.placed_by("u0").len(), 1, "the held batch landed");

    // The next owner replays it: the purchase's retry answers the order it placed.
    let c = Node::cluster(1, T0_MS, b.log.catalog_recovery());
    c.take(&b.log, 0).await;
    let retry = c
        .engine
        .purchase("p", &a0, "u0", request("r1", 1, None))
        .await
        .expect("the retry on the next owner");
    assert!(!retry.created);
    assert_eq!(vec![retry.order], b.placed_by("u0"));
    b.engine.shutdown().await.expect("shutdown");
    c.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn after_a_release_every_call_for_the_partition_answers_not_owner() {
    let (b, a0, c1) = owning_both().await;
    let order = b.buy("p", &a0, "u1", "r1").await;
    assert_eq!(
        b.engine.release_partition(0).await,
        Ok(Released {
            partition: 0,
            items: 1,
            waited_out: false,
        })
    );
    let not_owner = Err(Error::NotOwner { partition: 0 });
    assert_eq!(
        b.engine
            .purchase("p", &a0, "u2", request("r1", 1, None))
            .await
            .map(|_| ()),
        not_owner
    );
    assert_eq!(
        b.engine
            .purchase("p", &a0, "u1", request("r1", 1, None))
            .await
            .map(|_| ()),
        not_owner,
        "a retry is the next owner's to answer"
    );
    assert_eq!(
        b.engine.order(&order.order_id, None).await.map(|_| ()),
        not_owner
    );
    assert_eq!(
        b.engine
            .order(&order.order_id, Some("u1"))
            .await
            .map(|_| ()),
        not_owner
    );
    assert_eq!(
        b.engine
            .pay(&order.order_id, "pay-1", None)
            .await
            .map(|_| ()),
        not_owner
    );
    assert_eq!(
        b.engine
            .cancel(&order.order_id, Some("u1"))
            .await
            .map(|_| ()),
        not_owner
    );
    assert_eq!(
        b.engine.issue_token("p", &a0, "u3").await.map(|_| ()),
        not_owner
    );
    assert_eq!(
        b.engine.promotion_stats("p").await.map(|_| ()),
        not_owner,
        "no figures for what is not this node's"
    );
    assert!(
        b.engine.snapshot().await.is_err(),
        "a cluster node takes no whole-engine image"
    );
    // The other partition is untouched.
    b.buy("p", &c1, "u2", "r1").await;
    assert_eq!(b.engine.owned_partitions(), vec![1]);
    assert_eq!(
        b.engine.release_partition(0).await,
        Ok(Released {
            partition: 0,
            items: 0,
            waited_out: false,
        }),
        "a partition not installed is released at once"
    );
    assert_eq!(b.placed_by("u1"), vec![order.clone()]);

    // Taken back from its lane, it has the order again.
    b.take(&b.log, 0).await;
    let retry = b
        .engine
        .purchase("p", &a0, "u1", request("r1", 1, None))
        .await
        .expect("the retry");
    assert!(!retry.created);
    assert_eq!(retry.order, order);
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_lost_partition_is_refused_at_once_and_can_be_taken_again() {
    let (b, a0, c1) = owning_both().await;
    let order = b.buy("p", &a0, "u1", "r1").await;
    b.lose(0);
    assert_eq!(
        b.engine
            .purchase("p", &a0, "u2", request("r1", 1, None))
            .await
            .map(|_| ()),
        Err(Error::NotOwner { partition: 0 }),
        "refused from the call on"
    );
    assert_eq!(b.engine.owned_partitions(), vec![1]);
    b.buy("p", &c1, "u2", "r1").await;
    // The drop runs before this adopt: an adopt of a partition still installed is refused.
    b.take(&b.log, 0).await;
    let retry = b
        .engine
        .purchase("p", &a0, "u1", request("r1", 1, None))
        .await
        .expect("the retry");
    assert_eq!((retry.created, retry.order), (false, order));
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_purchase_queued_before_a_loss_never_sells_even_with_the_lease_back() {
    let (b, a0, c1) = owning_both().await;
    b.log.set_stalled(true);
    let appends = b.journal.appends_started();
    let mut blocking = pin!(b.engine.purchase("p", &c1, "u0", request("r1", 1, None)));
    hand_over(blocking.as_mut()).await;
    b.wait_for_append(appends + 1).await;
    // Routed while partition 0 was owned: it waits in the shard's mailbox.
    let mut queued = pin!(b.engine.purchase("p", &a0, "u1", request("r1", 1, None)));
    hand_over(queued.as_mut()).await;
    // The lease is lost (and, as far as the ownership can tell, held again by the time the
    // shard reads its mailbox: the test's ownership never stops saying "held").
    b.lose(0);
    b.log.set_stalled(false);
    let blocked = tokio::time::timeout(MUST_ANSWER, blocking)
        .await
        .expect("answered once the journal is back")
        .expect("the other partition sells");
    assert!(blocked.created);
    let answer = tokio::time::timeout(MUST_ANSWER, queued)
        .await
        .expect("answered");
    assert_eq!(
        answer.map(|_| ()),
        Err(Error::NotOwner { partition: 0 }),
        "a partition being dropped decided a purchase"
    );
    assert!(
        b.placed_by("u1").is_empty(),
        "the refused purchase is in the log"
    );
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_create_while_a_partition_is_not_owned_installs_nothing_of_it() {
    let b = Node::cluster(2, T0_MS, Recovery::empty());
    b.take(&b.log, 0).await;
    let (q0, q1) = (sku_in("q", 0), sku_in("q", 1));
    b.engine
        .create_promotion(spec(
            "q",
            &[(q0.as_str(), 5, 1), (q1.as_str(), 5, 1)],
            false,
        ))
        .await
        .expect("created");
    b.buy("q", &q0, "u1", "r1").await;
    assert_eq!(
        b.engine
            .purchase("q", &q1, "u1", request("r1", 1, None))
            .await
            .map(|_| ()),
        Err(Error::NotOwner { partition: 1 })
    );

    let part = b.build(b.log.partition_recovery(1)).expect("built");
    assert_eq!(part.items(), 1, "q's item of partition 1, fresh");
    // A promotion created between the build and the adopt.
    let r1 = sku_in("r", 1);
    b.engine
        .create_promotion(spec("r", &[(r1.as_str(), 3, 1)], false))
        .await
        .expect("created");
    // Had either create installed an item of partition 1, the adopt would find it there
    // and be refused.
    assert_eq!(
        b.engine.adopt_partition(part).await,
        Ok(2),
        "q's and r's items of partition 1"
    );
    b.buy("q", &q1, "u1", "r1").await;
    b.buy("r", &r1, "u1", "r1").await;
    let q = b.engine.promotion_stats("q").await.expect("stats");
    let remaining: Vec<u64> = q.items.iter().map(|item| item.remaining).collect();
    assert_eq!(remaining, vec![4, 4], "each fresh, one sold");
    let r = b.engine.promotion_stats("r").await.expect("stats");
    assert_eq!(r.items[0].remaining, 2);
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_lane_whose_epoch_is_not_older_than_the_ownership_is_refused() {
    let a = Node::alone(1, T0_MS, 9);
    let sku = sku_in("p", 0);
    a.engine
        .create_promotion(spec("p", &[(sku.as_str(), 5, 1)], false))
        .await
        .expect("created");
    let order = a.buy("p", &sku, "u1", "r1").await;
    assert_eq!(epoch_of(&order), 9);
    let b = Node::cluster(1, T0_MS, a.log.catalog_recovery());
    let refused_epoch = |built: seckill_engine::Result<PartitionPart>| {
        assert!(
            matches!(&built, Err(Error::Unavailable(message)) if message.contains("epoch")),
            "{built:?}"
        );
    };
    let mut recovery = a.log.partition_recovery(0);
    recovery.epoch = 9;
    refused_epoch(b.build(recovery));

    // The same from a snapshot: its items hold the order, the lane after it nothing.
    a.engine.snapshot().await.expect("snapshot");
    let mut recovery = a.log.partition_recovery(0);
    assert_eq!(recovery.items.len(), 1);
    recovery.epoch = 9;
    refused_epoch(b.build(recovery));
    assert!(b.engine.owned_partitions().is_empty());

    let mut recovery = a.log.partition_recovery(0);
    recovery.epoch = 10;
    let part = b.build(recovery).expect("a newer epoch");
    b.engine.adopt_partition(part).await.expect("adopted");
    let retry = b
        .engine
        .purchase("p", &sku, "u1", request("r1", 1, None))
        .await
        .expect("the retry");
    assert_eq!(retry.order, order);
    assert_eq!(epoch_of(&b.buy("p", &sku, "u2", "r1").await), 10);
    a.engine.shutdown().await.expect("shutdown");
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn an_event_the_catalog_does_not_know_is_refused_not_a_panic() {
    let a = Node::alone(1, T0_MS, 1);
    let sku = sku_in("p", 1);
    a.engine
        .create_promotion(spec("p", &[(sku.as_str(), 5, 1)], false))
        .await
        .expect("created");
    a.buy("p", &sku, "u1", "r1").await;
    // A catalog that does not hold "p" yet.
    let b = Node::cluster(1, T0_MS, Recovery::empty());
    let built = b.build(a.log.partition_recovery(1));
    assert!(
        matches!(&built, Err(Error::Unavailable(message)) if message.contains("catalog behind")),
        "{built:?}"
    );
    assert!(b.engine.owned_partitions().is_empty());
    a.engine.shutdown().await.expect("shutdown");
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_partition_whose_lease_is_not_held_for_sure_answers_not_owner() {
    let (b, a0, _) = owning_both().await;
    let order = b.buy("p", &a0, "u1", "r1").await;
    b.ownership.set_held(0, false);
    let not_owner = Err(Error::NotOwner { partition: 0 });
    assert_eq!(
        b.engine
            .purchase("p", &a0, "u2", request("r1", 1, None))
            .await
            .map(|_| ()),
        not_owner
    );
    assert_eq!(
        b.engine.order(&order.order_id, None).await.map(|_| ()),
        not_owner,
        "not even a read from memory"
    );
    assert_eq!(
        b.engine
            .pay(&order.order_id, "pay-1", None)
            .await
            .map(|_| ()),
        not_owner
    );
    assert_eq!(b.engine.promotion_stats("p").await.map(|_| ()), not_owner);
    assert_eq!(
        b.engine.owned_partitions(),
        vec![0, 1],
        "installed all the same"
    );
    b.ownership.set_held(0, true);
    assert_eq!(b.engine.order(&order.order_id, None).await, Ok(order));

    // A purchase that passed the engine's check and waited in the mailbox while the lease
    // lapsed is refused by the shard: nothing decided.
    b.log.set_stalled(true);
    let appends = b.journal.appends_started();
    let mut first = pin!(b.engine.purchase("p", &a0, "u2", request("r1", 1, None)));
    hand_over(first.as_mut()).await;
    b.wait_for_append(appends + 1).await;
    let mut queued = pin!(b.engine.purchase("p", &a0, "u3", request("r1", 1, None)));
    hand_over(queued.as_mut()).await;
    b.ownership.set_held(0, false);
    b.log.set_stalled(false);
    let first = first.await.expect("decided before the lease lapsed");
    assert!(first.created);
    assert_eq!(queued.await.map(|_| ()), not_owner);
    assert_eq!(b.placed_by("u2"), vec![first.order]);
    assert!(
        b.placed_by("u3").is_empty(),
        "the queued purchase sold nothing"
    );
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn items_decide_only_under_the_lease_holding_they_were_adopted_under() {
    let (b, a0, c1) = owning_both().await;
    let order = b.buy("p", &a0, "u1", "r1").await;
    let adopted_under = b.engine.partition_epoch(0).expect("adopted");
    // The lease lapsed and was taken again, here or elsewhere, and the loss was never
    // reported: a new holding is not the one partition 0's items were adopted under (another
    // node may have sold them in between).
    b.ownership.hold(0, adopted_under + 100);
    let not_owner = Err(Error::NotOwner { partition: 0 });
    assert_eq!(
        b.engine
            .purchase("p", &a0, "u2", request("r1", 1, None))
            .await
            .map(|_| ()),
        not_owner
    );
    assert_eq!(
        b.engine.order(&order.order_id, None).await.map(|_| ()),
        not_owner,
        "not even a read from memory"
    );
    b.buy("p", &c1, "u2", "r1").await;

    // A purchase queued in the mailbox under the old holding is refused by the shard when
    // the holding changes before it is read.
    b.ownership.hold(0, adopted_under);
    b.log.set_stalled(true);
    let appends = b.journal.appends_started();
    let mut first = pin!(b.engine.purchase("p", &c1, "u3", request("r1", 1, None)));
    hand_over(first.as_mut()).await;
    b.wait_for_append(appends + 1).await;
    let mut queued = pin!(b.engine.purchase("p", &a0, "u4", request("r1", 1, None)));
    hand_over(queued.as_mut()).await;
    b.ownership.hold(0, adopted_under + 100);
    b.log.set_stalled(false);
    assert!(first.await.expect("the other partition sells").created);
    assert_eq!(queued.await.map(|_| ()), not_owner);
    assert!(
        b.placed_by("u4").is_empty(),
        "the queued purchase sold nothing"
    );
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_part_is_adopted_only_under_the_holding_it_was_built_under() {
    let a = Node::cluster(1, T0_MS, Recovery::empty());
    let part = a.build(a.log.partition_recovery(0)).expect("built");
    let built_under = part.epoch();
    // Lost and taken again between the build and the adopt: the part's replay may miss what
    // another node appended meanwhile.
    a.ownership.hold(0, built_under + 1);
    assert_eq!(
        a.engine.adopt_partition(part).await,
        Err(Error::NotOwner { partition: 0 })
    );
    assert!(a.engine.owned_partitions().is_empty());
    assert_eq!(a.engine.partition_epoch(0), None, "tied to no holding");
    // Built again under the new holding, it is adopted.
    assert_eq!(a.take(&a.log, 0).await, 0);
    assert_eq!(a.engine.owned_partitions(), vec![0]);
    a.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_stale_report_of_an_earlier_holding_lost_is_ignored() {
    let (b, a0, _) = owning_both().await;
    let first_holding = b.engine.partition_epoch(0).expect("adopted");
    b.lose(0);
    b.take(&b.log, 0).await;
    let second_holding = b.engine.partition_epoch(0).expect("adopted again");
    assert!(second_holding > first_holding);
    // The journal's report of the first holding's loss comes late, after the take.
    b.engine.lose_partition(0, first_holding);
    assert_eq!(b.engine.owned_partitions(), vec![0, 1]);
    let bought = b.buy("p", &a0, "u1", "r1").await;
    assert_eq!(epoch_of(&bought), second_holding);
    // The report of the current holding's loss is not.
    b.engine.lose_partition(0, second_holding);
    assert_eq!(
        b.engine
            .purchase("p", &a0, "u2", request("r1", 1, None))
            .await
            .map(|_| ()),
        Err(Error::NotOwner { partition: 0 })
    );
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn batches_the_snapshot_holds_already_are_not_replayed_again() {
    let a = Node::alone(1, T0_MS, 1);
    let sku = sku_in("p", 0);
    a.engine
        .create_promotion(spec("p", &[(sku.as_str(), 5, 1)], false))
        .await
        .expect("created");
    a.buy("p", &sku, "u1", "r1").await;
    a.engine.snapshot().await.expect("snapshot");
    a.buy("p", &sku, "u2", "r1").await;
    let b = Node::cluster(1, T0_MS, a.log.catalog_recovery());
    // A lane handed over from before the snapshot: its first batches are in the items too.
    let mut recovery = a.log.partition_recovery(0);
    let through_seq = recovery.through_seq;
    assert!(through_seq > 0, "the snapshot's lane position");
    recovery.batches = Box::new(a.log.batches().into_iter().map(Ok));
    let part = b.build(recovery).expect("built");
    b.engine.adopt_partition(part).await.expect("adopted");
    let stats = b.engine.promotion_stats("p").await.expect("stats");
    assert_eq!(stats.items[0].remaining, 3, "two sold, each counted once");
    a.engine.shutdown().await.expect("shutdown");
    b.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_release_stops_waiting_for_a_stalled_journal_and_drops_the_partition_as_lost() {
    let patient = EngineConfig {
        release_wait_ms: 100,
        ..config(1)
    };
    let (b, a0, _) = owning_both_with(patient).await;
    let stalled = b.purchase_into_a_stalled_append(&a0).await;
    // The journal never answers within the patience: the release gives up waiting instead
    // of holding the control thread (and every create and the shutdown behind it).
    let released = tokio::time::timeout(MUST_ANSWER, b.engine.release_partition(0))
        .await
        .expect("the release does not wait for the journal")
        .expect("released");
    assert_eq!(
        released,
        Released {
            partition: 0,
            items: 0,
            waited_out: true,
        }
    );
    assert_eq!(
        (b.engine.owned_partitions(), b.engine.partition_epoch(0)),
        (vec![1], None),
        "its only shard, stuck in the append, lets the item go once it reads its mailbox"
    );
    // The journal comes back: the stalled batch lands, and its buyer hears the yes it is.
    b.log.set_stalled(false);
    let bought = tokio::time::timeout(MUST_ANSWER, stalled)
        .await
        .expect("answered")
        .expect("its batch landed");
    assert_eq!(b.placed_by("u0"), vec![bought.order.clone()]);
    // The next owner replays it, and the partition can be taken here again: the parked
    // drop is gone, so it does not take the new items away.
    b.take(&b.log, 0).await;
    b.assert_retry_finds(&a0, bought.order).await;
    b.buy("p", &a0, "u1", "r1").await;
    b.engine.shutdown().await.expect("shutdown");
}

/// Polls `call` once; its answer if it has one already.
async fn poll_once<F: Future>(mut call: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await
}

#[tokio::test]
async fn a_release_keeps_its_bound_when_the_stuck_shard_s_mailbox_is_full() {
    let patient = EngineConfig {
        release_wait_ms: 100,
        mailbox_capacity: 4,
        ..config(1)
    };
    let (b, a0, c1) = owning_both_with(patient).await;
    let stalled = b.purchase_into_a_stalled_append(&a0).await;
    // Buyers of the other partition fill the stuck shard's mailbox to the brim.
    let users: Vec<String> = (0..=4).map(|n| format!("q{n}")).collect();
    let mut queued = Vec::new();
    for user in &users {
        let mut call = Box::pin(b.engine.purchase("p", &c1, user, request("r1", 1, None)));
        match poll_once(call.as_mut()).await {
            Poll::Pending => queued.push(call),
            Poll::Ready(Err(Error::Overloaded)) => break,
            Poll::Ready(other) => panic!("a queued purchase answered {other:?}"),
        }
    }
    assert_eq!(queued.len(), 4, "the mailbox holds 4, the fifth is refused");
    let held_under = b.engine.partition_epoch(0).expect("adopted");
    // No room for the drop, the shard stuck: the release still ends within its patience.
    let released = tokio::time::timeout(MUST_ANSWER, b.engine.release_partition(0))
        .await
        .expect("the release does not wait for room in a stuck shard's mailbox")
        .expect("released");
    assert!(released.waited_out, "{released:?}");
    let take_again = |epoch: u64| {
        let mut recovery = b.log.partition_recovery(0);
        recovery.epoch = epoch;
        b.build(recovery).expect("built")
    };
    // A part of the very holding the drop did not wait for is never adopted: an append of
    // that holding may still land.
    let refused = b.engine.adopt_partition(take_again(held_under)).await;
    assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    b.log.set_stalled(false);
    let bought = tokio::time::timeout(MUST_ANSWER, stalled)
        .await
        .expect("answered")
        .expect("its batch landed");
    for call in queued {
        tokio::time::timeout(MUST_ANSWER, call)
            .await
            .expect("answered")
            .expect("a purchase of the other partition, decided after the stall");
    }
    // Once the shard read its mailbox the drop is in, and a new holding takes the
    // partition.
    let started = Instant::now();
    let adopted = loop {
        let part = b.build(b.log.partition_recovery(0)).expect("built");
        match b.engine.adopt_partition(part).await {
            Ok(items) => break items,
            Err(Error::Unavailable(why)) if why.contains("on its way") => {
                assert!(started.elapsed() < MUST_ANSWER, "the drop is never placed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(other) => panic!("a new holding is refused: {other}"),
        }
    };
    assert_eq!(adopted, 1);
    b.assert_retry_finds(&a0, bought.order).await;
    b.engine.shutdown().await.expect("shutdown");
}

/// A node that owns nothing, with the catalog of [`owning_both`] plus promotion "q" of one
/// unit of `x` (a sku of partition 0), created on it as on the owner.
async fn watching(a0: &str, c1: &str, x: &str) -> Node {
    let other = Node::cluster(1, T0_MS, Recovery::empty());
    for spec in [
        spec("p", &[(a0, 10, 1), (c1, 10, 1)], false),
        spec("q", &[(x, 1, 1)], false),
    ] {
        other.engine.create_promotion(spec).await.expect("created");
    }
    other
}

/// Every view `from` publishes now, heard by `to`.
fn hear(from: &Node, to: &Node) {
    let views = from.engine.owned_views();
    assert_eq!(
        views.iter().map(|v| v.partition).collect::<Vec<_>>(),
        from.engine.owned_partitions(),
        "one view per owned partition"
    );
    for view in views {
        to.engine.apply_view(view);
    }
}

/// `item`'s (remaining, sold_out) in `node`'s public view of `promotion_id`.
fn shown(node: &Node, promotion_id: &str, sku: &str) -> (u64, bool) {
    let view = node.engine.public_promotion(promotion_id).expect("known");
    let item = view
        .items
        .iter()
        .find(|item| item.sku == sku)
        .expect("the item");
    (item.remaining, item.sold_out)
}

#[tokio::test]
async fn a_node_refuses_tokens_by_the_owner_s_view_for_one_second_and_leaves_purchases_to_it() {
    let (owner, a0, c1) = owning_both().await;
    let x = skus_in("q", 0, 1).remove(0);
    owner
        .engine
        .create_promotion(spec("q", &[(x.as_str(), 1, 1)], false))
        .await
        .expect("created");
    let order = owner.buy("q", &x, "u1", "r1").await;
    let other = watching(&a0, &c1, &x).await;
    let not_owner = Err(Error::NotOwner { partition: 0 });

    // Nothing heard yet: the owner decides, and the public view has no figure but stock.
    assert_eq!(token(&other, "q", &x, "u2").await, not_owner);
    hear(&owner, &other);
    assert_eq!(
        token(&other, "q", &x, "u2").await,
        Err(Error::SoldOut),
        "a fresh view of a sold-out item refuses a token"
    );
    assert_eq!(shown(&other, "q", &x), (0, true));
    assert_eq!(
        token(&other, "p", &a0, "u2").await,
        not_owner,
        "an item with stock is the owner's to decide"
    );
    assert_eq!(shown(&other, "p", &a0), (10, false));

    // Stock comes back on the owner and u3 buys it before this node heard: u3's retry here
    // must reach the owner (its order), however sold out the view still says the item is.
    owner
        .engine
        .cancel(&order.order_id, Some("u1"))
        .await
        .expect("cancelled");
    let u3 = owner.buy("q", &x, "u3", "r1").await;
    assert!(token(&other, "q", &x, "u2").await.is_err());
    assert_eq!(
        other
            .engine
            .purchase("q", &x, "u3", request("r1", 1, None))
            .await
            .map(|_| ()),
        not_owner,
        "a purchase of a live item is never refused by a view"
    );
    assert_eq!(owner.placed_by("u3"), vec![u3]);

    // One second after the view was built (it arrived 600 ms late): nothing is refused by
    // it any more; the public view shows the last figures heard (api.md: `sold_out` never
    // claims stock that is not there, and stock comes back only through the owner).
    other.clock.advance_ms(600);
    hear(&owner, &other);
    assert_eq!(token(&other, "q", &x, "u2").await, Err(Error::SoldOut));
    other.clock.advance_ms(400);
    assert_eq!(token(&other, "q", &x, "u2").await, not_owner);
    assert_eq!(shown(&other, "q", &x), (0, true));

    // A promotion not started is refused from the catalog alone.
    let later = upcoming("u", &x);
    for node in [&owner, &other] {
        node.engine
            .create_promotion(later.clone())
            .await
            .expect("created");
    }
    assert_eq!(
        other
            .engine
            .purchase("u", &x, "u2", request("r1", 1, None))
            .await
            .map(|_| ()),
        Err(Error::NotStarted)
    );
    owner.engine.shutdown().await.expect("shutdown");
    other.engine.shutdown().await.expect("shutdown");
}

/// Promotion `id` of one unit of `sku`, starting an hour after T0.
fn upcoming(id: &str, sku: &str) -> seckill_engine::PromotionSpec {
    let mut later = spec(id, &[(sku, 1, 1)], false);
    later.starts_at_ms += 3_600_000;
    later.ends_at_ms += 3_600_000;
    later
}

#[tokio::test]
async fn strikes_travel_with_the_view_and_a_later_holding_s_replace_them() {
    let (owner, a0, c1) = owning_both().await;
    for round in 0..3 {
        let order = owner.buy("p", &a0, "striker", &format!("r{round}")).await;
        owner
            .engine
            .cancel(&order.order_id, Some("striker"))
            .await
            .expect("cancelled");
    }
    let x = skus_in("q", 0, 1).remove(0);
    let other = watching(&a0, &c1, &x).await;
    hear(&owner, &other);
    assert_eq!(
        token(&other, "p", &c1, "striker").await,
        Err(Error::Banned),
        "three cancellations in partition 0 ban from every item of the promotion"
    );

    // A strike from a batch that never became durable, carried by a view of holding 7;
    // the next holding's view has no such strike, and the ban goes with it.
    let mut phantom = view_of(&owner, 1);
    phantom.epoch = 7;
    phantom.strikes = vec![("p".into(), "ghost".into(), 3)];
    other.engine.apply_view(phantom.clone());
    assert!(token(&other, "p", &c1, "ghost").await == Err(Error::Banned));
    let mut lower = phantom.clone();
    lower.strikes = vec![("p".into(), "ghost".into(), 1)];
    other.engine.apply_view(lower);
    assert_eq!(
        token(&other, "p", &c1, "ghost").await,
        Err(Error::Banned),
        "within one holding strikes only grow"
    );
    let mut next = phantom.clone();
    next.epoch = 8;
    next.strikes = Vec::new();
    next.strikes_whole = false;
    other.engine.apply_view(next.clone());
    assert_eq!(
        token(&other, "p", &c1, "ghost").await,
        Err(Error::Banned),
        "a view that left its strikes out (to fit a message) changes no ban"
    );
    next.strikes_whole = true;
    other.engine.apply_view(next);
    assert_eq!(
        token(&other, "p", &c1, "ghost").await,
        Err(Error::NotOwner { partition: 1 }),
        "the later holding's strikes replace the partition's"
    );

    // A view of a partition installed here changes nothing: not its gates, not its bans.
    let mut forged = view_of(&owner, 0);
    forged.epoch += 1_000;
    forged.strikes = vec![("p".into(), "ghost".into(), 3)];
    for item in &mut forged.items {
        item.remaining = 0;
    }
    owner.engine.apply_view(forged.clone());
    assert!(token(&owner, "p", &a0, "ghost").await.is_ok());
    owner.buy("p", &a0, "u9", "r1").await;

    // Adopting a partition forgets what views said of it: the replay's strikes are the
    // partition's, a view's phantom ones are gone.
    other.engine.apply_view(forged);
    assert_eq!(token(&other, "p", &c1, "ghost").await, Err(Error::Banned));
    other.take(&owner.log, 0).await;
    assert!(token(&other, "p", &a0, "ghost").await.is_ok());
    assert_eq!(
        token(&other, "p", &a0, "striker").await,
        Err(Error::Banned),
        "the replay's strikes stay"
    );
    owner.engine.shutdown().await.expect("shutdown");
    other.engine.shutdown().await.expect("shutdown");
}

/// `node`'s own view of `partition`.
fn view_of(node: &Node, partition: u32) -> seckill_engine::PartitionView {
    node.engine
        .owned_views()
        .into_iter()
        .find(|view| view.partition == partition)
        .expect("owned")
}

/// A token for `user` on `node`, its grant left out.
async fn token(node: &Node, promotion_id: &str, sku: &str, user: &str) -> Result<(), Error> {
    node.engine
        .issue_token(promotion_id, sku, user)
        .await
        .map(|_| ())
}
