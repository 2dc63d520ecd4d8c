//! A log of several lanes, as the JetStream journal is (a catalog stream, then one stream per
//! partition, each numbered from 1): every lane lands in SQL with a cursor of its own, and a
//! flusher started again on the same tables goes on from those cursors, writing only what
//! is new, a lane that appeared meanwhile included. Runs on SQLite always and on PostgreSQL
//! when `SECKILL_TEST_DATABASE_URL` is set.

mod sql_common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seckill_engine::{Event, ItemRecord, Order, OrderStatus, PromotionRecord};
use seckill_persistence::sql::{EventSource, Flusher, FlusherHandle, SqlError};
use sql_common::*;

/// Enough time for any drain in a test; the tests assert outcomes, not speed.
const GRACE: Duration = Duration::from_secs(120);
/// The lane of the promotion, read first (the JetStream journal's catalog lane).
const CATALOG_LANE: u32 = 1;
const LANE_PROMOTION: &str = "lanes";
const LANE_SKUS: [&str; 2] = ["red", "blue"];
const ORDERS_PER_BATCH: u64 = 3;

type Batch = (u64, Vec<Event>);

/// Lanes of batches in memory, each numbered from 1. Remembers every batch it hands the
/// flusher and the floors the flusher sets.
#[derive(Default)]
struct LanedLog {
    lanes: Mutex<BTreeMap<u32, Vec<Batch>>>,
    delivered: Mutex<Vec<(u32, u64)>>,
    floors: Mutex<BTreeMap<u32, u64>>,
}

impl LanedLog {
    /// Appends a batch to `lane` (made if new) and returns its sequence number.
    fn append(&self, lane: u32, events: Vec<Event>) -> u64 {
        let mut lanes = self.lanes.lock().expect("lock");
        let batches = lanes.entry(lane).or_default();
        let seq = batches.last().map_or(0, |(seq, _)| *seq) + 1;
        batches.push((seq, events));
        seq
    }

    /// The (lane, seq) of every batch read since the last call, sorted.
    fn take_delivered(&self) -> Vec<(u32, u64)> {
        let mut delivered = std::mem::take(&mut *self.delivered.lock().expect("lock"));
        delivered.sort_unstable();
        delivered
    }

    fn floors(&self) -> Vec<(u32, u64)> {
        let floors = self.floors.lock().expect("lock");
        floors.iter().map(|(lane, seq)| (*lane, *seq)).collect()
    }
}

impl EventSource for LanedLog {
    /// In lane order: the catalog lane (1) first.
    fn lanes(&self) -> Vec<u32> {
        self.lanes.lock().expect("lock").keys().copied().collect()
    }

    fn read_batches(
        &self,
        lane: u32,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        let lanes = self.lanes.lock().expect("lock");
        let batches: Vec<Batch> = lanes.get(&lane).map_or_else(Vec::new, |batches| {
            batches
                .iter()
                .filter(|(seq, _)| *seq > after_seq)
                .take(batches_max)
                .cloned()
                .collect()
        });
        let mut delivered = self.delivered.lock().expect("lock");
        delivered.extend(batches.iter().map(|(seq, _)| (lane, *seq)));
        Ok(batches)
    }

    fn last_seq(&self, lane: u32) -> u64 {
        let lanes = self.lanes.lock().expect("lock");
        lanes
            .get(&lane)
            .and_then(|batches| batches.last())
            .map_or(0, |(seq, _)| *seq)
    }

    fn set_retain_floor(&self, lane: u32, seq: u64) {
        let mut floors = self.floors.lock().expect("lock");
        let floor = floors.entry(lane).or_default();
        *floor = (*floor).max(seq);
    }

    fn deployment_id(&self) -> Option<String> {
        Some("laned-log".into())
    }
}

fn promotion_created() -> Event {
    Event::PromotionCreated {
        promotion: PromotionRecord {
            guard: Default::default(),
            id: LANE_PROMOTION.into(),
            name: "Lanes".into(),
            starts_at_ms: START_MS,
            ends_at_ms: START_MS + 3_600_000,
            payment_timeout_s: PAYMENT_TIMEOUT_S,
            require_token: false,
            token_multiplier: 5,
            created_at_ms: START_MS,
            items: LANE_SKUS
                .iter()
                .map(|sku| ItemRecord {
                    sku: (*sku).into(),
                    title: (*sku).into(),
                    stock: 1_000,
                    price_cents: 500,
                    per_user_limit: 1,
                })
                .collect(),
        },
    }
}

/// Order `n` of the item that `lane` sells (a partition lane holds its items' orders).
fn placed(lane: u32, n: u64) -> Order {
    let sku = LANE_SKUS[lane as usize % LANE_SKUS.len()];
    let item_key = seckill_engine::item_key(LANE_PROMOTION, sku);
    Order {
        order_id: format!("{item_key:016x}-{lane}-{n}"),
        promotion_id: LANE_PROMOTION.into(),
        sku: sku.into(),
        user_id: format!("u{lane}-{n}"),
        request_id: format!("r{lane}-{n}"),
        quantity: 1,
        price_cents: 500,
        amount_cents: 500,
        status: OrderStatus::PendingPayment,
        created_at_ms: START_MS + n as i64,
        pay_before_ms: START_MS + 60_000,
        paid_at_ms: None,
        payment_ref: None,
        closed_at_ms: None,
    }
}

