//! The ways a shop could lose a sale that the first version left open, one test each:
//! idempotent creates, unknown outcomes, fenced snapshots, order ids across an async loss,
//! payment amounts, token places that come back, and the gate on ended promotions.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{request, spec, start, T0_MS};
use seckill_engine::{Engine, Error, Journal};

/// A bound on calls that must answer at once; generous, since the machine is shared. Its
/// expiry means "it waited for something it should not have", never "it was slow".
const MUST_ANSWER: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_create_repeated_with_the_same_body_is_a_retry() {
    let h = start(2);
    let first = h
        .engine
        .create_promotion(spec("p", &[("a", 5, 1), ("b", 5, 1)], false))
        .await
        .expect("created");
    assert!(first.created);
    h.buy("p", "a", "u1", "r1").await;
    let again = h
        .engine
        .create_promotion(spec("p", &[("a", 5, 1), ("b", 5, 1)], false))
        .await
        .expect("a retry answers the promotion");
    assert!(!again.created, "nothing was created the second time");
    assert_eq!(again.promotion.items[0].remaining, 4, "with its live stats");
    let mut other = spec("p", &[("a", 6, 1), ("b", 5, 1)], false);
    other.name = "another body".into();
    assert_eq!(
        h.engine.create_promotion(other).await,
        Err(Error::AlreadyExists)
    );
    let creations = h
        .journal
        .batches()
        .iter()
        .flat_map(|(_, events)| events.iter())
        .filter(|e| matches!(e, seckill_engine::Event::PromotionCreated { .. }))
        .count();
    assert_eq!(creations, 1, "the log creates the promotion once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_caller_gave_up_is_found_by_its_retry() {
    let h = start(1);
    h.create(spec("p", &[("a", 5, 1)], false)).await;
    h.journal.set_stalled(true);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        h.engine.purchase("p", "a", "u1", request("r1", 1, None)),
    )
    .await;
    assert!(gave_up.is_err(), "the stalled journal held the answer back");
    h.journal.set_stalled(false);
    let retried = tokio::time::timeout(
        MUST_ANSWER,
        h.engine.purchase("p", "a", "u1", request("r1", 1, None)),
    )
    .await
    .expect("answers once the journal is back")
    .expect("the retry finds the order");
    assert!(!retried.created, "the first call's order, not a second one");
    let stats = h.engine.promotion_stats("p").await.expect("stats");
    assert_eq!(stats.items[0].reserved, 1);
}

#[tokio::test]
async fn a_fenced_shard_aborts_the_snapshot() {
    let h = start(2);
    h.create(spec("p", &[("a", 5, 1), ("b", 5, 1), ("c", 5, 1)], false))
        .await;
    let first = h.buy("p", "a", "u1", "r1").await;
    h.journal.set_failing(true);
    for (n, sku) in ["a", "b", "c"].iter().enumerate() {
        let refused = h
            .engine
            .purchase("p", sku, "u2", request(&format!("f{n}"), 1, None))
            .await;
        // The batch whose write failed may be on disk (unknown); later ones are refused.
        assert!(
            matches!(refused, Err(Error::OutcomeUnknown | Error::Unavailable(_))),
            "{refused:?}"
        );
    }
    h.journal.set_failing(false);
    let snapshot = tokio::time::timeout(MUST_ANSWER, h.engine.snapshot())
        .await
        .expect("the snapshot answers");
    assert!(
        snapshot.is_err(),
        "a fenced shard has no image to give: {snapshot:?}"
    );
    assert!(h.journal.snapshot().is_none(), "nothing was saved");
    // The paused shards were released: every shard still answers (the fenced ones with
    // 503, the others with the order).
    for sku in ["a", "b", "c"] {
        let answer = tokio::time::timeout(
            MUST_ANSWER,
            h.engine.purchase("p", sku, "u1", request("r1", 1, None)),
        )
        .await
        .expect("shards answer after an aborted snapshot");
        match answer {
            Ok(found) if sku == "a" => assert_eq!(found.order.order_id, first.order_id),
            Ok(_) => {}
            Err(error) => assert!(matches!(error, Error::Unavailable(_)), "{error:?}"),
        }
    }
}

