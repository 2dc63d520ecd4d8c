//! One test per rule of api.md, on a manual clock.

mod common;

use common::{request, spec, start, T0_MS, WINDOW_MS};
use seckill_engine::{Error, OrderStatus, PromotionStatus};

#[tokio::test]
async fn a_promotion_sells_only_inside_its_window() {
    let h = start(2);
    let mut s = spec("p", &[("a", 10, 1)], false);
    s.starts_at_ms = T0_MS + 60_000;
    h.create(s).await;

    let early = h
        .engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await;
    assert_eq!(early, Err(Error::NotStarted));
    assert_eq!(
        h.engine.issue_token("p", "a", "u1").await,
        Err(Error::NotStarted)
    );
    assert_eq!(
        h.engine.public_promotion("p").expect("view").status,
        PromotionStatus::Upcoming
    );

    h.clock.advance_ms(60_000);
    let bought = h
        .engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await;
    assert!(bought.expect("live now").created);

    h.clock.set_ms(T0_MS + WINDOW_MS);
    let late = h
        .engine
        .purchase("p", "a", "u2", request("r2", 1, None))
        .await;
    assert_eq!(late, Err(Error::Ended));
    assert!(
        h.engine.public_promotions().is_empty(),
        "ended promotions are not listed"
    );
}

#[tokio::test]
async fn start_and_stop_force_the_window() {
    let h = start(2);
    let mut s = spec("p", &[("a", 10, 1)], false);
    s.starts_at_ms = T0_MS + 3_600_000;
    s.ends_at_ms = T0_MS + 7_200_000;
    h.create(s).await;

    let started = h.engine.start_promotion("p").await.expect("started");
    assert_eq!(started.status, PromotionStatus::Live);
    assert_eq!(started.starts_at_ms, T0_MS);
    h.engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await
        .expect("sells after a forced start");

    let stopped = h.engine.stop_promotion("p").await.expect("stopped");
    assert_eq!(stopped.status, PromotionStatus::Ended);
    assert_eq!(
        h.engine
            .purchase("p", "a", "u2", request("r2", 1, None))
            .await,
        Err(Error::Ended)
    );
    assert_eq!(h.engine.start_promotion("p").await, Err(Error::Ended));
    assert_eq!(h.engine.start_promotion("nope").await, Err(Error::NotFound));
    // Stopping again is harmless.
    assert_eq!(
        h.engine
            .stop_promotion("p")
            .await
            .expect("stop again")
            .status,
        PromotionStatus::Ended
    );

    // The forced window survives a restart.
    let h = h.restart().await;
    assert_eq!(
        h.engine.public_promotion("p").expect("view").status,
        PromotionStatus::Ended
    );
}

#[tokio::test]
async fn tokens_are_per_user_item_single_use_and_expire() {
    let h = start(2);
    h.create(spec("p", &[("a", 10, 2), ("b", 10, 1)], true))
        .await;

    let first = h.engine.issue_token("p", "a", "u1").await.expect("token");
    let again = h.engine.issue_token("p", "a", "u1").await.expect("token");
    assert_eq!(first, again, "an unused token is handed out again");
    assert_eq!(first.expires_at_ms, T0_MS + 60_000);

    let missing = h
        .engine
        .purchase("p", "a", "u1", request("r0", 1, None))
        .await;
    assert_eq!(missing, Err(Error::TokenInvalid));
    let other_user = h
        .engine
        .purchase("p", "a", "u2", request("r1", 1, Some(first.token.clone())))
        .await;
    assert_eq!(other_user, Err(Error::TokenInvalid));
    let other_item = h
        .engine
        .purchase("p", "b", "u1", request("r2", 1, Some(first.token.clone())))
        .await;
    assert_eq!(other_item, Err(Error::TokenInvalid));

    h.engine
        .purchase("p", "a", "u1", request("r3", 1, Some(first.token.clone())))
        .await
        .expect("bought with the token");
    let reuse = h
        .engine
        .purchase("p", "a", "u1", request("r4", 1, Some(first.token.clone())))
        .await;
    assert_eq!(reuse, Err(Error::TokenInvalid), "a token buys once");

    let second = h
        .engine
        .issue_token("p", "a", "u1")
        .await
        .expect("new token");
    assert_ne!(second.token, first.token);
    h.clock.advance_ms(60_000);
    let expired = h
        .engine
        .purchase("p", "a", "u1", request("r5", 1, Some(second.token.clone())))
        .await;
    assert_eq!(
        expired,
        Err(Error::TokenInvalid),
        "tokens expire after 60 s"
    );
    let third = h
        .engine
        .issue_token("p", "a", "u1")
        .await
        .expect("fresh token");
    assert_ne!(third.token, second.token);
}