/// Appends `batches` batches of new orders to `lane`; returns the orders.
fn sell_in_lane(log: &LanedLog, lane: u32, batches: u64) -> Vec<Order> {
    let mut orders = Vec::new();
    for _ in 0..batches {
        let seq = log.last_seq(lane) + 1;
        let batch: Vec<Order> = (1..=ORDERS_PER_BATCH)
            .map(|i| placed(lane, (seq - 1) * ORDERS_PER_BATCH + i))
            .collect();
        let events = batch
            .iter()
            .map(|order| Event::OrderPlaced {
                item_key: seckill_engine::item_key(LANE_PROMOTION, &order.sku),
                order_seq: 0,
                order: order.clone(),
                token: None,
            })
            .collect();
        assert_eq!(log.append(lane, events), seq);
        orders.extend(batch);
    }
    orders
}

/// The tables hold exactly `orders`, row by row.
async fn assert_orders(db: &TestDb, orders: &[Order]) {
    let mut expected: Vec<OrderRow> = orders.iter().map(OrderRow::of).collect();
    expected.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    assert_eq!(db.orders().await, expected, "{}: the orders", db.kind());
}

/// Polls the status until no lane is behind, for at most a generous bound (a hang check, not
/// a timing).
async fn wait_until_caught_up(flusher: &FlusherHandle) {
    for _ in 0..1_200 {
        if flusher.status().lanes_behind == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the flusher never caught up: {:?}", flusher.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lane_lands_with_its_own_cursor_and_a_restart_goes_on_from_them() {
    let name = "every_lane_lands_with_its_own_cursor_and_a_restart_goes_on_from_them";
    for db in databases(name).await {
        let test = TestEngine::fresh();
        let log = Arc::new(LanedLog::default());
        log.append(CATALOG_LANE, vec![promotion_created()]);
        let mut orders = sell_in_lane(&log, 2, 5);
        orders.extend(sell_in_lane(&log, 3, 8));

        let flusher = Flusher::start(options(db.flusher_url()), log.clone(), test.engine.clone())
            .await
            .expect("flusher starts");
        wait_until_caught_up(&flusher).await;
        let status = flusher.status();
        assert_eq!(
            (status.lag_events, status.lag_ms, status.rows_written_total),
            (0, 0, orders.len() as u64),
            "{}: {status:?}",
            db.kind()
        );
        assert_eq!(
            (status.cursor_seq, status.last_seq),
            (0, 0),
            "{}: a log without lane 0 has no single position",
            db.kind()
        );
        flusher.shutdown(GRACE).await.expect("drained");

        assert_orders(&db, &orders).await;
        assert_eq!(
            db.lane_cursors().await,
            [(1, 1), (2, 5), (3, 8)],
            "{}: each lane's cursor at its last batch",
            db.kind()
        );
        assert_eq!(db.cursor().await, 0, "{}: lane 0 untouched", db.kind());
        assert_eq!(log.floors(), [(1, 1), (2, 5), (3, 8)], "{}", db.kind());
        let items: Vec<(String, i64)> = db
            .items()
            .await
            .into_iter()
            .map(|item| (item.sku, item.remaining))
            .collect();
        assert_eq!(
            items,
            [("blue".to_owned(), 1_000), ("red".to_owned(), 1_000)],
            "{}: the catalog lane's promotion",
            db.kind()
        );
        let first_run = log.take_delivered();
        let mut once = first_run.clone();
        once.dedup();
        assert_eq!(first_run, once, "{}: a batch read twice", db.kind());
        assert_eq!(first_run.len(), 1 + 5 + 8, "{}", db.kind());

        // A flusher on the same tables: lane 3 grew, and lane 4 (a partition taken over)
        // appears while it runs.
        orders.extend(sell_in_lane(&log, 3, 2));
        let flusher = Flusher::start(options(db.flusher_url()), log.clone(), test.engine.clone())
            .await
            .expect("flusher starts again");
        orders.extend(sell_in_lane(&log, 4, 2));
        flusher.shutdown(GRACE).await.expect("drained again");

        assert_eq!(
            log.take_delivered(),
            [(3, 9), (3, 10), (4, 1), (4, 2)],
            "{}: only the new batches are read, each once",
            db.kind()
        );
        assert_orders(&db, &orders).await;
        assert_eq!(
            db.lane_cursors().await,
            [(1, 1), (2, 5), (3, 10), (4, 2)],
            "{}",
            db.kind()
        );
        assert_eq!(log.floors(), [(1, 1), (2, 5), (3, 10), (4, 2)]);
        test.engine.shutdown().await.expect("engine stops");
        db.cleanup().await;
    }
}
