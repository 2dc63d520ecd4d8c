//! Shopper routes. Order of checks: credential (401), rate limits (429: per client address,
//! then per shopper), then the engine, whose gate refuses banned / not live / sold out / not
//! eligible without a shard round trip; on the token route the human check comes between
//! the gate and the shard.
//!
//! Each handler's `#[utoipa::path]` is its entry in `GET /openapi.json`: the statuses and
//! codes it answers (api.md's, and those of the extractors and layers around it).

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;

use std::net::IpAddr;

use seckill_engine::{Admission, Engine, Error as EngineError, HumanCheck, PurchaseRequest};

use super::created_or_ok;
use super::openapi::{
    INTERNAL, PAYLOAD_TOO_LARGE, RATE_LIMITED, SHOPPER_UNAUTHORIZED, UNAVAILABLE_CATALOG,
    UNAVAILABLE_READ, UNAVAILABLE_WRITE,
};
use crate::auth::{Shopper, ShopperWithClaims};
use crate::client_addr::ClientAddr;
use crate::error::{AppError, ErrorBody};
use crate::extract::{JsonBody, OptionalJsonBody, PathParams};
use crate::human::captcha::CaptchaRefusal;
use crate::limit::LimitedRoute;
use crate::state::AppState;
use crate::views::{
    ChallengeView, OrderView, PromotionList, PromotionOf, PublicPromotionView, PurchaseBody,
    ShopperPart, TokenBody, TokenView,
};

