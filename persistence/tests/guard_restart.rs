//! A guarded promotion (human check, eligibility) keeps its guard through the RocksDB
//! journal's encoding: replayed from the log, and loaded from a snapshot. A guard lost on
//! the way would reopen the promotion to every bot, so the test asks as a bot would.

mod journal_common;

use journal_common::{open, spec, start, PROMOTION_ID};
use seckill_engine::{
    Eligibility, EligibilityRule, Engine, Error, HumanCheck, PromotionGuard, SystemClock,
};
use seckill_persistence::journal::Durability;

fn guard() -> PromotionGuard {
    PromotionGuard {
        human_check: HumanCheck::Pow,
        eligibility: Some(Eligibility {
            claim: "level".into(),
            rule: EligibilityRule::Min(3),
        }),
    }
}

/// The guard as the engine shows it, and a bot's token request answered at the gate.
async fn assert_guarded(engine: &Engine, when: &str) {
    let stats = engine.promotion_stats(PROMOTION_ID).await.expect("stats");
    assert_eq!(stats.guard, guard(), "{when}: the guard is back");
    let sku = stats.items[0].sku.clone();
    assert_eq!(
        engine
            .issue_token(PROMOTION_ID, &sku, "bot")
            .await
            .map(|_| ()),
        Err(Error::NotEligible),
        "{when}: a shopper without claims is still refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_survives_the_log_and_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now_ms = seckill_engine::Clock::now_ms(&SystemClock);
    let (journal, recovery) = open(dir.path(), Durability::Sync);
    let engine = start(journal.clone(), recovery);
    let mut guarded = spec(now_ms, 10);
    guarded.require_token = true;
    guarded.guard = guard();
    engine.create_promotion(guarded).await.expect("created");
    assert_guarded(&engine, "as created").await;
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    drop(journal);

    let (journal, recovery) = open(dir.path(), Durability::Sync);
    assert!(
        recovery.image.is_none(),
        "no snapshot yet: replayed from the log"
    );
    let engine = start(journal.clone(), recovery);
    assert_guarded(&engine, "replayed from the log").await;
    engine.snapshot().await.expect("snapshot");
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    drop(journal);

    let (journal, recovery) = open(dir.path(), Durability::Sync);
    assert!(recovery.image.is_some(), "loaded from the snapshot");
    let engine = start(journal.clone(), recovery);
    assert_guarded(&engine, "loaded from the snapshot").await;
    engine.shutdown().await.expect("shutdown");
}
