//! `GET /openapi.json` against the router and against the contract:
//! - it is OpenAPI 3.1 and documents exactly the router's routes (each with its method), each
//!   route answering on the server; every error answer is an `ErrorBody`; operator routes ask
//!   for the admin key;
//! - every error code api.md names (a backticked snake_case word after a 4xx or 5xx status in
//!   the same clause: a table cell or a sentence, cut at each `;`, which keeps field names
//!   such as "`nbf` is honoured (401 before it); `iat` is allowed" out) is in the document's
//!   `ErrorCode` enum, and each code of a route's row in api.md's tables is in that
//!   operation's description of that status.
//!
//! api.md is read from `docs/api.md` at the workspace root, or from `$SECKILL_API_MD`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use common::{Mode, TestServer, ADMIN_KEY};

/// Every route of the router: (method, path as OpenAPI writes it).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/admin/promotions"),
    ("get", "/admin/promotions"),
    ("get", "/admin/promotions/{id}"),
    ("post", "/admin/promotions/{id}/start"),
    ("post", "/admin/promotions/{id}/stop"),
    ("get", "/admin/promotions/{id}/live"),
    ("get", "/admin/promotions/{id}/report"),
    ("get", "/admin/orders/{order_id}"),
    ("post", "/admin/orders/{order_id}/pay"),
    ("get", "/admin/cluster"),
    ("get", "/promotions"),
    ("get", "/promotions/{id}"),
    ("post", "/promotions/{id}/items/{sku}/challenge"),
    ("post", "/promotions/{id}/items/{sku}/token"),
    ("post", "/promotions/{id}/items/{sku}/purchase"),
    ("get", "/orders/{order_id}"),
    ("post", "/orders/{order_id}/cancel"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/console"),
    ("get", "/console/{file}"),
];

/// Routes whose handler may answer 404 `not_found` with the router's own wording for a
/// path parameter it does not know (an asset name), so only their method is checked.
const PARAMETER_IS_A_FILE: &[&str] = &["/console/{file}"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("http-edge sits in the workspace")
        .to_path_buf()
}

fn api_md() -> String {
    let path = match std::env::var_os("SECKILL_API_MD") {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join("docs/api.md"),
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read api.md at {}: {error}", path.display()))
}

async fn fetch_document(server: &TestServer) -> Value {
    let response = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let bytes = response.bytes().await.expect("body");
    serde_json::from_slice(&bytes).expect("the document is JSON")
}

/// `value`, or what its `$ref` (`#/components/schemas/Name`) points at.
fn resolve<'d>(document: &'d Value, value: &'d Value) -> &'d Value {
    match value["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            let schema = &document["components"]["schemas"][name];
            assert!(!schema.is_null(), "dangling $ref {reference}");
            resolve(document, schema)
        }
        None => value,
    }
}

/// The `code` values the document's `ErrorBody` allows.
fn documented_error_codes(document: &Value) -> BTreeSet<String> {
    let body = &document["components"]["schemas"]["ErrorBody"];
    let detail = resolve(document, &body["properties"]["error"]);
    let code = resolve(document, &detail["properties"]["code"]);
    code["enum"]
        .as_array()
        .expect("ErrorBody's code is an enum")
        .iter()
        .map(|value| value.as_str().expect("codes are strings").to_owned())
        .collect()
}

/// Every (method, path) operation of the document.
fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item")
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect()
}

/// `template` with each `{parameter}` replaced by `x`.
fn concrete(template: &str) -> String {
    let mut path = String::new();
    let mut in_parameter = false;
    for c in template.chars() {
        match c {
            '{' => in_parameter = true,
            '}' => {
                in_parameter = false;
                path.push('x');
            }
            _ if !in_parameter => path.push(c),
            _ => {}
        }
    }
    path
}

