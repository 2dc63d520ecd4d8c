//! A snapshot image survives a compact binary encoding (postcard, as the RocksDB journal
//! stores it) and restarts the same engine, across more than one order-log chunk.

mod common;

use common::{request, spec, start};
use seckill_engine::{EngineImage, Recovery};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_image_restarts_the_same_engine() {
    let h = start(2);
    h.engine
        .create_promotion(spec("p", &[("a", 10_000, 1), ("b", 10, 1)], false))
        .await
        .expect("created");
    // A guarded promotion: its guard is left out of the record's encoding and carried by
    // the image's `guards`.
    let mut guarded = spec("g", &[("c", 5, 1)], true);
    guarded.guard = seckill_engine::PromotionGuard {
        human_check: seckill_engine::HumanCheck::Pow,
        eligibility: Some(seckill_engine::Eligibility {
            claim: "tier".into(),
            rule: seckill_engine::EligibilityRule::AnyOf(vec!["gold".into()]),
        }),
    };
    let guard = guarded.guard.clone();
    h.engine.create_promotion(guarded).await.expect("created");
    // More than one 4096-order chunk on item "a".
    for user in 0..5_000 {
        h.engine
            .purchase("p", "a", &format!("u{user}"), request("r1", 1, None))
            .await
            .expect("bought");
    }
    let image = h.engine.snapshot().await.expect("snapshot");
    let bytes = postcard::to_stdvec(&image).expect("the image encodes");
    let decoded: EngineImage = postcard::from_bytes(&bytes).expect("and decodes");
    assert_eq!(decoded, image);
    let before = h.engine.promotion_stats("p").await.expect("stats");
    h.engine.shutdown().await.expect("shutdown");

    let restarted = seckill_engine::Engine::start(
        h.config.clone(),
        common::ports(&h.clock, &h.journal),
        Recovery {
            image: Some(decoded),
            batches: Box::new(std::iter::empty()),
            epoch: 2,
        },
    )
    .expect("restart from the decoded image");
    assert_eq!(restarted.promotion_stats("p").await.expect("stats"), before);
    assert_eq!(
        restarted.promotion_stats("g").await.expect("stats").guard,
        guard,
        "the guard came back from the encoded image"
    );
    let order = restarted
        .purchase("p", "a", "u4999", request("r1", 1, None))
        .await
        .expect("the last buyer's retry finds its order");
    assert!(!order.created);
    restarted.shutdown().await.expect("shutdown");
}
