//! The JSON shapes of api.md, in and out, and the conversions from the engine's values.
//!
//! The engine speaks unix milliseconds; every time leaves here as RFC 3339 in UTC and comes
//! in as RFC 3339 (any offset, converted to UTC).
//!
//! Every shape derives `utoipa::ToSchema` for `GET /openapi.json`. Doc comments on fields are
//! the document's descriptions, so they speak to API users; notes for readers of the code
//! are plain comments. The `#[schema(...)]` attributes only shape the document: serde reads
//! none of them, so the JSON on the wire is what the serde attributes alone make it.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::ToSchema;

use seckill_engine::{
    Eligibility, EligibilityRule, HumanCheck, ItemSpec, ItemStats, Order, OrderStatus,
    PromotionGuard, PromotionSpec, PromotionStats, PromotionStatus, PublicItem, PublicPromotion,
    TokenGrant, DEFAULT_PAYMENT_TIMEOUT_S, DEFAULT_PER_USER_LIMIT, DEFAULT_TOKEN_MULTIPLIER,
};

use crate::error::AppError;
use crate::human::pow::PowChallenge;

/// Unix milliseconds as RFC 3339 UTC (`2026-11-11T00:00:00.123Z`).
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        // Outside year 0..=9999 RFC 3339 has no spelling; the engine never makes such times.
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// RFC 3339 (any offset) as unix milliseconds; the error names `field`.
pub fn parse_rfc3339_ms(field: &str, value: &str) -> Result<i64, AppError> {
    let time = OffsetDateTime::parse(value, &Rfc3339).map_err(|_| {
        AppError::invalid(field, "must be an RFC 3339 time, e.g. 2026-11-11T00:00:00Z")
    })?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| AppError::invalid(field, "out of range"))
}

/// `POST /admin/promotions` body.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(
    description = "`POST /admin/promotions` body. Posting it again with the same `id` and an \
                   identical body is a retry (200, the promotion); another body with that `id` \
                   is 409 `already_exists`.",
    examples(json!({
        "id": "double11-0001",
        "name": "Double 11, 00:00 session",
        "starts_at": "2026-11-11T00:00:00Z",
        "ends_at": "2026-11-11T00:30:00Z",
        "payment_timeout_s": 900,
        "require_token": true,
        "token_multiplier": 5,
        "items": [{"sku": "iphone-17-256g", "title": "iPhone 17 256G", "stock": 100,
                   "price_cents": 99900, "per_user_limit": 1}]
    }))
)]
pub struct CreatePromotion {
    /// The promotion's id; the server makes one when it is absent.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", examples("double11-0001"))]
    pub id: Option<String>,
    /// 1 to 256 bytes, not blank.
    #[schema(examples("Double 11, 00:00 session"))]
    pub name: String,
    /// When the promotion goes live (RFC 3339, any offset).
    #[schema(format = DateTime, examples("2026-11-11T00:00:00Z"))]
    pub starts_at: String,
    /// When it ends; after `starts_at`.
    #[schema(format = DateTime, examples("2026-11-11T00:30:00Z"))]
    pub ends_at: String,
    /// How long an order may wait for its payment before it expires.
    #[schema(minimum = 10, maximum = 86400, default = 900)]
    pub payment_timeout_s: Option<u32>,
    /// Whether a purchase needs a token from the token route.
    #[schema(default = true)]
    pub require_token: Option<bool>,
    /// At most `remaining * token_multiplier` tokens of an item are outstanding at once.
    #[schema(minimum = 1, maximum = 100, default = 5)]
    pub token_multiplier: Option<u32>,
    /// 1 to 1,000 items, each `sku` once.
    #[schema(min_items = 1, max_items = 1000)]
    pub items: Vec<CreateItem>,
    /// The human check before a token (default `none`); `pow` and `captcha` need
    /// `require_token`.
    // A string here, checked in `into_spec`: serde_json reports a non-string where an enum is
    // expected as a syntax error, whose message could not name the field.
    #[schema(value_type = Option<HumanCheckSchema>)]
    pub human_check: Option<String>,
    /// Only shoppers whose claim passes the rule may get tokens and buy.
    pub eligibility: Option<EligibilityBody>,
}