/// Asserts that the router has a route for `method template`: the answer is neither the
/// router's 405 nor its "no such route" 404. Bodies are read only for a 404, so a stream
/// (the live route) is never waited on.
async fn assert_routed(server: &TestServer, method: &str, template: &str) {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let response = server
        .client
        .request(method.clone(), server.url(&concrete(template)))
        .bearer_auth(ADMIN_KEY)
        .header("X-User-Id", "openapi-test")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("send");
    let status = response.status();
    assert_ne!(
        status,
        StatusCode::METHOD_NOT_ALLOWED,
        "{method} {template} is documented but not routed"
    );
    if status == StatusCode::NOT_FOUND && !PARAMETER_IS_A_FILE.contains(&template) {
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_ne!(
            body["error"]["message"], "no such route",
            "{method} {template} is documented but not routed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_covers_every_route() {
    let server = TestServer::start(Mode::Header).await;
    let document = fetch_document(&server).await;
    let version = document["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.1"), "openapi {version}");

    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    let documented = documented_operations(&document);
    let missing: Vec<_> = routes.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the document: {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&routes).collect();
    assert!(
        extra.is_empty(),
        "documented operations the router lacks: {extra:?}"
    );
    for (method, path) in ROUTES {
        assert_routed(&server, method, path).await;
    }

    let mut operation_ids = BTreeSet::new();
    for (method, path) in &documented {
        let operation = &document["paths"][path][method];
        let id = operation["operationId"].as_str().expect("an operationId");
        assert!(
            operation_ids.insert(id.to_owned()),
            "operationId {id} twice"
        );
        let responses = operation["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|status| status.starts_with('2')),
            "{method} {path} documents no success"
        );
        for (status, response) in responses {
            match status.parse::<u16>() {
                Ok(code) if code >= 400 => {}
                _ => continue,
            }
            let schema = &response["content"]["application/json"]["schema"];
            assert_eq!(
                schema["$ref"], "#/components/schemas/ErrorBody",
                "{method} {path} {status} is not an ErrorBody"
            );
        }
        if path.starts_with("/admin/") {
            assert_eq!(
                operation["security"],
                serde_json::json!([{"admin_key": []}]),
                "{method} {path} must ask for the admin key"
            );
        }
    }
    let schemes = &document["components"]["securitySchemes"];
    for scheme in ["admin_key", "shopper_jwt", "shopper_header"] {
        assert!(schemes[scheme].is_object(), "security scheme {scheme}");
    }
    server.stop().await.expect("clean stop");
}

/// A backticked word that is an error code's spelling.
fn is_snake_case(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_lowercase())
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !word.ends_with('_')
        && !word.contains("__")
}

/// What matters in api.md's text for its codes, in order.
#[derive(Debug, Clone, Copy)]
enum Piece<'t> {
    /// A run of digits outside backticks.
    Number(&'t str),
    /// The text between a pair of backticks.
    Quoted(&'t str),
}

impl<'t> Piece<'t> {
    /// An error status (4xx or 5xx).
    fn error_status(self) -> Option<&'t str> {
        match self {
            Piece::Number(n) if n.len() == 3 && (n.starts_with('4') || n.starts_with('5')) => {
                Some(n)
            }
            _ => None,
        }
    }
}

fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    for (index, part) in text.split('`').enumerate() {
        if index % 2 == 1 {
            pieces.push(Piece::Quoted(part));
        } else {
            pieces.extend(
                part.split(|c: char| !c.is_ascii_digit())
                    .filter(|number| !number.is_empty())
                    .map(Piece::Number),
            );
        }
    }
    pieces
}

/// The codes in one clause: every backticked snake_case word after an error status.
fn codes_in(text: &str) -> Vec<String> {
    let mut after_status = false;
    let mut codes = Vec::new();
    for piece in pieces(text) {
        if piece.error_status().is_some() {
            after_status = true;
        } else if let Piece::Quoted(word) = piece {
            if after_status && is_snake_case(word) {
                codes.push(word.to_owned());
            }
        }
    }
    codes
}

