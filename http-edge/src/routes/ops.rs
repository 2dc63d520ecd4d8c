//! Operations routes: liveness, readiness and Prometheus metrics. No credentials: they say
//! nothing a shopper could use, and probes and scrapers rarely carry secrets.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::AppError;
use crate::state::AppState;

/// `GET /healthz`: 200 while the process is up.
pub async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

/// `GET /readyz`: 503 until recovery has finished, then 200; 503 again, naming them, while
/// any shard is down (its thread died): its items cannot be sold until a restart.
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
pub async fn metrics(State(state): State<AppState>) -> Response {
    let handle = state.metrics();
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
