//! `GET /admin/promotions/{id}/report`: the sale report, from the SQL views the back office
//! queries too (so it trails the sale by the flusher's lag, which it states).

use axum::extract::State;
use axum::Json;

use super::openapi::{INTERNAL, OPERATOR_UNAUTHORIZED};
use crate::auth::Admin;
use crate::error::{AppError, ErrorBody};
use crate::extract::PathParams;
use crate::sale_report::ReportView;
use crate::state::AppState;

fn unavailable(reason: &str) -> AppError {
    AppError::Engine(seckill_engine::Error::Unavailable(reason.to_owned()))
}

/// `GET /admin/promotions/{id}/report`.
#[utoipa::path(
    get,
    path = "/admin/promotions/{id}/report",
    tag = "operator",
    operation_id = "promotion_report",
    summary = "The sale report of a promotion",
    description = "Units and revenue (cents) by order status, the funnel (tokens issued, \
                   orders, paid orders) and orders per minute, read from the SQL views \
                   `promotion_report`, `promotion_funnel` and `promotion_orders_per_minute`: \
                   it trails the engine by the SQL flusher's lag (`sql_lag_s`).",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "The promotion id.",
        pattern = r"^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The report.", body = ReportView),
        (status = 401, description = OPERATOR_UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "`not_found`: no such promotion.", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = "`unavailable`: the server is starting, has no SQL \
            database (the development memory journal), or the database did not answer.",
            body = ErrorBody),
    )
)]
pub async fn promotion_report(
    _: Admin,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<ReportView>, AppError> {
    // 404 for a promotion the engine does not know, before SQL is asked (from the catalog:
    // a cluster node knows every promotion, whichever node owns its items).
    state.engine()?.public_promotion(&id)?;
    let reader = state
        .sql_reader()
        .ok_or_else(|| unavailable("this server has no SQL database"))?;
    match reader.report(&id).await {
        Ok(report) => Ok(Json(report)),
        Err(error) => {
            tracing::warn!(%error, promotion = %id, "sale report: the database did not answer");
            Err(unavailable("the SQL database did not answer; try again"))
        }
    }
}
