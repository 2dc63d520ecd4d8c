//! Table-driven bad input to every route that takes a body (and to path identifiers): each
//! answer has the contract's status and code, the message names the field, and the server
//! keeps serving afterwards.

mod common;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::{assert_error, live_promotion, send, Mode, TestServer};

/// One bad request: where it goes, what it sends, what must come back.
struct Case {
    name: &'static str,
    route: Route,
    body: Body,
    status: u16,
    code: &'static str,
    /// A word the message must contain (the field), when there is one.
    field: Option<&'static str>,
}

#[derive(Clone, Copy)]
enum Route {
    CreatePromotion,
    Purchase,
    Pay,
}

enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

fn valid_promotion() -> Value {
    json!({
        "id": "bad-new",
        "name": "Bad input",
        "starts_at": common::at(-60),
        "ends_at": common::at(3600),
        "items": [{"sku": "bad-new-sku", "stock": 5, "price_cents": 100}]
    })
}

/// The valid promotion with `pointer` set to `value` (or removed when `value` is None).
fn promotion_with(pointer: &str, value: Option<Value>) -> Body {
    let mut body = valid_promotion();
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let target = body.pointer_mut(parent).expect("parent");
    match (target, value) {
        (Value::Object(map), Some(v)) => {
            map.insert(key.to_owned(), v);
        }
        (Value::Object(map), None) => {
            map.remove(key);
        }
        _ => panic!("pointer {pointer} is not in an object"),
    }
    Body::Json(body)
}

