//! A hole in the log's sequence numbers (a shard's batch not readable yet while a later one
//! is) holds the cursor back: the late batch is written when it shows up, never skipped.

mod sql_common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use seckill_engine::{Event, Order, OrderStatus};
use seckill_persistence::sql::{EventSource, Flusher, SqlError, SINGLE_LANE};
use sql_common::*;

/// A log whose batch 2 is withheld until the test releases it.
#[derive(Default)]
struct HoleyLog {
    batches: Mutex<Vec<(u64, Vec<Event>)>>,
    withheld: Mutex<Option<(u64, Vec<Event>)>>,
}

impl EventSource for HoleyLog {
    fn lanes(&self) -> Vec<u32> {
        vec![SINGLE_LANE]
    }

    fn read_batches(
        &self,
        _lane: u32,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        let batches = self.batches.lock().expect("lock");
        Ok(batches
            .iter()
            .filter(|(seq, _)| *seq > after_seq)
            .take(batches_max)
            .cloned()
            .collect())
    }

    fn last_seq(&self, _lane: u32) -> u64 {
        3
    }

    fn set_retain_floor(&self, _lane: u32, _seq: u64) {}
}

impl HoleyLog {
    fn release(&self) {
        let batch = self
            .withheld
            .lock()
            .expect("lock")
            .take()
            .expect("withheld");
        let mut batches = self.batches.lock().expect("lock");
        batches.push(batch);
        batches.sort_by_key(|(seq, _)| *seq);
    }
}

fn placed(index: u64) -> Event {
    Event::OrderPlaced {
        item_key: 7,
        order_seq: index,
        order: Order {
            order_id: format!("0000000000000007-{index}"),
            promotion_id: "p".into(),
            sku: "s".into(),
            user_id: format!("u{index}"),
            request_id: format!("r{index}"),
            quantity: 1,
            price_cents: 100,
            amount_cents: 100,
            status: OrderStatus::PendingPayment,
            created_at_ms: START_MS,
            pay_before_ms: START_MS + 60_000,
            paid_at_ms: None,
            payment_ref: None,
            closed_at_ms: None,
        },
        token: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_batch_is_waited_for_not_skipped() {
    let db = TestDb::sqlite();
    let test = TestEngine::fresh();
    let log = Arc::new(HoleyLog::default());
    *log.batches.lock().expect("lock") = vec![(1, vec![placed(1)]), (3, vec![placed(3)])];
    *log.withheld.lock().expect("lock") = Some((2, vec![placed(2)]));
    let mut options = options(db.flusher_url());
    options.gap_wait = Duration::from_secs(3_600);

    let flusher = Flusher::start(options.clone(), log.clone(), test.engine.clone())
        .await
        .expect("flusher starts");
    match flusher.shutdown(Duration::from_millis(300)).await {
        Err(SqlError::NotDrained {
            lane,
            cursor_seq,
            last_seq,
        }) => {
            assert_eq!((lane, cursor_seq, last_seq), (SINGLE_LANE, 1, 3));
        }
        other => panic!("expected NotDrained at the hole, got {other:?}"),
    }
    assert_eq!(db.cursor().await, 1);
    assert_eq!(db.orders().await.len(), 1);

    log.release();
    let flusher = Flusher::start(options, log.clone(), test.engine.clone())
        .await
        .expect("flusher starts again");
    flusher
        .shutdown(Duration::from_secs(120))
        .await
        .expect("drained");
    assert_eq!(db.cursor().await, 3);
    let ids: Vec<String> = db.orders().await.into_iter().map(|r| r.order_id).collect();
    assert_eq!(
        ids,
        [
            "0000000000000007-1",
            "0000000000000007-2",
            "0000000000000007-3"
        ]
    );
    test.engine.shutdown().await.expect("engine stops");
}
