//! The one place where a failure becomes an HTTP answer.
//!
//! Every handler, extractor and middleware returns [`AppError`]; its `IntoResponse` decides
//! status, `code` (api.md) and message, and puts the code in the response's extensions so the
//! metrics layer can count outcomes without parsing bodies.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use thiserror::Error;

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
        | EngineError::ShardDown(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The api.md code of an error answer, for the metrics layer.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
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
        let message = self.to_string();
        let body = serde_json::to_vec(&ErrorBody {
            error: ErrorDetail {
                code,
                message: &message,
            },
        })
        .unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"internal error"}}"#.to_vec()
        });
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let retry_after_s = match &self {
            AppError::RateLimited { retry_after_s } => Some(*retry_after_s),
            // Outcome unknown: the caller learns it by repeating the call, soon.
            AppError::Engine(EngineError::Overloaded | EngineError::OutcomeUnknown)
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
        let timed_out_read = AppError::Timeout { timeout_ms: 10 };
        assert_eq!(
            timed_out_read.status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
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