fn parse_human_check(value: Option<&str>) -> Result<HumanCheck, AppError> {
    match value {
        None | Some("none") => Ok(HumanCheck::None),
        Some("pow") => Ok(HumanCheck::Pow),
        Some("captcha") => Ok(HumanCheck::Captcha),
        Some(_) => Err(AppError::invalid(
            "human_check",
            "must be \"none\", \"pow\" or \"captcha\"",
        )),
    }
}

/// `"eligibility"`: a claim and exactly one of `min` and `any_of`; the same shape is shown
/// back in the promotion views.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    description = "Who may get tokens and buy: the shopper's claim `claim` (from the JWT, or the \
                   `X-User-Claim-<claim>` header in header mode) must be at least `min`, or one \
                   of `any_of`. Exactly one of `min` and `any_of`. Not eligible: 403 \
                   `not_eligible`.",
    examples(json!({"claim": "level", "min": 3}), json!({"claim": "region", "any_of": ["eu", "us"]}))
)]
pub struct EligibilityBody {
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", examples("level"))]
    pub claim: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// 1 to 100 values of 1 to 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 100)]
    pub any_of: Option<Vec<String>>,
}

impl EligibilityBody {
    fn into_rule(self) -> Result<Eligibility, AppError> {
        let rule = match (self.min, self.any_of) {
            (Some(min), None) => EligibilityRule::Min(min),
            (None, Some(values)) => EligibilityRule::AnyOf(values),
            _ => {
                return Err(AppError::invalid(
                    "eligibility",
                    "must carry exactly one of min and any_of",
                ))
            }
        };
        Ok(Eligibility {
            claim: self.claim,
            rule,
        })
    }

    fn of(eligibility: &Eligibility) -> Self {
        let (min, any_of) = match &eligibility.rule {
            EligibilityRule::Min(min) => (Some(*min), None),
            EligibilityRule::AnyOf(values) => (None, Some(values.clone())),
        };
        EligibilityBody {
            claim: eligibility.claim.clone(),
            min,
            any_of,
        }
    }
}

/// The guard as the promotion views show it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(description = "The promotion's checks before a token or a purchase.")]
pub struct GuardView {
    #[schema(value_type = HumanCheckSchema)]
    pub human_check: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eligibility: Option<EligibilityBody>,
}

impl From<&PromotionGuard> for GuardView {
    fn from(guard: &PromotionGuard) -> Self {
        GuardView {
            human_check: guard.human_check.as_str(),
            eligibility: guard.eligibility.as_ref().map(EligibilityBody::of),
        }
    }
}

/// One item of [`CreatePromotion`].
#[derive(Debug, Deserialize, ToSchema)]
#[schema(description = "One item of a new promotion.")]
pub struct CreateItem {
    /// Unique inside the promotion; in no other promotion whose window overlaps this one's
    /// (409 `sku_in_other_promotion`).
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", examples("iphone-17-256g"))]
    pub sku: String,
    /// Defaults to the sku.
    #[schema(examples("iPhone 17 256G"))]
    pub title: Option<String>,
    #[schema(maximum = 1000000000, examples(100))]
    pub stock: u64,
    #[schema(minimum = 0, examples(99900))]
    pub price_cents: i64,
    /// How many units one shopper may hold (pending or paid) at most.
    #[schema(minimum = 1, default = 1)]
    pub per_user_limit: Option<u32>,
}

