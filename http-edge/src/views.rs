//! The JSON shapes of api.md, in and out, and the conversions from the engine's values.
//!
//! The engine speaks unix milliseconds; every time leaves here as RFC 3339 in UTC and comes
//! in as RFC 3339 (any offset, converted to UTC).

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use seckill_engine::{
    Eligibility, EligibilityRule, HumanCheck, ItemSpec, ItemStats, Order, PromotionGuard,
    PromotionSpec, PromotionStats, PromotionStatus, PublicItem, PublicPromotion, TokenGrant,
    DEFAULT_PAYMENT_TIMEOUT_S, DEFAULT_PER_USER_LIMIT, DEFAULT_TOKEN_MULTIPLIER,
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
#[derive(Debug, Deserialize)]
pub struct CreatePromotion {
    pub id: Option<String>,
    pub name: String,
    pub starts_at: String,
    pub ends_at: String,
    pub payment_timeout_s: Option<u32>,
    pub require_token: Option<bool>,
    pub token_multiplier: Option<u32>,
    pub items: Vec<CreateItem>,
    /// `"none"` (default), `"pow"` or `"captcha"`. A string here, checked in `into_spec`:
    /// serde_json reports a non-string where an enum is expected as a syntax error, whose
    /// message could not name the field.
    pub human_check: Option<String>,
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EligibilityBody {
    pub claim: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
#[derive(Debug, Serialize)]
pub struct GuardView {
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
#[derive(Debug, Deserialize)]
pub struct CreateItem {
    pub sku: String,
    pub title: Option<String>,
    pub stock: u64,
    pub price_cents: i64,
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
#[derive(Debug, Deserialize)]
pub struct PurchaseBody {
    pub request_id: String,
    pub quantity: Option<u32>,
    pub token: Option<String>,
}

/// `POST /promotions/{id}/items/{sku}/token` body (optional): the human check's answer.
#[derive(Debug, Deserialize)]
pub struct TokenBody {
    pub pow: Option<PowAnswer>,
    /// The captcha widget's response.
    pub captcha: Option<String>,
}

/// A solved proof-of-work challenge.
#[derive(Debug, Deserialize)]
pub struct PowAnswer {
    pub challenge: String,
    pub nonce: String,
}

/// `POST /promotions/{id}/items/{sku}/challenge` answer.
#[derive(Debug, Serialize)]
pub struct ChallengeView {
    pub challenge: String,
    pub difficulty_bits: u8,
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
#[derive(Debug, Deserialize)]
pub struct PayBody {
    pub payment_ref: String,
    /// The amount the payment notice says was paid: when present, it must be the order's
    /// `amount_cents` (else 409 `amount_mismatch`, and nothing changes). Present means a
    /// number: `null` is refused (400) rather than read as "not checked".
    #[serde(default, deserialize_with = "present_number")]
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
#[derive(Debug, Serialize)]
pub struct OrderView {
    pub order_id: String,
    pub promotion_id: String,
    pub sku: String,
    pub user_id: String,
    pub quantity: u32,
    pub price_cents: i64,
    pub amount_cents: i64,
    pub status: &'static str,
    pub created_at: String,
    pub pay_before: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
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
#[derive(Debug, Serialize)]
pub struct PromotionOf<T> {
    pub id: String,
    pub name: String,
    pub status: &'static str,
    pub starts_at: String,
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
#[derive(Debug, Serialize)]
pub struct OperatorPart {
    pub payment_timeout_s: u32,
    pub require_token: bool,
    pub token_multiplier: u32,
    pub created_at: String,
    #[serde(flatten)]
    pub guard: GuardView,
    pub items: Vec<ItemStats>,
}

/// What the shoppers' view adds; each item is the engine's [`PublicItem`] as it stands.
#[derive(Debug, Serialize)]
pub struct ShopperPart {
    pub server_time: String,
    pub require_token: bool,
    /// Shoppers' pages need it to know whether to solve a challenge or show a captcha.
    #[serde(flatten)]
    pub guard: GuardView,
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
#[derive(Debug, Serialize)]
pub struct PromotionList<T> {
    pub promotions: Vec<T>,
}

/// A purchase token.
#[derive(Debug, Serialize)]
pub struct TokenView {
    pub token: String,
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
}
