//! Every engine operation completes or does not happen, whatever its caller does.
//!
//! Thousands of operations (creates, some repeated with the same body or another one,
//! starts, stops, tokens, purchases, cancels, payments), each raced against a tiny timeout
//! or a `select!` that may drop it at any await point. Afterwards the engine's memory must
//! equal what a restart replays from its log, and the restart must work.
//!
//! Randomized with a printed seed: `SECKILL_TEST_SEED=<seed>` replays a failing run.

mod common;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seckill_engine::{Engine, EngineImage, ItemState, PromotionSpec};

use common::{request, spec, start, Harness};

const OPERATIONS: usize = 3_000;
const PROMOTIONS: usize = 12;
const USERS: usize = 20;

fn seed() -> u64 {
    std::env::var("SECKILL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// The promotion spec for slot `n`, in one of two bodies (the same id with another body is a
/// conflict, the same body a retry). Each promotion has its own SKUs, so none overlap.
fn promotion(n: usize, body: u8) -> PromotionSpec {
    let a = format!("a{n}");
    let b = format!("b{n}");
    let mut s = spec(
        &format!("p{n}"),
        &[(&a, 3, 2), (&b, 2, 1)],
        n.is_multiple_of(2),
    );
    if body == 1 {
        s.name = format!("other body {n}");
    }
    s
}

/// Runs `op` against a budget of 0 to 300 microseconds, or drops it at the first poll
/// that is not ready, as a client that hangs up would.
async fn maybe_dropped<F: std::future::Future>(rng: &mut StdRng, op: F) {
    match rng.random_range(0..3) {
        0 => {
            let budget = Duration::from_micros(rng.random_range(0..300));
            let _ = tokio::time::timeout(budget, op).await;
        }
        1 => {
            tokio::select! {
                biased;
                _ = tokio::task::yield_now() => {}
                _ = op => {}
            }
        }
        _ => {
            let _ = op.await;
        }
    }
}

async fn one_operation(h: &Harness, rng: &mut StdRng) {
    let n = rng.random_range(0..PROMOTIONS);
    let id = format!("p{n}");
    let sku = if rng.random_bool(0.5) {
        format!("a{n}")
    } else {
        format!("b{n}")
    };
    let user = format!("u{}", rng.random_range(0..USERS));
    let engine = &h.engine;
    match rng.random_range(0..10) {
        0 | 1 => {
            let body = rng.random_range(0..2);
            maybe_dropped(rng, engine.create_promotion(promotion(n, body))).await;
        }
        2 => maybe_dropped(rng, engine.stop_promotion(&id)).await,
        3 => maybe_dropped(rng, engine.start_promotion(&id)).await,
        4 => maybe_dropped(rng, engine.issue_token(&id, &sku, &user)).await,
        5 | 6 => {
            let token = engine.issue_token(&id, &sku, &user).await.ok();
            let r = format!("r{}", rng.random_range(0..3));
            let buy = engine.purchase(&id, &sku, &user, request(&r, 1, token.map(|t| t.token)));
            maybe_dropped(rng, buy).await;
        }
        _ => {
            let Some(order) = some_order(h, &id, &sku, &user).await else {
                return;
            };
            if rng.random_bool(0.5) {
                maybe_dropped(rng, engine.cancel(&order, Some(&user))).await;
            } else {
                maybe_dropped(rng, engine.pay(&order, "psp", None)).await;
            }
        }
    }
}

/// An order of `user` on the item: the one a request id finds (or, if it is free, places).
async fn some_order(h: &Harness, id: &str, sku: &str, user: &str) -> Option<String> {
    for r in 0..3 {
        let retry = h
            .engine
            .purchase(id, sku, user, request(&format!("r{r}"), 1, None))
            .await;
        if let Ok(found) = retry {
            return Some(found.order.order_id);
        }
    }
    None
}

/// An image with its parts in a fixed order, and the journal position left out.
fn normalized(mut image: EngineImage) -> EngineImage {
    image.through_seq = 0;
    image
        .promotions
        .sort_by(|a, b| a.record.id.cmp(&b.record.id));
    image.items.sort_by_key(|item: &ItemState| item.key);
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_callers_leave_memory_equal_to_the_log() {
    let seed = seed();
    println!("SECKILL_TEST_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let h = start(3);
    for _ in 0..OPERATIONS {
        one_operation(&h, &mut rng).await;
    }
    // Let every operation handed over finish: the control thread and the shards answer
    // in order, so a snapshot after them sees all of them.
    let live = normalized(h.engine.snapshot().await.expect("snapshot of memory"));
    h.engine.shutdown().await.expect("shutdown");

    let replayed = Engine::start(
        h.config.clone(),
        common::ports(&h.clock, &seckill_engine::MemoryJournal::new()),
        h.journal.recovery_from_log_only(),
    )
    .unwrap_or_else(|e| panic!("seed {seed}: the log does not restart: {e}"));
    let image = normalized(replayed.snapshot().await.expect("snapshot of the replay"));
    assert!(
        image == live,
        "seed {seed}: memory and the replayed log differ"
    );
    assert!(
        !live.promotions.is_empty(),
        "seed {seed}: something was created"
    );
    // And the restarted engine serves.
    for promotion in &live.promotions {
        replayed
            .promotion_stats(&promotion.record.id)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: stats after restart: {e}"));
    }
    replayed.shutdown().await.expect("shutdown");
}
