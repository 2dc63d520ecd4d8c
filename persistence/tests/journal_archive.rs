//! Ended items leave memory into the RocksDB archive and stay readable across a snapshot,
//! a trim and a restart.

mod journal_common;

use std::sync::Arc;

use journal_common::{open, spec, PROMOTION_ID};
use seckill_engine::{
    Engine, EngineConfig, Error, Journal, ManualClock, NullSink, Ports, PurchaseRequest, Recovery,
};
use seckill_persistence::journal::{Durability, RocksJournal};

const T0_MS: i64 = 1_800_000_000_000;

fn start(journal: &Arc<RocksJournal>, clock: &Arc<ManualClock>, recovery: Recovery) -> Engine {
    let config = EngineConfig {
        shards: 2,
        snapshot_every_events: 0,
        expiry_tick_ms: 3_600_000,
        retain_ended_s: 10,
        ..EngineConfig::default()
    };
    let ports = Ports {
        journal: journal.clone(),
        clock: clock.clone(),
        sink: Arc::new(NullSink),
    };
    Engine::start(config, ports, recovery).expect("engine starts")
}

fn request(id: &str) -> PurchaseRequest {
    PurchaseRequest {
        request_id: id.into(),
        quantity: 1,
        token: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_items_are_read_from_disk_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = ManualClock::new(T0_MS);
    let (journal, recovery) = open(dir.path(), Durability::Sync);
    let engine = start(&journal, &clock, recovery);
    engine
        .create_promotion(spec(T0_MS, 100))
        .await
        .expect("create");
    let mut orders = Vec::new();
    for n in 0..50u32 {
        let bought = engine
            .purchase(PROMOTION_ID, "a", &format!("u{n}"), request("r1"))
            .await
            .expect("bought");
        let order = bought.order;
        let closed = if n.is_multiple_of(2) {
            engine.pay(&order.order_id, &format!("psp-{n}"), None).await
        } else {
            engine.cancel(&order.order_id, None).await
        };
        orders.push(closed.expect("closed"));
    }
    let stats = engine.promotion_stats(PROMOTION_ID).await.expect("stats");
    engine.stop_promotion(PROMOTION_ID).await.expect("stop");
    clock.advance_ms(10_000);
    engine.tick().await.expect("tick archives the items");
    // Let the log be trimmed behind the snapshot: the archived items' events are gone then.
    journal.set_retain_floor(Journal::last_seq(&*journal));
    let image = engine.snapshot().await.expect("snapshot");
    assert!(image.items.is_empty(), "every item left memory");
    engine.shutdown().await.expect("shutdown");
    assert!(journal.trimmed_through() > 0, "the log was trimmed");
    drop(engine);
    drop(journal);

    let (journal, recovery) = open(dir.path(), Durability::Sync);
    let engine = start(&journal, &clock, recovery);
    let after = engine.promotion_stats(PROMOTION_ID).await.expect("stats");
    assert_eq!(after.items, stats.items, "the stats stay");
    for (n, order) in orders.iter().enumerate() {
        let user = format!("u{n}");
        let read = engine.order(&order.order_id, Some(&user)).await;
        assert_eq!(read.as_ref(), Ok(order));
        let retry = engine
            .purchase(PROMOTION_ID, "a", &user, request("r1"))
            .await
            .expect("the retry finds the order");
        assert_eq!(&retry.order, order);
    }
    assert_eq!(
        engine
            .purchase(PROMOTION_ID, "a", "stranger", request("r1"))
            .await,
        Err(Error::Ended)
    );
    engine.shutdown().await.expect("shutdown");
}
