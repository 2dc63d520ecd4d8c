//! The events a shard journals: the facts from which every state is rebuilt.
//!
//! Applying the same events in the same order always gives the same state: replay does not
//! re-check any rule (the rules were checked when the event was decided), it only applies.
//! Events live on disk for as long as a sale's log is kept, so the enum only ever grows; a
//! change to an existing variant's meaning needs a new [`EVENT_VERSION`].

use serde::{Deserialize, Serialize};

use crate::guard::PromotionGuard;
use crate::model::{Order, PromotionRecord};

/// The version of the event and snapshot encoding this build writes and reads. A log or a
/// snapshot stamped with a higher version was written by a newer build and must be refused.
///
/// Version 2 added [`Event::ItemArchived`] (at the end, so version 1 logs read unchanged)
/// and order ids that carry the engine start's epoch. Version 3 added
/// [`Event::PromotionGuarded`] (at the end likewise) and the guards of the snapshot image
/// ([`crate::EngineImage::guards`]; a version 2 image is read as one without guards).
pub const EVENT_VERSION: u32 = 3;

/// One fact in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A promotion and all its items came into being (one event, so creation is atomic).
    PromotionCreated { promotion: PromotionRecord },
    /// An operator forced the promotion live at `at_ms`.
    PromotionStarted { promotion_id: String, at_ms: i64 },
    /// An operator ended the promotion at `at_ms`.
    PromotionStopped { promotion_id: String, at_ms: i64 },
    /// A purchase token was handed to a user.
    TokenIssued {
        item_key: u64,
        user_id: String,
        token: String,
        expires_at_ms: i64,
    },
    /// A purchase was accepted: stock moved from remaining to reserved.
    OrderPlaced {
        item_key: u64,
        order_seq: u64,
        order: Order,
        /// The token the purchase consumed, if the promotion requires one.
        token: Option<String>,
    },
    /// Payment confirmed: stock moved from reserved to sold. Carries the order as it now is.
    OrderPaid {
        item_key: u64,
        order_seq: u64,
        order: Order,
    },
    /// The shopper cancelled: stock moved from reserved back to remaining.
    OrderCancelled {
        item_key: u64,
        order_seq: u64,
        order: Order,
    },
    /// The payment deadline passed: stock moved from reserved back to remaining.
    OrderExpired {
        item_key: u64,
        order_seq: u64,
        order: Order,
    },
    /// The item of an ended promotion left memory: its stats and orders are in the journal's
    /// archive (written, durably, before this event), and they are read from there.
    ItemArchived { item_key: u64 },
    /// A promotion with a human check or an eligibility rule came into being: the record
    /// (whose encoding leaves the guard out) and its guard, in one event.
    PromotionGuarded {
        promotion: PromotionRecord,
        guard: PromotionGuard,
    },
}

impl Event {
    /// The event that creates `promotion`: the version 1 variant when it guards nothing (so
    /// such logs stay readable by older builds), [`Event::PromotionGuarded`] otherwise.
    pub fn promotion_created(promotion: PromotionRecord) -> Event {
        if promotion.guard.is_open() {
            Event::PromotionCreated { promotion }
        } else {
            let guard = promotion.guard.clone();
            Event::PromotionGuarded { promotion, guard }
        }
    }

    /// The promotion this event creates, with its guard.
    pub fn created_promotion(&self) -> Option<PromotionRecord> {
        match self {
            Event::PromotionCreated { promotion } => Some(promotion.clone()),
            Event::PromotionGuarded { promotion, guard } => Some(PromotionRecord {
                guard: guard.clone(),
                ..promotion.clone()
            }),
            _ => None,
        }
    }

    /// The order this event creates or changes, as it is after the event.
    pub fn order(&self) -> Option<&Order> {
        match self {
            Event::OrderPlaced { order, .. }
            | Event::OrderPaid { order, .. }
            | Event::OrderCancelled { order, .. }
            | Event::OrderExpired { order, .. } => Some(order),
            _ => None,
        }
    }

    /// The item this event belongs to; `None` for promotion-level events.
    pub fn item_key(&self) -> Option<u64> {
        match self {
            Event::TokenIssued { item_key, .. }
            | Event::OrderPlaced { item_key, .. }
            | Event::OrderPaid { item_key, .. }
            | Event::OrderCancelled { item_key, .. }
            | Event::OrderExpired { item_key, .. }
            | Event::ItemArchived { item_key } => Some(*item_key),
            _ => None,
        }
    }
}
