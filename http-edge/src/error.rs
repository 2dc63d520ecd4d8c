//! The one place where a failure becomes an HTTP answer.
//!
//! Every handler, extractor and middleware returns [`AppError`]; its `IntoResponse` decides
//! status, `code` (api.md) and message, and puts the code in the response's extensions so the
//! metrics layer can count outcomes without parsing bodies. [`ErrorBody`] is that answer's
//! body, and its schema in `GET /openapi.json`, whose `code` is one of [`ERROR_CODES`].

use std::borrow::Cow;
use std::cell::RefCell;

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rustc_hash::FxHashMap;
use serde::Serialize;
use thiserror::Error;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use seckill_engine::Error as EngineError;

/// Everything the edge can answer instead of a result.
#[derive(Debug, Error)]
pub enum AppError {
    /// A refusal or failure of the engine; its `code()` is the api.md code.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Bad input caught at the edge (JSON shape, types, ranges); `field` names it.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Missing, malformed, wrongly signed or expired credential.
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the request body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("too many requests from this shopper or this address on this route; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// The request did not finish within the request timeout before it could reach the
    /// engine (a read, or a write whose body was still arriving): nothing was done.
    #[error("the request did not finish within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// A write did not finish within the request timeout after it was handed on: it may still
    /// take effect. Repeating it (the same `request_id`, the same pay, cancel or create)
    /// answers its outcome.
    #[error(
        "the write did not finish within {timeout_ms} ms and may still take effect; repeat it \
         (same request_id, or the same call) to learn its outcome"
    )]
    OutcomeUnknown { timeout_ms: u64 },
    /// Recovery from the log has not finished.
    #[error("the server is starting: recovery has not finished")]
    NotReady,
    /// Some engine shards are down (their threads died); the message names them.
    #[error("{0}")]
    ShardsDown(String),
    /// A handler panicked; the panic is logged, the client gets JSON.
    #[error("internal error")]
    Internal,
}

