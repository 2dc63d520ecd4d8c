//! The two layers around every request, written as plain tower services with pinned futures
//! rather than `axum::middleware::from_fn` closures and tower-http's panic catcher: those
//! box a future and clone a boxed service per layer and per request, which was a visible
//! share of a sold-out storm's CPU.
//!
//! - [`GuardLayer`] (outermost): bounds a request by the configured timeout and turns a
//!   panic in a handler into the JSON 500 of api.md instead of a dropped connection. A read
//!   past the timeout is 503 `unavailable`; so is a write whose body was still arriving
//!   (it never reached the engine). Any other write past the timeout may still take effect:
//!   503 `outcome_unknown` with `Retry-After` (api.md, "Writes whose outcome is unknown").
//! - [`ObserveLayer`] (on matched routes only): counts requests by route, method, status and
//!   api.md code, and records their latency; token and purchase answers of a promotion
//!   being watched live also go to its meters (`crate::live`).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use pin_project_lite::pin_project;
use rustc_hash::{FxHashMap, FxHashSet};
use tower::{Layer, Service};

// The route templates whose answers feed the live meters, named once in `hot.rs`.
use super::hot::{PURCHASE_ROUTE, TOKEN_ROUTE};
use crate::error::{AppError, ErrorCode};
use crate::extract::BodyPending;
use crate::live::{LiveBoard, MeterSlot, MeteredRoute};

/// What every service here answers: a response, never an error.
pub type Answered = Result<Response, Infallible>;

/// The services the layers wrap: the router's routes, which answer every request.
pub trait Inner: Service<Request, Response = Response, Error = Infallible> {}

impl<S: Service<Request, Response = Response, Error = Infallible>> Inner for S {}

/// A future that answers a request.
pub trait Answer: Future<Output = Answered> {}

impl<F: Future<Output = Answered>> Answer for F {}

/// What a layer does around each call of the service it wraps: the future that answers the
/// request, made from the request and the inner service.
pub trait Around<S: Inner> {
    type Future: Future<Output = Answered>;

    fn around(&self, request: Request, inner: &mut S) -> Self::Future;
}

/// The tower service of both layers: `inner`, with `layer` around each of its calls.
#[derive(Debug, Clone)]
pub struct Wrapped<S, L> {
    inner: S,
    layer: L,
}

impl<S: Inner, L: Around<S>> Service<Request> for Wrapped<S, L> {
    type Response = Response;
    type Error = Infallible;
    type Future = L::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> L::Future {
        self.layer.around(request, &mut self.inner)
    }
}

/// Timeout and panic catching; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct GuardLayer {
    pub timeout: Duration,
}

impl<S> Layer<S> for GuardLayer {
    type Service = Wrapped<S, GuardLayer>;

    fn layer(&self, inner: S) -> Wrapped<S, GuardLayer> {
        Wrapped {
            inner,
            layer: *self,
        }
    }
}

impl<S: Inner> Around<S> for GuardLayer {
    type Future = GuardFuture<S::Future>;

    fn around(&self, request: Request, inner: &mut S) -> Self::Future {
        self.guard(request, |request| inner.call(request))
    }
}

impl GuardLayer {
    /// The answer of `call(request)` within the timeout, a panic caught; the router's layer
    /// and the hot routes (`hot.rs`) both come here.
    pub fn guard<F: Answer>(
        &self,
        mut request: Request,
        call: impl FnOnce(Request) -> F,
    ) -> GuardFuture<F> {
        let timeout = self.timeout;
        let body = if is_write(request.method()) {
            let body = BodyPending::default();
            request.extensions_mut().insert(body.clone());
            Some(body)
        } else {
            None
        };
        // A panic while building the handler's future is caught like one while polling it.
        match catch_unwind(AssertUnwindSafe(|| call(request))) {
            Ok(inner) => GuardFuture::Running {
                inner,
                timer: Timer::Unarmed {
                    deadline: tokio::time::Instant::now() + timeout,
                },
                timeout,
                body,
            },
            Err(_) => GuardFuture::Done {
                response: Some(AppError::Internal.into_response()),
            },
        }
    }
}

/// Every method but GET, HEAD and OPTIONS may change something.
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The answer to a request that ran out of time. `body` is the write's marker (None for a
/// read): a write that got past reading its body may have reached the engine.
fn timed_out(timeout: Duration, body: Option<&BodyPending>) -> Response {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let error = match body {
        Some(body) if !body.is_pending() => AppError::OutcomeUnknown { timeout_ms },
        _ => AppError::Timeout { timeout_ms },
    };
    error.into_response()
}

pin_project! {
    #[project = GuardProjection]
    pub enum GuardFuture<F> {
        Running {
            #[pin] inner: F,
            #[pin] timer: Timer,
            timeout: Duration,
            body: Option<BodyPending>,
        },
        Done { response: Option<Response> },
    }
}

