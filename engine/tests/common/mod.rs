//! Shared set-up for the engine's integration tests: an engine on a manual clock and an
//! in-memory journal, and a promotion spec builder.
#![allow(dead_code)]

pub mod watched;

use std::sync::Arc;

use seckill_engine::{
    Engine, EngineConfig, ItemSpec, ManualClock, MemoryJournal, NullSink, Order, Ports,
    PromotionSpec, PromotionStats, PurchaseRequest, Recovery,
};

/// Test time zero: 2027-01-15, a round number far from any real edge.
pub const T0_MS: i64 = 1_800_000_000_000;
/// Promotions built by [`spec`] run for one hour from T0.
pub const WINDOW_MS: i64 = 3_600_000;

pub struct Harness {
    pub engine: Engine,
    pub clock: Arc<ManualClock>,
    pub journal: Arc<MemoryJournal>,
    pub config: EngineConfig,
}

pub fn config(shards: usize) -> EngineConfig {
    EngineConfig {
        shards,
        // Expiry only when the test ticks: the clock is manual anyway.
        expiry_tick_ms: 3_600_000,
        snapshot_every_events: 0,
        ..EngineConfig::default()
    }
}

pub fn start(shards: usize) -> Harness {
    start_with(config(shards))
}

/// An engine run by `config` on a fresh manual clock and in-memory journal.
pub fn start_with(config: EngineConfig) -> Harness {
    let clock = ManualClock::new(T0_MS);
    let journal = MemoryJournal::new();
    let engine = Engine::start(config.clone(), ports(&clock, &journal), Recovery::empty())
        .expect("engine starts");
    Harness {
        engine,
        clock,
        journal,
        config,
    }
}

pub fn ports(clock: &Arc<ManualClock>, journal: &Arc<MemoryJournal>) -> Ports {
    Ports {
        journal: journal.clone(),
        clock: clock.clone(),
        sink: Arc::new(NullSink),
    }
}

impl Harness {
    /// Stops this engine and starts a new one from what the journal kept, as a restart would.
    pub async fn restart(self) -> Harness {
        self.engine.shutdown().await.expect("shutdown");
        let engine = Engine::start(
            self.config.clone(),
            ports(&self.clock, &self.journal),
            self.journal.recovery(),
        )
        .expect("engine restarts");
        Harness { engine, ..self }
    }

    pub async fn create(&self, spec: PromotionSpec) -> PromotionStats {
        let creation = self.engine.create_promotion(spec).await.expect("created");
        assert!(creation.created, "a new promotion");
        creation.promotion
    }

    /// One unit of `sku`, bought by `user_id` without a token: the new order.
    pub async fn buy(
        &self,
        promotion_id: &str,
        sku: &str,
        user_id: &str,
        request_id: &str,
    ) -> Order {
        self.engine
            .purchase(promotion_id, sku, user_id, request(request_id, 1, None))
            .await
            .expect("bought")
            .order
    }
}

/// A live promotion (T0 .. T0 + 1 h) with the given items: (sku, stock, per_user_limit).
pub fn spec(id: &str, items: &[(&str, u64, u32)], require_token: bool) -> PromotionSpec {
    PromotionSpec {
        guard: Default::default(),
        id: Some(id.to_owned()),
        name: format!("promotion {id}"),
        starts_at_ms: T0_MS,
        ends_at_ms: T0_MS + WINDOW_MS,
        payment_timeout_s: 900,
        require_token,
        token_multiplier: 5,
        items: items
            .iter()
            .map(|(sku, stock, limit)| ItemSpec {
                sku: (*sku).to_owned(),
                title: None,
                stock: *stock,
                price_cents: 1_000,
                per_user_limit: *limit,
            })
            .collect(),
    }
}

pub fn request(request_id: &str, quantity: u32, token: Option<String>) -> PurchaseRequest {
    PurchaseRequest {
        request_id: request_id.to_owned(),
        quantity,
        token,
    }
}