impl CreatePromotion {
    /// The engine's spec, with api.md's defaults filled in; the engine validates the rest.
    pub fn into_spec(self) -> Result<PromotionSpec, AppError> {
        let guard = PromotionGuard {
            human_check: parse_human_check(self.human_check.as_deref())?,
            eligibility: self
                .eligibility
                .map(EligibilityBody::into_rule)
                .transpose()?,
        };
        Ok(PromotionSpec {
            guard,
            id: self.id,
            name: self.name,
            starts_at_ms: parse_rfc3339_ms("starts_at", &self.starts_at)?,
            ends_at_ms: parse_rfc3339_ms("ends_at", &self.ends_at)?,
            payment_timeout_s: self.payment_timeout_s.unwrap_or(DEFAULT_PAYMENT_TIMEOUT_S),
            require_token: self.require_token.unwrap_or(true),
            token_multiplier: self.token_multiplier.unwrap_or(DEFAULT_TOKEN_MULTIPLIER),
            items: self
                .items
                .into_iter()
                .map(|item| ItemSpec {
                    sku: item.sku,
                    title: item.title,
                    stock: item.stock,
                    price_cents: item.price_cents,
                    per_user_limit: item.per_user_limit.unwrap_or(DEFAULT_PER_USER_LIMIT),
                })
                .collect(),
        })
    }
}

/// `POST /promotions/{id}/items/{sku}/purchase` body.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(examples(json!({"request_id": "r-7f3a", "quantity": 1, "token": "tok-..."})))]
pub struct PurchaseBody {
    /// The shopper's key for this purchase: a repeated `request_id` answers the original
    /// order (200) instead of buying again.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", examples("r-7f3a"))]
    pub request_id: String,
    /// 1 to the item's `per_user_limit`.
    #[schema(minimum = 1, default = 1)]
    pub quantity: Option<u32>,
    /// Required when the promotion requires a token: one from the token route, for this
    /// shopper and item, unused and unexpired.
    #[schema(max_length = 128)]
    pub token: Option<String>,
}

/// `POST /promotions/{id}/items/{sku}/token` body (optional): the human check's answer.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(
    description = "The human check's answer, for a promotion whose `human_check` is `pow` or \
                   `captcha`; the body may be empty otherwise."
)]
pub struct TokenBody {
    pub pow: Option<PowAnswer>,
    /// The captcha widget's response.
    pub captcha: Option<String>,
}

/// A solved proof-of-work challenge.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(
    description = "A solved challenge of the challenge route: SHA-256(challenge + nonce) starts \
                   with `difficulty_bits` zero bits. Good once."
)]
pub struct PowAnswer {
    pub challenge: String,
    pub nonce: String,
}

/// `POST /promotions/{id}/items/{sku}/challenge` answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    description = "A proof-of-work challenge bound to the shopper, the promotion and the item."
)]
pub struct ChallengeView {
    pub challenge: String,
    #[schema(examples(20))]
    pub difficulty_bits: u8,
    #[schema(format = DateTime, examples("2026-11-11T00:01:00Z"))]
    pub expires_at: String,
}

impl From<PowChallenge> for ChallengeView {
    fn from(c: PowChallenge) -> Self {
        ChallengeView {
            challenge: c.challenge,
            difficulty_bits: c.difficulty_bits,
            expires_at: rfc3339(c.expires_at_ms),
        }
    }
}

/// `POST /admin/orders/{order_id}/pay` body.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(examples(json!({"payment_ref": "pay-20261111-0001", "amount_cents": 99900})))]
pub struct PayBody {
    /// The payment's reference: paying again with the same one answers 200 and changes
    /// nothing; with another, 409 `already_paid`.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$", examples("pay-20261111-0001"))]
    pub payment_ref: String,
    /// The amount the payment notice says was paid: when present, it must be the order's
    /// `amount_cents` (else 409 `amount_mismatch`, and nothing changes). Present means a
    /// number: `null` is refused (400) rather than read as "not checked".
    // Documented as a plain integer (not nullable): `null` is refused. Not required, by the
    // serde default.
    #[serde(default, deserialize_with = "present_number")]
    #[schema(value_type = i64, minimum = 0)]
    pub amount_cents: Option<i64>,
}

/// A field that, when present, must be an integer (not `null`).
fn present_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    i64::deserialize(deserializer).map(Some)
}

impl PayBody {
    /// `amount_cents`, checked: an integer >= 0 (JSON's integers beyond i64 and fractions
    /// are refused by the parser already, naming the field).
    pub fn amount_cents(&self) -> Result<Option<i64>, AppError> {
        match self.amount_cents {
            Some(cents) if cents < 0 => Err(AppError::invalid("amount_cents", "must be >= 0")),
            other => Ok(other),
        }
    }
}