impl AppError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        AppError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// `/readyz`'s answer while `shards` (not empty) are down: "shard 1 is down".
    pub fn shards_down(shards: &[usize]) -> Self {
        let names: Vec<String> = shards.iter().map(|s| format!("shard {s}")).collect();
        let verb = if names.len() == 1 { "is" } else { "are" };
        AppError::ShardsDown(format!("{} {verb} down", names.join(", ")))
    }

    /// The status and api.md code of this answer.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::Engine(error) => (engine_status(error), error.code()),
            AppError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
            AppError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            AppError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AppError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AppError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            AppError::Timeout { .. } | AppError::NotReady | AppError::ShardsDown(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            AppError::OutcomeUnknown { .. } => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
            AppError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// Error bodies kept per thread, at most this many; when full, the cache starts again (so
/// the storm's few refusals come back at once, whatever filled it).
const CACHED_ERROR_BODIES_MAX: usize = 256;
/// Only messages this short are cached: a message can echo a request's own text (serde's
/// "invalid type: string ..."), which must not stay in memory.
const CACHED_ERROR_MESSAGE_BYTES_MAX: usize = 160;

/// The JSON body of `error`'s answer. Serialised once per thread for each code and message:
/// in a sold-out storm every answer is the same few bytes, and building them anew (the
/// message's allocation, serde_json) was 7% of a refusal's instructions.
fn error_body(code: &'static str, error: &AppError) -> Bytes {
    use std::fmt::Write;
    thread_local! {
        // `code` NUL message: the cache key, written into one buffer reused for every answer.
        static KEY: RefCell<String> = const { RefCell::new(String::new()) };
        static BODIES: RefCell<FxHashMap<Box<str>, Bytes>> = RefCell::new(FxHashMap::default());
    }
    KEY.with(|key| {
        let mut key = key.borrow_mut();
        key.clear();
        // Writing into a String cannot fail.
        let _ = write!(key, "{code}\0{error}");
        BODIES.with(|bodies| {
            if let Some(body) = bodies.borrow().get(key.as_str()) {
                return body.clone();
            }
            let message = &key[code.len() + 1..];
            let body = serialize_error(code, message);
            if message.len() <= CACHED_ERROR_MESSAGE_BYTES_MAX {
                let mut bodies = bodies.borrow_mut();
                if bodies.len() >= CACHED_ERROR_BODIES_MAX {
                    bodies.clear();
                }
                bodies.insert(key.as_str().into(), body.clone());
            }
            body
        })
    })
}

fn serialize_error(code: &str, message: &str) -> Bytes {
    serde_json::to_vec(&ErrorBody {
        error: ErrorDetail { code, message },
    })
    .map_or_else(
        |_| Bytes::from_static(br#"{"error":{"code":"internal","message":"internal error"}}"#),
        Bytes::from,
    )
}

/// The status of each engine code, as api.md's tables give it.
fn engine_status(error: &EngineError) -> StatusCode {
    match error {
        EngineError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
        EngineError::NotFound => StatusCode::NOT_FOUND,
        EngineError::Banned
        | EngineError::TokenInvalid
        | EngineError::NotEligible
        | EngineError::HumanCheckFailed => StatusCode::FORBIDDEN,
        EngineError::AlreadyExists
        | EngineError::SkuInOtherPromotion { .. }
        | EngineError::NotStarted
        | EngineError::Ended
        | EngineError::SoldOut
        | EngineError::InsufficientStock
        | EngineError::LimitExceeded
        | EngineError::TokensExhausted
        | EngineError::NotPayable
        | EngineError::AlreadyPaid
        | EngineError::NotCancellable
        | EngineError::AmountMismatch => StatusCode::CONFLICT,
        EngineError::Overloaded
        | EngineError::Unavailable(_)
        | EngineError::OutcomeUnknown
        | EngineError::ShardDown(_)
        | EngineError::NotOwner { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The api.md code of an error answer, for the metrics layer.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Every `code` an error answer can carry: what [`AppError::status_and_code`] answers for
/// each of its variants and for each engine error. The tests hold the two to each other.
pub const ERROR_CODES: &[&str] = &[
    // Any route.
    "invalid_request",
    "unauthorized",
    "not_found",
    "method_not_allowed",
    "payload_too_large",
    "rate_limited",
    "unavailable",
    "overloaded",
    "outcome_unknown",
    "internal",
    // Operator routes.
    "already_exists",
    "sku_in_other_promotion",
    "ended",
    "not_payable",
    "already_paid",
    "amount_mismatch",
    // Shopper routes.
    "not_started",
    "sold_out",
    "insufficient_stock",
    "limit_exceeded",
    "tokens_exhausted",
    "banned",
    "not_eligible",
    "human_check_failed",
    "token_invalid",
    "not_cancellable",
];

/// Every error answer's body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    description = "Every error answer's body.",
    examples(json!({"error": {"code": "sold_out", "message": "sold out"}}))
)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

/// The error of an [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
#[schema(description = "What went wrong.")]
pub struct ErrorDetail<'a> {
    /// Stable, part of the contract: callers branch on it.
    #[schema(value_type = ErrorCodeSchema)]
    pub code: &'a str,
    /// For a person; free text that may change. A 400 names the field.
    pub message: &'a str,
}

/// [`ERROR_CODES`] as a schema: built by hand rather than derived from an enum, so the list
/// the tests check against the server's answers is the very list the document shows.
#[derive(Debug)]
pub struct ErrorCodeSchema;

impl PartialSchema for ErrorCodeSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ERROR_CODES.iter().copied()))
            .description(Some(
                "The error's code. Which codes a route answers, and with which status, is in \
                 each operation's responses.",
            ))
            .into()
    }
}