fn cases() -> Vec<Case> {
    let long_id = "x".repeat(65);
    let one_mib = {
        // Valid-looking JSON, so only its size is wrong.
        let mut text = String::from("{\"request_id\": \"");
        text.push_str(&"a".repeat(1024 * 1024));
        text.push_str("\"}");
        text.into_bytes()
    };
    let mut cases = vec![
        // --- malformed documents, on every body route
        case(
            "create: not JSON",
            Route::CreatePromotion,
            Body::Raw(b"{not json".to_vec()),
            400,
            "invalid_request",
            Some("body"),
        ),
        case(
            "purchase: not JSON",
            Route::Purchase,
            Body::Raw(b"{\"request_id\": ".to_vec()),
            400,
            "invalid_request",
            Some("body"),
        ),
        case(
            "pay: not JSON",
            Route::Pay,
            Body::Raw(b"payment_ref=1".to_vec()),
            400,
            "invalid_request",
            Some("body"),
        ),
        case(
            "create: empty body",
            Route::CreatePromotion,
            Body::Raw(Vec::new()),
            400,
            "invalid_request",
            Some("body"),
        ),
        case(
            "purchase: empty body",
            Route::Purchase,
            Body::Raw(Vec::new()),
            400,
            "invalid_request",
            Some("body"),
        ),
        case(
            "pay: empty body",
            Route::Pay,
            Body::Raw(Vec::new()),
            400,
            "invalid_request",
            Some("body"),
        ),
        case(
            "create: array",
            Route::CreatePromotion,
            Body::Json(json!([1, 2])),
            400,
            "invalid_request",
            None,
        ),
        case(
            "purchase: null",
            Route::Purchase,
            Body::Json(Value::Null),
            400,
            "invalid_request",
            None,
        ),
        case(
            "pay: trailing garbage",
            Route::Pay,
            Body::Raw(b"{\"payment_ref\": \"p\"} }".to_vec()),
            400,
            "invalid_request",
            Some("body"),
        ),
        case(
            "create: invalid UTF-8",
            Route::CreatePromotion,
            Body::Raw(vec![b'{', 0xff, 0xfe, b'}']),
            400,
            "invalid_request",
            None,
        ),
        // --- missing fields
        case(
            "create: no name",
            Route::CreatePromotion,
            promotion_with("/name", None),
            400,
            "invalid_request",
            Some("name"),
        ),
        case(
            "create: no items",
            Route::CreatePromotion,
            promotion_with("/items", None),
            400,
            "invalid_request",
            Some("items"),
        ),
        case(
            "create: no starts_at",
            Route::CreatePromotion,
            promotion_with("/starts_at", None),
            400,
            "invalid_request",
            Some("starts_at"),
        ),
        case(
            "create: item without sku",
            Route::CreatePromotion,
            promotion_with("/items/0/sku", None),
            400,
            "invalid_request",
            Some("sku"),
        ),
        case(
            "create: item without stock",
            Route::CreatePromotion,
            promotion_with("/items/0/stock", None),
            400,
            "invalid_request",
            Some("stock"),
        ),
        case(
            "purchase: no request_id",
            Route::Purchase,
            Body::Json(json!({"quantity": 1})),
            400,
            "invalid_request",
            Some("request_id"),
        ),
        case(
            "pay: no payment_ref",
            Route::Pay,
            Body::Json(json!({})),
            400,
            "invalid_request",
            Some("payment_ref"),
        ),
        // --- wrong types
        case(
            "create: stock as text",
            Route::CreatePromotion,
            promotion_with("/items/0/stock", Some(json!("ten"))),
            400,
            "invalid_request",
            Some("stock"),
        ),
        case(
            "create: stock fractional",
            Route::CreatePromotion,
            promotion_with("/items/0/stock", Some(json!(1.5))),
            400,
            "invalid_request",
            Some("stock"),
        ),
        case(
            "create: require_token as text",
            Route::CreatePromotion,
            promotion_with("/require_token", Some(json!("yes"))),
            400,
            "invalid_request",
            Some("require_token"),
        ),
        case(
            "create: starts_at as number",
            Route::CreatePromotion,
            promotion_with("/starts_at", Some(json!(1_700_000_000))),
            400,
            "invalid_request",
            Some("starts_at"),
        ),
        case(
            "create: starts_at not a time",
            Route::CreatePromotion,
            promotion_with("/starts_at", Some(json!("tomorrow"))),
            400,
            "invalid_request",
            Some("starts_at"),
        ),
        case(
            "create: items as object",
            Route::CreatePromotion,
            promotion_with("/items", Some(json!({"sku": "a"}))),
            400,
            "invalid_request",
            Some("items"),
        ),
        case(
            "purchase: quantity as text",
            Route::Purchase,
            Body::Json(json!({"request_id": "r", "quantity": "1"})),
            400,
            "invalid_request",
            Some("quantity"),
        ),
        case(
            "purchase: request_id as number",
            Route::Purchase,
            Body::Json(json!({"request_id": 7})),
            400,
            "invalid_request",
            Some("request_id"),
        ),
        case(
            "pay: payment_ref as object",
            Route::Pay,
            Body::Json(json!({"payment_ref": {"a": 1}})),
            400,
            "invalid_request",
            Some("payment_ref"),
        ),
        // --- out of range and huge numbers
        case(
            "create: negative stock",
            Route::CreatePromotion,
            promotion_with("/items/0/stock", Some(json!(-1))),
            400,
            "invalid_request",
            Some("stock"),
        ),
        case(
            "create: stock over 1e9",
            Route::CreatePromotion,
            promotion_with("/items/0/stock", Some(json!(1_000_000_001u64))),
            400,
            "invalid_request",
            Some("stock"),
        ),
        case(
            "create: stock 1e30",
            Route::CreatePromotion,
            Body::Raw(
                valid_promotion()
                    .to_string()
                    .replace("\"stock\":5", "\"stock\":1e30")
                    .into_bytes(),
            ),
            400,
            "invalid_request",
            Some("stock"),
        ),
        case(
            "create: stock 2^64",
            Route::CreatePromotion,
            Body::Raw(
                valid_promotion()
                    .to_string()
                    .replace("\"stock\":5", "\"stock\":18446744073709551616")
                    .into_bytes(),
            ),
            400,
            "invalid_request",
            Some("stock"),
        ),
        case(
            "create: negative price",
            Route::CreatePromotion,
            promotion_with("/items/0/price_cents", Some(json!(-5))),
            400,
            "invalid_request",
            Some("price_cents"),
        ),
        case(
            "create: price 1e20",
            Route::CreatePromotion,
            Body::Raw(
                valid_promotion()
                    .to_string()
                    .replace(
                        "\"price_cents\":100",
                        "\"price_cents\":100000000000000000000",
                    )
                    .into_bytes(),
            ),
            400,
            "invalid_request",
            Some("price_cents"),
        ),
        case(
            "create: per_user_limit 0",
            Route::CreatePromotion,
            promotion_with("/items/0/per_user_limit", Some(json!(0))),
            400,
            "invalid_request",
            Some("per_user_limit"),
        ),
        case(
            "create: payment_timeout_s 9",
            Route::CreatePromotion,
            promotion_with("/payment_timeout_s", Some(json!(9))),
            400,
            "invalid_request",
            Some("payment_timeout_s"),
        ),
        case(
            "create: payment_timeout_s 86401",
            Route::CreatePromotion,
            promotion_with("/payment_timeout_s", Some(json!(86_401))),
            400,
            "invalid_request",
            Some("payment_timeout_s"),
        ),
        case(
            "create: token_multiplier 0",
            Route::CreatePromotion,
            promotion_with("/token_multiplier", Some(json!(0))),
            400,
            "invalid_request",
            Some("token_multiplier"),
        ),
        case(
            "create: token_multiplier 101",
            Route::CreatePromotion,
            promotion_with("/token_multiplier", Some(json!(101))),
            400,
            "invalid_request",
            Some("token_multiplier"),
        ),
        case(
            "create: no items at all",
            Route::CreatePromotion,
            promotion_with("/items", Some(json!([]))),
            400,
            "invalid_request",
            Some("items"),
        ),
        case(
            "create: ends before start",
            Route::CreatePromotion,
            promotion_with("/ends_at", Some(json!(common::at(-3600)))),
            400,
            "invalid_request",
            Some("ends_at"),
        ),
        case(
            "create: year 10000",
            Route::CreatePromotion,
            promotion_with("/ends_at", Some(json!("10000-01-01T00:00:00Z"))),
            400,
            "invalid_request",
            Some("ends_at"),
        ),
        case(
            "purchase: quantity 0",
            Route::Purchase,
            Body::Json(json!({"request_id": "r", "quantity": 0})),
            400,
            "invalid_request",
            Some("quantity"),
        ),
        case(
            "purchase: quantity -1",
            Route::Purchase,
            Body::Json(json!({"request_id": "r", "quantity": -1})),
            400,
            "invalid_request",
            Some("quantity"),
        ),
        case(
            "purchase: quantity 2^32",
            Route::Purchase,
            Body::Json(json!({"request_id": "r", "quantity": 4_294_967_296u64})),
            400,
            "invalid_request",
            Some("quantity"),
        ),
        case(
            "purchase: quantity over the limit",
            Route::Purchase,
            Body::Json(json!({"request_id": "r", "quantity": 2})),
            400,
            "invalid_request",
            Some("quantity"),
        ),
        // --- identifiers: over-long and non-ASCII
        case(
            "create: id 65 chars",
            Route::CreatePromotion,
            promotion_with("/id", Some(json!(long_id))),
            400,
            "invalid_request",
            Some("id"),
        ),
        case(
            "create: id non-ASCII",
            Route::CreatePromotion,
            promotion_with("/id", Some(json!("促销-1"))),
            400,
            "invalid_request",
            Some("id"),
        ),
        case(
            "create: id with a space",
            Route::CreatePromotion,
            promotion_with("/id", Some(json!("a b"))),
            400,
            "invalid_request",
            Some("id"),
        ),
        case(
            "create: sku 65 chars",
            Route::CreatePromotion,
            promotion_with("/items/0/sku", Some(json!(long_id))),
            400,
            "invalid_request",
            Some("sku"),
        ),
        case(
            "create: sku non-ASCII",
            Route::CreatePromotion,
            promotion_with("/items/0/sku", Some(json!("ünïcode"))),
            400,
            "invalid_request",
            Some("sku"),
        ),
        case(
            "create: empty name",
            Route::CreatePromotion,
            promotion_with("/name", Some(json!(""))),
            400,
            "invalid_request",
            Some("name"),
        ),
        case(
            "create: huge name",
            Route::CreatePromotion,
            promotion_with("/name", Some(json!("n".repeat(10_000)))),
            400,
            "invalid_request",
            Some("name"),
        ),
        case(
            "purchase: request_id 65 chars",
            Route::Purchase,
            Body::Json(json!({"request_id": long_id})),
            400,
            "invalid_request",
            Some("request_id"),
        ),
        case(
            "purchase: request_id non-ASCII",
            Route::Purchase,
            Body::Json(json!({"request_id": "ré"})),
            400,
            "invalid_request",
            Some("request_id"),
        ),
        case(
            "purchase: token 10 KiB",
            Route::Purchase,
            Body::Json(json!({"request_id": "r", "token": "t".repeat(10_240)})),
            400,
            "invalid_request",
            Some("token"),
        ),
        case(
            "pay: payment_ref 65 chars",
            Route::Pay,
            Body::Json(json!({"payment_ref": long_id})),
            400,
            "invalid_request",
            Some("payment_ref"),
        ),
        case(
            "pay: payment_ref non-ASCII",
            Route::Pay,
            Body::Json(json!({"payment_ref": "支付"})),
            400,
            "invalid_request",
            Some("payment_ref"),
        ),
        case(
            "pay: payment_ref empty",
            Route::Pay,
            Body::Json(json!({"payment_ref": ""})),
            400,
            "invalid_request",
            Some("payment_ref"),
        ),
        case(
            "pay: amount_cents negative",
            Route::Pay,
            Body::Json(json!({"payment_ref": "p", "amount_cents": -1})),
            400,
            "invalid_request",
            Some("amount_cents"),
        ),
        case(
            "pay: amount_cents fractional",
            Route::Pay,
            Body::Json(json!({"payment_ref": "p", "amount_cents": 1.5})),
            400,
            "invalid_request",
            Some("amount_cents"),
        ),
        case(
            "pay: amount_cents as text",
            Route::Pay,
            Body::Json(json!({"payment_ref": "p", "amount_cents": "1999"})),
            400,
            "invalid_request",
            Some("amount_cents"),
        ),
        case(
            "pay: amount_cents null",
            Route::Pay,
            Body::Json(json!({"payment_ref": "p", "amount_cents": null})),
            400,
            "invalid_request",
            Some("amount_cents"),
        ),
    ];
    // --- 1 MiB to every route that takes a body
    for (name, route) in [
        ("create: 1 MiB", Route::CreatePromotion),
        ("purchase: 1 MiB", Route::Purchase),
        ("pay: 1 MiB", Route::Pay),
    ] {
        cases.push(case(
            name,
            route,
            Body::Raw(one_mib.clone()),
            413,
            "payload_too_large",
            None,
        ));
    }
    cases
}

