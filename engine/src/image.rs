//! The snapshot image: the whole engine's state at one point of the log.

use serde::{Deserialize, Serialize};

use crate::guard::PromotionGuard;
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
    /// The guard of every promotion that has one (a record's encoding leaves it out).
    pub guards: Vec<GuardImage>,
}

/// A promotion's guard inside a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardImage {
    pub promotion_id: String,
    pub guard: PromotionGuard,
}

/// The image as versions 1 and 2 wrote it: no guards (none existed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineImageV2 {
    pub version: u32,
    pub through_seq: u64,
    pub promotions: Vec<PromotionImage>,
    pub items: Vec<ItemState>,
}

impl From<EngineImageV2> for EngineImage {
    fn from(old: EngineImageV2) -> Self {
        EngineImage {
            version: old.version,
            through_seq: old.through_seq,
            promotions: old.promotions,
            items: old.items,
            guards: Vec::new(),
        }
    }
}

impl EngineImage {
    /// Puts each guard back into its promotion's record (after decoding).
    pub fn promotions_with_guards(self) -> (Vec<PromotionImage>, Vec<ItemState>) {
        let EngineImage {
            mut promotions,
            items,
            guards,
            ..
        } = self;
        let mut by_id: std::collections::HashMap<String, PromotionGuard> = guards
            .into_iter()
            .map(|g| (g.promotion_id, g.guard))
            .collect();
        for promotion in &mut promotions {
            if let Some(guard) = by_id.remove(&promotion.record.id) {
                promotion.record.guard = guard;
            }
        }
        (promotions, items)
    }
}
