//! The README's walk-through (five minutes with seckill), step by step against the built binary, so the
//! walk-through stays true. Each step names the curl command it stands for.

mod common;

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::process::{free_port, path_arg, ServerProcess};

const ADMIN: &str = "demo-admin-key";

async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    common::send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_works_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = path_arg(&dir.path().join("seckill-data"));
    // ./target/release/seckill serve --auth header --admin-key demo-admin-key --data-dir ./seckill-data
    let mut args = vec![
        "--auth",
        "header",
        "--admin-key",
        ADMIN,
        "--data-dir",
        &data,
    ];
    if cfg!(not(feature = "persistence")) {
        args.push("--unsafe-memory-journal");
    }
    let port = free_port();
    let server = ServerProcess::start(&args, port).await;
    let base = server.base.clone();
    let http = common::client();

    // curl -X POST /admin/promotions ...
    let (status, promotion) = answer(
        http.post(format!("{base}/admin/promotions"))
            .bearer_auth(ADMIN)
            .json(&json!({
                "id": "demo", "name": "Demo sale",
                "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z",
                "items": [{"sku": "mug", "title": "Seckill mug", "stock": 100,
                           "price_cents": 1500, "per_user_limit": 2}]
            })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{promotion}");
    assert_eq!(promotion["status"], "live");
    assert_eq!(promotion["items"][0]["remaining"], 100);

    // curl /promotions/demo
    let (status, public) = answer(http.get(format!("{base}/promotions/demo"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(public["items"][0]["title"], "Seckill mug");
    assert!(public["server_time"].is_string());

    // curl -X POST /promotions/demo/items/mug/token -H 'X-User-Id: alice'
    let (status, grant) = answer(
        http.post(format!("{base}/promotions/demo/items/mug/token"))
            .header("X-User-Id", "alice"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    let token = grant["token"].as_str().expect("token").to_owned();
    assert!(grant["expires_at"].is_string());

    // curl -X POST /promotions/demo/items/mug/purchase ... (and the same request_id again)
    let purchase = || {
        http.post(format!("{base}/promotions/demo/items/mug/purchase"))
            .header("X-User-Id", "alice")
            .json(&json!({"request_id": "alice-1", "quantity": 1, "token": token}))
    };
    let (status, order) = answer(purchase()).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["status"], "pending_payment");
    assert_eq!(order["amount_cents"], 1500);
    let order_id = order["order_id"].as_str().expect("order id").to_owned();
    let (status, again) = answer(purchase()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["order_id"], order_id.as_str());

    // curl /orders/ORDER_ID -H 'X-User-Id: alice' (and bob gets 404)
    let (status, seen) = answer(
        http.get(format!("{base}/orders/{order_id}"))
            .header("X-User-Id", "alice"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["order_id"], order_id.as_str());
    let (status, _) = answer(
        http.get(format!("{base}/orders/{order_id}"))
            .header("X-User-Id", "bob"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // curl -X POST /admin/orders/ORDER_ID/pay ...
    let (status, paid) = answer(
        http.post(format!("{base}/admin/orders/{order_id}/pay"))
            .bearer_auth(ADMIN)
            .json(&json!({"payment_ref": "psp-0001"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["payment_ref"], "psp-0001");

    // curl /admin/promotions/demo
    let (status, stats) = answer(
        http.get(format!("{base}/admin/promotions/demo"))
            .bearer_auth(ADMIN),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["items"][0]["sold"], 1);
    assert_eq!(stats["items"][0]["remaining"], 99);

    // "The orders are also in the SQLite file ./seckill-data/orders.db, within 5 s."
    if cfg!(feature = "persistence") {
        let status = paid_order_in_sql(&dir.path().join("seckill-data/orders.db"), &order_id).await;
        assert_eq!(status.as_deref(), Some("paid"));
    }

    // Ctrl-C / SIGTERM: exit 0.
    let (exit, output) = server.terminate();
    assert_eq!(
        exit.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // "Start it again with the same --data-dir and everything is still there."
    if cfg!(feature = "persistence") {
        let server = ServerProcess::start(&args, free_port()).await;
        let (status, seen) = answer(
            http.get(format!("{}/orders/{order_id}", server.base))
                .header("X-User-Id", "alice"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(seen["status"], "paid");
        let (exit, _) = server.terminate();
        assert_eq!(exit.code(), Some(0));
    }
}

/// The status of `order_id` in the flusher's SQLite table, waiting for the flusher (api.md
/// allows it 5 s; the wait is bounded far above that, it is not a timing assertion).
async fn paid_order_in_sql(path: &std::path::Path, order_id: &str) -> Option<String> {
    use sqlx::Connection;
    let url = format!("sqlite://{}", path.display());
    for _ in 0..300 {
        if let Ok(mut connection) = sqlx::SqliteConnection::connect(&url).await {
            let row: Result<Option<(String,)>, _> =
                sqlx::query_as("SELECT status FROM orders WHERE order_id = ?")
                    .bind(order_id)
                    .fetch_optional(&mut connection)
                    .await;
            let _ = connection.close().await;
            if let Ok(Some((status,))) = row {
                if status == "paid" {
                    return Some(status);
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    None
}