/// An order as shoppers and operators see it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    description = "An order. `paid_at` and `payment_ref` once paid; `closed_at` once \
                   cancelled or expired.",
    examples(json!({
        "order_id": "4f1c2a9b3d5e6f70-1-1", "promotion_id": "double11-0001",
        "sku": "iphone-17-256g", "user_id": "u-42", "quantity": 1, "price_cents": 99900,
        "amount_cents": 99900, "status": "pending_payment",
        "created_at": "2026-11-11T00:00:01.250Z", "pay_before": "2026-11-11T00:15:01.250Z"
    }))
)]
pub struct OrderView {
    pub order_id: String,
    pub promotion_id: String,
    pub sku: String,
    pub user_id: String,
    pub quantity: u32,
    pub price_cents: i64,
    /// `price_cents * quantity`.
    pub amount_cents: i64,
    #[schema(value_type = OrderStatusSchema)]
    pub status: &'static str,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// A `pending_payment` order still unpaid then becomes `expired` (within 2 s).
    #[schema(format = DateTime)]
    pub pay_before: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub paid_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub closed_at: Option<String>,
}

impl From<Order> for OrderView {
    fn from(order: Order) -> Self {
        OrderView {
            order_id: order.order_id,
            promotion_id: order.promotion_id,
            sku: order.sku,
            user_id: order.user_id,
            quantity: order.quantity,
            price_cents: order.price_cents,
            amount_cents: order.amount_cents,
            status: order.status.as_str(),
            created_at: rfc3339(order.created_at_ms),
            pay_before: rfc3339(order.pay_before_ms),
            paid_at: order.paid_at_ms.map(rfc3339),
            payment_ref: order.payment_ref,
            closed_at: order.closed_at_ms.map(rfc3339),
        }
    }
}

/// A promotion as api.md shows it: who it is and its window as of now, then what the view
/// of its audience adds (`T`, whose fields follow in the same JSON object).
// In the document (utoipa's generics): `PromotionOf_OperatorPart` and
// `PromotionOf_ShopperPart`, each an `allOf` of these fields and `T`'s. Handlers' attributes
// name the generic type itself, not the aliases below: an alias has no generic arguments in
// its name, so both would be documented under the one name `PromotionOf`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(description = "A promotion: its window as of now, and what its audience sees.")]
pub struct PromotionOf<T> {
    #[schema(examples("double11-0001"))]
    pub id: String,
    pub name: String,
    #[schema(value_type = PromotionStatusSchema)]
    pub status: &'static str,
    #[schema(format = DateTime)]
    pub starts_at: String,
    #[schema(format = DateTime)]
    pub ends_at: String,
    #[serde(flatten)]
    pub rest: T,
}

impl<T> PromotionOf<T> {
    fn new(
        id: String,
        name: String,
        status: PromotionStatus,
        window_ms: (i64, i64),
        rest: T,
    ) -> Self {
        PromotionOf {
            id,
            name,
            status: status.as_str(),
            starts_at: rfc3339(window_ms.0),
            ends_at: rfc3339(window_ms.1),
            rest,
        }
    }
}

/// A promotion with per-item stats (operator view).
pub type PromotionView = PromotionOf<OperatorPart>;

/// The shoppers' view of a promotion.
pub type PublicPromotionView = PromotionOf<ShopperPart>;

/// What the operators' view adds; each item is the engine's [`ItemStats`] as it stands:
/// `remaining + reserved + sold == stock`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(description = "The operators' view of a promotion: its settings and exact item stats.")]
pub struct OperatorPart {
    pub payment_timeout_s: u32,
    pub require_token: bool,
    pub token_multiplier: u32,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[serde(flatten)]
    pub guard: GuardView,
    #[schema(value_type = Vec<ItemStatsSchema>)]
    pub items: Vec<ItemStats>,
}

