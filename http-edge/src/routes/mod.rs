//! The router: every route of api.md, the JSON 404/405 fallbacks, and the layers around them
//! (metrics, request timeout, panic catcher).

mod admin;
mod console;
mod layers;
mod live;
mod openapi;
mod ops;
mod report;
mod shopper;

pub use live::{LiveItem, LiveStats};
pub use openapi::document as openapi_document;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use crate::error::AppError;
use crate::state::AppState;
use layers::{GuardLayer, ObserveLayer};

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
        .route("/admin/promotions/{id}/live", get(live::promotion_live))
        .route(
            "/admin/promotions/{id}/report",
            get(report::promotion_report),
        )
        .route("/admin/orders/{order_id}", get(admin::get_order))
        .route("/admin/orders/{order_id}/pay", post(admin::pay_order))
        .route("/promotions", get(shopper::list_promotions))
        .route("/promotions/{id}", get(shopper::get_promotion))
        .route(
            "/promotions/{id}/items/{sku}/challenge",
            post(shopper::issue_challenge),
        )
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
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/console", get(console::console_page))
        .route("/console/{file}", get(console::console_asset))
        // Only matched routes are measured: unknown paths would make unbounded label values.
        .route_layer(ObserveLayer {
            board: state.live_board(),
        })
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(GuardLayer {
            timeout: state.request_timeout(),
        })
        .with_state(state)
}

/// 201 for what this call created, 200 for what an earlier call with the same request (or
/// the same body) made.
fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

async fn route_not_found() -> AppError {
    AppError::RouteNotFound
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