pin_project! {
    /// A request's timeout, counted from its arrival but armed only once its answer had to
    /// wait: most refusals (sold out, not live, rate limited) are answered in the first
    /// poll, and a timer entry made and cancelled for each of them was a visible share of a
    /// storm's CPU (reading the clock is not).
    #[project = TimerProjection]
    pub enum Timer {
        Unarmed { deadline: tokio::time::Instant },
        Armed { #[pin] sleep: tokio::time::Sleep },
    }
}

impl Timer {
    /// Whether the request has run out of time: arms the timer on the first call, then polls
    /// it, so the task is woken when it fires. Polled outside the task's cooperative budget,
    /// as `tokio::time::timeout` polls its delay, so an inner future that spent the budget
    /// cannot keep the timeout from firing.
    fn expired(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        if let TimerProjection::Unarmed { deadline } = self.as_mut().project() {
            let deadline = *deadline;
            self.set(Timer::Armed {
                sleep: tokio::time::sleep_until(deadline),
            });
        }
        match self.project() {
            TimerProjection::Armed { sleep } => {
                let mut unconstrained = tokio::task::coop::unconstrained(sleep);
                Pin::new(&mut unconstrained).poll(cx).is_ready()
            }
            TimerProjection::Unarmed { .. } => false,
        }
    }
}

impl<F: Answer> Future for GuardFuture<F> {
    type Output = Answered;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answered> {
        match self.project() {
            GuardProjection::Running {
                inner,
                timer,
                timeout,
                body,
            } => {
                let timeout = *timeout;
                match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                    Ok(Poll::Ready(answered)) => Poll::Ready(answered),
                    // A write that times out here may still be decided by its shard; a retry
                    // with the same `request_id` (or the same call) returns its outcome.
                    Ok(Poll::Pending) if timer.expired(cx) => {
                        Poll::Ready(Ok(timed_out(timeout, body.as_ref())))
                    }
                    Ok(Poll::Pending) => Poll::Pending,
                    Err(_panic) => Poll::Ready(Ok(AppError::Internal.into_response())),
                }
            }
            GuardProjection::Done { response } => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| AppError::Internal.into_response()))),
        }
    }
}

/// Request metrics; see the module docs. Only matched routes get here (it is a route
/// layer), so the route label is one of the router's templates and the label set is bounded.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    /// The live meters: token and purchase answers of watched promotions are counted there.
    /// A plain reference, not an `Arc`: axum clones the route's service for every request,
    /// and an `Arc` here would be a contended count on every request of every route. The
    /// board lives as long as the process (`AppState::new` leaks one, a few hundred bytes).
    pub board: &'static LiveBoard,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Wrapped<S, ObserveLayer>;

    fn layer(&self, inner: S) -> Wrapped<S, ObserveLayer> {
        Wrapped {
            inner,
            layer: self.clone(),
        }
    }
}

fn metered_route(route: &str) -> Option<MeteredRoute> {
    match route {
        TOKEN_ROUTE => Some(MeteredRoute::Token),
        PURCHASE_ROUTE => Some(MeteredRoute::Purchase),
        _ => None,
    }
}

impl<S: Inner> Around<S> for ObserveLayer {
    type Future = ObserveFuture<S::Future>;

    fn around(&self, request: Request, inner: &mut S) -> Self::Future {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |m| intern_route(m.as_str()));
        self.observe(route, request, |request| inner.call(request))
    }
}

impl ObserveLayer {
    /// `call(request)` measured as a request of `route` (a template of the router); the
    /// router's layer and the hot routes (`hot.rs`) both come here.
    pub fn observe<F: Answer>(
        &self,
        route: &'static str,
        request: Request,
        call: impl FnOnce(Request) -> F,
    ) -> ObserveFuture<F> {
        let started = Instant::now();
        let method = method_label(request.method());
        let meter = metered_route(route)
            .and_then(|metered| Some((metered, self.board.slot(request.uri().path())?)));
        ObserveFuture {
            inner: call(request),
            started,
            route,
            method,
            meter,
        }
    }
}

pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: &'static str,
        method: &'static str,
        meter: Option<(MeteredRoute, MeterSlot)>,
    }
}

impl<F: Answer> Future for ObserveFuture<F> {
    type Output = Answered;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answered> {
        let this = self.project();
        let Poll::Ready(Ok(response)) = this.inner.poll(cx) else {
            return Poll::Pending;
        };
        let error_code = response.extensions().get::<ErrorCode>().map(|c| c.0);
        let series = RequestSeries {
            route: this.route,
            method: this.method,
            status: response.status().as_u16(),
            code: error_code.unwrap_or("ok"),
        };
        let elapsed = this.started.elapsed();
        series.record(elapsed);
        if let Some((metered, slot)) = this.meter.take() {
            let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            slot.record(metered, series.status, error_code, elapsed_us);
        }
        Poll::Ready(Ok(response))
    }
}

