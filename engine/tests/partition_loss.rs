//! A journal that loses one partition's part of a batch (a cluster node whose lease of the
//! partition was taken over) while the other partitions' parts land: the shard answers what
//! landed, "outcome unknown" for what did not, lets the lost partition's items go ("not the
//! owner" from then on, never a 404 and never a sale), and is not fenced.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use common::watched::Watched;
use common::{config, request, spec, T0_MS};
use seckill_engine::{
    item_key, parse_order_id, partition_of, Engine, EngineConfig, Error, Event, ManualClock,
    MemoryJournal, NullSink, Order, Ports, Purchased, Recovery,
};

/// A bound on waits that must end at once; generous, since the machine is shared.
const MUST_ANSWER: Duration = Duration::from_secs(10);
/// The journal's partitions in these tests.
const PARTITIONS: u32 = 2;

/// One engine of one shard (so that every item's commands share its batches) on a watched
/// journal of [`PARTITIONS`] partitions.
struct Sale {
    engine: Engine,
    clock: Arc<ManualClock>,
    log: Arc<MemoryJournal>,
    watched: Arc<Watched>,
    config: EngineConfig,
}

impl Sale {
    fn start() -> Sale {
        let clock = ManualClock::new(T0_MS);
        let log = MemoryJournal::with_partitions(PARTITIONS);
        let watched = Watched::new(&log);
        let config = config(1);
        let engine = Engine::start(config.clone(), ports(&clock, &watched), Recovery::empty())
            .expect("engine starts");
        Sale {
            engine,
            clock,
            log,
            watched,
            config,
        }
    }

    /// Stops the engine and starts another from what the log kept, as a restart would.
    async fn restart(self) -> Sale {
        self.engine.shutdown().await.expect("shutdown");
        let engine = Engine::start(
            self.config.clone(),
            ports(&self.clock, &self.watched),
            self.log.recovery(),
        )
        .expect("engine restarts");
        Sale { engine, ..self }
    }

    /// Waits until the shard is inside its `count`th append.
    async fn wait_for_append(&self, count: u64) {
        let started = Instant::now();
        while self.watched.appends_started() < count {
            assert!(started.elapsed() < MUST_ANSWER, "the shard never appended");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The orders placed in the log (what a restart reads), by user id.
    fn placed_by(&self, user_id: &str) -> Vec<Order> {
        placed(
            &self
                .log
                .batches()
                .into_iter()
                .flat_map(|(_, e)| e)
                .collect::<Vec<_>>(),
        )
        .into_iter()
        .filter(|order| order.user_id == user_id)
        .collect()
    }
}

fn ports(clock: &Arc<ManualClock>, journal: &Arc<Watched>) -> Ports {
    Ports {
        journal: journal.clone(),
        clock: clock.clone(),
        sink: Arc::new(NullSink),
    }
}

fn placed(events: &[Event]) -> Vec<Order> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::OrderPlaced { order, .. } => Some(order.clone()),
            _ => None,
        })
        .collect()
}

/// A sku of promotion `promotion_id` whose item is in `partition`.
fn sku_in(promotion_id: &str, partition: u32) -> String {
    (0..256)
        .map(|n| format!("{promotion_id}-s{n}"))
        .find(|sku| partition_of(item_key(promotion_id, sku), PARTITIONS) == partition)
        .expect("some sku falls in each partition")
}

/// Polls `call` once: far enough to hand its command to the shard's mailbox (an engine
/// call does that before its first wait), not to its answer.
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

/// A purchase of promotion "p": `(sku, user)`, request id "r1".
fn purchase<'a>(
    sale: &'a Sale,
    (sku, user): (&'a str, &'a str),
) -> impl Future<Output = seckill_engine::Result<Purchased>> + 'a {
    sale.engine.purchase("p", sku, user, request("r1", 1, None))
}

