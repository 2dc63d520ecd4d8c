//! Operator routes: promotions and payment confirmation. Every handler takes [`Admin`]
//! first, so nothing runs before the key is checked.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

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
    let status = if creation.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(creation.promotion.into())))
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

/// `GET /admin/promotions/{id}`.
pub async fn get_promotion(
    _: Admin,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<PromotionView>, AppError> {
    let stats = state.engine()?.promotion_stats(&id).await?;
    Ok(Json(stats.into()))
}

/// `POST /admin/promotions/{id}/start`: live from now.
pub async fn start_promotion(
    _: Admin,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<PromotionView>, AppError> {
    let stats = state.engine()?.start_promotion(&id).await?;
    Ok(Json(stats.into()))
}

/// `POST /admin/promotions/{id}/stop`: ended from now.
pub async fn stop_promotion(
    _: Admin,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<PromotionView>, AppError> {
    let stats = state.engine()?.stop_promotion(&id).await?;
    Ok(Json(stats.into()))
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
