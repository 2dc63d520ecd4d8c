//! The two layers around every request, written as plain tower services with pinned futures
//! rather than `axum::middleware::from_fn` closures and tower-http's panic catcher: those
//! box a future and clone a boxed service per layer and per request, which was a visible
//! share of a sold-out storm's CPU.
//!
//! - [`GuardLayer`] (outermost): bounds a request by the configured timeout and turns a
//!   panic in a handler into the JSON 500 of api.md instead of a dropped connection.
//! - [`ObserveLayer`] (on matched routes only): counts requests by route, method, status and
//!   api.md code, and records their latency.

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
use tower::{Layer, Service};

use crate::error::{AppError, ErrorCode};

/// Timeout and panic catching; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct GuardLayer {
    pub timeout: Duration,
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let timeout = self.timeout;
        // A panic while building the handler's future is caught like one while polling it.
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(inner) => GuardFuture::Running {
                inner: tokio::time::timeout(timeout, inner),
                timeout,
            },
            Err(_) => GuardFuture::Done {
                response: Some(AppError::Internal.into_response()),
            },
        }
    }
}

pin_project! {
    #[project = GuardProjection]
    pub enum GuardFuture<F> {
        Running { #[pin] inner: tokio::time::Timeout<F>, timeout: Duration },
        Done { response: Option<Response> },
    }
}

impl<F> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProjection::Running { inner, timeout } => {
                let timeout = *timeout;
                match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(Ok(answered))) => Poll::Ready(answered),
                    // A write that times out here may still be decided by its shard; a retry
                    // with the same `request_id` returns it.
                    Ok(Poll::Ready(Err(_elapsed))) => Poll::Ready(Ok(AppError::Timeout {
                        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    }
                    .into_response())),
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
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = method_label(request.method());
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |m| intern_route(m.as_str()));
        ObserveFuture {
            inner: self.inner.call(request),
            started,
            route,
            method,
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
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Poll::Ready(Ok(response)) = this.inner.poll(cx) else {
            return Poll::Pending;
        };
        let code = response
            .extensions()
            .get::<ErrorCode>()
            .map_or("ok", |c| c.0);
        let series = RequestSeries {
            route: this.route,
            method: this.method,
            status: response.status().as_u16(),
            code,
        };
        series.counter().increment(1);
        series
            .histogram()
            .record(this.started.elapsed().as_secs_f64());
        Poll::Ready(Ok(response))
    }
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

/// The route template as a `'static` label. Only matched templates of the router get here,
/// so the set is small and fixed; the leak is bounded by the number of routes.
fn intern_route(template: &str) -> &'static str {
    static ROUTES: OnceLock<DashMap<String, &'static str>> = OnceLock::new();
    let routes = ROUTES.get_or_init(DashMap::new);
    if let Some(interned) = routes.get(template) {
        return *interned;
    }
    let interned: &'static str = Box::leak(template.to_owned().into_boxed_str());
    *routes.entry(template.to_owned()).or_insert(interned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    async fn answer(router: Router) -> (u16, String) {
        let response = router
            .layer(GuardLayer {
                timeout: Duration::from_millis(20),
            })
            .oneshot(Request::get("/").body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
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
    async fn a_handler_past_the_timeout_is_a_json_503() {
        async fn stuck() -> &'static str {
            std::future::pending::<()>().await;
            "never"
        }
        let (status, body) = answer(Router::new().route("/", get(stuck))).await;
        assert_eq!(status, 503);
        assert!(body.contains("\"code\":\"unavailable\""), "{body}");
    }

    #[tokio::test]
    async fn a_handler_in_time_passes_through() {
        let (status, body) = answer(Router::new().route("/", get(|| async { "fine" }))).await;
        assert_eq!(status, 200);
        assert_eq!(body, "fine");
    }
}