/// What the shoppers' view adds; each item is the engine's [`PublicItem`] as it stands.
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    description = "The shoppers' view of a promotion; `server_time` is for the shopper's \
                   countdown."
)]
pub struct ShopperPart {
    #[schema(format = DateTime)]
    pub server_time: String,
    pub require_token: bool,
    // Shoppers' pages need it to know whether to solve a challenge or show a captcha.
    #[serde(flatten)]
    pub guard: GuardView,
    #[schema(value_type = Vec<PublicItemSchema>)]
    pub items: Vec<PublicItem>,
}

impl From<PromotionStats> for PromotionView {
    fn from(p: PromotionStats) -> Self {
        let rest = OperatorPart {
            payment_timeout_s: p.payment_timeout_s,
            require_token: p.require_token,
            token_multiplier: p.token_multiplier,
            created_at: rfc3339(p.created_at_ms),
            guard: GuardView::from(&p.guard),
            items: p.items,
        };
        PromotionOf::new(p.id, p.name, p.status, (p.starts_at_ms, p.ends_at_ms), rest)
    }
}

impl From<PublicPromotion> for PublicPromotionView {
    fn from(p: PublicPromotion) -> Self {
        let rest = ShopperPart {
            server_time: rfc3339(p.server_time_ms),
            require_token: p.require_token,
            guard: GuardView::from(&p.guard),
            items: p.items,
        };
        PromotionOf::new(p.id, p.name, p.status, (p.starts_at_ms, p.ends_at_ms), rest)
    }
}

/// `{"promotions": [...]}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(description = "Promotions.")]
pub struct PromotionList<T> {
    pub promotions: Vec<T>,
}

/// A purchase token.
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    description = "A purchase token, bound to the shopper, the promotion and the item, good \
                   for one purchase. Asking again while it is unused answers the same token."
)]
pub struct TokenView {
    pub token: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

impl From<TokenGrant> for TokenView {
    fn from(grant: TokenGrant) -> Self {
        TokenView {
            token: grant.token,
            expires_at: rfc3339(grant.expires_at_ms),
        }
    }
}

// ---- Shapes for the OpenAPI document only ----
//
// The views above write these values as plain strings (`&'static str`) or as the engine's own
// types. The engine crate does not depend on utoipa, so its types cannot derive `ToSchema`;
// the types below describe them to the document (through `#[schema(value_type = ...)]`) and
// are never built at run time. The tests at the end keep them in step with the engine.

/// The engine's [`ItemStats`] as the operators' views show it.
#[derive(Debug, ToSchema)]
#[schema(
    as = ItemStats,
    description = "An item's exact stock figures: `remaining + reserved + sold == stock`."
)]
pub struct ItemStatsSchema {
    pub sku: String,
    pub title: String,
    pub price_cents: i64,
    pub per_user_limit: u32,
    /// The total.
    pub stock: u64,
    /// Free to buy now.
    pub remaining: u64,
    /// Held by orders awaiting payment.
    pub reserved: u64,
    /// Paid.
    pub sold: u64,
    /// Every token ever handed out.
    pub tokens_issued: u64,
    /// Tokens unexpired and unused now.
    pub tokens_outstanding: u64,
}

/// The engine's [`PublicItem`] as the shoppers' view shows it.
#[derive(Debug, ToSchema)]
#[schema(
    as = PublicItem,
    description = "An item as shoppers see it; `remaining` may lag by up to one second."
)]
pub struct PublicItemSchema {
    pub sku: String,
    pub title: String,
    pub price_cents: i64,
    pub per_user_limit: u32,
    pub remaining: u64,
    pub sold_out: bool,
}

/// [`OrderStatus::as_str`], as the order views write it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = OrderStatus, description = "An order's status.")]
pub enum OrderStatusSchema {
    PendingPayment,
    Paid,
    Cancelled,
    Expired,
}

impl From<OrderStatus> for OrderStatusSchema {
    // Exhaustive: a new engine status does not compile until the document knows it.
    fn from(status: OrderStatus) -> Self {
        match status {
            OrderStatus::PendingPayment => OrderStatusSchema::PendingPayment,
            OrderStatus::Paid => OrderStatusSchema::Paid,
            OrderStatus::Cancelled => OrderStatusSchema::Cancelled,
            OrderStatus::Expired => OrderStatusSchema::Expired,
        }
    }
}

