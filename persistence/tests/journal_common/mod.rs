//! Set-up shared by the journal tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use seckill_engine::{
    Engine, EngineConfig, ItemSpec, Journal, NullSink, Ports, PromotionSpec, Recovery, SystemClock,
};
use seckill_persistence::journal::{Durability, JournalOptions, PersistenceError, RocksJournal};

pub const PROMOTION_ID: &str = "p1";

pub fn options(data_dir: &Path, durability: Durability) -> JournalOptions {
    JournalOptions {
        data_dir: data_dir.to_path_buf(),
        durability,
        ..JournalOptions::default()
    }
}

/// Opens, waiting out a lock that a just-dropped engine's thread may hold for a moment.
pub fn open(data_dir: &Path, durability: Durability) -> (Arc<RocksJournal>, Recovery) {
    for _ in 0..200 {
        match RocksJournal::open(&options(data_dir, durability)) {
            Err(PersistenceError::Locked { .. }) => std::thread::sleep(Duration::from_millis(25)),
            Ok(opened) => return opened,
            Err(error) => panic!("open failed: {error}"),
        }
    }
    panic!("directory stayed locked");
}

/// An engine without automatic snapshots (tests take them when they mean to).
pub fn start(journal: Arc<dyn Journal>, recovery: Recovery) -> Engine {
    let config = EngineConfig {
        shards: 2,
        snapshot_every_events: 0,
        ..EngineConfig::default()
    };
    let ports = Ports {
        journal,
        clock: Arc::new(SystemClock),
        sink: Arc::new(NullSink),
    };
    Engine::start(config, ports, recovery).expect("engine starts")
}

/// A live promotion with three items, no tokens required.
pub fn spec(now_ms: i64, stock: u64) -> PromotionSpec {
    PromotionSpec {
        guard: Default::default(),
        id: Some(PROMOTION_ID.into()),
        name: "test sale".into(),
        starts_at_ms: now_ms - 1_000,
        ends_at_ms: now_ms + 3_600_000,
        payment_timeout_s: 900,
        require_token: false,
        token_multiplier: 5,
        items: ["a", "b", "c"]
            .iter()
            .map(|sku| ItemSpec {
                sku: (*sku).into(),
                title: None,
                stock,
                price_cents: 2_500,
                per_user_limit: 2,
            })
            .collect(),
    }
}
