//! Operator routes: promotions and payment confirmation. Every handler takes [`Admin`] (or
//! [`NamedPromotion`], which checks the key before anything else) first, so nothing runs
//! before the key is checked.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;

use seckill_engine::Engine;

use super::created_or_ok;
use crate::auth::Admin;
use crate::error::AppError;
use crate::extract::{JsonBody, PathParams};
use crate::state::AppState;
use crate::views::{CreatePromotion, OrderView, PayBody, PromotionList, PromotionView};

/// `POST /admin/promotions`: 201 with the promotion and its (fresh) stats; 200 with the
/// promotion when it is a retry (same `id`, identical body) of the create that made it.
pub async fn create_promotion(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreatePromotion>,
) -> Result<(StatusCode, Json<PromotionView>), AppError> {
    let engine = state.engine()?;
    let spec = body.into_spec()?;
    let creation = engine.create_promotion(spec).await?;
    Ok((
        created_or_ok(creation.created),
        Json(creation.promotion.into()),
    ))
}

/// `GET /admin/promotions`: every promotion with stats.
pub async fn list_promotions(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<PromotionList<PromotionView>>, AppError> {
    let all = state.engine()?.list_promotion_stats().await?;
    Ok(Json(PromotionList {
        promotions: all.into_iter().map(PromotionView::from).collect(),
    }))
}

/// The promotion an `/admin/promotions/{id}...` route names, and the engine to ask. The key
/// is checked first, as on every operator route; then the path is read, then the engine's
/// readiness.
#[derive(Debug)]
pub struct NamedPromotion {
    engine: Engine,
    id: String,
}

impl FromRequestParts<AppState> for NamedPromotion {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        Admin::from_request_parts(parts, state).await?;
        let PathParams(id) = PathParams::<String>::from_request_parts(parts, state).await?;
        let engine = state.engine()?.clone();
        Ok(NamedPromotion { engine, id })
    }
}

/// `GET /admin/promotions/{id}`.
pub async fn get_promotion(named: NamedPromotion) -> Result<Json<PromotionView>, AppError> {
    Ok(Json(named.engine.promotion_stats(&named.id).await?.into()))
}

/// `POST /admin/promotions/{id}/start`: live from now.
pub async fn start_promotion(named: NamedPromotion) -> Result<Json<PromotionView>, AppError> {
    Ok(Json(named.engine.start_promotion(&named.id).await?.into()))
}

/// `POST /admin/promotions/{id}/stop`: ended from now.
pub async fn stop_promotion(named: NamedPromotion) -> Result<Json<PromotionView>, AppError> {
    Ok(Json(named.engine.stop_promotion(&named.id).await?.into()))
}

/// `POST /admin/orders/{order_id}/pay`: idempotent by `payment_ref`; an `amount_cents` that
/// is not the order's is 409 `amount_mismatch`.
pub async fn pay_order(
    _: Admin,
    State(state): State<AppState>,
    PathParams(order_id): PathParams<String>,
    JsonBody(body): JsonBody<PayBody>,
) -> Result<Json<OrderView>, AppError> {
    let amount_cents = body.amount_cents()?;
    let order = state
        .engine()?
        .pay(&order_id, &body.payment_ref, amount_cents)
        .await?;
    Ok(Json(order.into()))
}
