//! The one error type of the engine.
//!
//! Expected refusals (sold out, limit reached, ...) and failures (journal down, overloaded)
//! are both variants here, each with the stable `code` of api.md, so the HTTP edge maps the
//! whole enum to statuses in one place and an embedding shop can match on it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Everything the engine can answer instead of a result.
///
/// Serializable, so that a cluster node can hand another node's answer back as it is.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum Error {
    /// A field is missing, malformed or out of range; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidRequest { field: String, reason: String },
    #[error("not found")]
    NotFound,
    #[error("a promotion with this id already exists")]
    AlreadyExists,
    #[error("sku {sku} is in promotion {other_promotion_id}, whose time window overlaps")]
    SkuInOtherPromotion {
        sku: String,
        other_promotion_id: String,
    },
    #[error("the promotion has not started")]
    NotStarted,
    #[error("the promotion has ended")]
    Ended,
    #[error("sold out")]
    SoldOut,
    #[error("not enough stock left for this quantity")]
    InsufficientStock,
    #[error("the per-user limit for this item is reached")]
    LimitExceeded,
    #[error("no purchase tokens are left for this item")]
    TokensExhausted,
    #[error("this user is banned from the promotion")]
    Banned,
    /// The promotion's eligibility rule does not admit the shopper's claims.
    #[error("this shopper is not eligible for the promotion")]
    NotEligible,
    /// The promotion's human check (proof of work or captcha) is missing, wrong, expired or
    /// reused.
    #[error("the human check is missing, wrong, expired or already used")]
    HumanCheckFailed,
    #[error("the purchase token is missing, used, expired or not for this purchase")]
    TokenInvalid,
    #[error("the order is cancelled or expired and cannot be paid")]
    NotPayable,
    #[error("the order is already paid with another payment reference")]
    AlreadyPaid,
    #[error("the order is paid or expired and cannot be cancelled")]
    NotCancellable,
    /// The pay body's `amount_cents` differs from the order's: nothing changed.
    #[error("the payment amount differs from the order's amount")]
    AmountMismatch,
    /// A shard's mailbox is full: refused at once instead of queueing without bound.
    #[error("the engine is overloaded, retry shortly")]
    Overloaded,
    /// The journal failed or the engine is shutting down: nothing was acknowledged.
    #[error("the engine is unavailable: {0}")]
    Unavailable(String),
    /// The shard that owns the item has stopped (its thread died, or the engine is shutting
    /// down): the request was not handed to it, nothing was done.
    #[error("shard {0} is down")]
    ShardDown(usize),
    /// The write was handed to its shard but no answer came (the shard died while deciding
    /// it): it may or may not have been journaled. Repeating the call tells (a purchase with
    /// the same request id, a cancel or pay of the same order, a create with the same body).
    #[error("the outcome of this write is unknown; repeat it to learn it")]
    OutcomeUnknown,
    /// The item's partition is not this node's (never held, handed over, or its lease was
    /// lost): nothing was decided, so the call may go to the partition's owner as it is.
    #[error("partition {partition} is not owned by this node")]
    NotOwner { partition: u32 },
}

