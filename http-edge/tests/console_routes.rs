//! The operator console's data routes against a real server: the live stream
//! (`GET /admin/promotions/{id}/live`), the sale report (`GET /admin/promotions/{id}/report`,
//! from the SQL views, on SQLite and, with `SECKILL_TEST_DATABASE_URL`, on PostgreSQL) and
//! the operator's order lookup (`GET /admin/orders/{id}`).

mod common;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::{assert_error, live_promotion, send, Mode, TestServer, GENEROUS_LIMITS};

/// Reads a live stream's `stats` events as they come.
struct LiveReader {
    response: reqwest::Response,
    buffer: String,
}

impl LiveReader {
    async fn open(server: &TestServer, promotion: &str) -> LiveReader {
        let path = format!("/admin/promotions/{promotion}/live");
        let response = server.admin(Method::GET, &path).send().await.expect("send");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().expect("ascii");
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        LiveReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next `stats` event's data; None when the stream ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                if !event.lines().any(|line| line == "event: stats") {
                    continue; // a keep-alive comment
                }
                let data = event
                    .lines()
                    .find_map(|line| line.strip_prefix("data: "))
                    .expect("a stats event has data");
                return Some(serde_json::from_str(data).expect("stats data is JSON"));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("an event within 10 s")
                .expect("stream readable")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }
}

fn item<'a>(stats: &'a Value, sku: &str) -> &'a Value {
    stats["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|item| item["sku"] == sku)
        .expect("the item")
}