/// [`PromotionStatus::as_str`], as the promotion views write it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = PromotionStatus, description = "A promotion's status as of now.")]
pub enum PromotionStatusSchema {
    Upcoming,
    Live,
    Ended,
}

impl From<PromotionStatus> for PromotionStatusSchema {
    fn from(status: PromotionStatus) -> Self {
        match status {
            PromotionStatus::Upcoming => PromotionStatusSchema::Upcoming,
            PromotionStatus::Live => PromotionStatusSchema::Live,
            PromotionStatus::Ended => PromotionStatusSchema::Ended,
        }
    }
}

/// [`HumanCheck::as_str`], as the guard views write it and `parse_human_check` reads it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(
    as = HumanCheck,
    description = "The check before a token: none, a proof of work (`pow`, see the challenge \
                   route) or a captcha."
)]
pub enum HumanCheckSchema {
    None,
    Pow,
    Captcha,
}

impl From<HumanCheck> for HumanCheckSchema {
    fn from(check: HumanCheck) -> Self {
        match check {
            HumanCheck::None => HumanCheckSchema::None,
            HumanCheck::Pow => HumanCheckSchema::Pow,
            HumanCheck::Captcha => HumanCheckSchema::Captcha,
        }
    }
}

/// `GET /healthz` and `GET /readyz` answers, which their handlers write as literals.
#[derive(Debug, ToSchema)]
#[schema(
    as = ProbeStatus,
    description = "A probe's answer.",
    examples(json!({"status": "ok"}), json!({"status": "ready"}))
)]
pub struct ProbeStatusSchema {
    /// `ok` (healthz) or `ready` (readyz).
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        let ms = parse_rfc3339_ms("t", "2026-11-11T08:00:00+08:00").expect("valid");
        assert_eq!(rfc3339(ms), "2026-11-11T00:00:00Z");
        assert_eq!(rfc3339(ms + 123), "2026-11-11T00:00:00.123Z");
        assert!(parse_rfc3339_ms("t", "yesterday").is_err());
    }

    #[test]
    fn a_pay_amount_must_be_a_non_negative_integer() {
        let parse = |json: &str| crate::extract::parse_json::<PayBody>(json.as_bytes());
        let body = parse(r#"{"payment_ref": "p"}"#).expect("valid");
        assert_eq!(body.amount_cents().expect("absent is fine"), None);
        let body = parse(r#"{"payment_ref": "p", "amount_cents": 1999}"#).expect("valid");
        assert_eq!(body.amount_cents().expect("valid"), Some(1999));
        let body = parse(r#"{"payment_ref": "p", "amount_cents": -1}"#).expect("parses");
        match body.amount_cents() {
            Err(AppError::Invalid { field, .. }) => assert_eq!(field, "amount_cents"),
            other => panic!("expected invalid amount_cents, got {other:?}"),
        }
        for bad in [
            r#"{"payment_ref": "p", "amount_cents": 1.5}"#,
            r#"{"payment_ref": "p", "amount_cents": "1999"}"#,
            r#"{"payment_ref": "p", "amount_cents": 100000000000000000000}"#,
        ] {
            match parse(bad) {
                Err(AppError::Invalid { field, .. }) => assert_eq!(field, "amount_cents", "{bad}"),
                other => panic!("expected invalid amount_cents for {bad}, got {other:?}"),
            }
        }
    }

    /// `T`'s schema as JSON.
    fn schema_of<T: utoipa::PartialSchema>() -> serde_json::Value {
        serde_json::to_value(T::schema()).expect("a schema serializes")
    }

    /// The keys of a JSON object, sorted.
    fn sorted_keys(object: &serde_json::Value) -> Vec<String> {
        let mut keys: Vec<String> = object
            .as_object()
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    #[test]
    fn the_documents_engine_shapes_have_the_engine_types_fields() {
        let stats = ItemStats {
            sku: "a".into(),
            title: "A".into(),
            price_cents: 1,
            per_user_limit: 1,
            stock: 3,
            remaining: 1,
            reserved: 1,
            sold: 1,
            tokens_issued: 2,
            tokens_outstanding: 1,
        };
        let stats = serde_json::to_value(stats).expect("serializes");
        assert_eq!(
            sorted_keys(&schema_of::<ItemStatsSchema>()["properties"]),
            sorted_keys(&stats)
        );
        let item = PublicItem {
            sku: "a".into(),
            title: "A".into(),
            price_cents: 1,
            per_user_limit: 1,
            remaining: 1,
            sold_out: false,
        };
        let item = serde_json::to_value(item).expect("serializes");
        assert_eq!(
            sorted_keys(&schema_of::<PublicItemSchema>()["properties"]),
            sorted_keys(&item)
        );
    }

    /// Asserts that `T`'s schema is the enum of exactly `spelled`, and that `values` (one of
    /// each variant) serialize to those spellings.
    fn assert_enum<T: utoipa::PartialSchema + Serialize>(values: &[T], spelled: &[&str]) {
        let schema = schema_of::<T>();
        let documented: Vec<&str> = schema["enum"]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(serde_json::Value::as_str)
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(documented, spelled);
        let written: Vec<serde_json::Value> = values
            .iter()
            .map(|value| serde_json::to_value(value).expect("serializes"))
            .collect();
        assert_eq!(written, spelled);
    }

    #[test]
    fn the_documents_enums_spell_the_engine_values() {
        let orders = [
            OrderStatus::PendingPayment,
            OrderStatus::Paid,
            OrderStatus::Cancelled,
            OrderStatus::Expired,
        ];
        assert_enum(
            &orders.map(OrderStatusSchema::from),
            &orders.map(OrderStatus::as_str),
        );
        let promotions = [
            PromotionStatus::Upcoming,
            PromotionStatus::Live,
            PromotionStatus::Ended,
        ];
        assert_enum(
            &promotions.map(PromotionStatusSchema::from),
            &promotions.map(PromotionStatus::as_str),
        );
        let checks = [HumanCheck::None, HumanCheck::Pow, HumanCheck::Captcha];
        assert_enum(
            &checks.map(HumanCheckSchema::from),
            &checks.map(HumanCheck::as_str),
        );
        for check in checks {
            assert_eq!(parse_human_check(Some(check.as_str())).ok(), Some(check));
        }
    }

    #[test]
    fn the_documented_bounds_are_the_engines() {
        use seckill_engine::{
            ITEMS_MAX, PAYMENT_TIMEOUT_S_MAX, PAYMENT_TIMEOUT_S_MIN, STOCK_MAX,
            TOKEN_MULTIPLIER_MAX, TOKEN_MULTIPLIER_MIN,
        };
        let promotion = schema_of::<CreatePromotion>();
        let field = |name: &str| promotion["properties"][name].clone();
        assert_eq!(field("payment_timeout_s")["minimum"], PAYMENT_TIMEOUT_S_MIN);
        assert_eq!(field("payment_timeout_s")["maximum"], PAYMENT_TIMEOUT_S_MAX);
        assert_eq!(
            field("payment_timeout_s")["default"],
            DEFAULT_PAYMENT_TIMEOUT_S
        );
        assert_eq!(field("token_multiplier")["minimum"], TOKEN_MULTIPLIER_MIN);
        assert_eq!(field("token_multiplier")["maximum"], TOKEN_MULTIPLIER_MAX);
        assert_eq!(
            field("token_multiplier")["default"],
            DEFAULT_TOKEN_MULTIPLIER
        );
        assert_eq!(field("items")["maxItems"], ITEMS_MAX);
        let item = schema_of::<CreateItem>();
        assert_eq!(item["properties"]["stock"]["maximum"], STOCK_MAX);
        assert_eq!(
            item["properties"]["per_user_limit"]["default"],
            DEFAULT_PER_USER_LIMIT
        );
    }
}
