//! The router: every route of api.md, the JSON 404/405 fallbacks, and the layers around them
//! (metrics, request timeout, panic catcher).

mod admin;
mod ops;
mod shopper;

use std::sync::OnceLock;
use std::time::Instant;

use axum::http::Method;
use dashmap::DashMap;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::{AppError, ErrorCode};
use crate::state::AppState;

/// The whole HTTP API over `state`. Tests can drive it with `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/admin/promotions",
            post(admin::create_promotion).get(admin::list_promotions),
        )
        .route("/admin/promotions/{id}", get(admin::get_promotion))
        .route("/admin/promotions/{id}/start", post(admin::start_promotion))
        .route("/admin/promotions/{id}/stop", post(admin::stop_promotion))
        .route("/admin/orders/{order_id}/pay", post(admin::pay_order))
        .route("/promotions", get(shopper::list_promotions))
        .route("/promotions/{id}", get(shopper::get_promotion))
        .route(
            "/promotions/{id}/items/{sku}/token",
            post(shopper::issue_token),
        )
        .route(
            "/promotions/{id}/items/{sku}/purchase",
            post(shopper::purchase),
        )
        .route("/orders/{order_id}", get(shopper::get_order))
        .route("/orders/{order_id}/cancel", post(shopper::cancel_order))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        // Only matched routes are measured: unknown paths would make unbounded label values.
        .route_layer(middleware::from_fn(observe))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), timeout))
        .layer(CatchPanicLayer::custom(|_| {
            AppError::Internal.into_response()
        }))
        .with_state(state)
}

async fn route_not_found() -> AppError {
    AppError::RouteNotFound
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

/// Bounds a request's handling, body read included, by the configured timeout. A write that
/// times out here may still be decided by its shard; a retry with the same `request_id`
/// returns it.
async fn timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.request_timeout();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => AppError::Timeout {
            timeout_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        }
        .into_response(),
    }
}

/// Counts requests by route, method, status and api.md code, and records their latency.
async fn observe(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = matched.map_or("unmatched", |m| intern_route(m.as_str()));
    let response = next.run(request).await;
    let code = response
        .extensions()
        .get::<ErrorCode>()
        .map_or("ok", |c| c.0);
    let series = RequestSeries {
        route,
        method,
        status: response.status().as_u16(),
        code,
    };
    series.counter().increment(1);
    series.histogram().record(started.elapsed().as_secs_f64());
    response
}

/// The labels of one request's metrics. Handles are cached per label set: building a metrics
/// key and looking it up in the registry on every request cost more than the request itself
/// in a sold-out storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RequestSeries {
    route: &'static str,
    method: &'static str,
    status: u16,
    code: &'static str,
}

impl RequestSeries {
    fn counter(self) -> metrics::Counter {
        static COUNTERS: OnceLock<DashMap<RequestSeries, metrics::Counter>> = OnceLock::new();
        let counters = COUNTERS.get_or_init(DashMap::new);
        if let Some(counter) = counters.get(&self) {
            return counter.clone();
        }
        let counter = metrics::counter!(
            "seckill_http_requests_total",
            "route" => self.route,
            "method" => self.method,
            "status" => self.status.to_string(),
            "code" => self.code,
        );
        counters.insert(self, counter.clone());
        counter
    }

    fn histogram(self) -> metrics::Histogram {
        static HISTOGRAMS: OnceLock<DashMap<(&'static str, &'static str), metrics::Histogram>> =
            OnceLock::new();
        let histograms = HISTOGRAMS.get_or_init(DashMap::new);
        let key = (self.route, self.method);
        if let Some(histogram) = histograms.get(&key) {
            return histogram.clone();
        }
        let histogram = metrics::histogram!(
            "seckill_http_request_duration_seconds",
            "route" => self.route,
            "method" => self.method,
        );
        histograms.insert(key, histogram.clone());
        histogram
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The route template as a `'static` label. Only matched templates of [`app`] get here, so
/// the set is small and fixed; the leak is bounded by the number of routes.
fn intern_route(template: &str) -> &'static str {
    static ROUTES: OnceLock<DashMap<String, &'static str>> = OnceLock::new();
    let routes = ROUTES.get_or_init(DashMap::new);
    if let Some(interned) = routes.get(template) {
        return *interned;
    }
    let interned: &'static str = Box::leak(template.to_owned().into_boxed_str());
    *routes.entry(template.to_owned()).or_insert(interned)
}