#[tokio::test]
async fn the_gate_issues_at_most_stock_times_multiplier_tokens() {
    let h = start(2);
    let mut s = spec("p", &[("a", 2, 1)], true);
    s.token_multiplier = 3;
    h.create(s).await;
    for user in 0..6 {
        h.engine
            .issue_token("p", "a", &format!("u{user}"))
            .await
            .expect("within the cap");
    }
    assert_eq!(
        h.engine.issue_token("p", "a", "u6").await,
        Err(Error::TokensExhausted)
    );
    let stats = h.engine.promotion_stats("p").await.expect("stats");
    assert_eq!(stats.items[0].tokens_issued, 6);
}

#[tokio::test]
async fn per_user_limit_counts_live_orders() {
    let h = start(2);
    h.create(spec("p", &[("a", 10, 2)], false)).await;
    let too_many = h
        .engine
        .purchase("p", "a", "u1", request("r0", 3, None))
        .await;
    assert!(
        matches!(too_many, Err(Error::InvalidRequest { ref field, .. }) if field == "quantity")
    );

    let one = h
        .engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await
        .expect("first");
    h.engine
        .purchase("p", "a", "u1", request("r2", 1, None))
        .await
        .expect("second");
    assert_eq!(
        h.engine
            .purchase("p", "a", "u1", request("r3", 1, None))
            .await,
        Err(Error::LimitExceeded)
    );
    // A cancelled order frees its place under the limit.
    h.engine
        .cancel(&one.order.order_id, Some("u1"))
        .await
        .expect("cancel");
    h.engine
        .purchase("p", "a", "u1", request("r4", 1, None))
        .await
        .expect("room again after the cancel");
}

