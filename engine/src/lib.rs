//! # seckill-engine
//!
//! The in-memory heart of seckill: it decides every purchase of a flash sale.
//!
//! Layout (each file one job):
//! - `ids`: identifier checks, the stable item key that routes an item to its shard and its
//!   cluster partition, and order ids that carry that key and the engine start's epoch.
//! - `model`: promotions, items, orders and the views callers get.
//! - `validate`: the rules a promotion spec must meet.
//! - `rules`: the refusal rules that need no item state, shared by the shard's decisions and
//!   the gate's fast refusals.
//! - `item`: one item's state and its rules, as pure `decide_*` functions returning events
//!   and one `apply` that changes the state by an event. The only code that moves stock.
//! - `order_log`: an item's orders by sequence number, in chunks that never move.
//! - `tokens`: an item's live purchase tokens and when each expires.
//! - `event`: the facts the journal stores; `image`: the snapshot image.
//! - `archive`: items of ended promotions out of memory, answered from the journal's archive.
//! - `ports`: the `Journal`, `Clock`, `OrderSink` and `Ownership` traits through which the
//!   engine meets the world (it does no I/O and reads no clock of its own), with in-memory
//!   versions.
//! - `config`: how an engine runs, and the defaults.
//! - `catalog`: what callers read without a round trip: windows, ban boards, sold-out gates.
//! - `command`: what a shard is asked, and how its answers wait for the journal.
//! - `shard_state`: a shard's items, their replay and expiries, without the thread.
//! - `shard`: the single-owner loop: mailbox, batch, journal, reply.
//! - `shards`: the shard threads as the engine sees them: mailboxes, deaths, shutdown.
//! - `pump`: replies delivered on the caller's thread, one wake-up per batch.
//! - `recovery`: rebuilding the state from a snapshot and the log.
//! - `snapshot`: taking a consistent image, and when.
//! - `control`: the thread that runs catalog changes and snapshots, where no caller can
//!   cancel them.
//! - `partition`: a cluster node's partitions: which ones it decides for (`route`), and how
//!   one is built from its lane, adopted by the shards, and released or lost.
//! - `core`: what the handle and the control thread share.
//! - `engine`: the public handle that routes calls to shards.
//! - `error`: the one `Error` enum, whose `code()` is api.md's error code.
//!
//! ```
//! use std::sync::Arc;
//! use seckill_engine::{Engine, EngineConfig, ItemSpec, MemoryJournal, NullSink, Ports,
//!     PromotionSpec, PurchaseRequest, Recovery, SystemClock};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), seckill_engine::Error> {
//! let ports = Ports {
//!     journal: MemoryJournal::new(),
//!     clock: Arc::new(SystemClock),
//!     sink: Arc::new(NullSink),
//! };
//! let engine = Engine::start(EngineConfig::default(), ports, Recovery::empty())?;
//! let now_ms = engine.now_ms();
//! engine.create_promotion(PromotionSpec {
//!     guard: Default::default(),
//!     id: Some("double11".into()),
//!     name: "Double 11".into(),
//!     starts_at_ms: now_ms,
//!     ends_at_ms: now_ms + 3_600_000,
//!     payment_timeout_s: 900,
//!     require_token: true,
//!     token_multiplier: 5,
//!     items: vec![ItemSpec { sku: "phone".into(), title: None, stock: 100,
//!                            price_cents: 99_900, per_user_limit: 1 }],
//! }).await?;
//! let grant = engine.issue_token("double11", "phone", "alice").await?;
//! let bought = engine.purchase("double11", "phone", "alice", PurchaseRequest {
//!     request_id: "r1".into(), quantity: 1, token: Some(grant.token) }).await?;
//! assert!(bought.created);
//! engine.pay(&bought.order.order_id, "pay-1", None).await?;
//! # engine.shutdown().await?;
//! # Ok(()) }
//! ```

/// The README's embedding example, compiled and run as a doc test so it stays true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod archive;
mod catalog;
mod catalog_log;
mod catalog_sync;
mod command;
mod config;
mod control;
mod core;
mod engine;
mod error;
mod event;
mod guard;
mod ids;
mod image;
mod item;
mod model;
mod order_log;
mod partition;
mod ports;
mod pump;
mod recovery;
mod remote_gates;
mod remote_view;
mod rules;
mod shard;
mod shard_state;
mod shards;
mod snapshot;
mod tokens;
mod validate;

pub use catalog_log::{CatalogAppendError, CatalogLog, MemoryCatalogLog};
pub use config::{
    EngineConfig, DEFAULT_BATCH_REQUESTS_MAX, DEFAULT_EXPIRY_TICK_MS, DEFAULT_MAILBOX_CAPACITY,
    DEFAULT_RELEASE_WAIT_MS, DEFAULT_RETAIN_ENDED_S, DEFAULT_SNAPSHOT_EVERY_EVENTS,
    DEFAULT_TOKEN_TTL_S,
};
pub use engine::Engine;
pub use error::{Error, JournalError, JournalResult, Result};
pub use event::{Event, EVENT_VERSION};
pub use guard::{
    check_eligibility, check_human, Admission, ClaimSource, ClaimValue, Eligibility,
    EligibilityRule, HumanCheck, NoClaims, OneClaim, PromotionGuard, ANY_OF_VALUES_MAX,
    CLAIM_VALUE_BYTES_MAX,
};
pub use ids::{
    format_order_id, is_valid_id, item_key, parse_order_id, partition_of, OrderRef, ID_LENGTH_MAX,
};
pub use image::{EngineImage, EngineImageV2, GuardImage, PromotionImage};
pub use item::{Buyer, ItemState, STRIKES_TO_BAN};
pub use model::{
    ArchivedItem, Creation, ItemRecord, ItemSpec, ItemStats, Order, OrderStatus, PromotionRecord,
    PromotionSpec, PromotionStats, PromotionStatus, PublicItem, PublicPromotion, PurchaseRequest,
    Purchased, TokenGrant, DEFAULT_PAYMENT_TIMEOUT_S, DEFAULT_PER_USER_LIMIT,
    DEFAULT_TOKEN_MULTIPLIER,
};
pub use order_log::OrderLog;
pub use partition::{ClusterPorts, PartitionPart, PartitionRecovery, Released};
pub use ports::{
    AppendOutcome, BatchStream, Clock, Journal, ManualClock, MemoryJournal, NullSink, OrderSink,
    Ownership, PendingAppend, Ports, Recovery, StaticOwnership, SystemClock,
};
pub use pump::ReplyPump;
pub use remote_view::{ItemFigures, PartitionView, VIEW_FRESH_MS};
pub use tokens::{TokenBook, TokenRecord};
pub use validate::{
    ITEMS_MAX, PAYMENT_TIMEOUT_S_MAX, PAYMENT_TIMEOUT_S_MIN, STOCK_MAX, TOKEN_MULTIPLIER_MAX,
    TOKEN_MULTIPLIER_MIN,
};