impl ToSchema for ErrorCodeSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            // Internal trouble is worth a line; a refused request is not (the metrics count it).
            AppError::Internal => tracing::error!("handler panicked"),
            AppError::Engine(EngineError::Unavailable(reason)) => {
                tracing::warn!(%reason, "engine unavailable")
            }
            _ => tracing::debug!(code, error = %self, "request refused"),
        }
        let mut response = (status, error_body(code, &self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let retry_after_s = match &self {
            AppError::RateLimited { retry_after_s } => Some(*retry_after_s),
            // Outcome unknown: the caller learns it by repeating the call, soon. Not the
            // owner: nothing was done, and the partition has a new owner within seconds.
            AppError::Engine(
                EngineError::Overloaded
                | EngineError::OutcomeUnknown
                | EngineError::NotOwner { .. },
            )
            | AppError::OutcomeUnknown { .. }
            | AppError::NotReady => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &Bytes) -> (String, String) {
        let value: serde_json::Value = serde_json::from_slice(body).expect("json");
        let text = |name: &str| value["error"][name].as_str().expect(name).to_owned();
        (text("code"), text("message"))
    }

    #[test]
    fn cached_error_bodies_are_the_answer_of_each_error_even_past_the_bound() {
        // A fresh test thread: the first call fills the cache, the second is a hit.
        let sold_out = AppError::Engine(EngineError::SoldOut);
        let first = error_body("sold_out", &sold_out);
        let hit = error_body("sold_out", &sold_out);
        assert_eq!(hit, first);
        assert_eq!(parsed(&hit), ("sold_out".to_owned(), "sold out".to_owned()));
        // One message under two codes is two answers, while the first is cached.
        let unauthorized = AppError::Unauthorized("sold out");
        assert_eq!(
            parsed(&error_body("unauthorized", &unauthorized)),
            ("unauthorized".to_owned(), "sold out".to_owned())
        );
        // Past the bound (the cache starts again) every body is still its own error's, hit
        // or not.
        for round in 0..2 {
            for n in 0..CACHED_ERROR_BODIES_MAX + 20 {
                let error = AppError::invalid(format!("field{n}"), "must be a number");
                let (_, code) = error.status_and_code();
                let (got_code, message) = parsed(&error_body(code, &error));
                assert_eq!(got_code, "invalid_request", "round {round}");
                assert_eq!(message, format!("invalid field{n}: must be a number"));
            }
        }
        assert_eq!(parsed(&error_body("sold_out", &sold_out)).1, "sold out");
        // A long message (a request's own text) is answered, not kept.
        let long = AppError::invalid("quantity", "x".repeat(10_000));
        assert!(parsed(&error_body("invalid_request", &long)).1.len() > 10_000);
    }

    #[test]
    fn every_engine_code_has_the_status_of_api_md() {
        let cases = [
            (EngineError::NotFound, 404),
            (EngineError::AlreadyExists, 409),
            (
                EngineError::SkuInOtherPromotion {
                    sku: "s".into(),
                    other_promotion_id: "p".into(),
                },
                409,
            ),
            (EngineError::NotStarted, 409),
            (EngineError::Ended, 409),
            (EngineError::SoldOut, 409),
            (EngineError::InsufficientStock, 409),
            (EngineError::LimitExceeded, 409),
            (EngineError::TokensExhausted, 409),
            (EngineError::Banned, 403),
            (EngineError::TokenInvalid, 403),
            (EngineError::NotEligible, 403),
            (EngineError::HumanCheckFailed, 403),
            (EngineError::NotPayable, 409),
            (EngineError::AlreadyPaid, 409),
            (EngineError::NotCancellable, 409),
            (EngineError::AmountMismatch, 409),
            (EngineError::Overloaded, 503),
            (EngineError::Unavailable("x".into()), 503),
            (EngineError::OutcomeUnknown, 503),
            (EngineError::ShardDown(1), 503),
            (EngineError::NotOwner { partition: 3 }, 503),
        ];
        for (error, status) in cases {
            let code = error.code();
            let (got, got_code) = AppError::Engine(error).status_and_code();
            assert_eq!(got.as_u16(), status, "{code}");
            assert_eq!(got_code, code);
        }
        for (error, code) in [
            (EngineError::OutcomeUnknown, "outcome_unknown"),
            (EngineError::AmountMismatch, "amount_mismatch"),
            (EngineError::ShardDown(0), "unavailable"),
            (EngineError::NotOwner { partition: 0 }, "unavailable"),
        ] {
            assert_eq!(AppError::Engine(error).status_and_code().1, code);
        }
    }

    fn retry_after(error: AppError) -> Option<String> {
        let response = error.into_response();
        response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    #[test]
    fn an_unknown_outcome_says_when_to_ask_again() {
        assert_eq!(
            retry_after(AppError::Engine(EngineError::OutcomeUnknown)).as_deref(),
            Some("1")
        );
        let timed_out_write = AppError::OutcomeUnknown { timeout_ms: 10 };
        assert_eq!(
            timed_out_write.status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown")
        );
        assert_eq!(retry_after(timed_out_write).as_deref(), Some("1"));
        let not_owner = AppError::Engine(EngineError::NotOwner { partition: 5 });
        assert_eq!(
            not_owner.status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert_eq!(retry_after(not_owner).as_deref(), Some("1"));
        let timed_out_read = AppError::Timeout { timeout_ms: 10 };
        assert_eq!(
            timed_out_read.status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
    }

    #[test]
    fn every_code_the_server_answers_is_documented() {
        let engine_errors = [
            EngineError::InvalidRequest {
                field: "f".into(),
                reason: "r".into(),
            },
            EngineError::NotFound,
            EngineError::AlreadyExists,
            EngineError::SkuInOtherPromotion {
                sku: "s".into(),
                other_promotion_id: "p".into(),
            },
            EngineError::NotStarted,
            EngineError::Ended,
            EngineError::SoldOut,
            EngineError::InsufficientStock,
            EngineError::LimitExceeded,
            EngineError::TokensExhausted,
            EngineError::Banned,
            EngineError::NotEligible,
            EngineError::HumanCheckFailed,
            EngineError::TokenInvalid,
            EngineError::NotPayable,
            EngineError::AlreadyPaid,
            EngineError::NotCancellable,
            EngineError::AmountMismatch,
            EngineError::Overloaded,
            EngineError::Unavailable("x".into()),
            EngineError::ShardDown(0),
            EngineError::OutcomeUnknown,
            EngineError::NotOwner { partition: 0 },
        ];
        let edge_errors = [
            AppError::invalid("f", "r"),
            AppError::Unauthorized("u"),
            AppError::RouteNotFound,
            AppError::MethodNotAllowed,
            AppError::PayloadTooLarge,
            AppError::RateLimited { retry_after_s: 1 },
            AppError::Timeout { timeout_ms: 1 },
            AppError::OutcomeUnknown { timeout_ms: 1 },
            AppError::NotReady,
            AppError::shards_down(&[0]),
            AppError::Internal,
        ];
        let answered: Vec<&str> = engine_errors
            .into_iter()
            .map(AppError::Engine)
            .chain(edge_errors)
            .map(|error| error.status_and_code().1)
            .collect();
        for code in &answered {
            assert!(ERROR_CODES.contains(code), "{code} is not in ERROR_CODES");
        }
        for code in ERROR_CODES {
            assert!(answered.contains(code), "{code} is never answered");
        }
        let mut unique = ERROR_CODES.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ERROR_CODES.len(),
            "ERROR_CODES repeats a code"
        );
    }

    #[test]
    fn the_error_code_schema_is_the_list() {
        let schema = serde_json::to_value(ErrorCodeSchema::schema()).expect("serializes");
        assert_eq!(schema["type"], "string");
        assert_eq!(schema["enum"], serde_json::json!(ERROR_CODES));
    }

    #[test]
    fn shards_down_names_them() {
        assert_eq!(AppError::shards_down(&[1]).to_string(), "shard 1 is down");
        assert_eq!(
            AppError::shards_down(&[0, 2]).to_string(),
            "shard 0, shard 2 are down"
        );
        assert_eq!(
            AppError::shards_down(&[1]).status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
    }
}