/// Runs the purchase `first` alone, then the two of `pair` in one batch: the shard is held
/// inside the first's append (a stalled journal) while the pair is handed over. With
/// `hold_pair`, the pair's append answers late (see [`Watched`]). The answers, in order.
async fn first_then_pair(
    sale: &Sale,
    first: (&str, &str),
    pair: [(&str, &str); 2],
    hold_pair: bool,
) -> [seckill_engine::Result<Purchased>; 3] {
    sale.log.set_stalled(true);
    let appends = sale.watched.appends_started();
    let mut alone = std::pin::pin!(purchase(sale, first));
    hand_over(alone.as_mut()).await;
    sale.wait_for_append(appends + 1).await;
    let mut one = std::pin::pin!(purchase(sale, pair[0]));
    let mut other = std::pin::pin!(purchase(sale, pair[1]));
    hand_over(one.as_mut()).await;
    hand_over(other.as_mut()).await;
    if hold_pair {
        sale.watched.hold_next.store(true, Ordering::SeqCst);
    }
    sale.log.set_stalled(false);
    [alone.await, one.await, other.await]
}

/// A promotion "p" of two items, one in each partition: (kept sku, lost sku).
async fn two_partitions(sale: &Sale) -> (String, String) {
    let (kept, lost) = (sku_in("p", KEPT), sku_in("p", LOST));
    sale.engine
        .create_promotion(spec(
            "p",
            &[(kept.as_str(), 10, 5), (lost.as_str(), 10, 5)],
            false,
        ))
        .await
        .expect("created");
    (kept, lost)
}

const KEPT: u32 = 0;
const LOST: u32 = 1;

