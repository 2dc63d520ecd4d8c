//! Every route and every error code of api.md, over real HTTP, in both auth modes.

mod common;

use jsonwebtoken::Algorithm;
use reqwest::{Method, StatusCode};
use serde_json::json;

use common::{
    assert_error, jwt, jwt_signed, live_promotion, promotion_between, send, Mode, TestServer,
    ADMIN_KEY, USER_SECRET,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_header_mode() {
    every_route(Mode::Header).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_jwt_mode() {
    every_route(Mode::Jwt).await;
}

async fn every_route(mode: Mode) {
    let server = TestServer::start(mode).await;
    operator_routes(&server).await;
    shopper_routes(&server).await;
    token_refusals(&server).await;
    purchase_refusals(&server).await;
    orders_and_payment(&server).await;
    bans(&server).await;
    ops_routes(&server).await;
    server.stop().await.expect("clean stop");
}

async fn operator_routes(server: &TestServer) {
    // 401 without or with a wrong key.
    let answer = send(server.client.get(server.url("/admin/promotions"))).await;
    assert_error(&answer, 401, "unauthorized");
    let answer = send(
        server
            .client
            .get(server.url("/admin/promotions"))
            .bearer_auth("wrong-key"),
    )
    .await;
    assert_error(&answer, 401, "unauthorized");

    // 201 with defaults filled in.
    let op_1 = json!({
        "id": "op-1",
        "name": "Operator test",
        "starts_at": common::at(3600),
        "ends_at": common::at(7200),
        "items": [{"sku": "op-sku", "stock": 10, "price_cents": 500}]
    });
    let created = server.create_promotion(op_1.clone()).await;
    assert_eq!(created["id"], "op-1");
    assert_eq!(created["status"], "upcoming");
    assert_eq!(created["payment_timeout_s"], 900);
    assert_eq!(created["require_token"], true);
    assert_eq!(created["token_multiplier"], 5);
    let item = &created["items"][0];
    assert_eq!(item["title"], "op-sku");
    assert_eq!(item["per_user_limit"], 1);
    for (field, value) in [
        ("stock", 10),
        ("remaining", 10),
        ("reserved", 0),
        ("sold", 0),
        ("tokens_issued", 0),
        ("tokens_outstanding", 0),
    ] {
        assert_eq!(item[field], value, "{field}");
    }
    // The same create again (same id, identical body) is a retry: 200 with the promotion.
    let retry = server.admin(Method::POST, "/admin/promotions").json(&op_1);
    let (status, again) = send(retry).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], "op-1");
    assert_eq!(again["items"][0]["stock"], 10);
    assert!(created["starts_at"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));

    // An id is made when absent.
    let made = server
        .create_promotion(json!({
            "name": "No id",
            "starts_at": common::at(100_000),
            "ends_at": common::at(100_100),
            "items": [{"sku": "no-id-sku", "stock": 1, "price_cents": 1}]
        }))
        .await;
    assert!(made["id"].as_str().is_some_and(|id| !id.is_empty()));

    // 409 already_exists, 409 sku_in_other_promotion, 400 invalid_request naming the field.
    let answer = send(
        server
            .admin(Method::POST, "/admin/promotions")
            .json(&live_promotion("op-1", &[("other", 1)], true)),
    )
    .await;
    assert_error(&answer, 409, "already_exists");
    let overlapping = promotion_between("op-2", &[("op-sku", 1)], true, 3000, 5000);
    let answer = send(
        server
            .admin(Method::POST, "/admin/promotions")
            .json(&overlapping),
    )
    .await;
    assert_error(&answer, 409, "sku_in_other_promotion");
    let backwards = promotion_between("op-3", &[("x", 1)], true, 5000, 3000);
    let answer = send(
        server
            .admin(Method::POST, "/admin/promotions")
            .json(&backwards),
    )
    .await;
    assert_error(&answer, 400, "invalid_request");
    assert!(answer.1["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("ends_at"));

    // GET one and all.
    let (status, one) = send(server.admin(Method::GET, "/admin/promotions/op-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["items"][0]["stock"], 10);
    let answer = send(server.admin(Method::GET, "/admin/promotions/nope")).await;
    assert_error(&answer, 404, "not_found");
    let (status, all) = send(server.admin(Method::GET, "/admin/promotions")).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = all["promotions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert!(ids.contains(&"op-1"), "{ids:?}");

    // start: live now; stop: ended; start again: 409 ended; unknown: 404.
    let (status, started) = send(server.admin(Method::POST, "/admin/promotions/op-1/start")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(started["status"], "live");
    let (status, stopped) = send(server.admin(Method::POST, "/admin/promotions/op-1/stop")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stopped["status"], "ended");
    let answer = send(server.admin(Method::POST, "/admin/promotions/op-1/start")).await;
    assert_error(&answer, 409, "ended");
    let answer = send(server.admin(Method::POST, "/admin/promotions/nope/start")).await;
    assert_error(&answer, 404, "not_found");
    let answer = send(server.admin(Method::POST, "/admin/promotions/nope/stop")).await;
    assert_error(&answer, 404, "not_found");
}

async fn shopper_routes(server: &TestServer) {
    server
        .create_promotion(live_promotion("pub-1", &[("pub-sku", 3)], true))
        .await;
    let (status, list) = send(server.client.get(server.url("/promotions"))).await;
    assert_eq!(status, StatusCode::OK);
    let promotions = list["promotions"].as_array().expect("list");
    assert!(promotions.iter().any(|p| p["id"] == "pub-1"));
    // Ended promotions are not listed to shoppers.
    assert!(!promotions.iter().any(|p| p["id"] == "op-1"));

    let (status, view) = send(server.client.get(server.url("/promotions/pub-1"))).await;
    assert_eq!(status, StatusCode::OK);
    for field in [
        "id",
        "name",
        "status",
        "starts_at",
        "ends_at",
        "server_time",
    ] {
        assert!(view[field].is_string(), "{field}: {view}");
    }
    assert_eq!(view["status"], "live");
    let item = &view["items"][0];
    assert_eq!(item["sku"], "pub-sku");
    assert_eq!(item["title"], "pub-sku");
    assert_eq!(item["price_cents"], 1999);
    assert_eq!(item["per_user_limit"], 1);
    assert_eq!(item["remaining"], 3);
    assert_eq!(item["sold_out"], false);
    let answer = send(server.client.get(server.url("/promotions/nope"))).await;
    assert_error(&answer, 404, "not_found");
}

async fn token_refusals(server: &TestServer) {
    server
        .create_promotion(live_promotion(
            "tok-1",
            &[("tok-a", 1), ("tok-zero", 0)],
            true,
        ))
        .await;
    server
        .create_promotion(promotion_between(
            "tok-later",
            &[("tok-l", 5)],
            true,
            3600,
            7200,
        ))
        .await;

    // 200, and asking again while unused returns the same token.
    let first = server.token("t-alice", "tok-1", "tok-a").await;
    let again = server.token("t-alice", "tok-1", "tok-a").await;
    assert_eq!(first, again);
    let (status, grant) = send(server.shopper(
        "t-alice",
        Method::POST,
        "/promotions/tok-1/items/tok-a/token",
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(grant["expires_at"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));
    // The operator's stats show it outstanding while it is unused.
    let (_, stats) = send(server.admin(Method::GET, "/admin/promotions/tok-1")).await;
    let item = &stats["items"][0];
    assert_eq!(item["sku"], "tok-a", "{stats}");
    assert_eq!(item["tokens_outstanding"], 1, "{stats}");

    // 401 without credentials.
    let answer = send(
        server
            .client
            .post(server.url("/promotions/tok-1/items/tok-a/token")),
    )
    .await;
    assert_error(&answer, 401, "unauthorized");
    // 404 unknown promotion / sku.
    let answer =
        send(server.shopper("t-bob", Method::POST, "/promotions/nope/items/tok-a/token")).await;
    assert_error(&answer, 404, "not_found");
    let answer =
        send(server.shopper("t-bob", Method::POST, "/promotions/tok-1/items/nope/token")).await;
    assert_error(&answer, 404, "not_found");
    // 409 not_started, sold_out.
    let answer = send(server.shopper(
        "t-bob",
        Method::POST,
        "/promotions/tok-later/items/tok-l/token",
    ))
    .await;
    assert_error(&answer, 409, "not_started");
    let answer = send(server.shopper(
        "t-bob",
        Method::POST,
        "/promotions/tok-1/items/tok-zero/token",
    ))
    .await;
    assert_error(&answer, 409, "sold_out");

    // tokens_exhausted: stock 1 x multiplier 1 = one token in all.
    let mut one = live_promotion("tok-2", &[("tok-one", 1)], true);
    one["token_multiplier"] = json!(1);
    server.create_promotion(one).await;
    server.token("t-carol", "tok-2", "tok-one").await;
    let answer = send(server.shopper(
        "t-dave",
        Method::POST,
        "/promotions/tok-2/items/tok-one/token",
    ))
    .await;
    assert_error(&answer, 409, "tokens_exhausted");

    // limit_exceeded: alice buys her one unit, then asks for another token.
    let (status, order) = send(
        server
            .shopper(
                "t-alice",
                Method::POST,
                "/promotions/tok-1/items/tok-a/purchase",
            )
            .json(&json!({"request_id": "r-1", "quantity": 1, "token": first})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    // The used token is no longer outstanding.
    let (_, stats) = send(server.admin(Method::GET, "/admin/promotions/tok-1")).await;
    assert_eq!(stats["items"][0]["tokens_outstanding"], 0, "{stats}");
    // Stock is now 0 for everyone else: sold_out; alice herself is at her limit.
    let answer = send(server.shopper(
        "t-alice",
        Method::POST,
        "/promotions/tok-1/items/tok-a/token",
    ))
    .await;
    assert!(
        answer.1["error"]["code"] == "limit_exceeded" || answer.1["error"]["code"] == "sold_out",
        "{:?}",
        answer
    );
    let mut two = live_promotion("tok-3", &[("tok-b", 5)], true);
    two["token_multiplier"] = json!(2);
    server.create_promotion(two).await;
    let token = server.token("t-erin", "tok-3", "tok-b").await;
    let (status, _) = send(
        server
            .shopper(
                "t-erin",
                Method::POST,
                "/promotions/tok-3/items/tok-b/purchase",
            )
            .json(&json!({"request_id": "r-1", "token": token})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let answer = send(server.shopper(
        "t-erin",
        Method::POST,
        "/promotions/tok-3/items/tok-b/token",
    ))
    .await;
    assert_error(&answer, 409, "limit_exceeded");

    // ended.
    send(server.admin(Method::POST, "/admin/promotions/tok-3/stop")).await;
    let answer = send(server.shopper(
        "t-frank",
        Method::POST,
        "/promotions/tok-3/items/tok-b/token",
    ))
    .await;
    assert_error(&answer, 409, "ended");
}

async fn purchase_refusals(server: &TestServer) {
    let mut spec = live_promotion("buy-1", &[("buy-a", 2), ("buy-zero", 0)], true);
    spec["items"][0]["per_user_limit"] = json!(3);
    server.create_promotion(spec).await;
    server
        .create_promotion(promotion_between(
            "buy-later",
            &[("buy-l", 5)],
            false,
            3600,
            7200,
        ))
        .await;
    let path = "/promotions/buy-1/items/buy-a/purchase";

    // 403 token_invalid: no token, a made-up token, another user's token.
    let answer = send(
        server
            .shopper("b-alice", Method::POST, path)
            .json(&json!({"request_id": "r1"})),
    )
    .await;
    assert_error(&answer, 403, "token_invalid");
    let answer = send(
        server
            .shopper("b-alice", Method::POST, path)
            .json(&json!({"request_id": "r1", "token": "made-up"})),
    )
    .await;
    assert_error(&answer, 403, "token_invalid");
    let bobs = server.token("b-bob", "buy-1", "buy-a").await;
    let answer = send(
        server
            .shopper("b-alice", Method::POST, path)
            .json(&json!({"request_id": "r1", "token": bobs})),
    )
    .await;
    assert_error(&answer, 403, "token_invalid");

    // 400: quantity out of range, missing request_id.
    let token = server.token("b-alice", "buy-1", "buy-a").await;
    let answer = send(
        server
            .shopper("b-alice", Method::POST, path)
            .json(&json!({"request_id": "r1", "quantity": 0, "token": token})),
    )
    .await;
    assert_error(&answer, 400, "invalid_request");
    let answer = send(
        server
            .shopper("b-alice", Method::POST, path)
            .json(&json!({"token": token})),
    )
    .await;
    assert_error(&answer, 400, "invalid_request");
    assert!(answer.1["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("request_id"));

    // 409 insufficient_stock: 3 wanted, 2 left.
    let answer = send(
        server
            .shopper("b-alice", Method::POST, path)
            .json(&json!({"request_id": "r1", "quantity": 3, "token": token})),
    )
    .await;
    assert_error(&answer, 409, "insufficient_stock");

    // 201, then 200 with the same order for the same request_id.
    let (status, order) = send(
        server
            .shopper("b-alice", Method::POST, path)
            .json(&json!({"request_id": "r1", "quantity": 2, "token": token})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["quantity"], 2);
    assert_eq!(order["amount_cents"], 3998);
    assert_eq!(order["status"], "pending_payment");
    let (status, again) = send(
        server
            .shopper("b-alice", Method::POST, path)
            .json(&json!({"request_id": "r1", "quantity": 2, "token": token})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["order_id"], order["order_id"]);

    // 409 sold_out (now), and for the item that never had stock.
    let answer = send(
        server
            .shopper("b-bob", Method::POST, path)
            .json(&json!({"request_id": "r1", "token": bobs})),
    )
    .await;
    assert_error(&answer, 409, "sold_out");
    let answer = send(
        server
            .shopper(
                "b-bob",
                Method::POST,
                "/promotions/buy-1/items/buy-zero/purchase",
            )
            .json(&json!({"request_id": "r1"})),
    )
    .await;
    assert_error(&answer, 409, "sold_out");

    // 409 not_started, 404, 401.
    let answer = server.buy("b-bob", "buy-later", "buy-l", "r1").await;
    assert_error(&answer, 409, "not_started");
    let answer = server.buy("b-bob", "nope", "buy-l", "r1").await;
    assert_error(&answer, 404, "not_found");
    let answer = send(
        server
            .client
            .post(server.url(path))
            .json(&json!({"request_id": "r1"})),
    )
    .await;
    assert_error(&answer, 401, "unauthorized");

    // 409 limit_exceeded (per_user_limit 1, no token needed), then ended.
    server
        .create_promotion(live_promotion("buy-2", &[("buy-b", 10)], false))
        .await;
    let (status, _) = server.buy("b-carol", "buy-2", "buy-b", "r1").await;
    assert_eq!(status, StatusCode::CREATED);
    let answer = server.buy("b-carol", "buy-2", "buy-b", "r2").await;
    assert_error(&answer, 409, "limit_exceeded");
    send(server.admin(Method::POST, "/admin/promotions/buy-2/stop")).await;
    let answer = server.buy("b-dave", "buy-2", "buy-b", "r1").await;
    assert_error(&answer, 409, "ended");
    // A repeated request id still returns the original order after the end.
    let (status, _) = server.buy("b-carol", "buy-2", "buy-b", "r1").await;
    assert_eq!(status, StatusCode::OK);
}

async fn orders_and_payment(server: &TestServer) {
    server
        .create_promotion(live_promotion("ord-1", &[("ord-a", 10)], false))
        .await;
    let (status, order) = server.buy("o-alice", "ord-1", "ord-a", "r1").await;
    assert_eq!(status, StatusCode::CREATED);
    for field in [
        "order_id",
        "promotion_id",
        "sku",
        "user_id",
        "quantity",
        "price_cents",
        "amount_cents",
        "status",
        "created_at",
        "pay_before",
    ] {
        assert!(!order[field].is_null(), "{field}: {order}");
    }
    assert!(order.get("paid_at").is_none());
    let order_id = order["order_id"].as_str().expect("id").to_owned();
    let order_path = format!("/orders/{order_id}");

    // The owner sees it at once; another shopper gets 404; no credential 401.
    let (status, seen) = send(server.shopper("o-alice", Method::GET, &order_path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["order_id"], order_id);
    let answer = send(server.shopper("o-mallory", Method::GET, &order_path)).await;
    assert_error(&answer, 404, "not_found");
    let answer =
        send(server.shopper("o-mallory", Method::POST, &format!("{order_path}/cancel"))).await;
    assert_error(&answer, 404, "not_found");
    let answer = send(server.client.get(server.url(&order_path))).await;
    assert_error(&answer, 401, "unauthorized");
    let answer = send(server.shopper("o-alice", Method::GET, "/orders/0000000000000000-1")).await;
    assert_error(&answer, 404, "not_found");
    let answer = send(server.shopper("o-alice", Method::GET, "/orders/garbage")).await;
    assert_error(&answer, 404, "not_found");

    // Pay: 200 paid, same ref again 200, another ref 409 already_paid, unknown 404.
    let pay_path = format!("/admin/orders/{order_id}/pay");
    // A payment notice for another amount than the order's: 409, and nothing changes.
    let answer = send(
        server
            .admin(Method::POST, &pay_path)
            .json(&json!({"payment_ref": "pay-1", "amount_cents": 1})),
    )
    .await;
    assert_error(&answer, 409, "amount_mismatch");
    let (_, seen) = send(server.shopper("o-alice", Method::GET, &order_path)).await;
    assert_eq!(seen["status"], "pending_payment");
    assert!(seen.get("payment_ref").is_none(), "{seen}");
    let (status, paid) = send(
        server
            .admin(Method::POST, &pay_path)
            .json(&json!({"payment_ref": "pay-1"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["payment_ref"], "pay-1");
    assert!(paid["paid_at"].is_string());
    // With the order's own amount, the same payment is the same (idempotent) answer.
    let (status, _) = send(
        server
            .admin(Method::POST, &pay_path)
            .json(&json!({"payment_ref": "pay-1", "amount_cents": 1999})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        server
            .admin(Method::POST, &pay_path)
            .json(&json!({"payment_ref": "pay-1"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer = send(
        server
            .admin(Method::POST, &pay_path)
            .json(&json!({"payment_ref": "pay-2"})),
    )
    .await;
    assert_error(&answer, 409, "already_paid");
    let answer = send(
        server
            .admin(Method::POST, "/admin/orders/0000000000000000-1/pay")
            .json(&json!({"payment_ref": "pay-1"})),
    )
    .await;
    assert_error(&answer, 404, "not_found");
    let answer = send(
        server
            .client
            .post(server.url(&pay_path))
            .json(&json!({"payment_ref": "pay-1"})),
    )
    .await;
    assert_error(&answer, 401, "unauthorized");

    // A paid order cannot be cancelled.
    let answer =
        send(server.shopper("o-alice", Method::POST, &format!("{order_path}/cancel"))).await;
    assert_error(&answer, 409, "not_cancellable");

    // Cancel: 200 cancelled, again 200 unchanged; a cancelled order is not payable.
    let (status, other) = server.buy("o-bob", "ord-1", "ord-a", "r1").await;
    assert_eq!(status, StatusCode::CREATED);
    let other_id = other["order_id"].as_str().expect("id").to_owned();
    let cancel_path = format!("/orders/{other_id}/cancel");
    let (status, cancelled) = send(server.shopper("o-bob", Method::POST, &cancel_path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["closed_at"].is_string());
    let (status, again) = send(server.shopper("o-bob", Method::POST, &cancel_path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["closed_at"], cancelled["closed_at"]);
    let answer = send(
        server
            .admin(Method::POST, &format!("/admin/orders/{other_id}/pay"))
            .json(&json!({"payment_ref": "pay-3"})),
    )
    .await;
    assert_error(&answer, 409, "not_payable");

    // Stats add up: 1 sold, 0 reserved (bob cancelled), 9 remaining.
    let (_, stats) = send(server.admin(Method::GET, "/admin/promotions/ord-1")).await;
    let item = &stats["items"][0];
    assert_eq!(item["sold"], 1);
    assert_eq!(item["reserved"], 0);
    assert_eq!(item["remaining"], 9);
}

async fn bans(server: &TestServer) {
    server
        .create_promotion(live_promotion("ban-1", &[("ban-a", 100)], false))
        .await;
    for round in 0..3 {
        let (status, order) = server
            .buy("x-eve", "ban-1", "ban-a", &format!("r{round}"))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        let id = order["order_id"].as_str().expect("id");
        let (status, _) =
            send(server.shopper("x-eve", Method::POST, &format!("/orders/{id}/cancel"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let answer = server.buy("x-eve", "ban-1", "ban-a", "r9").await;
    assert_error(&answer, 403, "banned");
    let answer =
        send(server.shopper("x-eve", Method::POST, "/promotions/ban-1/items/ban-a/token")).await;
    assert_error(&answer, 403, "banned");
}

async fn ops_routes(server: &TestServer) {
    let (status, _) = send(server.client.get(server.url("/healthz"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(server.client.get(server.url("/readyz"))).await;
    assert_eq!(status, StatusCode::OK);
    let mut wanted = vec![
        "seckill_http_requests_total",
        "seckill_http_request_duration_seconds_bucket",
        "seckill_item_remaining",
    ];
    if cfg!(feature = "persistence") {
        // From the journal and the flusher, through the same global recorder.
        wanted.extend([
            "seckill_log_fsync_seconds",
            "seckill_log_batch_events",
            "seckill_flusher_lag_events",
        ]);
    }
    // The flusher publishes its lag on its own schedule: look a few times before failing.
    let mut missing = wanted.clone();
    for _ in 0..100 {
        let response = server
            .client
            .get(server.url("/metrics"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.expect("text");
        missing = wanted
            .iter()
            .copied()
            .filter(|s| !text.contains(s))
            .collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(missing.is_empty(), "missing from /metrics: {missing:?}");
    // Unknown routes and wrong methods answer JSON too.
    let answer = send(server.client.get(server.url("/no/such/route"))).await;
    assert_error(&answer, 404, "not_found");
    let answer = send(server.client.delete(server.url("/promotions"))).await;
    assert_error(&answer, 405, "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_get_401() {
    let server = TestServer::start(Mode::Jwt).await;
    server
        .create_promotion(live_promotion("cred-1", &[("c", 5)], false))
        .await;
    let path = "/promotions/cred-1/items/c/token";
    // {"alg":"none"} header, {"sub":"alice","exp":9999999999}, empty signature.
    let alg_none =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    let forged = {
        // A good token whose payload was swapped for another user's: the signature no
        // longer matches.
        let good = jwt("alice", 3600);
        let other = jwt("mallory", 3600);
        let parts: Vec<&str> = good.split('.').collect();
        let other_parts: Vec<&str> = other.split('.').collect();
        format!("{}.{}.{}", parts[0], other_parts[1], parts[2])
    };
    let cases = [
        ("expired", jwt("alice", -3600)),
        (
            "wrongly signed",
            jwt_signed("alice", 3600, b"not-the-secret", Algorithm::HS256),
        ),
        (
            "other algorithm",
            jwt_signed("alice", 3600, USER_SECRET.as_bytes(), Algorithm::HS384),
        ),
        ("alg none", alg_none.to_owned()),
        ("forged payload", forged),
        ("garbage", "not.a.jwt".to_owned()),
        ("admin key as user token", ADMIN_KEY.to_owned()),
    ];
    for (name, token) in cases {
        let answer = send(server.client.post(server.url(path)).bearer_auth(&token)).await;
        assert_eq!(answer.0.as_u16(), 401, "{name}: {:?}", answer.1);
        assert_eq!(answer.1["error"]["code"], "unauthorized", "{name}");
    }
    // The X-User-Id header means nothing in jwt mode.
    let answer = send(
        server
            .client
            .post(server.url(path))
            .header("X-User-Id", "alice"),
    )
    .await;
    assert_error(&answer, 401, "unauthorized");
    // A shopper token does not open operator routes.
    let answer = send(
        server
            .client
            .get(server.url("/admin/promotions"))
            .bearer_auth(jwt("alice", 3600)),
    )
    .await;
    assert_error(&answer, 401, "unauthorized");
    // The good one works.
    let (status, _) = send(
        server
            .client
            .post(server.url(path))
            .bearer_auth(jwt("alice", 3600)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_mode_refuses_missing_or_malformed_user_ids() {
    let server = TestServer::start(Mode::Header).await;
    server
        .create_promotion(live_promotion("hdr-1", &[("h", 5)], false))
        .await;
    let path = "/promotions/hdr-1/items/h/token";
    let answer = send(server.client.post(server.url(path))).await;
    assert_error(&answer, 401, "unauthorized");
    for bad in ["", "has space", &"x".repeat(65), "ünïcode"] {
        let request = server.client.post(server.url(path));
        let request = match reqwest::header::HeaderValue::from_bytes(bad.as_bytes()) {
            Ok(value) => request.header("X-User-Id", value),
            Err(_) => continue,
        };
        let answer = send(request).await;
        assert_error(&answer, 401, "unauthorized");
    }
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let limits = "[rate_limit.token]\nper_s = 1\nburst = 2\n\
                  [rate_limit.purchase]\nper_s = 1\nburst = 1\n";
    let server = TestServer::start_with(Mode::Header, limits).await;
    server
        .create_promotion(live_promotion("rl-1", &[("r", 100)], false))
        .await;
    let path = "/promotions/rl-1/items/r/token";
    let mut limited = None;
    for _ in 0..20 {
        let response = server
            .shopper("rl-alice", Method::POST, path)
            .send()
            .await
            .expect("send");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("the token route must limit after its burst");
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    let answer = common::read(response).await;
    assert_error(&answer, 429, "rate_limited");
    // Another shopper is not limited by alice.
    let (status, _) = send(server.shopper("rl-bob", Method::POST, path)).await;
    assert_eq!(status, StatusCode::OK);
    // The purchase route has its own limit.
    let first = server.buy("rl-carol", "rl-1", "r", "r1").await;
    assert_eq!(first.0, StatusCode::CREATED);
    let mut codes = Vec::new();
    for i in 0..20 {
        let answer = server
            .buy("rl-carol", "rl-1", "r", &format!("again-{i}"))
            .await;
        codes.push(answer.1["error"]["code"].as_str().unwrap_or("").to_owned());
    }
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_gets_a_json_503_not_a_hang() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let toml = format!("request_timeout_ms = 300\n{}", common::GENEROUS_LIMITS);
    let server = TestServer::start_with(Mode::Header, &toml).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    // Promise 100 bytes of body, send one, then wait.
    stream
        .write_all(
            b"POST /promotions/p/items/s/purchase HTTP/1.1\r\nHost: seckill\r\n\
              X-User-Id: slow\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while !String::from_utf8_lossy(&answer).contains("\"code\"") {
            let n = stream.read(&mut buffer).await.expect("read");
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a stalled request");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"unavailable\""), "{text}");
    drop(stream);
    // The server still serves others.
    let (status, _) = send(server.client.get(server.url("/healthz"))).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await.expect("clean stop");
}
