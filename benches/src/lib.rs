//! Shared set-up for the benches: runtimes and engines built outside the timed loops.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use seckill_engine::{
    Clock, Engine, EngineConfig, ItemSpec, Journal, NullSink, Ports, PromotionSpec,
    PurchaseRequest, Recovery, SystemClock,
};

/// Stock no bench sells out.
const ENDLESS_STOCK: u64 = 1_000_000_000;

/// The number in the environment variable `name`, or `default` when it is unset or not one.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A path under the system temp dir that no other bench run uses:
/// `seckill-bench-{label}-{pid}-{n}`. Nothing is created there.
pub fn scratch_path(label: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "seckill-bench-{label}-{}-{}",
        std::process::id(),
        unique()
    ))
}

/// [`scratch_path`], created empty.
pub fn scratch_dir(label: &str) -> PathBuf {
    let path = scratch_path(label);
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("scratch dir");
    path
}

/// A multi-thread tokio runtime with one worker per core, as a server would run.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// An engine with the default shard count on `journal`.
pub fn engine(journal: Arc<dyn Journal>) -> Engine {
    engine_recovered(journal, Recovery::empty())
}

/// An engine with the default shard count on `journal`, rebuilt from `recovery`.
pub fn engine_recovered(journal: Arc<dyn Journal>, recovery: Recovery) -> Engine {
    let ports = Ports {
        journal,
        clock: Arc::new(SystemClock),
        sink: Arc::new(NullSink),
    };
    let config = EngineConfig {
        snapshot_every_events: 0,
        ..EngineConfig::default()
    };
    Engine::start(config, ports, recovery).expect("engine starts")
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A process-unique number, for promotion and user ids that never repeat between samples.
pub fn unique() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A live promotion with `items` items of `stock` units each, limit 1, no token.
pub fn live_promotion(items: usize, stock: u64) -> PromotionSpec {
    let now_ms = SystemClock.now_ms();
    PromotionSpec {
        guard: Default::default(),
        id: Some(format!("bench-{}", unique())),
        name: "bench".into(),
        starts_at_ms: now_ms - 1_000,
        ends_at_ms: now_ms + 3_600_000,
        payment_timeout_s: 86_400,
        require_token: false,
        token_multiplier: 1,
        items: (0..items)
            .map(|i| ItemSpec {
                sku: format!("sku-{i}-{}", unique()),
                title: None,
                stock,
                price_cents: 100,
                per_user_limit: 1,
            })
            .collect(),
    }
}

/// A promotion created on an engine: its id and its items' skus.
#[derive(Debug, Clone)]
pub struct LivePromotion {
    pub id: String,
    pub skus: Vec<String>,
}

/// A [`live_promotion`] of `items` items that never sell out, created on `engine`.
pub async fn create_live(engine: &Engine, items: usize) -> LivePromotion {
    let spec = live_promotion(items, ENDLESS_STOCK);
    let live = LivePromotion {
        id: spec.id.clone().unwrap_or_default(),
        skus: spec.items.iter().map(|i| i.sku.clone()).collect(),
    };
    engine.create_promotion(spec).await.expect("created");
    live
}

/// A purchase of one unit without a token.
pub fn one_unit(request_id: impl Into<String>) -> PurchaseRequest {
    PurchaseRequest {
        request_id: request_id.into(),
        quantity: 1,
        token: None,
    }
}

/// `callers` concurrent shoppers each buying [`one_unit`] `per_caller` times, every time as a
/// new user (`u{users}{caller}-{n}`), spread over the promotion's items. Panics when one is
/// refused.
pub async fn buy_all(
    engine: &Engine,
    live: &LivePromotion,
    callers: u64,
    per_caller: u64,
    users: &str,
) {
    let mut handles = Vec::with_capacity(callers as usize);
    for caller in 0..callers {
        let engine = engine.clone();
        let LivePromotion { id, skus } = live.clone();
        let users = users.to_owned();
        handles.push(tokio::spawn(async move {
            for n in 0..per_caller {
                let user = format!("u{users}{caller}-{n}");
                let sku = &skus[(n as usize + caller as usize) % skus.len()];
                let bought = engine.purchase(&id, sku, &user, one_unit("r1")).await;
                assert!(bought.is_ok(), "accept path refused: {bought:?}");
            }
        }));
    }
    for handle in handles {
        handle.await.expect("caller");
    }
}
