//! Operations routes: liveness, readiness and Prometheus metrics. No credentials: they say
//! nothing a shopper could use, and probes and scrapers rarely carry secrets.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::openapi::INTERNAL;
use crate::error::{AppError, ErrorBody};
use crate::state::AppState;
use crate::views::ProbeStatusSchema;

/// `GET /healthz`: 200 while the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    summary = "Liveness",
    responses(
        (status = 200, description = "The process is up: `{\"status\": \"ok\"}`.",
            body = ProbeStatusSchema, example = json!({"status": "ok"})),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = "`unavailable`: the request timed out.", body = ErrorBody),
    )
)]
pub async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

/// `GET /readyz`: 503 until recovery has finished, then 200; 503 again, naming them, while
/// any shard is down (its thread died): its items cannot be sold until a restart.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    summary = "Readiness",
    responses(
        (status = 200, description = "Recovery from the log has finished and every shard is \
            up: `{\"status\": \"ready\"}`.",
            body = ProbeStatusSchema, example = json!({"status": "ready"})),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = "`unavailable`: recovery from the log has not finished \
            (with `Retry-After`), or shards are down (the message names them; their items \
            cannot be sold until a restart), or the request timed out.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again."))),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let engine = match state.engine() {
        Ok(engine) => engine,
        Err(not_ready) => return not_ready.into_response(),
    };
    let dead = engine.dead_shards();
    if !dead.is_empty() {
        return AppError::shards_down(&dead).into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ready"}"#,
    )
        .into_response()
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Request counts by route and outcome, latency histograms, per-item \
                   remaining stock, log fsync latency and batch size, the SQL flusher's and \
                   the event sinks' lag.",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.",
            body = String, content_type = "text/plain; version=0.0.4"),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = "`unavailable`: the request timed out.", body = ErrorBody),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let handle = state.metrics();
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
