//! Shopper routes. Order of checks: credential (401), rate limits (429: per client address,
//! then per shopper), then the engine, whose gate refuses banned / not live / sold out / not
//! eligible without a shard round trip; on the token route the human check comes between
//! the gate and the shard.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;

use std::net::IpAddr;

use seckill_engine::{Admission, Engine, Error as EngineError, HumanCheck, PurchaseRequest};

use super::created_or_ok;
use crate::auth::{Shopper, ShopperWithClaims};
use crate::client_addr::ClientAddr;
use crate::error::AppError;
use crate::extract::{JsonBody, OptionalJsonBody, PathParams};
use crate::human::captcha::CaptchaRefusal;
use crate::limit::LimitedRoute;
use crate::state::AppState;
use crate::views::{
    ChallengeView, OrderView, PromotionList, PublicPromotionView, PurchaseBody, TokenBody,
    TokenView,
};

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

/// `POST /promotions/{id}/items/{sku}/challenge`: a proof-of-work challenge bound to the
/// shopper and the item. Not rate limited: issuing one costs an HMAC, less than refusing.
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
    let check = engine.token_precheck(&promotion_id, &sku, user_id, &shopper.claims)?;
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
    let grant = engine
        .issue_token_admitted(&promotion_id, &sku, user_id, admission)
        .await?;
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
    let purchased = state
        .engine()?
        .purchase_admitted(
            &promotion_id,
            &sku,
            &shopper.user_id,
            request,
            &shopper.claims,
        )
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