impl Error {
    /// The api.md error code of this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest { .. } => "invalid_request",
            Error::NotFound => "not_found",
            Error::AlreadyExists => "already_exists",
            Error::SkuInOtherPromotion { .. } => "sku_in_other_promotion",
            Error::NotStarted => "not_started",
            Error::Ended => "ended",
            Error::SoldOut => "sold_out",
            Error::InsufficientStock => "insufficient_stock",
            Error::LimitExceeded => "limit_exceeded",
            Error::TokensExhausted => "tokens_exhausted",
            Error::Banned => "banned",
            Error::NotEligible => "not_eligible",
            Error::HumanCheckFailed => "human_check_failed",
            Error::TokenInvalid => "token_invalid",
            Error::NotPayable => "not_payable",
            Error::AlreadyPaid => "already_paid",
            Error::NotCancellable => "not_cancellable",
            Error::AmountMismatch => "amount_mismatch",
            Error::Overloaded => "overloaded",
            Error::Unavailable(_) | Error::ShardDown(_) | Error::NotOwner { .. } => "unavailable",
            Error::OutcomeUnknown => "outcome_unknown",
        }
    }

    /// True for answers caused by the request (4xx), false for the engine's own trouble (5xx).
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            Error::Overloaded
                | Error::Unavailable(_)
                | Error::ShardDown(_)
                | Error::OutcomeUnknown
                | Error::NotOwner { .. }
        )
    }

    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Error::InvalidRequest {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a journal answers.
pub type JournalResult<T> = Result<T, JournalError>;

/// Why a journal could not make a batch durable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("journal: {0}")]
pub struct JournalError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every variant.
    fn every_variant() -> Vec<Error> {
        vec![
            Error::invalid("quantity", "must be at least 1"),
            Error::NotFound,
            Error::AlreadyExists,
            Error::SkuInOtherPromotion {
                sku: "phone".into(),
                other_promotion_id: "double11".into(),
            },
            Error::NotStarted,
            Error::Ended,
            Error::SoldOut,
            Error::InsufficientStock,
            Error::LimitExceeded,
            Error::TokensExhausted,
            Error::Banned,
            Error::NotEligible,
            Error::HumanCheckFailed,
            Error::TokenInvalid,
            Error::NotPayable,
            Error::AlreadyPaid,
            Error::NotCancellable,
            Error::AmountMismatch,
            Error::Overloaded,
            Error::Unavailable("journal: disk gone".into()),
            Error::ShardDown(3),
            Error::OutcomeUnknown,
            Error::NotOwner { partition: 7 },
        ]
    }

    /// The variant's place in [`every_variant`]. Exhaustive on purpose: a new variant does
    /// not compile until it has a place, and the test then wants it in the list.
    fn ordinal(error: &Error) -> usize {
        match error {
            Error::InvalidRequest { .. } => 0,
            Error::NotFound => 1,
            Error::AlreadyExists => 2,
            Error::SkuInOtherPromotion { .. } => 3,
            Error::NotStarted => 4,
            Error::Ended => 5,
            Error::SoldOut => 6,
            Error::InsufficientStock => 7,
            Error::LimitExceeded => 8,
            Error::TokensExhausted => 9,
            Error::Banned => 10,
            Error::NotEligible => 11,
            Error::HumanCheckFailed => 12,
            Error::TokenInvalid => 13,
            Error::NotPayable => 14,
            Error::AlreadyPaid => 15,
            Error::NotCancellable => 16,
            Error::AmountMismatch => 17,
            Error::Overloaded => 18,
            Error::Unavailable(_) => 19,
            Error::ShardDown(_) => 20,
            Error::OutcomeUnknown => 21,
            Error::NotOwner { .. } => 22,
        }
    }

    #[test]
    fn every_error_survives_the_wire() {
        let all = every_variant();
        let ordinals: Vec<usize> = all.iter().map(ordinal).collect();
        assert_eq!(ordinals, (0..23).collect::<Vec<_>>(), "each variant once");
        let codes: std::collections::BTreeSet<_> = all.iter().map(Error::code).collect();
        assert_eq!(
            codes.len(),
            21,
            "the list covers the codes (three share \"unavailable\")"
        );
        for error in all {
            let bytes = postcard::to_allocvec(&error).expect("encodes");
            let back: Error = postcard::from_bytes(&bytes).expect("decodes");
            assert_eq!(back, error);
            assert_eq!(back.code(), error.code());
            assert_eq!(back.to_string(), error.to_string());
        }
    }

    #[test]
    fn not_owner_is_the_engines_trouble_not_the_requests() {
        let error = Error::NotOwner { partition: 7 };
        assert_eq!(error.code(), "unavailable");
        assert!(!error.is_refusal(), "a 5xx: the shopper did nothing wrong");
        assert_eq!(error.to_string(), "partition 7 is not owned by this node");
        assert!(Error::SoldOut.is_refusal());
    }
}
