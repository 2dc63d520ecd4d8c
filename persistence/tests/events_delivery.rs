//! Order events from the journal to a target, through the delivery core with a fake sink
//! (the real brokers have tests of their own): every event arrives, each order's events in
//! the order of its life, an id only ever again as a duplicate of itself, and the derived
//! item events right; a target that is down gets everything once it is back, also across a
//! restart; the cursor survives a restart; a new target starts at the journal's end; a hole
//! in the journal is waited for; and the journal is not trimmed past a target that is down.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seckill_engine::{
    Engine, EngineConfig, Event, ItemSpec, Journal, ManualClock, MemoryJournal, NullSink, Order,
    OrderStatus, Ports, PromotionSpec, PurchaseRequest, Recovery,
};
use seckill_persistence::events::{
    start_events, CursorError, CursorStore, DeliverOptions, EventsError, EventsHandle,
    FileCursorStore, OutEvent, SharedFloors, Sink, SinkError,
};
use seckill_persistence::sql::{EventSource, SqlError};
use tokio::time::Instant;

const START_MS: i64 = 1_762_819_200_000;
const PAYMENT_TIMEOUT_S: u32 = 60;
const PROMOTION: &str = "double11";
const DEPLOYMENT: &str = "test-deployment";
const KEY: &str = "fake-target";
/// Enough for anything in these tests; they assert outcomes, not speed.
const PATIENCE: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(10);

/// Short pauses, and small chunks so that a sale is many chunks and calls.
fn options() -> DeliverOptions {
    DeliverOptions {
        read_batches_max: 4,
        chunk_events_max: 7,
        poll_interval: Duration::from_millis(5),
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(40),
        save_interval: Duration::from_millis(20),
        ..DeliverOptions::default()
    }
}

/// One CloudEvent as the target got it.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    kind: String,
    subject: String,
    body: serde_json::Value,
}

impl Got {
    fn of(event: &OutEvent) -> Got {
        Got {
            id: event.id.clone(),
            kind: event.kind.to_owned(),
            subject: event.subject.clone(),
            body: serde_json::from_slice(&event.body).expect("a JSON CloudEvent"),
        }
    }
}

/// A target that records what it gets, and can be made unreachable. While down, a call
/// still hands over the first half of its events (rounded up) before it fails, as a broker
/// that went away mid-batch or an acknowledgement that was lost: those arrive twice.
#[derive(Clone, Default)]
struct FakeTarget {
    got: Arc<Mutex<Vec<Got>>>,
    down: Arc<AtomicBool>,
    failed_calls: Arc<AtomicUsize>,
}

impl FakeTarget {
    fn down() -> FakeTarget {
        let target = FakeTarget::default();
        target.set_down(true);
        target
    }

    fn sink(&self) -> Box<dyn Sink> {
        Box::new(FakeSink(self.clone()))
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().expect("lock").clone()
    }