#[tokio::test]
async fn order_ids_are_not_reused_after_an_async_loss() {
    let h = start(2);
    h.create(spec("p", &[("a", 5, 1)], false)).await;
    let kept_seq = h.journal.last_seq();
    let lost = h.buy("p", "a", "alice", "r1").await;
    h.engine.shutdown().await.expect("shutdown");
    // A power cut takes back alice's acknowledged order (async mode).
    h.journal.lose_after(kept_seq);
    let engine = Engine::start(
        h.config.clone(),
        common::ports(&h.clock, &h.journal),
        h.journal.recovery(),
    )
    .expect("restart");
    let bobs = engine
        .purchase("p", "a", "bob", request("r1", 1, None))
        .await
        .expect("bob buys")
        .order;
    assert_ne!(bobs.order_id, lost.order_id, "bob gets a new id");
    assert_eq!(
        engine.order(&lost.order_id, None).await,
        Err(Error::NotFound),
        "alice's lost id never names bob's order"
    );
    assert_eq!(
        engine.pay(&lost.order_id, "alice-money", None).await,
        Err(Error::NotFound),
        "nobody can pay bob's order with alice's payment"
    );
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_recovery_whose_epoch_the_log_has_seen_is_refused() {
    let h = start(1);
    h.create(spec("p", &[("a", 5, 1)], false)).await;
    h.buy("p", "a", "alice", "r1").await;
    h.engine.shutdown().await.expect("shutdown");
    let mut recovery = h.journal.recovery();
    recovery.epoch = 1;
    assert!(matches!(
        Engine::start(
            h.config.clone(),
            common::ports(&h.clock, &h.journal),
            recovery
        ),
        Err(Error::Unavailable(_))
    ));
}

#[tokio::test]
async fn pay_checks_the_amount_when_given() {
    let h = start(1);
    h.create(spec("p", &[("a", 5, 1)], false)).await;
    let order = h.buy("p", "a", "u1", "r1").await;
    assert_eq!(
        h.engine.pay(&order.order_id, "psp-1", Some(999)).await,
        Err(Error::AmountMismatch)
    );
    let still = h.engine.order(&order.order_id, None).await.expect("order");
    assert_eq!(still.status, seckill_engine::OrderStatus::PendingPayment);
    let paid = h
        .engine
        .pay(&order.order_id, "psp-1", Some(order.amount_cents))
        .await
        .expect("the right amount pays");
    assert_eq!(paid.status, seckill_engine::OrderStatus::Paid);
    assert_eq!(
        h.engine.pay(&order.order_id, "psp-1", Some(1)).await,
        Err(Error::AmountMismatch),
        "a wrong amount is refused even on a repeat"
    );
}

#[tokio::test]
async fn token_places_come_back_after_a_cancel_and_an_expiry() {
    let h = start(1);
    let mut s = spec("p", &[("a", 1, 1)], true);
    s.token_multiplier = 1;
    h.create(s).await;
    // As a new user would: A takes a token, buys, cancels; B must get a token.
    let token = h
        .engine
        .issue_token("p", "a", "A")
        .await
        .expect("A's token");
    let order = h
        .engine
        .purchase("p", "a", "A", request("r1", 1, Some(token.token)))
        .await
        .expect("A buys")
        .order;
    h.engine
        .cancel(&order.order_id, Some("A"))
        .await
        .expect("A cancels");
    let b = h
        .engine
        .issue_token("p", "a", "B")
        .await
        .expect("B gets a token");
    assert_eq!(
        h.engine.issue_token("p", "a", "C").await,
        Err(Error::TokensExhausted),
        "one place, held by B"
    );
    let stats = h.engine.promotion_stats("p").await.expect("stats");
    assert_eq!(stats.items[0].tokens_outstanding, 1);
    assert_eq!(stats.items[0].tokens_issued, 2);
    // B's token expires unused: its place comes back.
    h.clock.set_ms(b.expires_at_ms);
    h.engine
        .issue_token("p", "a", "C")
        .await
        .expect("C gets the freed place");
    let stats = h.engine.promotion_stats("p").await.expect("stats");
    assert_eq!(stats.items[0].tokens_outstanding, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_refuses_strangers_to_an_ended_promotion_without_the_shard() {
    let h = start(1);
    h.create(spec("ended", &[("x", 5, 1)], false)).await;
    h.create(spec("busy", &[("y", 5, 1)], false)).await;
    let buyer = h.buy("ended", "x", "buyer", "r1").await;
    h.engine.stop_promotion("ended").await.expect("stopped");
    h.engine
        .tick()
        .await
        .expect("the shard publishes the ended item's buyers");
    // Hold the only shard inside a journal write.
    h.journal.set_stalled(true);
    let engine = h.engine.clone();
    let stuck = tokio::spawn(async move {
        engine
            .purchase("busy", "y", "someone", request("r1", 1, None))
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = tokio::time::timeout(
        MUST_ANSWER / 5,
        h.engine
            .purchase("ended", "x", "stranger", request("r1", 1, None)),
    )
    .await;
    h.journal.set_stalled(false);
    assert_eq!(
        refused.expect("answered without waiting for the busy shard"),
        Err(Error::Ended)
    );
    // The buyer's retry still goes to the shard and gets the order.
    let retry = h
        .engine
        .purchase("ended", "x", "buyer", request("r1", 1, None))
        .await
        .expect("the buyer's retry");
    assert_eq!(retry.order.order_id, buyer.order_id);
    stuck.await.expect("joined").expect("bought once released");
}

#[tokio::test]
async fn an_engine_dropped_without_shutdown_stops_its_threads() {
    let h = start(2);
    let weak = Arc::downgrade(&h.journal);
    drop(h);
    for _ in 0..200 {
        if weak.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the shards still hold the journal");
}

#[tokio::test]
async fn restart_keeps_windows_and_orders() {
    let h = start(2);
    h.create(spec("p", &[("a", 5, 1)], false)).await;
    let order = h.buy("p", "a", "u1", "r1").await;
    h.clock.set_ms(T0_MS + 60_000);
    h.engine.stop_promotion("p").await.expect("stop");
    let h = h.restart().await;
    let read = h
        .engine
        .order(&order.order_id, Some("u1"))
        .await
        .expect("order");
    assert_eq!(read, order);
    assert_eq!(
        h.engine
            .purchase("p", "a", "u2", request("r1", 1, None))
            .await,
        Err(Error::Ended)
    );
}

#[tokio::test]
async fn ended_items_leave_memory_and_stay_readable() {
    let h = common::start_with(seckill_engine::EngineConfig {
        retain_ended_s: 60,
        ..common::config(2)
    });
    let engine = &h.engine;
    engine
        .create_promotion(spec("p", &[("a", 5, 1), ("b", 5, 1)], false))
        .await
        .expect("created");
    let paid = engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await
        .expect("bought")
        .order;
    let paid = engine
        .pay(&paid.order_id, "psp-1", None)
        .await
        .expect("paid");
    let cancelled = engine
        .purchase("p", "b", "u2", request("r1", 1, None))
        .await
        .expect("bought")
        .order;
    let cancelled = engine
        .cancel(&cancelled.order_id, None)
        .await
        .expect("cancelled");
    let stats_before = engine.promotion_stats("p").await.expect("stats");

    engine.stop_promotion("p").await.expect("stopped");
    h.clock.advance_ms(59_000);
    engine.tick().await.expect("tick");
    let image = engine.snapshot().await.expect("snapshot");
    assert_eq!(image.items.len(), 2, "kept for --retain-ended-s");
    h.clock.advance_ms(2_000);
    engine.tick().await.expect("tick");
    let image = engine.snapshot().await.expect("snapshot");
    assert!(image.items.is_empty(), "both items left memory");

    check_archived(engine, &paid, &cancelled, &stats_before.items).await;
    // The create posted again (a provisioning script's retry): its archived items are not
    // installed fresh over their orders.
    let again = engine
        .create_promotion(spec("p", &[("a", 5, 1), ("b", 5, 1)], false))
        .await;
    assert!(
        matches!(&again, Ok(c) if !c.created) || again == Err(Error::AlreadyExists),
        "{again:?}"
    );
    check_archived(engine, &paid, &cancelled, &stats_before.items).await;
    // A restart replays the archiving and reads the archive the same way.
    let h = h.restart().await;
    check_archived(&h.engine, &paid, &cancelled, &stats_before.items).await;
    h.engine.shutdown().await.expect("shutdown");
}

async fn check_archived(
    engine: &Engine,
    paid: &seckill_engine::Order,
    cancelled: &seckill_engine::Order,
    stats: &[seckill_engine::ItemStats],
) {
    assert_eq!(
        engine.order(&paid.order_id, Some("u1")).await.as_ref(),
        Ok(paid)
    );
    assert_eq!(
        engine.order(&paid.order_id, Some("u2")).await,
        Err(Error::NotFound)
    );
    let now = engine.promotion_stats("p").await.expect("stats");
    assert_eq!(now.items, stats, "the stats stay");
    let retry = engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await
        .expect("a retried request id finds its order");
    assert_eq!((&retry.order, retry.created), (paid, false));
    assert_eq!(
        engine
            .purchase("p", "a", "u9", request("r1", 1, None))
            .await,
        Err(Error::Ended)
    );
    assert_eq!(
        engine.pay(&paid.order_id, "psp-1", None).await.as_ref(),
        Ok(paid)
    );
    assert_eq!(
        engine.pay(&paid.order_id, "psp-2", None).await,
        Err(Error::AlreadyPaid)
    );
    assert_eq!(
        engine
            .cancel(&cancelled.order_id, Some("u2"))
            .await
            .as_ref(),
        Ok(cancelled)
    );
}

#[tokio::test]
async fn stock_that_goes_takes_the_newest_tokens_back() {
    let h = start(1);
    let mut s = spec("p", &[("a", 2, 2)], true);
    s.token_multiplier = 2;
    h.create(s).await;
    let mut grants = Vec::new();
    for user in ["u1", "u2", "u3", "u4"] {
        grants.push(h.engine.issue_token("p", "a", user).await.expect("token"));
        h.clock.advance_ms(1);
    }
    // u1 buys both units: remaining 0, so no token may stay outstanding.
    h.engine
        .purchase(
            "p",
            "a",
            "u1",
            request("r1", 2, Some(grants[0].token.clone())),
        )
        .await
        .expect("bought");
    let stats = h.engine.promotion_stats("p").await.expect("stats");
    assert_eq!(stats.items[0].tokens_outstanding, 0, "{stats:?}");
    assert_eq!(
        h.engine
            .purchase(
                "p",
                "a",
                "u2",
                request("r1", 1, Some(grants[1].token.clone()))
            )
            .await,
        Err(Error::SoldOut)
    );
}
