//! The two routes of a storm, `POST /promotions/{id}/items/{sku}/token` and `.../purchase`,
//! dispatched to their handlers without the router.
//!
//! In a sold-out storm nearly every request is one of these two, refused at the engine's gate
//! within microseconds, and the router's share of it (matching, percent-decoding the path
//! into extensions, the handler's boxed glue) was a fifth of a refusal's instructions
//! (callgrind, ARCHITECTURE.md "Figures"). This module recognises the two paths with a few
//! string comparisons and calls the *same* handlers with the *same* extractors in the same
//! order, inside the same timeout, panic and metrics layers, so an answer cannot differ from
//! the router's: there is no second copy of any rule here. Anything it is not sure of (another
//! method, a percent-encoded or empty segment, a trailing slash) goes to the router.

use std::future::Future;
use std::pin::Pin;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};

use super::layers::{Answered, GuardLayer, ObserveLayer};
use super::shopper;
use crate::auth::ShopperWithClaims;
use crate::client_addr::ClientAddr;
use crate::extract::{JsonBody, OptionalJsonBody, PathParams};
use crate::state::AppState;

/// The route templates, as the router names them (the metrics' `route` label).
pub(super) const TOKEN_ROUTE: &str = "/promotions/{id}/items/{sku}/token";
pub(super) const PURCHASE_ROUTE: &str = "/promotions/{id}/items/{sku}/purchase";

/// Which of the two routes a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HotRoute {
    Token,
    Purchase,
}

impl HotRoute {
    fn template(self) -> &'static str {
        match self {
            HotRoute::Token => TOKEN_ROUTE,
            HotRoute::Purchase => PURCHASE_ROUTE,
        }
    }
}

/// The route, promotion id and sku of a request for one of the two routes, exactly when the
/// router would match it to that route with these parameters: `POST`, six segments, none
/// empty, no percent-encoding (which the router would decode).
pub(super) fn hot_route<'a>(
    method: &Method,
    path: &'a str,
) -> Option<(HotRoute, &'a str, &'a str)> {
    if *method != Method::POST || path.contains('%') {
        return None;
    }
    let rest = path.strip_prefix("/promotions/")?;
    let (id, rest) = rest.split_once('/')?;
    let (sku, action) = rest.strip_prefix("items/")?.split_once('/')?;
    let route = match action {
        "token" => HotRoute::Token,
        "purchase" => HotRoute::Purchase,
        _ => return None,
    };
    if id.is_empty() || sku.is_empty() {
        return None;
    }
    Some((route, id, sku))
}

/// What the hot routes need: the handlers' state and the router's two layers.
#[derive(Debug, Clone)]
pub(super) struct HotRoutes {
    pub(super) state: AppState,
    pub(super) guard: GuardLayer,
    pub(super) observe: ObserveLayer,
}

/// The answer to a hot request: the handler's future inside the layers, boxed (its type has
/// no name).
pub type HotFuture = Pin<Box<dyn Future<Output = Answered> + Send>>;

impl HotRoutes {
    /// Answers `request` (for `route`, with these path parameters) as the router would.
    pub(super) fn call(
        &self,
        route: HotRoute,
        id: String,
        sku: String,
        request: Request,
    ) -> HotFuture {
        let state = self.state.clone();
        let observe = &self.observe;
        Box::pin(self.guard.guard(request, move |request| {
            observe.observe(route.template(), request, move |request| async move {
                Ok(answer(route, state, id, sku, request).await)
            })
        }))
    }
}

/// The handler of `route`, its extractors run in the order of its arguments, as axum runs
/// them; the first refusal is the answer.
async fn answer(
    route: HotRoute,
    state: AppState,
    id: String,
    sku: String,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let client = match ClientAddr::from_request_parts(&mut parts, &state).await {
        Ok(client) => client,
        Err(refused) => return refused.into_response(),
    };
    let shopper = match ShopperWithClaims::from_request_parts(&mut parts, &state).await {
        Ok(shopper) => shopper,
        Err(refused) => return refused.into_response(),
    };
    let path = PathParams((id, sku));
    let request = Request::from_parts(parts, Body::new(body));
    match route {
        HotRoute::Token => match OptionalJsonBody::from_request(request, &state).await {
            Ok(body) => shopper::issue_token(client, shopper, State(state), path, body)
                .await
                .into_response(),
            Err(refused) => refused.into_response(),
        },
        HotRoute::Purchase => match JsonBody::from_request(request, &state).await {
            Ok(body) => shopper::purchase(client, shopper, State(state), path, body)
                .await
                .into_response(),
            Err(refused) => refused.into_response(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_routes_are_recognised_with_their_parameters() {
        assert_eq!(
            hot_route(&Method::POST, "/promotions/p1/items/sku-1/purchase"),
            Some((HotRoute::Purchase, "p1", "sku-1"))
        );
        assert_eq!(
            hot_route(&Method::POST, "/promotions/p.1:x/items/a_b/token"),
            Some((HotRoute::Token, "p.1:x", "a_b"))
        );
    }

    #[test]
    fn anything_the_router_might_answer_otherwise_goes_to_the_router() {
        for (method, path) in [
            (Method::GET, "/promotions/p/items/s/purchase"),
            (Method::PUT, "/promotions/p/items/s/token"),
            (Method::POST, "/promotions/p/items/s/purchase/"),
            (Method::POST, "/promotions/p/items/s/challenge"),
            (Method::POST, "/promotions//items/s/purchase"),
            (Method::POST, "/promotions/p/items//purchase"),
            (Method::POST, "/promotions/p%20q/items/s/purchase"),
            (Method::POST, "/promotions/p/items/s/x/purchase"),
            (Method::POST, "/promotions/p/item/s/purchase"),
            (Method::POST, "/promotions/p"),
            (Method::POST, "//promotions/p/items/s/purchase"),
        ] {
            assert_eq!(hot_route(&method, path), None, "{method} {path}");
        }
    }
}