#[tokio::test]
async fn stock_refusals_sold_out_and_insufficient() {
    let h = start(2);
    h.create(spec("p", &[("a", 3, 2)], false)).await;
    h.engine
        .purchase("p", "a", "u1", request("r1", 2, None))
        .await
        .expect("two units");
    assert_eq!(
        h.engine
            .purchase("p", "a", "u2", request("r2", 2, None))
            .await,
        Err(Error::InsufficientStock)
    );
    h.engine
        .purchase("p", "a", "u2", request("r3", 1, None))
        .await
        .expect("the last unit");
    assert_eq!(
        h.engine
            .purchase("p", "a", "u3", request("r4", 1, None))
            .await,
        Err(Error::SoldOut)
    );
    assert_eq!(
        h.engine.issue_token("p", "a", "u3").await,
        Err(Error::SoldOut)
    );
    let view = h.engine.public_promotion("p").expect("view");
    assert!(view.items[0].sold_out);
    assert_eq!(view.items[0].remaining, 0);
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_original_order_whatever_changed() {
    let h = start(2);
    h.create(spec("p", &[("a", 1, 1)], false)).await;
    let first = h
        .engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await
        .expect("bought");
    assert!(first.created);
    // Sold out now, and then the promotion ends: the retry still gets its order.
    let retry = h
        .engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await
        .expect("same order");
    assert!(!retry.created);
    assert_eq!(retry.order, first.order);
    h.engine.stop_promotion("p").await.expect("stopped");
    let late_retry = h
        .engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await
        .expect("same order after the end");
    assert_eq!(late_retry.order.order_id, first.order.order_id);
    // The same request id from another user is another request.
    assert_eq!(
        h.engine
            .purchase("p", "a", "u2", request("r1", 1, None))
            .await,
        Err(Error::Ended)
    );
}

#[tokio::test]
async fn payment_is_idempotent_by_reference() {
    let h = start(2);
    h.create(spec("p", &[("a", 5, 1)], false)).await;
    let order = h.buy("p", "a", "u1", "r1").await;
    let paid = h
        .engine
        .pay(&order.order_id, "pay-1", None)
        .await
        .expect("paid");
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(paid.payment_ref.as_deref(), Some("pay-1"));
    assert_eq!(paid.paid_at_ms, Some(T0_MS));
    assert_eq!(
        h.engine.pay(&order.order_id, "pay-1", None).await,
        Ok(paid.clone())
    );
    assert_eq!(
        h.engine.pay(&order.order_id, "pay-2", None).await,
        Err(Error::AlreadyPaid)
    );
    assert_eq!(
        h.engine.cancel(&order.order_id, Some("u1")).await,
        Err(Error::NotCancellable)
    );
    let stats = h.engine.promotion_stats("p").await.expect("stats");
    assert_eq!(
        (
            stats.items[0].sold,
            stats.items[0].reserved,
            stats.items[0].remaining
        ),
        (1, 0, 4)
    );
    assert_eq!(
        h.engine.pay("0000000000000000-1", "x", None).await,
        Err(Error::NotFound)
    );
}

#[tokio::test]
async fn cancel_returns_stock_and_hides_other_users_orders() {
    let h = start(2);
    h.create(spec("p", &[("a", 1, 1)], false)).await;
    let order = h.buy("p", "a", "u1", "r1").await;
    assert_eq!(
        h.engine.order(&order.order_id, Some("u2")).await,
        Err(Error::NotFound),
        "no existence leak"
    );
    assert_eq!(
        h.engine.cancel(&order.order_id, Some("u2")).await,
        Err(Error::NotFound)
    );
    let cancelled = h
        .engine
        .cancel(&order.order_id, Some("u1"))
        .await
        .expect("cancelled");
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(cancelled.closed_at_ms, Some(T0_MS));
    assert_eq!(
        h.engine.cancel(&order.order_id, Some("u1")).await,
        Ok(cancelled.clone()),
        "cancelling again answers the order unchanged"
    );
    assert_eq!(
        h.engine.pay(&order.order_id, "pay-1", None).await,
        Err(Error::NotPayable)
    );
    h.engine
        .purchase("p", "a", "u2", request("r2", 1, None))
        .await
        .expect("the unit is back on sale");
}

#[tokio::test]
async fn unpaid_orders_expire_and_free_their_stock() {
    let h = start(2);
    let mut s = spec("p", &[("a", 1, 1)], false);
    s.payment_timeout_s = 30;
    h.create(s).await;
    let order = h.buy("p", "a", "u1", "r1").await;
    assert_eq!(order.pay_before_ms, T0_MS + 30_000);

    h.clock.advance_ms(29_999);
    h.engine.tick().await.expect("tick");
    let still = h.engine.order(&order.order_id, None).await.expect("order");
    assert_eq!(still.status, OrderStatus::PendingPayment);

    h.clock.advance_ms(1);
    h.engine.tick().await.expect("tick");
    let expired = h.engine.order(&order.order_id, None).await.expect("order");
    assert_eq!(expired.status, OrderStatus::Expired);
    assert_eq!(expired.closed_at_ms, Some(T0_MS + 30_000));
    assert_eq!(
        h.engine.pay(&order.order_id, "late", None).await,
        Err(Error::NotPayable)
    );
    assert_eq!(
        h.engine.cancel(&order.order_id, Some("u1")).await,
        Err(Error::NotCancellable)
    );
    h.engine
        .purchase("p", "a", "u2", request("r2", 1, None))
        .await
        .expect("the expired unit sells again");
}

#[tokio::test]
async fn expiry_happens_without_any_request_on_the_real_tick() {
    // The shard's own timer, not a request, expires the order (api.md: within 2 s).
    let h = common::start_with(seckill_engine::EngineConfig {
        expiry_tick_ms: 20,
        ..common::config(1)
    });
    let (engine, clock) = (&h.engine, &h.clock);
    let mut s = spec("p", &[("a", 1, 1)], false);
    s.payment_timeout_s = 10;
    engine.create_promotion(s).await.expect("created");
    engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await
        .expect("bought");
    clock.advance_ms(10_000);
    // Poll the gate (no shard round trip) until the shard's timer has run.
    let mut freed = false;
    for _ in 0..500 {
        if engine.public_promotion("p").expect("view").items[0].remaining == 1 {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(freed, "the shard's timer expired the order on its own");
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn three_strikes_ban_a_user_from_the_whole_promotion() {
    let h = start(3);
    h.create(spec("p", &[("a", 10, 1), ("b", 10, 1)], false))
        .await;
    for round in 0..3 {
        let order = h.buy("p", "a", "u1", &format!("r{round}")).await;
        h.engine
            .cancel(&order.order_id, Some("u1"))
            .await
            .expect("cancelled");
    }
    assert_eq!(
        h.engine
            .purchase("p", "a", "u1", request("r9", 1, None))
            .await,
        Err(Error::Banned)
    );
    assert_eq!(
        h.engine
            .purchase("p", "b", "u1", request("r9", 1, None))
            .await,
        Err(Error::Banned),
        "the ban covers every item of the promotion"
    );
    assert_eq!(
        h.engine.issue_token("p", "b", "u1").await,
        Err(Error::Banned)
    );
    h.engine
        .purchase("p", "a", "u2", request("r1", 1, None))
        .await
        .expect("others still buy");

    let h = h.restart().await;
    assert_eq!(
        h.engine
            .purchase("p", "b", "u1", request("r10", 1, None))
            .await,
        Err(Error::Banned),
        "the ban survives a restart"
    );
}

#[tokio::test]
async fn catalog_rules_ids_and_overlapping_skus() {
    let h = start(2);
    h.create(spec("p1", &[("a", 1, 1)], false)).await;
    assert_eq!(
        h.engine
            .create_promotion(spec("p1", &[("z", 1, 1)], false))
            .await,
        Err(Error::AlreadyExists)
    );
    let overlap = h
        .engine
        .create_promotion(spec("p2", &[("b", 1, 1), ("a", 1, 1)], false))
        .await;
    assert_eq!(
        overlap,
        Err(Error::SkuInOtherPromotion {
            sku: "a".into(),
            other_promotion_id: "p1".into()
        })
    );
    let mut later = spec("p3", &[("a", 1, 1)], false);
    later.starts_at_ms = T0_MS + WINDOW_MS;
    later.ends_at_ms = T0_MS + 2 * WINDOW_MS;
    h.engine
        .create_promotion(later)
        .await
        .expect("the same sku in a later window is fine");

    let mut anonymous = spec("ignored", &[("c", 1, 1)], false);
    anonymous.id = None;
    let made = h.create(anonymous).await;
    assert!(seckill_engine::is_valid_id(&made.id));
    assert_eq!(
        h.engine
            .purchase("nope", "a", "u1", request("r1", 1, None))
            .await,
        Err(Error::NotFound)
    );
    assert_eq!(
        h.engine
            .purchase("p1", "nope", "u1", request("r1", 1, None))
            .await,
        Err(Error::NotFound)
    );
    assert!(matches!(
        h.engine.purchase("p1", "a", "bad user", request("r1", 1, None)).await,
        Err(Error::InvalidRequest { ref field, .. }) if field == "user_id"
    ));
    assert_eq!(h.engine.order("garbage", None).await, Err(Error::NotFound));
}

#[tokio::test]
async fn a_failed_journal_acknowledges_nothing_and_fences_the_shard() {
    let h = start(1);
    h.create(spec("p", &[("a", 5, 1)], false)).await;
    h.journal.set_failing(true);
    let refused = h
        .engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await;
    // api.md v2: a write whose journal write failed may be on disk all the same (a write that
    // reached the log before its fsync failed is replayed), so it is "outcome unknown", not
    // acknowledged; the restart below shows this one was not kept.
    assert_eq!(refused, Err(Error::OutcomeUnknown));
    h.journal.set_failing(false);
    let fenced = h
        .engine
        .purchase("p", "a", "u2", request("r2", 1, None))
        .await;
    assert!(
        matches!(fenced, Err(Error::Unavailable(_))),
        "memory is ahead of the log until a restart"
    );
    // After a restart nothing of the refused purchase remains.
    let h = h.restart().await;
    let stats = h.engine.promotion_stats("p").await.expect("stats");
    assert_eq!(stats.items[0].remaining, 5);
    h.engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await
        .expect("sells again");
}

#[tokio::test]
async fn a_restart_rebuilds_orders_tokens_and_stats() {
    let h = start(2);
    h.create(spec("p", &[("a", 10, 1), ("b", 10, 2)], true))
        .await;
    let token = h.engine.issue_token("p", "a", "u1").await.expect("token");
    let unused = h.engine.issue_token("p", "b", "u2").await.expect("token");
    let order = h
        .engine
        .purchase("p", "a", "u1", request("r1", 1, Some(token.token)))
        .await
        .expect("bought")
        .order;
    h.engine
        .pay(&order.order_id, "pay-1", None)
        .await
        .expect("paid");
    let before = h.engine.promotion_stats("p").await.expect("stats");

    let h = h.restart().await;
    assert_eq!(h.engine.promotion_stats("p").await.expect("stats"), before);
    let again = h
        .engine
        .order(&order.order_id, Some("u1"))
        .await
        .expect("order");
    assert_eq!(again.status, OrderStatus::Paid);
    assert_eq!(
        h.engine.issue_token("p", "b", "u2").await.expect("token"),
        unused,
        "an unused token survives the restart"
    );
    let retry = h
        .engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await
        .expect("idempotency survives");
    assert!(!retry.created);
}

#[tokio::test]
async fn a_snapshot_plus_the_log_after_it_equals_the_log_alone() {
    let h = start(3);
    h.create(spec("p", &[("a", 50, 2), ("b", 50, 1), ("c", 5, 1)], false))
        .await;
    for user in 0..20 {
        let sku = ["a", "b", "c"][user % 3];
        let _ = h
            .engine
            .purchase("p", sku, &format!("u{user}"), request("r", 1, None))
            .await;
    }
    let image = h.engine.snapshot().await.expect("snapshot");
    assert!(image.through_seq > 0);
    for user in 20..40 {
        let sku = ["a", "b", "c"][user % 3];
        if let Ok(bought) = h
            .engine
            .purchase("p", sku, &format!("u{user}"), request("r", 1, None))
            .await
        {
            if user.is_multiple_of(2) {
                let _ = h.engine.cancel(&bought.order.order_id, None).await;
            }
        }
    }
    h.engine.shutdown().await.expect("shutdown");

    let from_snapshot = seckill_engine::Engine::start(
        h.config.clone(),
        common::ports(&h.clock, &h.journal),
        h.journal.recovery(),
    )
    .expect("start from snapshot");
    let image_a = from_snapshot.snapshot().await.expect("image");
    from_snapshot.shutdown().await.expect("shutdown");

    let from_log = seckill_engine::Engine::start(
        h.config.clone(),
        common::ports(&h.clock, &h.journal),
        h.journal.recovery_from_log_only(),
    )
    .expect("start from log");
    let image_b = from_log.snapshot().await.expect("image");
    from_log.shutdown().await.expect("shutdown");

    let mut items_a = image_a.items;
    let mut items_b = image_b.items;
    items_a.sort_by_key(|i| i.key);
    items_b.sort_by_key(|i| i.key);
    assert_eq!(items_a, items_b);
    assert_eq!(image_a.promotions, image_b.promotions);
}

#[tokio::test]
async fn a_retry_on_a_sold_out_item_gets_its_order_after_a_restart() {
    let h = start(2);
    h.create(spec("p", &[("a", 1, 1)], false)).await;
    let first = h
        .engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await
        .expect("bought");
    let h = h.restart().await;
    assert_eq!(
        h.engine
            .purchase("p", "a", "u2", request("r1", 1, None))
            .await,
        Err(Error::SoldOut),
        "the gate knows the item is sold out after recovery"
    );
    let retry = h
        .engine
        .purchase("p", "a", "u1", request("r1", 1, None))
        .await
        .expect("the buyer's retry passes the sold-out gate");
    assert!(!retry.created);
    assert_eq!(retry.order, first.order);
}