fn case(
    name: &'static str,
    route: Route,
    body: Body,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        name,
        route,
        body,
        status,
        code,
        field,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_contract_answer_and_the_server_keeps_serving() {
    let server = TestServer::start(Mode::Header).await;
    server
        .create_promotion(live_promotion("bad-1", &[("bad-sku", 10)], false))
        .await;
    let (status, order) = server.buy("bad-alice", "bad-1", "bad-sku", "first").await;
    assert_eq!(status, StatusCode::CREATED);
    let pay_path = format!(
        "/admin/orders/{}/pay",
        order["order_id"].as_str().expect("id")
    );

    for case in cases() {
        let request = match case.route {
            Route::CreatePromotion => server.admin(Method::POST, "/admin/promotions"),
            Route::Purchase => server.shopper(
                "bad-bob",
                Method::POST,
                "/promotions/bad-1/items/bad-sku/purchase",
            ),
            Route::Pay => server.admin(Method::POST, &pay_path),
        };
        let request = match case.body {
            Body::Json(value) => request.json(&value),
            Body::Raw(bytes) => request
                .header("content-type", "application/json")
                .body(bytes),
        };
        let answer = send(request).await;
        assert_eq!(
            answer.0.as_u16(),
            case.status,
            "{}: {}",
            case.name,
            answer.1
        );
        assert_eq!(
            answer.1["error"]["code"], case.code,
            "{}: {}",
            case.name, answer.1
        );
        if let Some(field) = case.field {
            let message = answer.1["error"]["message"].as_str().unwrap_or("");
            assert!(
                message.contains(field),
                "{}: message {message:?} must name {field}",
                case.name
            );
        }
    }

    // Identifiers in paths: over-long, non-ASCII, undecodable: nothing by that name.
    let long = "x".repeat(65);
    for path in [
        format!("/promotions/{long}"),
        "/promotions/%C3%BCnicode".to_owned(),
        "/promotions/%FF%FE".to_owned(),
        format!("/orders/{long}"),
        "/orders/%FF".to_owned(),
    ] {
        let answer = if path.starts_with("/orders") {
            send(server.shopper("bad-alice", Method::GET, &path)).await
        } else {
            send(server.client.get(server.url(&path))).await
        };
        assert_error(&answer, 404, "not_found");
    }
    let answer = send(
        server
            .shopper(
                "bad-alice",
                Method::POST,
                &format!("/promotions/bad-1/items/{long}/purchase"),
            )
            .json(&json!({"request_id": "r"})),
    )
    .await;
    assert_error(&answer, 404, "not_found");

    // Still serving: health, a read, and a real purchase.
    let (status, _) = send(server.client.get(server.url("/healthz"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, view) = send(server.client.get(server.url("/promotions/bad-1"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["items"][0]["sku"], "bad-sku");
    let (status, _) = server.buy("bad-carol", "bad-1", "bad-sku", "after").await;
    assert_eq!(status, StatusCode::CREATED);
    // Nothing of the bad creations got in.
    let answer = send(server.admin(Method::GET, "/admin/promotions/bad-new")).await;
    assert_error(&answer, 404, "not_found");
    server.stop().await.expect("clean stop");
}