#[tokio::test]
async fn a_lost_partition_fails_only_its_own_answers() {
    let sale = Sale::start();
    let (kept, lost) = two_partitions(&sale).await;
    let early = sale
        .engine
        .purchase("p", &lost, "early", request("r1", 1, None))
        .await
        .expect("bought before the loss")
        .order;

    sale.log.lose_partition(LOST);
    let [first, on_lost, on_kept] = first_then_pair(
        &sale,
        (kept.as_str(), "x"),
        [(lost.as_str(), "a"), (kept.as_str(), "b")],
        false,
    )
    .await;
    let first = first.expect("the first batch touched the kept partition only");
    assert_eq!(on_lost, Err(Error::OutcomeUnknown), "its lane did not land");
    let on_kept = on_kept.expect("its lane landed");
    assert!(on_kept.created, "a 201");
    let mixed = sale.watched.offered().into_iter().any(|batch| {
        let users: Vec<String> = placed(&batch).into_iter().map(|o| o.user_id).collect();
        users.contains(&"a".to_owned()) && users.contains(&"b".to_owned())
    });
    assert!(mixed, "both purchases were decided in one batch");

    // The lost partition's items left the shard: not the owner, never a 404, never a sale.
    let not_owner = Err(Error::NotOwner { partition: LOST });
    assert_eq!(
        sale.engine
            .purchase("p", &lost, "c", request("r1", 1, None))
            .await
            .map(|_| ()),
        not_owner
    );
    assert_eq!(
        sale.engine
            .purchase("p", &lost, "a", request("r1", 1, None))
            .await
            .map(|_| ()),
        not_owner,
        "the lost purchase's retry is the new owner's to answer"
    );
    assert_eq!(
        sale.engine.order(&early.order_id, None).await.map(|_| ()),
        not_owner,
        "a read too"
    );
    assert_eq!(
        sale.engine.promotion_stats("p").await.map(|_| ()),
        not_owner,
        "no figures from a shard that lost some of them"
    );

    // The shard is not fenced: the kept partition sells and answers retries.
    let later = sale
        .engine
        .purchase("p", &kept, "d", request("r1", 1, None))
        .await
        .expect("the kept partition still sells");
    assert!(later.created);
    let retry = sale
        .engine
        .purchase("p", &kept, "b", request("r1", 1, None))
        .await
        .expect("b's retry");
    assert!(!retry.created);
    assert_eq!(retry.order, on_kept.order);

    // A promotion created after the loss gets no item in the lost partition here.
    let (q_kept, q_lost) = (sku_in("q", KEPT), sku_in("q", LOST));
    sale.engine
        .create_promotion(spec(
            "q",
            &[(q_kept.as_str(), 5, 1), (q_lost.as_str(), 5, 1)],
            false,
        ))
        .await
        .expect("created after the loss");
    assert_eq!(
        sale.engine
            .purchase("q", &q_lost, "e", request("r1", 1, None))
            .await
            .map(|_| ()),
        not_owner
    );
    let q_sold = sale
        .engine
        .purchase("q", &q_kept, "e", request("r1", 1, None))
        .await
        .expect("the kept partition's new item sells");

    // Every yes is in the log; the lost purchase is not.
    let answered = [
        &early,
        &first.order,
        &on_kept.order,
        &later.order,
        &q_sold.order,
    ];
    for order in answered {
        let logged = sale.placed_by(&order.user_id);
        assert!(
            logged.iter().any(|o| o.order_id == order.order_id),
            "{} was answered but is not in the log",
            order.order_id
        );
        let key = parse_order_id(&order.order_id)
            .expect("an order id")
            .item_key;
        assert_eq!(
            partition_of(key, PARTITIONS) == LOST,
            order.user_id == "early"
        );
    }
    assert!(
        sale.placed_by("a").is_empty(),
        "the lost purchase never landed"
    );

    // A restart has the answered orders and not the lost one.
    let sale = sale.restart().await;
    let stats = sale.engine.promotion_stats("p").await.expect("stats");
    let figures = |sku: &str| {
        let item = stats
            .items
            .iter()
            .find(|item| item.sku == sku)
            .expect("the item");
        (item.remaining, item.reserved)
    };
    assert_eq!(figures(kept.as_str()), (7, 3), "x, b and d");
    assert_eq!(figures(lost.as_str()), (9, 1), "early only");
    for order in [&early, &on_kept.order, &q_sold.order] {
        let read = sale
            .engine
            .order(&order.order_id, None)
            .await
            .expect("read after restart");
        assert_eq!(&read, order);
    }
    sale.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_batch_that_lands_later_in_part_keeps_its_landed_part() {
    let sale = Sale::start();
    let (kept, lost) = two_partitions(&sale).await;
    sale.log.lose_partition(LOST);
    // The shared batch's append answers late: the shard suspends until it is told.
    let [first, on_lost, on_kept] = first_then_pair(
        &sale,
        (kept.as_str(), "x"),
        [(lost.as_str(), "a"), (kept.as_str(), "b")],
        true,
    )
    .await;
    first.expect("the first batch landed");
    assert_eq!(on_lost, Err(Error::OutcomeUnknown));
    assert_eq!(
        on_kept.map(|_| ()),
        Err(Error::OutcomeUnknown),
        "nobody in a batch still being written hears yes"
    );
    let waiting = sale
        .engine
        .purchase("p", &kept, "w", request("r1", 1, None))
        .await;
    assert!(
        matches!(waiting, Err(Error::Unavailable(_))),
        "writes wait for the batch: {waiting:?}"
    );

    sale.watched.release();
    // The next command finds the batch landed in part: the kept purchase is in, the lost
    // partition's items are gone.
    let retry = sale
        .engine
        .purchase("p", &kept, "b", request("r1", 1, None))
        .await
        .expect("b's order landed");
    assert!(!retry.created, "the order the held batch placed");
    assert_eq!(sale.placed_by("b").len(), 1);
    assert_eq!(
        sale.engine
            .purchase("p", &lost, "a", request("r1", 1, None))
            .await
            .map(|_| ()),
        Err(Error::NotOwner { partition: LOST })
    );
    assert!(sale.placed_by("a").is_empty());
    let later = sale
        .engine
        .purchase("p", &kept, "d", request("r1", 1, None))
        .await
        .expect("not fenced");
    assert!(later.created);
    assert_eq!(sale.placed_by("d").len(), 1);
    sale.engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_loss_the_batch_does_not_touch_changes_nothing() {
    let sale = Sale::start();
    let (kept, lost) = two_partitions(&sale).await;
    sale.log.lose_partition(LOST);
    let bought = sale
        .engine
        .purchase("p", &kept, "x", request("r1", 1, None))
        .await
        .expect("a batch of the kept partition only is durable");
    assert!(bought.created);
    assert_eq!(sale.placed_by("x").len(), 1);
    // The lost partition is found out by the first batch that touches it.
    assert_eq!(
        sale.engine
            .purchase("p", &lost, "a", request("r1", 1, None))
            .await
            .map(|_| ()),
        Err(Error::OutcomeUnknown)
    );
    assert_eq!(
        sale.engine
            .purchase("p", &lost, "a", request("r1", 1, None))
            .await
            .map(|_| ()),
        Err(Error::NotOwner { partition: LOST })
    );
    let stats = sale.engine.promotion_stats("p").await;
    assert_eq!(stats.map(|_| ()), Err(Error::NotOwner { partition: LOST }));
    sale.engine.shutdown().await.expect("shutdown");
}
