//! Resident memory per order, per token and per buyer, through the public API.
//!
//! Each phase adds `n` records of one kind to a running engine (in-memory journal that keeps
//! nothing, so only the engine's own state grows) and divides the growth of the process's
//! resident set (VmRSS, what the soak scenario bounds) by `n`:
//! - tokens: `n` distinct shoppers each take a token (a token and a new buyer each);
//! - orders: `n` distinct shoppers each buy once (an order and a new buyer each);
//! - repeat orders: the same shoppers buy a second unit (an order, no new buyer);
//! - a buyer is then the difference of the last two, and a token the first less a buyer.
//!
//! Run: `cargo run --release -p seckill-benches --example memory_per_record -- [n]`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use seckill_benches::{engine, live_promotion, runtime};
use seckill_engine::{Engine, MemoryJournal, PurchaseRequest};

const CALLERS: usize = 64;

/// VmRSS of this process, in bytes.
fn rss_bytes() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    kib * 1024.0
}

#[derive(Clone, Copy)]
enum Phase {
    Tokens,
    Orders { request: u8 },
}

/// Runs `n` calls of `phase` on (promotion, sku) from CALLERS tasks; returns bytes per call.
async fn grow(engine: &Engine, promotion: &str, sku: &str, n: usize, phase: Phase) -> f64 {
    let before = rss_bytes();
    let mut tasks = Vec::with_capacity(CALLERS);
    for caller in 0..CALLERS {
        let (engine, promotion, sku) = (engine.clone(), promotion.to_owned(), sku.to_owned());
        tasks.push(tokio::spawn(async move {
            for i in (caller..n).step_by(CALLERS) {
                let user = format!("shopper-{i:08}");
                let outcome = match phase {
                    Phase::Tokens => engine.issue_token(&promotion, &sku, &user).await.map(drop),
                    Phase::Orders { request } => {
                        let request = PurchaseRequest {
                            request_id: format!("r{request}"),
                            quantity: 1,
                            token: None,
                        };
                        engine
                            .purchase(&promotion, &sku, &user, request)
                            .await
                            .map(drop)
                    }
                };
                assert!(outcome.is_ok(), "{outcome:?}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("caller");
    }
    (rss_bytes() - before) / n as f64
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    runtime().block_on(async {
        let engine = engine(MemoryJournal::discarding());
        let mut tokens = live_promotion(1, 1_000_000_000);
        tokens.require_token = true;
        let mut orders = live_promotion(1, 1_000_000_000);
        orders.items[0].per_user_limit = 2;
        let ids = |s: &seckill_engine::PromotionSpec| {
            (s.id.clone().unwrap_or_default(), s.items[0].sku.clone())
        };
        let ((tp, ts), (op, os)) = (ids(&tokens), ids(&orders));
        engine.create_promotion(tokens).await.expect("created");
        engine.create_promotion(orders).await.expect("created");

        let token_and_buyer = grow(&engine, &tp, &ts, n, Phase::Tokens).await;
        let order_and_buyer = grow(&engine, &op, &os, n, Phase::Orders { request: 1 }).await;
        let order = grow(&engine, &op, &os, n, Phase::Orders { request: 2 }).await;
        let buyer = order_and_buyer - order;
        println!("records per phase: {n}");
        println!("bytes per order (pending, in its item's order log): {order:.0}");
        println!("bytes per buyer (an order's user on an item): {buyer:.0}");
        println!("bytes per token (with its buyer entry): {token_and_buyer:.0}");
        println!(
            "bytes per token alone (token and buyer, less a buyer): {:.0}",
            token_and_buyer - buyer
        );
        engine.shutdown().await.expect("shutdown");
    });
}
