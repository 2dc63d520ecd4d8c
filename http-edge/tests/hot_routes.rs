//! The token and purchase routes are dispatched past the router (`routes/hot.rs`); the same
//! request sent through the router (a percent-encoded id, which the router decodes to the
//! same promotion and the hot path leaves to it) must get the same answer, and both must be
//! counted under the route's template.

mod common;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

use common::{live_promotion, Mode, TestServer};

/// Status, `Retry-After` and JSON body of an answer.
async fn answer(request: RequestBuilder) -> (StatusCode, Option<String>, Value) {
    let response = request.send().await.expect("send");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = response.bytes().await.expect("body");
    (
        status,
        retry_after,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The path of `action` on `sku` of promotion `hot1`, spelled for the hot path or for the
/// router (`%31` is `1`).
fn path(via_router: bool, sku: &str, action: &str) -> String {
    let id = if via_router { "hot%31" } else { "hot1" };
    format!("/promotions/{id}/items/{sku}/{action}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_path_and_the_router_give_the_same_answers() {
    let server = TestServer::start(Mode::Header).await;
    server
        .create_promotion(live_promotion(
            "hot1",
            &[("gone", 0), ("plenty", 100)],
            false,
        ))
        .await;
    let mut answers = Vec::new();
    for via_router in [false, true] {
        let user = if via_router {
            "router-user"
        } else {
            "hot-user"
        };
        let post = |sku: &str, action: &str| {
            server.shopper(user, Method::POST, &path(via_router, sku, action))
        };
        let mut seen = vec![
            // Sold out, on both routes.
            answer(post("gone", "purchase").json(&json!({"request_id": "r1"}))).await,
            answer(post("gone", "token")).await,
            // Bad bodies.
            answer(
                post("plenty", "purchase")
                    .header("content-type", "application/json")
                    .body("{not json"),
            )
            .await,
            answer(post("plenty", "purchase").json(&json!({"request_id": "r2", "quantity": "x"})))
                .await,
            answer(
                post("plenty", "purchase")
                    .header("content-type", "application/json")
                    .body(vec![b' '; 70 * 1024]),
            )
            .await,
            // No credential.
            answer(
                server
                    .client
                    .post(server.url(&path(via_router, "gone", "purchase"))),
            )
            .await,
            // An unknown item.
            answer(post("nope", "purchase").json(&json!({"request_id": "r3"}))).await,
        ];
        // A purchase, then its retry, then another purchase over the per-user limit.
        let bought = answer(post("plenty", "purchase").json(&json!({"request_id": "r4"}))).await;
        assert_eq!(bought.0, StatusCode::CREATED, "{bought:?}");
        let retried = answer(post("plenty", "purchase").json(&json!({"request_id": "r4"}))).await;
        assert_eq!(retried.0, StatusCode::OK, "{retried:?}");
        assert_eq!(retried.2["order_id"], bought.2["order_id"]);
        seen.push(answer(post("plenty", "purchase").json(&json!({"request_id": "r5"}))).await);
        // The order's fields but its id and user, which differ by design.
        let mut order = bought.2.clone();
        for field in ["order_id", "user_id", "created_at", "pay_before"] {
            order
                .as_object_mut()
                .expect("an order object")
                .remove(field);
        }
        seen.push((bought.0, bought.1, order));
        answers.push(seen);
    }
    let (hot, routed) = (&answers[0], &answers[1]);
    assert_eq!(hot.len(), routed.len());
    for (n, (hot, routed)) in hot.iter().zip(routed).enumerate() {
        assert_eq!(hot, routed, "answer {n}: hot path vs router");
    }
    assert_eq!(hot[0].2["error"]["code"], "sold_out");
    assert_eq!(hot[2].0, StatusCode::BAD_REQUEST);
    assert_eq!(hot[4].0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(hot[5].0, StatusCode::UNAUTHORIZED);

    // Both are counted under the route's template: 2 purchases of each path answered 409.
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let sold_out_purchases: f64 = metrics
        .lines()
        .filter(|line| {
            line.starts_with("seckill_http_requests_total{")
                && line.contains(r#"route="/promotions/{id}/items/{sku}/purchase""#)
                && line.contains(r#"code="sold_out""#)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(sold_out_purchases, 2.0, "{metrics}");
    server.stop().await.expect("clean stop");
}
