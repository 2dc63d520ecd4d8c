//! A shard that dies (a panic: a broken invariant, a bug) dies alone: the other shards keep
//! selling, snapshots abort cleanly, catalog changes answer, shutdown finishes, and the
//! engine names the dead shard.

mod common;

use std::time::Duration;

use common::{request, spec, start};
use seckill_engine::{item_key, Error};

/// Generous: its expiry means "it hung", never "it was slow".
const MUST_ANSWER: Duration = Duration::from_secs(20);

/// Item skus of promotion `p` with their shard among `shards`, at least one on each.
fn skus_by_shard(shards: usize) -> Vec<(String, usize)> {
    (0..16)
        .map(|n| {
            let sku = format!("s{n}");
            let shard = (item_key("p", &sku) % shards as u64) as usize;
            (sku, shard)
        })
        .collect()
}

/// An engine of two shards with promotion `p` of 16 items; a sku on shard 0, one on 1.
async fn two_shards() -> (common::Harness, String, String) {
    let h = start(2);
    let skus = skus_by_shard(2);
    let items: Vec<(&str, u64, u32)> = skus.iter().map(|(sku, _)| (sku.as_str(), 100, 5)).collect();
    h.create(spec("p", &items, false)).await;
    let on = |shard: usize| {
        skus.iter()
            .find(|(_, s)| *s == shard)
            .map(|(sku, _)| sku.clone())
            .expect("an item on each shard")
    };
    let (on_0, on_1) = (on(0), on(1));
    (h, on_0, on_1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_shard_is_contained() {
    let (h, on_0, on_1) = two_shards().await;
    let (on_0, on_1) = (on_0.as_str(), on_1.as_str());
    let before = h.buy("p", on_1, "u1", "r1").await;

    h.engine.inject_shard_panic(0);
    let mut down = Vec::new();
    for _ in 0..1_000 {
        down = h.engine.dead_shards();
        if !down.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(down, vec![0], "the engine names the dead shard");

    // Its items answer 503 at once; the other shard keeps selling and reading.
    assert_eq!(
        h.engine
            .purchase("p", on_0, "u2", request("r1", 1, None))
            .await,
        Err(Error::ShardDown(0))
    );
    let sold = h
        .engine
        .purchase("p", on_1, "u2", request("r1", 1, None))
        .await
        .expect("shard 1 sells");
    assert!(sold.created);
    let read = h
        .engine
        .order(&before.order_id, Some("u1"))
        .await
        .expect("read");
    assert_eq!(read.order_id, before.order_id);

    // Snapshots and catalog changes answer instead of hanging.
    let snapshot = tokio::time::timeout(MUST_ANSWER, h.engine.snapshot())
        .await
        .expect("the snapshot does not hang");
    assert_eq!(snapshot.map(|_| ()), Err(Error::ShardDown(0)));
    let create = tokio::time::timeout(
        MUST_ANSWER,
        h.engine.create_promotion(spec(
            "q",
            &[("x0", 1, 1), ("x1", 1, 1), ("x2", 1, 1)],
            false,
        )),
    )
    .await
    .expect("create does not hang");
    if let Err(error) = create {
        assert!(matches!(error, Error::ShardDown(0)), "{error:?}");
    }
    let stopped = tokio::time::timeout(MUST_ANSWER, h.engine.stop_promotion("p"))
        .await
        .expect("stop does not hang");
    // Either the promotion's home shard is the dead one (nothing journaled), or the stop
    // went through and only the stats after it need the dead shard.
    assert_eq!(stopped.map(|_| ()), Err(Error::ShardDown(0)));
    let status = h.engine.public_promotion("p").expect("view").status;
    if status == seckill_engine::PromotionStatus::Ended {
        assert_eq!(
            h.engine
                .purchase("p", on_1, "u3", request("r1", 1, None))
                .await,
            Err(Error::Ended)
        );
    }
    tokio::time::timeout(MUST_ANSWER, h.engine.shutdown())
        .await
        .expect("shutdown finishes")
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_brings_the_dead_shards_items_back() {
    let (h, on_0, _) = two_shards().await;
    let order = h.buy("p", &on_0, "u1", "r1").await;
    h.engine.inject_shard_panic(0);
    while h.engine.dead_shards().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let h = h.restart().await;
    assert!(h.engine.dead_shards().is_empty());
    let read = h.engine.order(&order.order_id, None).await.expect("read");
    assert_eq!(read, order);
}