#[tokio::test]
async fn the_live_stream_shows_stock_orders_refusals_and_latency_as_the_sale_runs() {
    let server = TestServer::start(Mode::Header).await;
    server
        .create_promotion(live_promotion("live1", &[("a", 5), ("b", 3)], false))
        .await;
    let mut live = LiveReader::open(&server, "live1").await;
    let first = live.next().await.expect("a first event at once");
    assert_eq!(first["promotion_id"], "live1");
    assert_eq!(first["status"], "live");
    assert_eq!(item(&first, "a")["remaining"], 5);
    assert_eq!(item(&first, "b")["stock"], 3);

    // Seven shoppers for five units of `a`: five orders, two sold_out refusals.
    for n in 0..7 {
        let user = format!("shopper-{n}");
        let (status, _) = server.buy(&user, "live1", "a", &format!("r{n}")).await;
        assert!(status == StatusCode::CREATED || status == StatusCode::CONFLICT);
    }
    let (mut orders, mut sold_out, mut timed) = (0.0, 0.0, false);
    let mut last = first;
    for _ in 0..4 {
        last = live.next().await.expect("an event a second");
        // Each event's rates cover about a second: their sum estimates the counts.
        orders += last["orders_per_s"].as_f64().expect("orders_per_s");
        sold_out += last["refusals_per_s"]["sold_out"].as_f64().unwrap_or(0.0);
        timed |= last["latency_p99_ms"].as_f64().is_some();
        if item(&last, "a")["remaining"] == 0 && orders >= 4.0 && sold_out >= 1.0 && timed {
            break;
        }
    }
    assert_eq!(item(&last, "a")["remaining"], 0, "{last}");
    assert_eq!(item(&last, "a")["reserved"], 5, "{last}");
    assert!(orders >= 4.0, "orders counted: {orders}");
    assert!(sold_out >= 1.0, "sold_out refusals counted: {sold_out}");
    assert!(timed, "the answers' latency was measured");
    assert!(last["flusher_lag_s"].as_f64().is_some() || cfg!(not(feature = "persistence")));
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_live_stream_needs_the_admin_key_and_a_known_promotion() {
    let server = TestServer::start(Mode::Header).await;
    let unauthorized = send(server.client.get(server.url("/admin/promotions/x/live"))).await;
    assert_error(&unauthorized, 401, "unauthorized");
    let unknown = send(server.admin(Method::GET, "/admin/promotions/nope/live")).await;
    assert_error(&unknown, 404, "not_found");
    let report = send(server.admin(Method::GET, "/admin/promotions/nope/report")).await;
    assert_error(&report, 404, "not_found");
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_shutdown_ends_the_live_streams_instead_of_waiting_out_its_grace() {
    // A grace far beyond the bound below: a stream that held the shutdown would show.
    let toml = format!("shutdown_grace_s = 120\n{GENEROUS_LIMITS}");
    let server = TestServer::start_with(Mode::Header, &toml).await;
    server
        .create_promotion(live_promotion("live2", &[("a", 1)], false))
        .await;
    let mut live = LiveReader::open(&server, "live2").await;
    live.next().await.expect("a first event");
    let stopped = tokio::time::timeout(Duration::from_secs(60), server.stop()).await;
    stopped
        .expect("the shutdown did not wait for the open stream")
        .expect("clean stop");
    assert!(
        live.next().await.is_none(),
        "the stream ended with the server"
    );
}

/// Polls the report until `done` holds (SQL trails the engine by the flusher's lag).
async fn report_when(server: &TestServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let path = format!("/admin/promotions/{id}/report");
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, body) = send(server.admin(Method::GET, &path)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if done(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the report did not catch up within 10 s: {last}");
}

fn status_line<'a>(report: &'a Value, status: &str) -> &'a Value {
    report["by_status"]
        .as_array()
        .expect("by_status")
        .iter()
        .find(|line| line["status"] == status)
        .expect("every status is listed")
}

/// Four orders of `a` (price 1000): one paid, one cancelled, two pending; then the report.
async fn sale_and_report(server: &TestServer) {
    let mut body = live_promotion("rep1", &[("a", 10)], false);
    body["items"][0]["price_cents"] = json!(1000);
    body["token_multiplier"] = json!(2);
    server.create_promotion(body).await;
    let mut orders = Vec::new();
    for n in 0..4 {
        let (status, order) = server.buy(&format!("u{n}"), "rep1", "a", "r").await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        orders.push(order["order_id"].as_str().expect("order_id").to_owned());
    }
    let pay = format!("/admin/orders/{}/pay", orders[0]);
    let paid = send(
        server
            .admin(Method::POST, &pay)
            .json(&json!({"payment_ref": "p-1"})),
    )
    .await;
    assert_eq!(paid.0, StatusCode::OK, "{}", paid.1);
    let cancel = format!("/orders/{}/cancel", orders[1]);
    let cancelled = send(server.shopper("u1", Method::POST, &cancel)).await;
    assert_eq!(cancelled.0, StatusCode::OK, "{}", cancelled.1);

    let report = report_when(server, "rep1", |r| {
        r["by_status"].as_array().is_some_and(|lines| {
            lines
                .iter()
                .any(|l| l["status"] == "paid" && l["orders"] == 1)
                && lines
                    .iter()
                    .any(|l| l["status"] == "cancelled" && l["orders"] == 1)
        })
    })
    .await;
    let statuses: Vec<&str> = report["by_status"]
        .as_array()
        .expect("by_status")
        .iter()
        .map(|line| line["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        ["pending_payment", "paid", "cancelled", "expired"]
    );
    assert_eq!(status_line(&report, "pending_payment")["orders"], 2);
    assert_eq!(
        status_line(&report, "pending_payment")["revenue_cents"],
        2000
    );
    assert_eq!(status_line(&report, "paid")["units"], 1);
    assert_eq!(status_line(&report, "paid")["revenue_cents"], 1000);
    assert_eq!(status_line(&report, "expired")["orders"], 0);
    assert_eq!(report["funnel"]["orders"], 4);
    assert_eq!(report["funnel"]["paid_orders"], 1);
    let per_minute: u64 = report["orders_per_minute"]
        .as_array()
        .expect("orders_per_minute")
        .iter()
        .map(|minute| minute["orders"].as_u64().expect("orders"))
        .sum();
    assert_eq!(per_minute, 4, "{report}");
    assert!(report["sql_lag_s"].as_f64().is_some(), "{report}");

    // The operator finds any shopper's order by id.
    let lookup = send(server.admin(Method::GET, &format!("/admin/orders/{}", orders[0]))).await;
    assert_eq!(lookup.0, StatusCode::OK, "{}", lookup.1);
    assert_eq!(lookup.1["status"], "paid");
    assert_eq!(lookup.1["user_id"], "u0");
    let missing = send(server.admin(Method::GET, "/admin/orders/nope")).await;
    assert_error(&missing, 404, "not_found");
}

#[tokio::test]
async fn the_report_adds_up_the_sale_from_sqlite() {
    if cfg!(not(feature = "persistence")) {
        println!("skipped: built without the persistence feature (no SQL)");
        return;
    }
    let server = TestServer::start(Mode::Header).await;
    sale_and_report(&server).await;
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_report_adds_up_the_sale_from_postgres() {
    if cfg!(not(feature = "persistence")) {
        println!("skipped: built without the persistence feature (no SQL)");
        return;
    }
    let Some(base_url) = std::env::var("SECKILL_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
    else {
        println!("skipped: SECKILL_TEST_DATABASE_URL not set");
        return;
    };
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&base_url)
        .await
        .expect("PostgreSQL from SECKILL_TEST_DATABASE_URL reachable");
    let schema = format!("seckill_report_{:016x}", rand::random::<u64>());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("create schema");
    let separator = if base_url.contains('?') { '&' } else { '?' };
    let url = format!("{base_url}{separator}options=-c%20search_path%3D{schema}");
    let server =
        TestServer::start_with_args(Mode::Header, GENEROUS_LIMITS, &["--database-url", &url]).await;
    sale_and_report(&server).await;
    server.stop().await.expect("clean stop");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop schema");
    admin.close().await;
}