/// `GET /promotions`: upcoming and live promotions.
#[utoipa::path(
    get,
    path = "/promotions",
    tag = "shopper",
    operation_id = "list_promotions",
    summary = "Upcoming and live promotions",
    description = "No credential needed. `remaining` may lag by up to one second.",
    responses(
        (status = 200, description = "The upcoming and live promotions, as shoppers see them.",
            body = PromotionList<PromotionOf<ShopperPart>>),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_CATALOG, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn list_promotions(
    State(state): State<AppState>,
) -> Result<Json<PromotionList<PublicPromotionView>>, AppError> {
    let views = state.engine()?.public_promotions();
    Ok(Json(PromotionList {
        promotions: views.into_iter().map(PublicPromotionView::from).collect(),
    }))
}

/// `GET /promotions/{id}`.
#[utoipa::path(
    get,
    path = "/promotions/{id}",
    tag = "shopper",
    operation_id = "get_promotion",
    summary = "A promotion, as shoppers see it",
    description = "No credential needed. `server_time` is for the shopper's countdown.",
    params(("id" = String, Path, description = "The promotion's id.",
        pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The promotion.", body = PromotionOf<ShopperPart>),
        (status = 404, description = "`not_found`: no such promotion.", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_CATALOG, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn get_promotion(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<PublicPromotionView>, AppError> {
    let view = state.engine()?.public_promotion(&id)?;
    Ok(Json(view.into()))
}

/// `POST /promotions/{id}/items/{sku}/challenge`: a proof-of-work challenge bound to the
/// shopper and the item. Not rate limited: issuing one costs an HMAC, less than refusing.
#[utoipa::path(
    post,
    path = "/promotions/{id}/items/{sku}/challenge",
    tag = "shopper",
    operation_id = "issue_challenge",
    summary = "A proof-of-work challenge",
    description = "For a promotion whose `human_check` is `pow`: the token request then \
                   carries `{\"pow\": {\"challenge\", \"nonce\"}}` such that \
                   SHA-256(challenge + nonce) starts with `difficulty_bits` zero bits. Bound to \
                   the shopper, the promotion and the item; expires; good once.",
    security(("shopper_jwt" = []), ("shopper_header" = [])),
    params(
        ("id" = String, Path, description = "The promotion's id.",
            pattern = "^[A-Za-z0-9_.:-]{1,64}$"),
        ("sku" = String, Path, description = "The item's sku.",
            pattern = "^[A-Za-z0-9_.:-]{1,64}$"),
    ),
    responses(
        (status = 200, description = "The challenge.", body = ChallengeView),
        (status = 401, description = SHOPPER_UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "`not_found`: no such promotion or item.",
            body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_CATALOG, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn issue_challenge(
    Shopper(user_id): Shopper,
    State(state): State<AppState>,
    PathParams((promotion_id, sku)): PathParams<(String, String)>,
) -> Result<Json<ChallengeView>, AppError> {
    let engine = state.engine()?;
    let promotion = engine.public_promotion(&promotion_id)?;
    if !promotion.items.iter().any(|item| item.sku == sku) {
        return Err(EngineError::NotFound.into());
    }
    let challenge = state
        .pow()
        .issue(&user_id, &promotion_id, &sku, engine.now_ms());
    Ok(Json(challenge.into()))
}

/// `POST /promotions/{id}/items/{sku}/token`. After the credential and the rate limits:
/// the gate's refusals and the eligibility rule, then the human check (a captcha is only
/// verified for a request that could get a token), then the shard.
#[utoipa::path(
    post,
    path = "/promotions/{id}/items/{sku}/token",
    tag = "shopper",
    operation_id = "issue_token",
    summary = "A purchase token",
    description = "Bound to the shopper, the promotion and the item; good for one purchase; \
                   expires (60 s by default). Asking again while it is unused answers the same \
                   token. The body is needed only for a promotion with a human check: \
                   `{\"pow\": {...}}` or `{\"captcha\": \"...\"}`.",
    security(("shopper_jwt" = []), ("shopper_header" = [])),
    params(
        ("id" = String, Path, description = "The promotion's id.",
            pattern = "^[A-Za-z0-9_.:-]{1,64}$"),
        ("sku" = String, Path, description = "The item's sku.",
            pattern = "^[A-Za-z0-9_.:-]{1,64}$"),
    ),
    request_body(content = Option<TokenBody>,
        description = "The human check's answer; may be empty when the promotion has none."),
    responses(
        (status = 200, description = "The token.", body = TokenView),
        (status = 400, description = "`invalid_request`: malformed JSON or a wrong type (the \
            message names the field), or a shopper id that is not an identifier.",
            body = ErrorBody),
        (status = 401, description = SHOPPER_UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = "`banned`: the shopper has 3 cancelled or expired orders \
            in this promotion; `not_eligible`: the shopper's claims do not pass the \
            promotion's eligibility rule; `human_check_failed`: the proof of work or captcha \
            answer is missing, wrong, expired or used.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such promotion or item.",
            body = ErrorBody),
        (status = 409, description = "`not_started`, `ended`: the promotion is not live; \
            `sold_out`: no stock left; `limit_exceeded`: the shopper holds the per-user \
            limit; `tokens_exhausted`: `remaining * token_multiplier` tokens are \
            outstanding (one frees its place when it is used or expires).", body = ErrorBody),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 429, description = RATE_LIMITED, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again."))),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = "`unavailable`: nothing was done (the server is \
            starting, the captcha verifier could not be asked, the used-challenge memory is \
            full, the journal failed or the item's shard is down, or the body was still \
            arriving when the request timed out); `overloaded`: nothing was done, the item's \
            shard is busy; `outcome_unknown`: the request timed out after reaching the engine \
            (asking again answers the same token if one was issued). `Retry-After` on \
            `overloaded`, `outcome_unknown` and while starting.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn issue_token(
    ClientAddr(client): ClientAddr,
    shopper: ShopperWithClaims,
    State(state): State<AppState>,
    PathParams((promotion_id, sku)): PathParams<(String, String)>,
    OptionalJsonBody(body): OptionalJsonBody<TokenBody>,
) -> Result<Json<TokenView>, AppError> {
    let user_id = &shopper.user_id;
    state.limits().check_ip(LimitedRoute::Token, client)?;
    state.limits().check(LimitedRoute::Token, user_id)?;
    let engine = state.engine()?;
    let check = match (
        engine.token_precheck(&promotion_id, &sku, user_id, &shopper.claims),
        state.owner_calls(),
    ) {
        // Another node's item: its owner answers the gate's refusals; the human check is
        // verified here (its proof came to this node), and the owner takes the verdict.
        (Err(EngineError::NotOwner { .. }), Some(_)) => engine.guard_of(&promotion_id)?.human_check,
        (check, _) => check?,
    };
    let asked = HumanCheckAsked {
        user_id,
        promotion_id: &promotion_id,
        sku: &sku,
        client,
        now_ms: engine.now_ms(),
    };
    let passed = match check {
        HumanCheck::None => false,
        HumanCheck::Pow => verify_pow(&state, &asked, body.as_ref())?,
        HumanCheck::Captcha => verify_captcha(&state, &asked, body.as_ref()).await?,
    };
    let admission = Admission {
        claims: &shopper.claims,
        human_check_passed: passed,
    };
    let local = engine
        .issue_token_admitted(&promotion_id, &sku, user_id, admission)
        .await;
    let grant = match (local, state.owner_calls()) {
        // Nothing was done here: the owner decides (it re-runs the gate's refusals).
        (Err(EngineError::NotOwner { .. }), Some(owner)) => {
            let claim = Engine::claim_for(&engine.guard_of(&promotion_id)?, &shopper.claims);
            owner
                .issue_token(&promotion_id, &sku, user_id, claim, passed)
                .await?
        }
        (local, _) => local?,
    };
    Ok(Json(grant.into()))
}

/// Who asks for a token, for the human checks.
struct HumanCheckAsked<'a> {
    user_id: &'a str,
    promotion_id: &'a str,
    sku: &'a str,
    client: IpAddr,
    now_ms: i64,
}

/// True when the body carries a solved, unexpired, unused challenge for this shopper and
/// item; a refusal otherwise (403, or 503 when the used-challenge memory is full).
fn verify_pow(
    state: &AppState,
    asked: &HumanCheckAsked<'_>,
    body: Option<&TokenBody>,
) -> Result<bool, AppError> {
    let Some(answer) = body.and_then(|b| b.pow.as_ref()) else {
        return Err(EngineError::HumanCheckFailed.into());
    };
    let verified = state.pow().verify(
        asked.user_id,
        asked.promotion_id,
        asked.sku,
        &answer.challenge,
        &answer.nonce,
        asked.now_ms,
    );
    match verified {
        Ok(()) => Ok(true),
        Err(refusal) if refusal.is_busy() => {
            Err(EngineError::Unavailable(refusal.to_string()).into())
        }
        Err(_) => Err(EngineError::HumanCheckFailed.into()),
    }
}

/// True when the captcha verifier accepts the body's answer; 403 when it refuses, 503 when
/// it cannot be asked (the check fails closed).
async fn verify_captcha(
    state: &AppState,
    asked: &HumanCheckAsked<'_>,
    body: Option<&TokenBody>,
) -> Result<bool, AppError> {
    let Some(verifier) = state.captcha() else {
        return Err(EngineError::Unavailable(
            "the promotion asks for a captcha and no verifier is configured \
             (--captcha-verify-url, --captcha-secret)"
                .into(),
        )
        .into());
    };
    let Some(response) = body.and_then(|b| b.captcha.as_deref()) else {
        return Err(EngineError::HumanCheckFailed.into());
    };
    match verifier.verify(response, Some(asked.client)).await {
        Ok(()) => Ok(true),
        Err(CaptchaRefusal::Failed) => Err(EngineError::HumanCheckFailed.into()),
        Err(CaptchaRefusal::Unreachable(why)) => {
            // The detail (the verifier's address, a DNS or TLS error) is for the log only.
            tracing::debug!(%why, "captcha verifier unavailable");
            Err(EngineError::Unavailable("the captcha verifier could not be asked".into()).into())
        }
    }
}

/// `POST /promotions/{id}/items/{sku}/purchase`: 201 new order, 200 the original order of a
/// repeated `request_id`.
#[utoipa::path(
    post,
    path = "/promotions/{id}/items/{sku}/purchase",
    tag = "shopper",
    operation_id = "purchase",
    summary = "Buy",
    description = "Idempotent by `request_id`: a repeated `request_id` from the same shopper \
                   answers the original order (200), whatever changed since. A new order is \
                   `pending_payment` until paid, cancelled or expired at `pay_before`.",
    security(("shopper_jwt" = []), ("shopper_header" = [])),
    params(
        ("id" = String, Path, description = "The promotion's id.",
            pattern = "^[A-Za-z0-9_.:-]{1,64}$"),
        ("sku" = String, Path, description = "The item's sku.",
            pattern = "^[A-Za-z0-9_.:-]{1,64}$"),
    ),
    request_body = PurchaseBody,
    responses(
        (status = 201, description = "The new order.", body = OrderView),
        (status = 200, description = "The order an earlier purchase with this `request_id` \
            made.", body = OrderView),
        (status = 400, description = "`invalid_request`: malformed JSON, a missing field, a \
            wrong type or an out-of-range value such as a `quantity` over the per-user limit \
            (the message names the field).", body = ErrorBody),
        (status = 401, description = SHOPPER_UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = "`token_invalid`: the token is missing (the promotion \
            requires one), used, expired or not for this purchase; `banned`: the shopper has \
            3 cancelled or expired orders in this promotion; `not_eligible`: the shopper's \
            claims do not pass the promotion's eligibility rule.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such promotion or item.",
            body = ErrorBody),
        (status = 409, description = "`not_started`, `ended`: the promotion is not live; \
            `sold_out`: no stock left; `insufficient_stock`: less left than `quantity`; \
            `limit_exceeded`: this would take the shopper past the per-user limit.",
            body = ErrorBody),
        (status = 413, description = PAYLOAD_TOO_LARGE, body = ErrorBody),
        (status = 429, description = RATE_LIMITED, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again."))),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_WRITE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn purchase(
    ClientAddr(client): ClientAddr,
    shopper: ShopperWithClaims,
    State(state): State<AppState>,
    PathParams((promotion_id, sku)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<PurchaseBody>,
) -> Result<(StatusCode, Json<OrderView>), AppError> {
    state.limits().check_ip(LimitedRoute::Purchase, client)?;
    state
        .limits()
        .check(LimitedRoute::Purchase, &shopper.user_id)?;
    let request = PurchaseRequest {
        request_id: body.request_id,
        quantity: body.quantity.unwrap_or(1),
        token: body.token,
    };
    let engine = state.engine()?;
    let local = engine
        .purchase_admitted(
            &promotion_id,
            &sku,
            &shopper.user_id,
            request.clone(),
            &shopper.claims,
        )
        .await;
    let purchased = match (local, state.owner_calls()) {
        // Nothing was done here: the owner decides.
        (Err(EngineError::NotOwner { .. }), Some(owner)) => {
            let claim = Engine::claim_for(&engine.guard_of(&promotion_id)?, &shopper.claims);
            owner
                .purchase(&promotion_id, &sku, &shopper.user_id, request, claim)
                .await?
        }
        (local, _) => local?,
    };
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
    /// A cluster node's way to the order's owner.
    owner_calls: Option<std::sync::Arc<dyn crate::owner_calls::OwnerCalls>>,
}

impl FromRequestParts<AppState> for ShopperOrder {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Shopper(user) = Shopper::from_request_parts(parts, state).await?;
        let PathParams(id) = PathParams::<String>::from_request_parts(parts, state).await?;
        state.limits().check(LimitedRoute::Orders, &user)?;
        let engine = state.engine()?.clone();
        let owner_calls = state.owner_calls().cloned();
        Ok(ShopperOrder {
            engine,
            user,
            id,
            owner_calls,
        })
    }
}

/// `GET /orders/{order_id}`: only the shopper's own orders (another's is 404).
#[utoipa::path(
    get,
    path = "/orders/{order_id}",
    tag = "shopper",
    operation_id = "get_order",
    summary = "One of the shopper's orders",
    description = "Another shopper's order is 404 `not_found`, as if it did not exist.",
    security(("shopper_jwt" = []), ("shopper_header" = [])),
    params(("order_id" = String, Path, description = "The order's id.",
        pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The order.", body = OrderView),
        (status = 401, description = SHOPPER_UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "`not_found`: no such order of this shopper.",
            body = ErrorBody),
        (status = 429, description = RATE_LIMITED, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again."))),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_READ, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn get_order(asked: ShopperOrder) -> Result<Json<OrderView>, AppError> {
    let local = asked.engine.order(&asked.id, Some(&asked.user)).await;
    let order = match (local, &asked.owner_calls) {
        (Err(EngineError::NotOwner { .. }), Some(owner)) => {
            owner.order(&asked.id, Some(&asked.user)).await?
        }
        (local, _) => local?,
    };
    Ok(Json(order.into()))
}

/// `POST /orders/{order_id}/cancel`: cancelling again answers the order unchanged.
#[utoipa::path(
    post,
    path = "/orders/{order_id}/cancel",
    tag = "shopper",
    operation_id = "cancel_order",
    summary = "Cancel one of the shopper's orders",
    description = "Idempotent: cancelling a cancelled order answers it unchanged. Its stock is \
                   free to buy again.",
    security(("shopper_jwt" = []), ("shopper_header" = [])),
    params(("order_id" = String, Path, description = "The order's id.",
        pattern = "^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The order, now `cancelled`.", body = OrderView),
        (status = 401, description = SHOPPER_UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "`not_found`: no such order of this shopper.",
            body = ErrorBody),
        (status = 409, description = "`not_cancellable`: the order is paid or expired.",
            body = ErrorBody),
        (status = 429, description = RATE_LIMITED, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again."))),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_WRITE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before repeating."))),
    )
)]
pub async fn cancel_order(asked: ShopperOrder) -> Result<Json<OrderView>, AppError> {
    let local = asked.engine.cancel(&asked.id, Some(&asked.user)).await;
    let order = match (local, &asked.owner_calls) {
        (Err(EngineError::NotOwner { .. }), Some(owner)) => {
            owner.cancel(&asked.id, Some(&asked.user)).await?
        }
        (local, _) => local?,
    };
    Ok(Json(order.into()))
}
