//! `GET /openapi.json`: the OpenAPI 3.1 document of the contract (api.md), derived from the
//! handlers' `#[utoipa::path]` attributes and the views' `ToSchema` derives, so it is written
//! next to the code that answers and cannot name a route, field or code that code lacks.
//!
//! Also the response descriptions the operations share: `#[utoipa::path]` takes an expression
//! for a description, so each wording lives here once.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::Components;
use utoipa::{Modify, OpenApi};

use crate::error::AppError;

/// 401 on operator routes.
pub(super) const OPERATOR_UNAUTHORIZED: &str =
    "`unauthorized`: the `Authorization: Bearer <admin key>` header is missing or wrong.";

/// 401 on shopper routes.
pub(super) const SHOPPER_UNAUTHORIZED: &str =
    "`unauthorized`: the shopper's credential is missing, malformed, wrongly signed or expired \
     (`Authorization: Bearer <JWT>` with `--auth jwt`, `X-User-Id` with `--auth header`).";

/// 413 on routes with a body.
pub(super) const PAYLOAD_TOO_LARGE: &str = "`payload_too_large`: the body is over 64 KiB.";

/// 429 on rate-limited shopper routes.
pub(super) const RATE_LIMITED: &str =
    "`rate_limited`: too many requests from this shopper, or from this client address, on \
     this route; ask again after `Retry-After` seconds.";

/// 500 on any route.
pub(super) const INTERNAL: &str = "`internal`: a bug (the handler panicked); it is logged.";

/// 503 on reads the server answers from its catalog, without asking a shard.
pub(super) const UNAVAILABLE_CATALOG: &str =
    "`unavailable`: the server is starting (recovery from the log has not finished; with \
     `Retry-After`), or the request timed out.";

/// 503 on reads that ask the item's shard.
pub(super) const UNAVAILABLE_READ: &str =
    "`unavailable`: the server is starting (recovery from the log has not finished; with \
     `Retry-After`), the shard is down, or the request timed out; `overloaded`: the shard is \
     busy, ask again shortly (`Retry-After`).";

/// 503 on writes: "not done" and "maybe done" are different codes (api.md, "Writes whose
/// outcome is unknown").
pub(super) const UNAVAILABLE_WRITE: &str =
    "`unavailable`: nothing was done (the server is starting, the journal failed or the \
     shard is down, or the body was still arriving when the request timed out); \
     `overloaded`: nothing was done, the shard is busy; `outcome_unknown`: the write timed \
     out after it reached the engine and may still take effect: repeat the same call to \
     learn its outcome. `Retry-After` on `overloaded`, `outcome_unknown` and while starting.";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "seckill",
        version = env!("CARGO_PKG_VERSION"),
        description = "The seckill flash-sale server's HTTP contract. JSON in and out, UTF-8; \
                       times are RFC 3339 in UTC; money is integer cents; identifiers match \
                       `[A-Za-z0-9_.:-]{1,64}`. Every error answer is an `ErrorBody` whose \
                       `code` is stable."
    ),
    paths(
        super::admin::create_promotion,
        super::admin::list_promotions,
        super::admin::get_promotion,
        super::admin::start_promotion,
        super::admin::stop_promotion,
        super::admin::get_order,
        super::admin::pay_order,
        super::admin::get_cluster,
        crate::routes::live::promotion_live,
        crate::routes::report::promotion_report,
        super::shopper::list_promotions,
        super::shopper::get_promotion,
        super::shopper::issue_challenge,
        super::shopper::issue_token,
        super::shopper::purchase,
        super::shopper::get_order,
        super::shopper::cancel_order,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        openapi_json,
        super::console::console_page,
        super::console::console_asset,
    ),
    components(schemas(super::live::LiveStats, crate::sale_report::ReportView)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "operator", description = "The shop's operators: promotions, their live \
            stats and report, orders and payment confirmation. `Authorization: Bearer <admin \
            key>`."),
        (name = "shopper", description = "Shoppers: promotions, purchase tokens, purchases \
            and their own orders."),
        (name = "operations", description = "Probes, metrics, this document and the \
            operator console."),
    )
)]
#[derive(Debug)]
struct ApiDoc;

/// The security schemes the operations name: the admin key, and the shopper's credential in
/// either `--auth` mode (an operation lists both shopper schemes as alternatives; the server
/// reads the one its mode uses).
#[derive(Debug)]
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Components::default);
        let admin_key = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("The admin key (`--admin-key`)."))
            .build();
        let shopper_jwt = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "With `--auth jwt` (the default): an HS256 JWT signed with the user secret; \
                 `sub` is the user id, `exp` is required, `nbf` is honoured, `aud` and `iss` \
                 must match `--jwt-audience` and `--jwt-issuer` when set.",
            ))
            .build();
        let shopper_header = ApiKeyValue::with_description(
            "X-User-Id",
            "With `--auth header`: the user id, trusted as is (behind the shop's own \
             authenticating gateway). Eligibility claims come in `X-User-Claim-<name>`.",
        );
        components.add_security_scheme("admin_key", SecurityScheme::Http(admin_key));
        components.add_security_scheme("shopper_jwt", SecurityScheme::Http(shopper_jwt));
        components.add_security_scheme(
            "shopper_header",
            SecurityScheme::ApiKey(ApiKey::Header(shopper_header)),
        );
    }
}

/// The document, for tests and tools.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as JSON, built once: it only changes with the binary. `None` if it could not
/// be serialized (a bug; every request then answers 500).
static DOCUMENT_JSON: LazyLock<Option<String>> = LazyLock::new(|| match document().to_json() {
    Ok(json) => Some(json),
    Err(error) => {
        tracing::error!(%error, "the OpenAPI document does not serialize");
        None
    }
});

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi_document",
    summary = "This document",
    description = "The OpenAPI 3.1 document of every route, body, answer and error code, \
                   generated from the server's code. No credential needed.",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", body = Object,
            content_type = "application/json"),
        (status = 500, description = INTERNAL, body = crate::error::ErrorBody),
    )
)]
pub async fn openapi_json() -> Response {
    match DOCUMENT_JSON.as_deref() {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        None => AppError::Internal.into_response(),
    }
}
