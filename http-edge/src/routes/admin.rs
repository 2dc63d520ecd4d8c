//! Operator routes: promotions, orders and payment confirmation. Every handler takes [`Admin`]
//! (or [`NamedPromotion`], which checks the key before anything else) first, so nothing runs
//! before the key is checked.
//!
//! Each handler's `#[utoipa::path]` is its entry in `GET /openapi.json`: the statuses and
//! codes it answers (api.md's, and those of the extractors and layers around it).

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;

use seckill_engine::Engine;

use super::created_or_ok;
use super::openapi::{
    INTERNAL, OPERATOR_UNAUTHORIZED, PAYLOAD_TOO_LARGE, UNAVAILABLE_READ, UNAVAILABLE_WRITE,
};
use crate::auth::Admin;
use crate::error::{AppError, ErrorBody};
use crate::extract::{JsonBody, PathParams};
use crate::state::AppState;
use crate::views::{
    CreatePromotion, OperatorPart, OrderView, PayBody, PromotionList, PromotionOf, PromotionView,
};

/// `POST /admin/promotions`: 201 with the promotion and its (fresh) stats; 200 with the
/// promotion when it is a retry (same `id`, identical body) of the create that made it.
#[utoipa::path(
    post,
    path = "/admin/promotions",
    tag = "operator",
    operation_id = "create_promotion",
    summary = "Create a promotion",
    description = "Idempotent by `id`: the same `id` with an identical body answers 200 with \
                   the promotion (a retry, for instance after 503 `outcome_unknown`); another \
                   body with that `id` is 409 `already_exists`.",
    security(("admin_key" = [])),
    request_body = CreatePromotion,
    responses(
        (status = 201, description = "Created: the promotion, with its stats.",
            body = PromotionOf<OperatorPart>),
        (status = 200, description = "A retry of the create that made it: the promotion.",
            body = PromotionOf<OperatorPart>),
        (status = 400, description = "`invalid_request`: malformed JSON, a missing field, a \
            wrong type or an out-of-range value (the message names the field).",
            body = ErrorBody),
        (status = 401, description = OPERATOR_UNAUTHORIZED, body = ErrorBody),
        (status = 409, description = "`already_exists`: a promotion with this `id` and \
            another body exists; `sku_in_other_promotion`: a sku is in another promotion \
            whose window overlaps this one's.", body = ErrorBody),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_WRITE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn create_promotion(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreatePromotion>,
) -> Result<(StatusCode, Json<PromotionView>), AppError> {
    let engine = state.engine()?;
    let spec = body.into_spec()?;
    let creation = engine.create_promotion(spec).await?;
    if let Some(owner) = state.owner_calls() {
        // In force on every live node before the answer.
        owner.catalog_applied(engine.catalog_seq()).await;
    }
    Ok((
        created_or_ok(creation.created),
        Json(creation.promotion.into()),
    ))
}

/// `GET /admin/promotions`: every promotion with stats.
#[utoipa::path(
    get,
    path = "/admin/promotions",
    tag = "operator",
    operation_id = "admin_list_promotions",
    summary = "List every promotion, with stats",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Every promotion, with its item stats.",
            body = PromotionList<PromotionOf<OperatorPart>>),
        (status = 401, description = OPERATOR_UNAUTHORIZED, body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_READ, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn list_promotions(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<PromotionList<PromotionView>>, AppError> {
    let engine = state.engine()?;
    let all = match (engine.list_promotion_stats().await, state.owner_calls()) {
        // Some items are other nodes': each promotion's figures from their owners.
        (Err(seckill_engine::Error::NotOwner { .. }), Some(owner)) => {
            let mut all = Vec::new();
            for promotion in engine.list_promotion_stats_owned().await? {
                all.push(owner.promotion_stats(&promotion.id).await?);
            }
            all
        }
        (local, _) => local?,
    };
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
    /// A cluster node's way to the owners of the promotion's items.
    owner_calls: Option<std::sync::Arc<dyn crate::owner_calls::OwnerCalls>>,
}

impl NamedPromotion {
    /// The promotion's stats, each item's from its owner in a cluster.
    async fn stats(&self) -> Result<seckill_engine::PromotionStats, AppError> {
        match (
            self.engine.promotion_stats(&self.id).await,
            &self.owner_calls,
        ) {
            (Err(seckill_engine::Error::NotOwner { .. }), Some(owner)) => {
                Ok(owner.promotion_stats(&self.id).await?)
            }
            (local, _) => Ok(local?),
        }
    }

    /// After a start or a stop: in force on every live node, and the figures of every
    /// item (the engine's own answer shows other nodes' items as created).
    async fn changed(
        &self,
        local: seckill_engine::PromotionStats,
    ) -> Result<seckill_engine::PromotionStats, AppError> {
        let Some(owner) = &self.owner_calls else {
            return Ok(local);
        };
        owner.catalog_applied(self.engine.catalog_seq()).await;
        // The change is made; figures that cannot be gathered now leave its own answer.
        Ok(owner.promotion_stats(&self.id).await.unwrap_or(local))
    }
}

impl FromRequestParts<AppState> for NamedPromotion {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        Admin::from_request_parts(parts, state).await?;
        let PathParams(id) = PathParams::<String>::from_request_parts(parts, state).await?;
        let engine = state.engine()?.clone();
        let owner_calls = state.owner_calls().cloned();
        Ok(NamedPromotion {
            engine,
            id,
            owner_calls,
        })
    }
}

/// `GET /admin/promotions/{id}`.
#[utoipa::path(
    get,
    path = "/admin/promotions/{id}",
    tag = "operator",
    operation_id = "admin_get_promotion",
    summary = "A promotion, with stats",
    description = "Also for ended promotions whose items were archived: their stats are kept.",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "The promotion's id.",
        pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The promotion, with its item stats.",
            body = PromotionOf<OperatorPart>),
        (status = 401, description = OPERATOR_UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "`not_found`: no such promotion.", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_READ, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn get_promotion(named: NamedPromotion) -> Result<Json<PromotionView>, AppError> {
    Ok(Json(named.stats().await?.into()))
}

/// `POST /admin/promotions/{id}/start`: live from now.
#[utoipa::path(
    post,
    path = "/admin/promotions/{id}/start",
    tag = "operator",
    operation_id = "start_promotion",
    summary = "Start a promotion now",
    description = "It is live from now. Idempotent: starting a live promotion changes nothing.",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "The promotion's id.",
        pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The promotion, now live.",
            body = PromotionOf<OperatorPart>),
        (status = 401, description = OPERATOR_UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "`not_found`: no such promotion.", body = ErrorBody),
        (status = 409, description = "`ended`: the promotion has ended; it cannot start again.",
            body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_WRITE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn start_promotion(named: NamedPromotion) -> Result<Json<PromotionView>, AppError> {
    let started = named.engine.start_promotion(&named.id).await?;
    Ok(Json(named.changed(started).await?.into()))
}

/// `POST /admin/promotions/{id}/stop`: ended from now.
#[utoipa::path(
    post,
    path = "/admin/promotions/{id}/stop",
    tag = "operator",
    operation_id = "stop_promotion",
    summary = "Stop a promotion now",
    description = "It has ended from now. Idempotent: stopping an ended promotion changes \
                   nothing.",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "The promotion's id.",
        pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The promotion, now ended.",
            body = PromotionOf<OperatorPart>),
        (status = 401, description = OPERATOR_UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "`not_found`: no such promotion.", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_WRITE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn stop_promotion(named: NamedPromotion) -> Result<Json<PromotionView>, AppError> {
    let stopped = named.engine.stop_promotion(&named.id).await?;
    Ok(Json(named.changed(stopped).await?.into()))
}

/// `GET /admin/orders/{order_id}`: any shopper's order (the console's look-up by id).
#[utoipa::path(
    get,
    path = "/admin/orders/{order_id}",
    tag = "operator",
    operation_id = "admin_get_order",
    summary = "Any order, by id",
    description = "The same JSON as the shopper's `GET /orders/{order_id}`, for any shopper's \
                   order.",
    security(("admin_key" = [])),
    params(("order_id" = String, Path, description = "The order's id.",
        pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The order.", body = OrderView),
        (status = 401, description = OPERATOR_UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "`not_found`: no such order.", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_READ, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn get_order(
    _: Admin,
    State(state): State<AppState>,
    PathParams(order_id): PathParams<String>,
) -> Result<Json<OrderView>, AppError> {
    let local = state.engine()?.order(&order_id, None).await;
    let order = match (local, state.owner_calls()) {
        (Err(seckill_engine::Error::NotOwner { .. }), Some(owner)) => {
            owner.order(&order_id, None).await?
        }
        (local, _) => local?,
    };
    Ok(Json(order.into()))
}

/// `POST /admin/orders/{order_id}/pay`: idempotent by `payment_ref`; an `amount_cents` that
/// is not the order's is 409 `amount_mismatch`.
#[utoipa::path(
    post,
    path = "/admin/orders/{order_id}/pay",
    tag = "operator",
    operation_id = "pay_order",
    summary = "Confirm an order's payment",
    description = "Idempotent: paying a paid order again with the same `payment_ref` answers \
                   200 and changes nothing.",
    security(("admin_key" = [])),
    params(("order_id" = String, Path, description = "The order's id.",
        pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    request_body = PayBody,
    responses(
        (status = 200, description = "The order, now `paid`.", body = OrderView),
        (status = 400, description = "`invalid_request`: malformed JSON, a missing field, a \
            wrong type or an out-of-range value (the message names the field).",
            body = ErrorBody),
        (status = 401, description = OPERATOR_UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "`not_found`: no such order.", body = ErrorBody),
        (status = 409, description = "`not_payable`: the order is cancelled or expired; \
            `already_paid`: it is paid with another `payment_ref`; `amount_mismatch`: \
            `amount_cents` is not the order's (nothing changed).", body = ErrorBody),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_WRITE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn pay_order(
    _: Admin,
    State(state): State<AppState>,
    PathParams(order_id): PathParams<String>,
    JsonBody(body): JsonBody<PayBody>,
) -> Result<Json<OrderView>, AppError> {
    let amount_cents = body.amount_cents()?;
    let local = state
        .engine()?
        .pay(&order_id, &body.payment_ref, amount_cents)
        .await;
    let order = match (local, state.owner_calls()) {
        // Nothing was done here: the owner decides.
        (Err(seckill_engine::Error::NotOwner { .. }), Some(owner)) => {
            owner
                .pay(&order_id, &body.payment_ref, amount_cents)
                .await?
        }
        (local, _) => local?,
    };
    Ok(Json(order.into()))
}

/// A cluster node as `GET /admin/cluster` shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ClusterNodeView {
    pub node_id: String,
    /// Where the other nodes reach it (`--advertise`).
    pub advertise: String,
    /// The partitions whose lease it holds, ascending.
    pub partitions: Vec<u32>,
    /// When its last heartbeat landed (RFC 3339).
    pub last_seen: String,
}

/// `GET /admin/cluster`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    pub partitions: u32,
    pub nodes: Vec<ClusterNodeView>,
}

/// `GET /admin/cluster` (api.md, "v2: a cluster of nodes"): the partition count and every
/// node with the partitions it holds. 404 off a cluster.
#[utoipa::path(
    get,
    path = "/admin/cluster",
    tag = "operator",
    operation_id = "get_cluster",
    summary = "The cluster's nodes and their partitions",
    description = "Every live node, and every node still holding a partition, with the \
                   partitions whose lease it holds. 404 `not_found` on a server started \
                   without `--cluster`.",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The nodes.", body = ClusterView),
        (status = 401, description = OPERATOR_UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "`not_found`: not a cluster.", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_READ, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn get_cluster(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<ClusterView>, AppError> {
    state.engine()?;
    let Some(owner) = state.owner_calls() else {
        return Err(seckill_engine::Error::NotFound.into());
    };
    let status = owner.status();
    let nodes = status
        .nodes
        .into_iter()
        .map(|node| ClusterNodeView {
            node_id: node.node_id,
            advertise: node.advertise,
            partitions: node.partitions,
            last_seen: crate::views::rfc3339(node.last_seen_ms),
        })
        .collect();
    Ok(Json(ClusterView {
        partitions: status.partitions,
        nodes,
    }))
}