/// The labels of one request's metrics. Handles are cached per label set and per thread:
/// building a metrics key and looking it up in the registry on every request cost more than
/// the request itself in a sold-out storm, and a shared cache (a `DashMap` with SipHash) was
/// still 5% of it.
#[derive(Debug, Clone, Copy)]
struct RequestSeries {
    route: &'static str,
    method: &'static str,
    status: u16,
    code: &'static str,
}

/// A series by the addresses of its `'static` labels: the route is interned (one address per
/// template), the method and code are literals. Two literals of the same text at two
/// addresses make two entries holding the same registry handles, which is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SeriesKey {
    route: (usize, usize),
    method: (usize, usize),
    status: u16,
    code: (usize, usize),
}

/// A `'static` label by its address and length.
fn label_key(label: &'static str) -> (usize, usize) {
    (label.as_ptr() as usize, label.len())
}

impl RequestSeries {
    fn key(self) -> SeriesKey {
        SeriesKey {
            route: label_key(self.route),
            method: label_key(self.method),
            status: self.status,
            code: label_key(self.code),
        }
    }

    /// Counts the request and records its latency in this thread's handles of the series.
    fn record(self, elapsed: Duration) {
        thread_local! {
            static HANDLES: RefCell<FxHashMap<SeriesKey, (metrics::Counter, metrics::Histogram)>> =
                RefCell::new(FxHashMap::default());
        }
        HANDLES.with(|handles| {
            let mut handles = handles.borrow_mut();
            let (counter, histogram) = handles
                .entry(self.key())
                .or_insert_with(|| (self.counter(), self.histogram()));
            counter.increment(1);
            histogram.record(elapsed.as_secs_f64());
        });
    }

    fn counter(self) -> metrics::Counter {
        metrics::counter!(
            "seckill_http_requests_total",
            "route" => self.route,
            "method" => self.method,
            "status" => self.status.to_string(),
            "code" => self.code,
        )
    }

    fn histogram(self) -> metrics::Histogram {
        metrics::histogram!(
            "seckill_http_request_duration_seconds",
            "route" => self.route,
            "method" => self.method,
        )
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

/// The route template as a `'static` label, one address per template for the whole
/// process. Only matched templates of the router get here, so the set is small and fixed;
/// the leak is bounded by the number of routes. Looked up in this thread's set first (no
/// lock), then in the process's.
fn intern_route(template: &str) -> &'static str {
    thread_local! {
        static LOCAL: RefCell<FxHashSet<&'static str>> = RefCell::new(FxHashSet::default());
    }
    if let Some(interned) = LOCAL.with(|local| local.borrow().get(template).copied()) {
        return interned;
    }
    static ROUTES: OnceLock<DashMap<String, &'static str>> = OnceLock::new();
    let routes = ROUTES.get_or_init(DashMap::new);
    let interned = *routes
        .entry(template.to_owned())
        .or_insert_with(|| Box::leak(template.to_owned().into_boxed_str()));
    LOCAL.with(|local| local.borrow_mut().insert(interned));
    interned
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use axum::Router;
    use tower::ServiceExt;

    /// Status, `Retry-After` and body of `method /` through the guard (20 ms timeout).
    async fn answer_to(router: Router, method: Method) -> (u16, Option<String>, String) {
        let request = Request::builder()
            .method(method)
            .uri("/")
            .body(Body::empty())
            .expect("request");
        let response = router
            .layer(GuardLayer {
                timeout: Duration::from_millis(20),
            })
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&body).into_owned();
        (status, retry_after, text)
    }

    async fn answer(router: Router) -> (u16, String) {
        let (status, _, body) = answer_to(router, Method::GET).await;
        (status, body)
    }

    async fn stuck() -> &'static str {
        std::future::pending::<()>().await;
        "never"
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_json_500() {
        async fn boom() -> &'static str {
            panic!("handler bug")
        }
        let (status, body) = answer(Router::new().route("/", get(boom))).await;
        assert_eq!(status, 500);
        assert!(body.contains("\"code\":\"internal\""), "{body}");
    }

    #[tokio::test]
    async fn a_read_past_the_timeout_is_a_json_503_unavailable() {
        let (status, body) = answer(Router::new().route("/", get(stuck))).await;
        assert_eq!(status, 503);
        assert!(body.contains("\"code\":\"unavailable\""), "{body}");
    }

    #[tokio::test]
    async fn a_write_past_the_timeout_has_an_unknown_outcome() {
        let router = Router::new().route("/", post(stuck));
        let (status, retry_after, body) = answer_to(router, Method::POST).await;
        assert_eq!(status, 503);
        assert!(body.contains("\"code\":\"outcome_unknown\""), "{body}");
        assert_eq!(retry_after.as_deref(), Some("1"));
    }

    #[tokio::test]
    async fn a_handler_in_time_passes_through() {
        let (status, body) = answer(Router::new().route("/", get(|| async { "fine" }))).await;
        assert_eq!(status, 200);
        assert_eq!(body, "fine");
    }
}
