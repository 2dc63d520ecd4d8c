//! One shard's thread dies: its items answer 503, the other shard's items keep selling,
//! `/readyz` says 503 and names the dead shard, `/metrics` counts the panic, and the server
//! still stops (a hang check, not a speed assertion).

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use common::{assert_error, live_promotion, send, Mode, TestServer, GENEROUS_LIMITS};

const PROMOTION: &str = "shard-down";
const STOCK: u64 = 10;
/// Every [`TestServer`] runs with `--shards 2`.
const SHARDS: u64 = 2;
/// Bound on every wait below; far above what any of them needs.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

/// The shard that owns `sku` of [`PROMOTION`], as the engine routes items.
fn shard_of(sku: &str) -> usize {
    let shard = seckill_engine::item_key(PROMOTION, sku) % SHARDS;
    usize::try_from(shard).expect("a small shard index")
}

/// Two skus owned by each shard.
fn skus_by_shard() -> [Vec<String>; 2] {
    let mut skus: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for i in 0..256 {
        let sku = format!("sku-{i}");
        let shard = shard_of(&sku);
        if skus[shard].len() < 2 {
            skus[shard].push(sku);
        }
    }
    assert!(skus.iter().all(|on_shard| on_shard.len() == 2), "{skus:?}");
    skus
}

/// Polls `path` until `done` holds for its answer, within [`WAIT_LIMIT`].
async fn poll<F>(server: &TestServer, path: &str, done: F) -> (StatusCode, String)
where
    F: Fn(StatusCode, &str) -> bool,
{
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        let response = server.client.get(server.url(path)).send().await;
        let response = response.expect("send");
        let status = response.status();
        let text = response.text().await.expect("body");
        if done(status, &text) || tokio::time::Instant::now() > deadline {
            return (status, text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_shard_takes_down_its_items_only_and_the_server_still_stops() {
    // A short grace period keeps the stop well under WAIT_LIMIT whatever happens.
    let toml = format!("shutdown_grace_s = 2\n{GENEROUS_LIMITS}");
    let server = TestServer::start_with(Mode::Header, &toml).await;
    let skus = skus_by_shard();
    let items: Vec<(&str, u64)> = skus
        .iter()
        .flatten()
        .map(|sku| (sku.as_str(), STOCK))
        .collect();
    server
        .create_promotion(live_promotion(PROMOTION, &items, false))
        .await;
    // Both shards sell before the fault.
    for (i, sku) in skus.iter().flatten().enumerate() {
        let user = format!("before-{i}");
        let (status, body) = server.buy(&user, PROMOTION, sku, "r1").await;
        assert_eq!(status, StatusCode::CREATED, "{sku}: {body}");
    }

    let engine = server.engine.clone().expect("the engine, once ready");
    engine.inject_shard_panic(0);
    drop(engine);

    // Shard 0's items: 503 (its thread dies on this command, or is dead already), at once.
    let (status, body) = server.buy("after-0", PROMOTION, &skus[0][0], "r1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let code = body["error"]["code"].as_str().unwrap_or("");
    assert!(code == "unavailable" || code == "outcome_unknown", "{body}");

    // Shard 1's items still sell.
    for (i, sku) in skus[1].iter().enumerate() {
        let user = format!("after-1-{i}");
        let (status, body) = server.buy(&user, PROMOTION, sku, "r1").await;
        assert_eq!(status, StatusCode::CREATED, "{sku}: {body}");
    }

    // /readyz: 503 `unavailable`, naming shard 0 (and not shard 1).
    let (status, text) = poll(&server, "/readyz", |s, _| s != StatusCode::OK).await;
    let ready: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_error(&(status, ready.clone()), 503, "unavailable");
    let message = ready["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("shard 0"), "{message}");
    assert!(!message.contains("shard 1"), "{message}");

    // Once the shard is known dead, its items are refused as not done.
    let answer = server.buy("after-0-b", PROMOTION, &skus[0][1], "r1").await;
    assert_error(&answer, 503, "unavailable");
    let (status, _) = send(server.client.get(server.url("/promotions/shard-down"))).await;
    assert_eq!(status, StatusCode::OK, "a read that needs no shard");

    // The engine counts the panic.
    // (The counter is described, and so shown, at 0 from the start: only a value counts.)
    let panics = |text: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix("seckill_shard_panics_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let counted = |_: StatusCode, text: &str| panics(text) >= 1.0;
    let (status, text) = poll(&server, "/metrics", counted).await;
    assert_eq!(status, StatusCode::OK);
    assert!(panics(&text) >= 1.0, "{text}");

    let stopped = tokio::time::timeout(WAIT_LIMIT, server.stop()).await;
    assert!(stopped.is_ok(), "no stop within {WAIT_LIMIT:?}");
}
