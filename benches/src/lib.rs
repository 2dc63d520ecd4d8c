//! Shared set-up for the benches: runtimes and engines built outside the timed loops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use seckill_engine::{
    Clock, Engine, EngineConfig, ItemSpec, Journal, NullSink, Ports, PromotionSpec, Recovery,
    SystemClock,
};

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
