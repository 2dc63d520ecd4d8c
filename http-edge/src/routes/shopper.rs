//! Shopper routes. Order of checks: credential (401), rate limit (429), then the engine,
//! whose gate refuses banned / not live / sold out without a shard round trip.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;

use seckill_engine::{Engine, PurchaseRequest};

use super::created_or_ok;
use crate::auth::Shopper;
use crate::error::AppError;
use crate::extract::{JsonBody, PathParams};
use crate::limit::LimitedRoute;
use crate::state::AppState;
use crate::views::{OrderView, PromotionList, PublicPromotionView, PurchaseBody, TokenView};

/// `GET /promotions`: upcoming and live promotions.
pub async fn list_promotions(
    State(state): State<AppState>,
) -> Result<Json<PromotionList<PublicPromotionView>>, AppError> {
    let views = state.engine()?.public_promotions();
    Ok(Json(PromotionList {
        promotions: views.into_iter().map(PublicPromotionView::from).collect(),
    }))
}

/// `GET /promotions/{id}`.
pub async fn get_promotion(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<PublicPromotionView>, AppError> {
    let view = state.engine()?.public_promotion(&id)?;
    Ok(Json(view.into()))
}

/// `POST /promotions/{id}/items/{sku}/token`.
pub async fn issue_token(
    Shopper(user_id): Shopper,
    State(state): State<AppState>,
    PathParams((promotion_id, sku)): PathParams<(String, String)>,
) -> Result<Json<TokenView>, AppError> {
    state.limits().check(LimitedRoute::Token, &user_id)?;
    let grant = state
        .engine()?
        .issue_token(&promotion_id, &sku, &user_id)
        .await?;
    Ok(Json(grant.into()))
}

/// `POST /promotions/{id}/items/{sku}/purchase`: 201 new order, 200 the original order of a
/// repeated `request_id`.
pub async fn purchase(
    Shopper(user_id): Shopper,
    State(state): State<AppState>,
    PathParams((promotion_id, sku)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<PurchaseBody>,
) -> Result<(StatusCode, Json<OrderView>), AppError> {
    state.limits().check(LimitedRoute::Purchase, &user_id)?;
    let request = PurchaseRequest {
        request_id: body.request_id,
        quantity: body.quantity.unwrap_or(1),
        token: body.token,
    };
    let purchased = state
        .engine()?
        .purchase(&promotion_id, &sku, &user_id, request)
        .await?;
    Ok((
        created_or_ok(purchased.created),
        Json(purchased.order.into()),
    ))
}

/// The order an `/orders/{order_id}...` route names, for the shopper who asks, and the engine
/// to ask. Checked in the order of every shopper route: credential, then path, then rate
/// limit, then the engine's readiness.
#[derive(Debug)]
pub struct ShopperOrder {
    engine: Engine,
    user: String,
    id: String,
}

impl FromRequestParts<AppState> for ShopperOrder {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Shopper(user) = Shopper::from_request_parts(parts, state).await?;
        let PathParams(id) = PathParams::<String>::from_request_parts(parts, state).await?;
        state.limits().check(LimitedRoute::Orders, &user)?;
        let engine = state.engine()?.clone();
        Ok(ShopperOrder { engine, user, id })
    }
}

/// `GET /orders/{order_id}`: only the shopper's own orders (another's is 404).
pub async fn get_order(asked: ShopperOrder) -> Result<Json<OrderView>, AppError> {
    let order = asked.engine.order(&asked.id, Some(&asked.user)).await?;
    Ok(Json(order.into()))
}

/// `POST /orders/{order_id}/cancel`: cancelling again answers the order unchanged.
pub async fn cancel_order(asked: ShopperOrder) -> Result<Json<OrderView>, AppError> {
    let order = asked.engine.cancel(&asked.id, Some(&asked.user)).await?;
    Ok(Json(order.into()))
}
