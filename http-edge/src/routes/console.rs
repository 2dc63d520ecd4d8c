//! `GET /console`: the operator console, a web page the binary serves itself (api.md, "v2: for
//! operators"). The page and its assets (http-edge/console/) are embedded at build time, so
//! the binary needs no file beside it and the page loads nothing from any other server.
//!
//! Loading the page needs no credential: it holds no data. Every API call it makes carries
//! the admin key the operator types in, which stays in the tab's `sessionStorage`.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::openapi::INTERNAL;
use crate::error::{AppError, ErrorBody};
use crate::extract::PathParams;

/// Only the console's own scripts run and it only talks to this server. uPlot (the charts)
/// sets inline styles on the elements it makes, hence `'unsafe-inline'` for styles only;
/// `data:` images for the empty favicon.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:";

/// One embedded file of the console, served at `/console/{name}`.
#[derive(Debug)]
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX_HTML: &str = include_str!("../../console/index.html");

/// The console's assets. Flat names: `{file}` matches one path segment, so the vendored
/// files are served without their `vendor/` folder.
const ASSETS: &[Asset] = &[
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../console/console.css"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/vendor/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../console/vendor/uPlot.min.css"),
    },
    // uPlot's MIT licence asks for its notice in every copy; the binary is one.
    Asset {
        name: "uPlot.LICENSE.txt",
        content_type: "text/plain; charset=utf-8",
        body: include_str!("../../console/vendor/LICENSE"),
    },
];

/// `GET /console`: the page.
#[utoipa::path(
    get,
    path = "/console",
    tag = "operations",
    operation_id = "console_page",
    summary = "The operator console",
    description = "A web page served by the server itself: sign in with the admin key; list, \
                   create, start and stop promotions; watch a sale live; read its report; look \
                   up an order. No credential needed to load it; every call it makes carries \
                   the admin key.",
    responses(
        (status = 200, description = "The console's HTML page, under a strict \
            Content-Security-Policy (its own scripts only).",
            body = String, content_type = "text/html"),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = "`unavailable`: the request timed out.", body = ErrorBody),
    )
)]
pub async fn console_page() -> Response {
    page_response()
}

/// `GET /console/{file}`: one of the page's scripts and styles.
#[utoipa::path(
    get,
    path = "/console/{file}",
    tag = "operations",
    operation_id = "console_asset",
    summary = "A script or style of the operator console",
    params(("file" = String, Path, description = "The asset's name, e.g. `console.js`.")),
    responses(
        (status = 200, description = "The asset: the console's scripts and styles and the \
            chart library's.",
            content(
                (String = "text/javascript"),
                (String = "text/css"),
                (String = "text/plain")
            )),
        (status = 404, description = "`not_found`: no asset of that name.", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = "`unavailable`: the request timed out.", body = ErrorBody),
    )
)]
pub async fn console_asset(PathParams(file): PathParams<String>) -> Response {
    asset_response(&file)
}

fn page_response() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            // An operator's page is never framed by another site (clickjacking).
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// The asset called `name`, or the API's JSON 404.
fn asset_response(name: &str) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                // Revalidated each time: a new binary may bring new assets under the same name.
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            asset.body,
        )
            .into_response(),
        None => AppError::RouteNotFound.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn header_of(response: &Response, name: header::HeaderName) -> Option<&str> {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    async fn body_of(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("an embedded body reads");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn the_page_is_html_under_the_policy() {
        let response = console_page().await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header_of(&response, header::CONTENT_TYPE),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            header_of(&response, header::CONTENT_SECURITY_POLICY),
            Some(CONTENT_SECURITY_POLICY)
        );
        assert_eq!(
            header_of(&response, header::CACHE_CONTROL),
            Some("no-cache")
        );
        assert_eq!(
            header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
            Some("nosniff")
        );
        let html = body_of(response).await;
        assert!(html.contains("<title>seckill console</title>"));
        // The policy forbids inline scripts: the page must not rely on any.
        assert!(!html.contains("<script>"), "inline script in index.html");
        assert!(!html.contains(" onclick="), "inline handler in index.html");
    }

    #[tokio::test]
    async fn every_asset_the_page_names_is_served_with_its_type() {
        for (name, content_type) in [
            ("console.js", "text/javascript; charset=utf-8"),
            ("console.css", "text/css; charset=utf-8"),
            ("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
            ("uPlot.min.css", "text/css; charset=utf-8"),
            ("uPlot.LICENSE.txt", "text/plain; charset=utf-8"),
        ] {
            let response = console_asset(PathParams(name.to_owned())).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert_eq!(
                header_of(&response, header::CONTENT_TYPE),
                Some(content_type),
                "{name}"
            );
            assert_eq!(
                header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
                Some("nosniff"),
                "{name}"
            );
            assert!(!body_of(response).await.is_empty(), "{name} is empty");
        }
        for asset in ASSETS {
            assert!(
                INDEX_HTML.contains(&format!("console/{}", asset.name))
                    || asset.name.ends_with(".txt"),
                "index.html does not load {}",
                asset.name
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_asset_is_the_apis_404() {
        for name in ["nope.js", "index.html", "..", "vendor", "console.js.map"] {
            let response = console_asset(PathParams(name.to_owned())).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{name}");
            assert_eq!(
                header_of(&response, header::CONTENT_TYPE),
                Some("application/json"),
                "{name}"
            );
            let body: serde_json::Value =
                serde_json::from_str(&body_of(response).await).expect("JSON");
            assert_eq!(body["error"]["code"], "not_found", "{name}");
        }
    }
}
