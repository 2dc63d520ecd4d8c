//! The router: every route of api.md, the JSON 404/405 fallbacks, and the layers around them
//! (metrics, request timeout, panic catcher); [`Dispatch`], the router with the storm's two
//! routes dispatched past it (`hot.rs`).

mod admin;
mod console;
mod hot;
mod layers;
mod live;
mod openapi;
mod ops;
mod report;
mod shopper;

pub use hot::HotFuture;
pub use live::{LiveItem, LiveStats};
pub use openapi::document as openapi_document;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::routing::{get, post};
use axum::{BoxError, Router};
use pin_project_lite::pin_project;

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
        .route("/admin/cluster", get(admin::get_cluster))
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
        .route_layer(observe_layer(&state))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(guard_layer(&state))
        .with_state(state)
}

fn guard_layer(state: &AppState) -> GuardLayer {
    GuardLayer {
        timeout: state.request_timeout(),
    }
}

fn observe_layer(state: &AppState) -> ObserveLayer {
    ObserveLayer {
        board: state.live_board(),
    }
}

/// What the accept loop hands each request to: the router, and with [`dispatch`] also the
/// token and purchase routes past it (`hot.rs`), answered by the same handlers.
#[derive(Debug, Clone)]
pub struct Dispatch {
    router: Router,
    hot: Option<hot::HotRoutes>,
}

/// The router alone (an embedding shop's own router, or a test's).
impl From<Router> for Dispatch {
    fn from(router: Router) -> Dispatch {
        Dispatch { router, hot: None }
    }
}

/// The whole HTTP API over `state`, as the server runs it.
pub fn dispatch(state: AppState) -> Dispatch {
    let hot = hot::HotRoutes {
        state: state.clone(),
        guard: guard_layer(&state),
        observe: observe_layer(&state),
    };
    Dispatch {
        router: app(state),
        hot: Some(hot),
    }
}

impl Dispatch {
    /// The answer to `request`.
    pub fn call<B>(&self, request: Request<B>) -> DispatchFuture
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if let Some(hot) = &self.hot {
            if let Some((route, id, sku)) = hot::hot_route(request.method(), request.uri().path()) {
                let (id, sku) = (id.to_owned(), sku.to_owned());
                return DispatchFuture::Hot {
                    future: hot.call(route, id, sku, request.map(Body::new)),
                };
            }
        }
        // The router is an `Arc` inside; `call` wants it by `&mut`.
        DispatchFuture::Router {
            future: tower::Service::call(&mut self.router.clone(), request),
        }
    }
}

pin_project! {
    /// The answer of [`Dispatch::call`].
    #[project = DispatchProjection]
    pub enum DispatchFuture {
        Router { #[pin] future: RouteFuture<Infallible> },
        Hot { future: HotFuture },
    }
}

impl Future for DispatchFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DispatchProjection::Router { future } => future.poll(cx),
            DispatchProjection::Hot { future } => future.as_mut().poll(cx),
        }
    }
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
