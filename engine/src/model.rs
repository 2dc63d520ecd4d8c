//! The domain's values: what a promotion is, what an order is, and what callers see.
//!
//! Times are unix milliseconds (`*_ms`), money is integer cents (`*_cents`). The edge turns
//! them into RFC 3339 and JSON; the engine never formats a date.

use serde::{Deserialize, Serialize};

use crate::guard::PromotionGuard;

/// Default `payment_timeout_s` of api.md.
pub const DEFAULT_PAYMENT_TIMEOUT_S: u32 = 900;
/// Default `token_multiplier` of api.md.
pub const DEFAULT_TOKEN_MULTIPLIER: u32 = 5;
/// Default `per_user_limit` of api.md.
pub const DEFAULT_PER_USER_LIMIT: u32 = 1;

/// What an operator asks for when creating a promotion (already parsed, not yet validated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionSpec {
    /// The promotion id; the engine makes one when absent.
    pub id: Option<String>,
    pub name: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub payment_timeout_s: u32,
    pub require_token: bool,
    pub token_multiplier: u32,
    pub items: Vec<ItemSpec>,
    /// The human check and who is eligible (open by default).
    pub guard: PromotionGuard,
}

/// One item of a [`PromotionSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemSpec {
    pub sku: String,
    /// The title shown to shoppers; the sku when absent.
    pub title: Option<String>,
    pub stock: u64,
    pub price_cents: i64,
    pub per_user_limit: u32,
}

/// A validated promotion as the log records it. Immutable once created: start and stop move
/// the window through their own events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionRecord {
    pub id: String,
    pub name: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub payment_timeout_s: u32,
    pub require_token: bool,
    pub token_multiplier: u32,
    pub created_at_ms: i64,
    pub items: Vec<ItemRecord>,
    /// Not in the record's encoding: logs and snapshots of versions 1 and 2 read unchanged,
    /// and a guarded promotion is journaled as [`crate::Event::PromotionGuarded`], which
    /// carries the guard beside the record.
    #[serde(skip)]
    pub guard: PromotionGuard,
}

impl PromotionRecord {
    /// True when `other` was made from the same body: everything but the creation time is
    /// equal. A create repeated with the same body is a retry (api.md: 200, not 409).
    pub fn same_body(&self, other: &PromotionRecord) -> bool {
        PromotionRecord {
            created_at_ms: other.created_at_ms,
            ..self.clone()
        } == *other
    }
}

/// A validated item of a [`PromotionRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    pub sku: String,
    pub title: String,
    pub stock: u64,
    pub price_cents: i64,
    pub per_user_limit: u32,
}

/// Where a promotion stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionStatus {
    Upcoming,
    Live,
    Ended,
}

impl PromotionStatus {
    /// The status of the window `[starts_at_ms, ends_at_ms)` at `now_ms`.
    pub fn at(starts_at_ms: i64, ends_at_ms: i64, now_ms: i64) -> Self {
        if now_ms >= ends_at_ms {
            PromotionStatus::Ended
        } else if now_ms < starts_at_ms {
            PromotionStatus::Upcoming
        } else {
            PromotionStatus::Live
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PromotionStatus::Upcoming => "upcoming",
            PromotionStatus::Live => "live",
            PromotionStatus::Ended => "ended",
        }
    }
}

/// The life of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        }
    }

    /// Live orders hold stock and count against the per-user limit.
    pub fn is_live(self) -> bool {
        matches!(self, OrderStatus::PendingPayment | OrderStatus::Paid)
    }

    /// How far along the life an order is; an order's rank never decreases, which lets a
    /// replica (the SQL table) refuse to move an order backwards.
    pub fn rank(self) -> u8 {
        match self {
            OrderStatus::PendingPayment => 0,
            OrderStatus::Paid | OrderStatus::Cancelled | OrderStatus::Expired => 1,
        }
    }
}

/// An order, as stored and as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub promotion_id: String,
    pub sku: String,
    pub user_id: String,
    pub request_id: String,
    pub quantity: u32,
    pub price_cents: i64,
    pub amount_cents: i64,
    pub status: OrderStatus,
    pub created_at_ms: i64,
    pub pay_before_ms: i64,
    pub paid_at_ms: Option<i64>,
    pub payment_ref: Option<String>,
    pub closed_at_ms: Option<i64>,
}

/// A purchase as the shopper sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRequest {
    pub request_id: String,
    pub quantity: u32,
    pub token: Option<String>,
}

/// The answer to a purchase: the order, and whether this call created it (201) or found the
/// order of an earlier call with the same request id (200). Serializable, so that a cluster
/// node can hand the owner's answer back as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchased {
    pub order: Order,
    pub created: bool,
}

/// The answer to a promotion create: the promotion, and whether this call created it (201)
/// or found it made by an earlier call with the same body (200).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creation {
    pub promotion: PromotionStats,
    pub created: bool,
}

/// A purchase token handed to one shopper for one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    pub token: String,
    pub expires_at_ms: i64,
}

/// Exact stock figures of one item, as operators see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemStats {
    pub sku: String,
    pub title: String,
    pub price_cents: i64,
    pub per_user_limit: u32,
    pub stock: u64,
    pub remaining: u64,
    pub reserved: u64,
    pub sold: u64,
    /// Every token ever handed out.
    pub tokens_issued: u64,
    /// Tokens unexpired and unused now: what the token cap bounds.
    pub tokens_outstanding: u64,
}

/// A promotion with exact per-item stats (operator view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionStats {
    pub id: String,
    pub name: String,
    pub status: PromotionStatus,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub payment_timeout_s: u32,
    pub require_token: bool,
    pub token_multiplier: u32,
    pub created_at_ms: i64,
    pub items: Vec<ItemStats>,
    pub guard: PromotionGuard,
}

/// One item in the shoppers' view; `remaining` may lag the shard by one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicItem {
    pub sku: String,
    pub title: String,
    pub price_cents: i64,
    pub per_user_limit: u32,
    pub remaining: u64,
    pub sold_out: bool,
}

/// A promotion in the shoppers' view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicPromotion {
    pub id: String,
    pub name: String,
    pub status: PromotionStatus,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub server_time_ms: i64,
    pub require_token: bool,
    pub items: Vec<PublicItem>,
    pub guard: PromotionGuard,
}

/// What stays of an archived item besides its orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedItem {
    pub key: u64,
    pub promotion_id: String,
    /// The item's final figures (nothing reserved: every order was closed).
    pub stats: ItemStats,
    /// Orders the item holds, sequence numbers 1..=orders.
    pub orders: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purchase_answer_survives_the_wire() {
        let order = Order {
            order_id: "00000000deadbeef-3-42".into(),
            promotion_id: "double11".into(),
            sku: "phone".into(),
            user_id: "alice".into(),
            request_id: "r1".into(),
            quantity: 2,
            price_cents: 99_900,
            amount_cents: 199_800,
            status: OrderStatus::Paid,
            created_at_ms: 1_800_000_000_000,
            pay_before_ms: 1_800_000_900_000,
            paid_at_ms: Some(1_800_000_100_000),
            payment_ref: Some("pay-1".into()),
            closed_at_ms: None,
        };
        for created in [true, false] {
            let answer = Purchased {
                order: order.clone(),
                created,
            };
            let bytes = postcard::to_allocvec(&answer).expect("encodes");
            let back: Purchased = postcard::from_bytes(&bytes).expect("decodes");
            assert_eq!(back, answer);
        }
    }
}
