//! The snapshot image: the whole engine's state at one point of the log.

use serde::{Deserialize, Serialize};

use crate::item::ItemState;
use crate::model::PromotionRecord;

/// A promotion's catalog entry inside a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionImage {
    pub record: PromotionRecord,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
}

/// The whole engine's state at one point of the log: everything with a sequence number up to
/// and including `through_seq` is in it, nothing after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineImage {
    pub version: u32,
    pub through_seq: u64,
    pub promotions: Vec<PromotionImage>,
    pub items: Vec<ItemState>,
}