/// The cells of a table row, or None for a line that is not one.
fn table_cells(line: &str) -> Option<Vec<&str>> {
    let row = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    Some(row.split('|').map(str::trim).collect())
}

/// The clauses of api.md's prose (outside tables and code blocks): sentences cut at each
/// `;`, each list item and paragraph joined across its wrapped lines first.
fn prose_clauses(markdown: &str) -> Vec<String> {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut in_code = false;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_code = !in_code;
        }
        let breaks = in_code
            || trimmed.is_empty()
            || trimmed.starts_with("```")
            || trimmed.starts_with('|')
            || trimmed.starts_with('#')
            || trimmed.starts_with("- ");
        if breaks && !current.is_empty() {
            paragraphs.push(std::mem::take(&mut current));
        }
        if in_code
            || trimmed.starts_with("```")
            || trimmed.starts_with('|')
            || trimmed.starts_with('#')
        {
            continue;
        }
        if !trimmed.is_empty() {
            current.push(' ');
            current.push_str(trimmed);
        }
    }
    paragraphs.push(current);
    paragraphs
        .iter()
        .flat_map(|paragraph| paragraph.split(". "))
        .flat_map(|sentence| sentence.split(';'))
        .map(str::to_owned)
        .collect()
}

/// A route's row of api.md's tables: its method and path, and its errors cell split into
/// `(status, codes)` parts.
struct RouteRow {
    method: String,
    path: String,
    errors: Vec<(String, Vec<String>)>,
}

fn route_row(cells: &[&str]) -> Option<RouteRow> {
    let route = cells.first()?.strip_prefix('`')?;
    let route = &route[..route.find('`')?];
    let (method, path) = route.split_once(' ')?;
    if !["GET", "POST"].contains(&method) {
        return None;
    }
    let errors = cells
        .get(2)
        .map(|cell| {
            cell.split(';')
                .filter_map(|part| {
                    let status = pieces(part).into_iter().find_map(Piece::error_status)?;
                    Some((status.to_owned(), codes_in(part)))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(RouteRow {
        method: method.to_lowercase(),
        path: path.to_owned(),
        errors,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_of_api_md_is_documented() {
    let markdown = api_md();
    let mut rows = Vec::new();
    let mut codes = BTreeSet::new();
    for line in markdown.lines() {
        if let Some(cells) = table_cells(line) {
            for clause in cells.iter().flat_map(|cell| cell.split(';')) {
                codes.extend(codes_in(clause));
            }
            rows.extend(route_row(&cells));
        }
    }
    for clause in prose_clauses(&markdown) {
        codes.extend(codes_in(&clause));
    }
    println!("error codes in api.md: {codes:?}");
    for expected in [
        "invalid_request",
        "unauthorized",
        "sold_out",
        "outcome_unknown",
    ] {
        assert!(codes.contains(expected), "api.md parsing missed {expected}");
    }
    assert!(
        rows.len() >= 12,
        "api.md parsing found {} route rows",
        rows.len()
    );

    let server = TestServer::start(Mode::Header).await;
    let document = fetch_document(&server).await;
    let documented = documented_error_codes(&document);
    let undocumented: Vec<&String> = codes.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "codes of api.md missing from ErrorBody's enum: {undocumented:?}"
    );

    for row in &rows {
        let operation = &document["paths"][&row.path][&row.method];
        assert!(
            operation.is_object(),
            "{} {} is not documented",
            row.method,
            row.path
        );
        for (status, codes) in &row.errors {
            let response = &operation["responses"][status];
            assert!(
                response.is_object(),
                "{} {} does not document {status}",
                row.method,
                row.path
            );
            let description = response["description"].as_str().unwrap_or_default();
            for code in codes {
                assert!(
                    description.contains(&format!("`{code}`")),
                    "{} {} {status} does not name `{code}`: {description}",
                    row.method,
                    row.path
                );
            }
        }
    }
    server.stop().await.expect("clean stop");
}
