//! seckill-baseline: the flash-sale design most shops run today, for a fair side-by-side
//! with seckill (`seckill-load compare` starts its binary, `seckill-baseline`).
//!
//! An axum server (the same HTTP stack as seckill) with the routes `flash-100` and `hot-sku`
//! need: create / start / read a promotion, token, purchase, read an order. The stock lives
//! in Redis and every decision is one Lua script, atomic on the Redis thread:
//! - token: sold-out check, per-user check, token budget (`stock * token_multiplier`);
//! - purchase: idempotency key, token check, buyer (per-user limit) check, stock check,
//!   decrement, order record, and a queue entry for the shop's asynchronous DB writer.
//!
//! Durability is Redis's own: with `appendfsync always` every write is in the AOF before
//! Redis replies; without persistence, a crash loses everything. Pay and cancel are not
//! implemented: the compared scenarios leave orders pending.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use redis::aio::MultiplexedConnection;
use redis::{Script, ScriptInvocation};
use seckill_engine::is_valid_id;
use serde::Deserialize;
use serde_json::{json, Value};

/// Lifetime of a purchase token (api.md default).
const TOKEN_TTL_S: u64 = 60;

/// The token gate. KEYS: stock, tokens issued, buyers hash, this user's token.
/// ARGV: user, token budget, per-user limit, new token, ttl seconds.
pub const TOKEN_LUA: &str = r#"
local existing = redis.call('GET', KEYS[4])
if existing then return {'ok', existing} end
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
if stock <= 0 then return {'err', 'sold_out'} end
local bought = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if bought >= tonumber(ARGV[3]) then return {'err', 'limit_exceeded'} end
local issued = redis.call('INCR', KEYS[2])
if issued > tonumber(ARGV[2]) then
  redis.call('DECR', KEYS[2])
  return {'err', 'tokens_exhausted'}
end
redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[5])
return {'ok', ARGV[4]}
"#;

/// The purchase: buyer check, stock check, decrement, order. KEYS: stock, buyers hash,
/// this user's token, idempotency key, order sequence, writer queue. ARGV: user, quantity,
/// per-user limit, token ('' when not required), order key prefix, order id prefix,
/// promotion id, sku, price cents, created_at, pay_before.
pub const PURCHASE_LUA: &str = r#"
local dup = redis.call('GET', KEYS[4])
if dup then return {'dup', redis.call('GET', ARGV[5] .. dup)} end
if ARGV[4] ~= '' then
  local token = redis.call('GET', KEYS[3])
  if token ~= ARGV[4] then return {'err', 'token_invalid'} end
end
local quantity = tonumber(ARGV[2])
local bought = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if bought + quantity > tonumber(ARGV[3]) then return {'err', 'limit_exceeded'} end
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
if stock <= 0 then return {'err', 'sold_out'} end
if stock < quantity then return {'err', 'insufficient_stock'} end
redis.call('DECRBY', KEYS[1], quantity)
redis.call('HINCRBY', KEYS[2], ARGV[1], quantity)
if ARGV[4] ~= '' then redis.call('DEL', KEYS[3]) end
local n = redis.call('INCR', KEYS[5])
local price = tonumber(ARGV[9])
local order = cjson.encode({order_id = ARGV[6] .. n, promotion_id = ARGV[7], sku = ARGV[8],
  user_id = ARGV[1], quantity = quantity, price_cents = price, amount_cents = price * quantity,
  status = 'pending_payment', created_at = ARGV[10], pay_before = ARGV[11]})
redis.call('SET', ARGV[5] .. n, order)
redis.call('SET', KEYS[4], n)
redis.call('RPUSH', KEYS[6], ARGV[6] .. n)
return {'ok', order}
"#;

/// Where the baseline finds Redis unless told otherwise.
pub const REDIS_URL_DEFAULT: &str = "redis://127.0.0.1:6379";

/// The key prefix of everything one promotion owns (cleanup: `SCAN MATCH bl:<id>:*`).
pub fn key_prefix(promotion_id: &str) -> String {
    format!("bl:{promotion_id}:")
}