    async fn wait_failed_calls(&self, calls: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.failed_calls.load(Ordering::SeqCst) < calls {
            assert!(
                Instant::now() < deadline,
                "the target was not tried {calls} times"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

struct FakeSink(FakeTarget);

impl Sink for FakeSink {
    fn deliver<'a>(
        &'a mut self,
        events: &'a [OutEvent],
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(async move {
            let target = &self.0;
            let down = target.down.load(Ordering::SeqCst);
            let arrived = if down {
                &events[..events.len().div_ceil(2)]
            } else {
                events
            };
            target
                .got
                .lock()
                .expect("lock")
                .extend(arrived.iter().map(Got::of));
            if down {
                target.failed_calls.fetch_add(1, Ordering::SeqCst);
                return Err(SinkError::Unreachable("test outage".into()));
            }
            Ok(())
        })
    }

    fn label(&self) -> String {
        "fake target".into()
    }
}

/// An engine on a memory journal and a manual clock.
struct Sale {
    engine: Engine,
    journal: Arc<MemoryJournal>,
    clock: Arc<ManualClock>,
}

impl Sale {
    fn start() -> Sale {
        let journal = MemoryJournal::new();
        let clock = ManualClock::new(START_MS);
        let ports = Ports {
            journal: journal.clone(),
            clock: clock.clone(),
            sink: Arc::new(NullSink),
        };
        let config = EngineConfig {
            shards: 2,
            snapshot_every_events: 0,
            ..EngineConfig::default()
        };
        let engine = Engine::start(config, ports, Recovery::empty()).expect("engine starts");
        Sale {
            engine,
            journal,
            clock,
        }
    }

    fn source(&self) -> Arc<dyn EventSource> {
        self.journal.clone()
    }

    fn last_seq(&self) -> u64 {
        Journal::last_seq(&*self.journal)
    }

    async fn create(&self, items: &[(&str, u64)]) {
        let spec = PromotionSpec {
            guard: Default::default(),
            id: Some(PROMOTION.into()),
            name: "Double 11".into(),
            starts_at_ms: START_MS,
            ends_at_ms: START_MS + 24 * 3_600_000,
            payment_timeout_s: PAYMENT_TIMEOUT_S,
            require_token: false,
            token_multiplier: 5,
            items: items
                .iter()
                .map(|(sku, stock)| ItemSpec {
                    sku: (*sku).into(),
                    title: None,
                    stock: *stock,
                    price_cents: 1_999,
                    per_user_limit: 1,
                })
                .collect(),
        };
        self.engine.create_promotion(spec).await.expect("created");
    }

    async fn buy(&self, sku: &str, user: u64) -> Order {
        let request = PurchaseRequest {
            request_id: format!("r-{user}"),
            quantity: 1,
            token: None,
        };
        let user_id = format!("user-{user}");
        let bought = self
            .engine
            .purchase(PROMOTION, sku, &user_id, request)
            .await;
        bought.expect("purchase accepted").order
    }

    async fn pay(&self, order: &Order) {
        let payment_ref = format!("pay-{}", order.user_id);
        let paid = self.engine.pay(&order.order_id, &payment_ref, None).await;
        paid.expect("paid");
    }

    async fn cancel(&self, order: &Order) {
        let user_id = Some(order.user_id.as_str());
        let cancelled = self.engine.cancel(&order.order_id, user_id).await;
        cancelled.expect("cancelled");
    }

    /// Sells `sku` to `users` at once, then pays a fifth of the orders and cancels a fifth;
    /// the rest stay pending. Returns the order ids.
    async fn sell(&self, sku: &str, users: Range<u64>) -> Vec<String> {
        let buys = users.clone().map(|user| self.buy(sku, user));
        let orders = futures::future::join_all(buys).await;
        let changes = users.zip(&orders).map(|(user, order)| async move {
            match user % 5 {
                0 => self.pay(order).await,
                1 => self.cancel(order).await,
                _ => {}
            }
        });
        futures::future::join_all(changes).await;
        orders.into_iter().map(|order| order.order_id).collect()
    }

    /// Moves the clock past every pending order's deadline and lets the engine expire them.
    async fn expire_pending(&self) {
        self.clock
            .advance_ms(i64::from(PAYMENT_TIMEOUT_S) * 1_000 + 1);
        self.engine.tick().await.expect("expiry tick");
    }

    /// The order events each of `order_ids` must have produced, as (type, order id).
    async fn order_events(&self, order_ids: &[String]) -> HashSet<(String, String)> {
        let mut expected = HashSet::new();
        for id in order_ids {
            let order = self
                .engine
                .order(id, None)
                .await
                .expect("the engine has it");
            expected.insert(("seckill.order.created".to_owned(), id.clone()));
            let closing = match order.status {
                OrderStatus::PendingPayment => continue,
                OrderStatus::Paid => "seckill.order.paid",
                OrderStatus::Cancelled => "seckill.order.cancelled",
                OrderStatus::Expired => "seckill.order.expired",
            };
            expected.insert((closing.to_owned(), id.clone()));
        }
        expected
    }
}

/// A deliverer of `sale`'s journal to `target`, under the one key of these tests.
fn start(sale: &Sale, target: &FakeTarget, store: &Arc<FileCursorStore>) -> EventsHandle {
    start_events(
        sale.source(),
        target.sink(),
        store.clone(),
        KEY.into(),
        DEPLOYMENT.into(),
        options(),
    )
    .expect("deliverer starts")
}

fn store_in(dir: &tempfile::TempDir) -> Arc<FileCursorStore> {
    Arc::new(FileCursorStore::open(dir.path().join("events")).expect("cursor store"))
}

/// Waits until the target acknowledged `lane` through `seq`.
async fn wait_delivered(handle: &EventsHandle, lane: u32, seq: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = handle.status();
        if status.delivered_seq.get(&lane).copied().unwrap_or(0) >= seq {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lane {lane} not delivered through {seq}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checks what a target got, in arrival order: an id always with the same body, and each
/// order's events (first arrivals) in the order of its life. Returns the first arrivals.
fn check_arrivals(got: &[Got]) -> Vec<Got> {
    let mut bodies: HashMap<&str, &serde_json::Value> = HashMap::new();
    let mut first = Vec::new();
    for event in got {
        match bodies.get(event.id.as_str()) {
            Some(body) => assert_eq!(*body, &event.body, "{} with two bodies", event.id),
            None => {
                bodies.insert(&event.id, &event.body);
                first.push(event.clone());
            }
        }
    }
    let mut stage_of: HashMap<&str, u8> = HashMap::new();
    for event in &first {
        let Some(stage) = order_stage(&event.kind) else {
            continue;
        };
        let before = stage_of.insert(&event.subject, stage);
        assert!(
            before.map_or(stage == 0, |before| stage > before),
            "order {}: {} out of order",
            event.subject,
            event.kind
        );
    }
    first
}

/// 0 for an order's creation, 1 for what ends its life; `None` for other events.
fn order_stage(kind: &str) -> Option<u8> {
    match kind {
        "seckill.order.created" => Some(0),
        "seckill.order.paid" | "seckill.order.cancelled" | "seckill.order.expired" => Some(1),
        _ => None,
    }
}

/// The (type, subject) of every order event among `events`.
fn order_events(events: &[Got]) -> HashSet<(String, String)> {
    events
        .iter()
        .filter(|event| order_stage(&event.kind).is_some())
        .map(|event| (event.kind.clone(), event.subject.clone()))
        .collect()
}

fn kinds_with_prefix<'a>(events: &'a [Got], prefix: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|event| event.kind.starts_with(prefix))
        .map(|event| event.kind.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_in_order_through_an_outage_with_the_item_events() {
    let sale = Sale::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store_in(&dir);
    let target = FakeTarget::down();
    let handle = start(&sale, &target, &store);

    sale.create(&[("scarce", 2), ("plenty", 1_000)]).await;
    let first = sale.buy("scarce", 1).await;
    let second = sale.buy("scarce", 2).await; // the last unit: sold out
    sale.cancel(&first).await; // one back
    let third = sale.buy("scarce", 3).await; // sold out again
    sale.pay(&third).await;
    let mut order_ids = vec![first.order_id, second.order_id.clone(), third.order_id];
    order_ids.extend(sale.sell("plenty", 10..70).await);
    target.wait_failed_calls(3).await;
    assert_eq!(
        handle.status().delivered_seq.get(&0),
        Some(&0),
        "nothing acknowledged"
    );

    target.set_down(false);
    sale.expire_pending().await; // the second order expires: one back again
    sale.engine
        .stop_promotion(PROMOTION)
        .await
        .expect("stopped");
    wait_delivered(&handle, 0, sale.last_seq()).await;
    handle.shutdown(GRACE).await.expect("clean stop");

    let got = target.got();
    let first_arrivals = check_arrivals(&got);
    assert!(
        got.len() > first_arrivals.len(),
        "the outage made duplicates"
    );
    assert_eq!(
        order_events(&first_arrivals),
        sale.order_events(&order_ids).await
    );
    assert_eq!(
        kinds_with_prefix(&first_arrivals, "seckill.promotion."),
        ["seckill.promotion.created", "seckill.promotion.ended"]
    );
    let items: Vec<(&str, &str, &serde_json::Value)> = first_arrivals
        .iter()
        .filter(|event| event.kind.starts_with("seckill.item."))
        .map(|event| {
            let remaining = &event.body["data"]["remaining"];
            (event.kind.as_str(), event.subject.as_str(), remaining)
        })
        .collect();
    let (zero, one) = (serde_json::json!(0), serde_json::json!(1));
    let scarce = "double11/scarce";
    assert_eq!(
        items,
        [
            ("seckill.item.sold_out", scarce, &zero),
            ("seckill.item.back_in_stock", scarce, &one),
            ("seckill.item.sold_out", scarce, &zero),
            ("seckill.item.back_in_stock", scarce, &one),
        ]
    );
    let expired = first_arrivals
        .iter()
        .find(|event| event.kind == "seckill.order.expired" && event.subject == second.order_id)
        .expect("the second order expired");
    let body = &expired.body;
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["source"], format!("/seckill/{DEPLOYMENT}"));
    assert_eq!(body["datacontenttype"], "application/json");
    assert_eq!(body["data"]["order_id"], second.order_id.as_str());
    assert_eq!(body["data"]["status"], "expired");
    assert!(body["data"]["closed_at"].is_string());
    sale.engine.shutdown().await.expect("engine stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_survives_a_restart_and_a_new_target_starts_at_the_end() {
    let sale = Sale::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store_in(&dir);
    let before = FakeTarget::default();
    let handle = start(&sale, &before, &store);
    sale.create(&[("phone", 1_000)]).await;
    let batch_one = sale.sell("phone", 0..30).await;
    wait_delivered(&handle, 0, sale.last_seq()).await;
    handle.shutdown(GRACE).await.expect("clean stop");
    let saved = store.load(KEY).expect("load").expect("saved at the stop");
    assert_eq!(saved.lanes.get(&0), Some(&sale.last_seq()));

    // Sold while no deliverer runs: the events wait in the journal.
    let batch_two = sale.sell("phone", 30..60).await;
    let after = FakeTarget::default();
    let handle = start(&sale, &after, &store);
    wait_delivered(&handle, 0, sale.last_seq()).await;

    // A target added now hears of what is decided from now on.
    let late = FakeTarget::default();
    let late_handle = start_events(
        sale.source(),
        late.sink(),
        store.clone(),
        "late-target".into(),
        DEPLOYMENT.into(),
        options(),
    )
    .expect("late target starts");
    let batch_three = sale.sell("phone", 60..90).await;
    wait_delivered(&handle, 0, sale.last_seq()).await;
    wait_delivered(&late_handle, 0, sale.last_seq()).await;
    handle.shutdown(GRACE).await.expect("clean stop");
    late_handle.shutdown(GRACE).await.expect("clean stop");

    let first_run = check_arrivals(&before.got());
    assert_eq!(
        order_events(&first_run),
        sale.order_events(&batch_one).await
    );
    let second_run = check_arrivals(&after.got());
    let mut expected = sale.order_events(&batch_two).await;
    expected.extend(sale.order_events(&batch_three).await);
    assert_eq!(
        order_events(&second_run),
        expected,
        "after the restart: what was sold meanwhile and since, and nothing delivered before"
    );
    assert!(kinds_with_prefix(&second_run, "seckill.promotion.").is_empty());
    let late_run = check_arrivals(&late.got());
    assert_eq!(
        order_events(&late_run),
        sale.order_events(&batch_three).await
    );
    sale.engine.shutdown().await.expect("engine stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_an_outage_loses_nothing() {
    let sale = Sale::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store_in(&dir);
    let down = FakeTarget::down();
    let handle = start(&sale, &down, &store);
    sale.create(&[("phone", 1_000)]).await;
    let mut order_ids = sale.sell("phone", 0..40).await;
    down.wait_failed_calls(3).await;
    handle
        .shutdown(GRACE)
        .await
        .expect("a stop during an outage is clean");

    order_ids.extend(sale.sell("phone", 40..80).await);
    let back = FakeTarget::default();
    let handle = start(&sale, &back, &store);
    wait_delivered(&handle, 0, sale.last_seq()).await;
    handle.shutdown(GRACE).await.expect("clean stop");

    let arrivals = check_arrivals(&back.got());
    assert_eq!(order_events(&arrivals), sale.order_events(&order_ids).await);
    assert_eq!(
        kinds_with_prefix(&arrivals, "seckill.promotion."),
        ["seckill.promotion.created"]
    );
    sale.engine.shutdown().await.expect("engine stops");
}

#[tokio::test]
async fn a_damaged_cursor_keeps_the_target_from_starting() {
    let sale = Sale::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store_in(&dir);
    std::fs::write(store.path_of(KEY).expect("path"), b"{\"version\": 1,").expect("write");
    let started = start_events(
        sale.source(),
        FakeTarget::default().sink(),
        store.clone(),
        KEY.into(),
        DEPLOYMENT.into(),
        options(),
    );
    match started {
        Err(EventsError::Cursor(CursorError::Corrupt { .. })) => {}
        Err(other) => panic!("expected a damaged cursor, got {other}"),
        Ok(_) => panic!("started on a damaged cursor"),
    }
    sale.engine.shutdown().await.expect("engine stops");
}

/// A one-lane journal fed by hand, batch by batch with the numbers the test picks, that
/// remembers every floor it is told.
#[derive(Default)]
struct FedLog {
    batches: Mutex<BTreeMap<u64, Vec<Event>>>,
    floors: Mutex<Vec<u64>>,
}

impl FedLog {
    /// Appends batch `seq`: one order placed, whose id is `o-<seq>`.
    fn append(&self, seq: u64) {
        let order = Order {
            order_id: format!("o-{seq}"),
            promotion_id: PROMOTION.into(),
            sku: "unseen".into(),
            user_id: format!("user-{seq}"),
            request_id: format!("r-{seq}"),
            quantity: 1,
            price_cents: 100,
            amount_cents: 100,
            status: OrderStatus::PendingPayment,
            created_at_ms: START_MS,
            pay_before_ms: START_MS + 60_000,
            paid_at_ms: None,
            payment_ref: None,
            closed_at_ms: None,
        };
        let event = Event::OrderPlaced {
            item_key: 7,
            order_seq: seq,
            order,
            token: None,
        };
        self.batches.lock().expect("lock").insert(seq, vec![event]);
    }

    fn highest_floor(&self) -> Option<u64> {
        self.floors.lock().expect("lock").iter().copied().max()
    }
}

impl EventSource for FedLog {
    fn lanes(&self) -> Vec<u32> {
        vec![0]
    }

    fn read_batches(
        &self,
        _lane: u32,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        let batches = self.batches.lock().expect("lock");
        Ok(batches
            .range(after_seq + 1..)
            .take(batches_max)
            .map(|(seq, events)| (*seq, events.clone()))
            .collect())
    }

    fn last_seq(&self, _lane: u32) -> u64 {
        let batches = self.batches.lock().expect("lock");
        batches.keys().next_back().copied().unwrap_or(0)
    }

    fn set_retain_floor(&self, _lane: u32, seq: u64) {
        self.floors.lock().expect("lock").push(seq);
    }

    fn deployment_id(&self) -> Option<String> {
        Some(DEPLOYMENT.into())
    }
}

fn subjects(events: &[Got]) -> Vec<&str> {
    events.iter().map(|event| event.subject.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_is_waited_for_and_a_late_batch_is_not_skipped() {
    let log = Arc::new(FedLog::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store_in(&dir);
    let target = FakeTarget::default();
    let options = DeliverOptions {
        gap_wait: Duration::from_secs(2),
        ..options()
    };
    let handle = start_events(
        log.clone(),
        target.sink(),
        store,
        KEY.into(),
        DEPLOYMENT.into(),
        options,
    )
    .expect("starts");
    for seq in [1, 2, 4] {
        log.append(seq);
    }
    wait_delivered(&handle, 0, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(subjects(&target.got()), ["o-1", "o-2"], "4 waits for 3");

    log.append(3);
    wait_delivered(&handle, 0, 4).await;
    assert_eq!(subjects(&target.got()), ["o-1", "o-2", "o-3", "o-4"]);
    assert_eq!(handle.status().gaps_skipped_total, 0);

    // Batch 5 never comes (an append that failed after taking its number).
    log.append(6);
    wait_delivered(&handle, 0, 6).await;
    assert_eq!(handle.status().gaps_skipped_total, 1);
    assert_eq!(subjects(&target.got())[4..], ["o-6"]);
    handle.shutdown(GRACE).await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_not_trimmed_past_a_target_that_is_down() {
    let log = Arc::new(FedLog::default());
    let mut views = SharedFloors::split(log.clone(), 2);
    let events_view = Arc::new(views.pop().expect("two views"));
    let flusher_view = views.pop().expect("two views");
    let dir = tempfile::tempdir().expect("temp dir");
    let target = FakeTarget::down();
    let handle = start_events(
        events_view.clone(),
        target.sink(),
        store_in(&dir),
        KEY.into(),
        DEPLOYMENT.into(),
        options(),
    )
    .expect("starts");
    for seq in 1..=5 {
        log.append(seq);
    }
    // The SQL flusher has written everything; the target has nothing acknowledged.
    flusher_view.set_retain_floor(0, 5);
    target.wait_failed_calls(3).await;
    assert!(
        log.highest_floor().is_some_and(|floor| floor == 0),
        "held at 0"
    );

    target.set_down(false);
    wait_delivered(&handle, 0, 5).await;
    let deadline = Instant::now() + PATIENCE;
    while log.highest_floor() != Some(5) {
        assert!(
            Instant::now() < deadline,
            "the floor did not follow the cursor"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(events_view.floors_of(0), [Some(5), Some(5)]);
    handle.shutdown(GRACE).await.expect("clean stop");
}