#[derive(Debug, Clone)]
struct Item {
    stock: u64,
    price_cents: i64,
    per_user_limit: u32,
}

#[derive(Debug)]
struct Promotion {
    id: String,
    require_token: bool,
    token_multiplier: u32,
    payment_timeout_s: u32,
    body: Value,
    items: HashMap<String, Item>,
}

/// Shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    redis: MultiplexedConnection,
    admin_key: Arc<str>,
    /// Promotion configs, cached in the app server as a classic design does.
    promotions: Arc<RwLock<HashMap<String, Arc<Promotion>>>>,
    token_script: Arc<Script>,
    purchase_script: Arc<Script>,
}

impl AppState {
    pub fn new(redis: MultiplexedConnection, admin_key: &str) -> AppState {
        AppState {
            redis,
            admin_key: Arc::from(admin_key),
            promotions: Arc::new(RwLock::new(HashMap::new())),
            token_script: Arc::new(Script::new(TOKEN_LUA)),
            purchase_script: Arc::new(Script::new(PURCHASE_LUA)),
        }
    }

    fn promotion(&self, id: &str) -> Option<Arc<Promotion>> {
        self.promotions
            .read()
            .ok()
            .and_then(|map| map.get(id).cloned())
    }
}

/// An api.md error answer.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found")
    }

    fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing credential",
        )
    }

    fn invalid(field: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("invalid {field}"),
        )
    }

    /// A refusal code returned by a Lua script.
    fn refusal(code: &str) -> ApiError {
        let (status, code) = match code {
            "sold_out" => (StatusCode::CONFLICT, "sold_out"),
            "limit_exceeded" => (StatusCode::CONFLICT, "limit_exceeded"),
            "tokens_exhausted" => (StatusCode::CONFLICT, "tokens_exhausted"),
            "insufficient_stock" => (StatusCode::CONFLICT, "insufficient_stock"),
            "token_invalid" => (StatusCode::FORBIDDEN, "token_invalid"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        ApiError::new(status, code, code.replace('_', " "))
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(error: redis::RedisError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("redis: {error}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// The router; tests and the binary share it.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(|| async { StatusCode::OK }))
        .route("/admin/promotions", post(create_promotion))
        .route("/admin/promotions/{id}", get(promotion_stats))
        .route("/admin/promotions/{id}/start", post(start_promotion))
        .route("/promotions/{id}/items/{sku}/token", post(issue_token))
        .route("/promotions/{id}/items/{sku}/purchase", post(purchase))
        .route("/orders/{order_id}", get(read_order))
        .with_state(state)
}

fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let expected = format!("Bearer {}", state.admin_key);
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(value) if value == expected => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

fn shopper(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get("x-user-id").and_then(|v| v.to_str().ok()) {
        Some(user) if is_valid_id(user) => Ok(user.to_owned()),
        _ => Err(ApiError::unauthorized()),
    }
}

fn now_rfc3339(offset_s: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_s))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct CreateItem {
    sku: String,
    stock: u64,
    #[serde(default)]
    price_cents: i64,
    #[serde(default = "one")]
    per_user_limit: u32,
}

#[derive(Debug, Deserialize)]
struct CreatePromotion {
    id: Option<String>,
    #[serde(default = "default_timeout")]
    payment_timeout_s: u32,
    #[serde(default = "yes")]
    require_token: bool,
    #[serde(default = "five")]
    token_multiplier: u32,
    items: Vec<CreateItem>,
}

fn one() -> u32 {
    1
}
fn five() -> u32 {
    5
}
fn yes() -> bool {
    true
}
fn default_timeout() -> u32 {
    900
}

async fn create_promotion(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> ApiResult {
    require_admin(&state, &headers)?;
    let request: CreatePromotion =
        serde_json::from_value(body.clone()).map_err(|_| ApiError::invalid("body"))?;
    let id = request
        .id
        .clone()
        .unwrap_or_else(|| format!("bl{:08x}", rand::rng().random::<u32>()));
    if !is_valid_id(&id) {
        return Err(ApiError::invalid("id"));
    }
    if request.items.is_empty() || request.items.len() > 1000 {
        return Err(ApiError::invalid("items"));
    }
    let prefix = key_prefix(&id);
    let mut items = HashMap::new();
    let mut pipe = redis::pipe();
    for item in &request.items {
        if !is_valid_id(&item.sku) || item.per_user_limit == 0 {
            return Err(ApiError::invalid("items.sku"));
        }
        pipe.set(format!("{prefix}stock:{}", item.sku), item.stock)
            .ignore();
        pipe.set(format!("{prefix}tokens:{}", item.sku), 0).ignore();
        items.insert(
            item.sku.clone(),
            Item {
                stock: item.stock,
                price_cents: item.price_cents,
                per_user_limit: item.per_user_limit,
            },
        );
    }
    if state.promotion(&id).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_exists",
            "promotion exists",
        ));
    }
    let mut redis = state.redis.clone();
    pipe.query_async::<()>(&mut redis).await?;
    let mut body = body;
    body["id"] = json!(id);
    let promotion = Arc::new(Promotion {
        id: id.clone(),
        require_token: request.require_token,
        token_multiplier: request.token_multiplier,
        payment_timeout_s: request.payment_timeout_s,
        body: body.clone(),
        items,
    });
    if let Ok(mut map) = state.promotions.write() {
        map.insert(id, promotion);
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The promotion an operator route (`/admin/promotions/{id}...`) names, once the admin key
/// is checked.
struct AdminPromotion(Arc<Promotion>);

impl FromRequestParts<AppState> for AdminPromotion {
    /// axum's own answer to a path it cannot read, else the API's error.
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        require_admin(state, &parts.headers).map_err(IntoResponse::into_response)?;
        match state.promotion(&id) {
            Some(promotion) => Ok(AdminPromotion(promotion)),
            None => Err(ApiError::not_found().into_response()),
        }
    }
}

async fn start_promotion(AdminPromotion(promotion): AdminPromotion) -> ApiResult {
    Ok((StatusCode::OK, Json(promotion.body.clone())).into_response())
}

async fn promotion_stats(
    State(state): State<AppState>,
    AdminPromotion(promotion): AdminPromotion,
) -> ApiResult {
    let prefix = key_prefix(&promotion.id);
    let mut redis = state.redis.clone();
    let mut items = Vec::new();
    for (sku, item) in &promotion.items {
        let (remaining, tokens): (Option<i64>, Option<u64>) = redis::pipe()
            .get(format!("{prefix}stock:{sku}"))
            .get(format!("{prefix}tokens:{sku}"))
            .query_async(&mut redis)
            .await?;
        let remaining = remaining.unwrap_or(0).max(0) as u64;
        items.push(json!({
            "sku": sku,
            "stock": item.stock,
            "remaining": remaining,
            "reserved": item.stock.saturating_sub(remaining),
            "sold": 0,
            "tokens_issued": tokens.unwrap_or(0),
            "per_user_limit": item.per_user_limit,
            "price_cents": item.price_cents,
        }));
    }
    let mut body = promotion.body.clone();
    body["items"] = json!(items);
    Ok((StatusCode::OK, Json(body)).into_response())
}

fn find_item(state: &AppState, id: &str, sku: &str) -> Result<(Arc<Promotion>, Item), ApiError> {
    let promotion = state.promotion(id).ok_or_else(ApiError::not_found)?;
    let item = promotion
        .items
        .get(sku)
        .cloned()
        .ok_or_else(ApiError::not_found)?;
    Ok((promotion, item))
}

/// Runs a prepared Lua script on a clone of the shared connection; every script answers
/// `{outcome, value}`.
async fn run_script(
    state: &AppState,
    script: &ScriptInvocation<'_>,
) -> Result<(String, String), ApiError> {
    let mut redis = state.redis.clone();
    Ok(script.invoke_async(&mut redis).await?)
}

async fn issue_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, sku)): Path<(String, String)>,
) -> ApiResult {
    let user = shopper(&headers)?;
    let (promotion, item) = find_item(&state, &id, &sku)?;
    let prefix = key_prefix(&promotion.id);
    let token = format!("{:032x}", rand::rng().random::<u128>());
    let budget = item
        .stock
        .saturating_mul(u64::from(promotion.token_multiplier));
    let mut script = state.token_script.prepare_invoke();
    script
        .key(format!("{prefix}stock:{sku}"))
        .key(format!("{prefix}tokens:{sku}"))
        .key(format!("{prefix}buyers:{sku}"))
        .key(format!("{prefix}tok:{sku}:{user}"))
        .arg(&user)
        .arg(budget)
        .arg(item.per_user_limit)
        .arg(&token)
        .arg(TOKEN_TTL_S);
    let (outcome, value) = run_script(&state, &script).await?;
    if outcome != "ok" {
        return Err(ApiError::refusal(&value));
    }
    let body = json!({"token": value, "expires_at": now_rfc3339(TOKEN_TTL_S as i64)});
    Ok((StatusCode::OK, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
struct PurchaseBody {
    request_id: String,
    #[serde(default = "one")]
    quantity: u32,
    #[serde(default)]
    token: Option<String>,
}

async fn purchase(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, sku)): Path<(String, String)>,
    body: Result<Json<PurchaseBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let user = shopper(&headers)?;
    let Json(body) = body.map_err(|_| ApiError::invalid("body"))?;
    let (promotion, item) = find_item(&state, &id, &sku)?;
    if !is_valid_id(&body.request_id) {
        return Err(ApiError::invalid("request_id"));
    }
    if body.quantity == 0 || body.quantity > item.per_user_limit {
        return Err(ApiError::invalid("quantity"));
    }
    let token = match (promotion.require_token, body.token) {
        (true, None) => return Err(ApiError::refusal("token_invalid")),
        (true, Some(token)) => token,
        (false, _) => String::new(),
    };
    let prefix = key_prefix(&promotion.id);
    let mut script = state.purchase_script.prepare_invoke();
    script
        .key(format!("{prefix}stock:{sku}"))
        .key(format!("{prefix}buyers:{sku}"))
        .key(format!("{prefix}tok:{sku}:{user}"))
        .key(format!("{prefix}req:{user}:{}", body.request_id))
        .key(format!("{prefix}seq"))
        .key(format!("{prefix}queue"))
        .arg(&user)
        .arg(body.quantity)
        .arg(item.per_user_limit)
        .arg(&token)
        .arg(format!("{prefix}order:"))
        .arg(format!("{}:", promotion.id))
        .arg(&promotion.id)
        .arg(&sku)
        .arg(item.price_cents)
        .arg(now_rfc3339(0))
        .arg(now_rfc3339(i64::from(promotion.payment_timeout_s)));
    let (outcome, value) = run_script(&state, &script).await?;
    let status = match outcome.as_str() {
        "ok" => StatusCode::CREATED,
        "dup" => StatusCode::OK,
        _ => return Err(ApiError::refusal(&value)),
    };
    Ok((status, [("content-type", "application/json")], value).into_response())
}

async fn read_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(order_id): Path<String>,
) -> ApiResult {
    let user = shopper(&headers)?;
    let (promotion_id, number) = order_id.rsplit_once(':').ok_or_else(ApiError::not_found)?;
    let key = format!("{}order:{number}", key_prefix(promotion_id));
    let mut redis = state.redis.clone();
    let stored: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
    let order: Value = stored
        .and_then(|text| serde_json::from_str(&text).ok())
        .ok_or_else(ApiError::not_found)?;
    if order.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
        return Err(ApiError::not_found());
    }
    Ok((StatusCode::OK, Json(order)).into_response())
}

/// Deletes every key of a baseline promotion (compare runs clean up after themselves).
pub async fn delete_promotion_keys(
    redis: &mut MultiplexedConnection,
    promotion_id: &str,
) -> redis::RedisResult<u64> {
    let pattern = format!("{}*", key_prefix(promotion_id));
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(redis)
            .await?;
        if !keys.is_empty() {
            deleted += redis::cmd("DEL")
                .arg(&keys)
                .query_async::<u64>(redis)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
