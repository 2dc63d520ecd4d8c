//! `seckill serve --cluster ...` through the real binary: the flag combinations it refuses
//! (exit 2, one line), and, when NATS and PostgreSQL are at hand, a node whose order survives
//! a restart on the JetStream journal and a restart that names another partition count.
//!
//! The NATS test needs `SECKILL_TEST_NATS_URLS` (a JetStream cluster, see `./dev test`) and
//! `SECKILL_TEST_DATABASE_URL`; it is skipped without either. It runs under a random prefix
//! of its own in NATS and a schema of its own in PostgreSQL, so tests sharing both never meet.

mod cluster_common;
mod common;

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use cluster_common::{
    assert_acked_present, assert_sql_matches, buy, buyer_per_node, create_storm, deployment,
    env_value, fault_answer, keep_buying, longest_gap, refusals, wait_for_view, Node, Shoppers,
    PROCESS_LIMIT,
};
use common::process::{path_arg, run_to_exit};
use common::{live_promotion, send};

/// The lines seckill wrote to stderr, without empty ones.
fn stderr_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Exit code 2 and exactly one line, `seckill: ...`, that contains every one of `needles`.
#[track_caller]
fn assert_refused(status: ExitStatus, stderr: &str, needles: &[&str]) {
    let lines = stderr_lines(stderr);
    assert_eq!(status.code(), Some(2), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "exactly one line on stderr, got {lines:?}");
    assert!(lines[0].starts_with("seckill: "), "{lines:?}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{:?} must mention {needle:?}",
            lines[0]
        );
    }
}

#[test]
fn a_cluster_without_postgres_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = path_arg(&dir.path().join("data"));
    let output = run_to_exit(
        &[
            "serve",
            "--auth",
            "header",
            "--admin-key",
            "k",
            "--data-dir",
            &data,
            "--cluster",
            "nats://127.0.0.1:1",
            "--node-id",
            "a",
            "--advertise",
            "http://127.0.0.1:1",
        ],
        PROCESS_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_refused(output.status, &stderr, &["PostgreSQL", "--database-url"]);
}

#[test]
fn cluster_flags_without_cluster_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = path_arg(&dir.path().join("data"));
    for (flag, value) in [("--node-id", "a"), ("--partitions", "3")] {
        let output = run_to_exit(
            &[
                "serve",
                "--auth",
                "header",
                "--admin-key",
                "k",
                "--data-dir",
                &data,
                flag,
                value,
            ],
            PROCESS_LIMIT,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_refused(output.status, &stderr, &[flag, "--cluster"]);
    }
}

/// Creates a live promotion and buys one unit of it; the order as answered.
async fn buy_one(node: &Node) -> Value {
    let (status, body) = send(
        node.admin(Method::POST, "/admin/promotions")
            .json(&live_promotion("cluster-sale", &[("mug", 5)], false)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, order) = send(
        node.shopper(Method::POST, "/promotions/cluster-sale/items/mug/purchase")
            .json(&json!({"request_id": "alice-1"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert!(order["order_id"].is_string(), "{order}");
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_survives_a_restart_and_another_partition_count_is_refused() {
    let Some((deployment, schema, _dir)) = deployment().await else {
        return;
    };

    let mut first = Node::start(&deployment, "node-a", 3).await;
    let order = buy_one(&first).await;
    let status = first.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", first.stderr());

    // The cluster stored 3 partitions: 4 is refused before anything is changed. Logged at
    // `warn` so the NATS client's connection lines do not count as lines of the refusal.
    let mut refused = Node::spawn(&deployment, "node-b", 4, "warn");
    let status = refused.wait_exit().await;
    assert_refused(
        status,
        &refused.stderr(),
        &["3 partitions", "--partitions 4"],
    );

    // Another node, with the stored count and a data directory of its own, reads the order
    // from the journal.
    let mut second = Node::start(&deployment, "node-b", 3).await;
    let order_id = order["order_id"].as_str().expect("order id");
    let (status, seen) = send(second.shopper(Method::GET, &format!("/orders/{order_id}"))).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["order_id"], order["order_id"]);
    assert_eq!(seen["status"], order["status"]);
    assert_eq!(seen["status"], "pending_payment");
    let status = second.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", second.stderr());

    schema.drop_schema().await;
    assert_data_dirs_hold_no_journal(&deployment.dir);
}

/// With `--cluster` nothing durable goes to the data directory: no RocksDB there.
fn assert_data_dirs_hold_no_journal(dir: &Path) {
    for node in ["data-node-a", "data-node-b"] {
        let data = dir.join(node);
        let entries: Vec<String> = std::fs::read_dir(&data)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            !entries
                .iter()
                .any(|name| name.contains("journal") || name.ends_with(".db")),
            "{}: {entries:?}",
            data.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_for_every_item_and_the_others_take_over_a_killed_one() {
    const PARTITIONS: u32 = 4;
    const STOCK: u64 = 6;
    let Some((deployment, schema, _dir)) = deployment().await else {
        return;
    };
    let mut nodes = vec![Node::start(&deployment, "node-a", PARTITIONS).await];
    let skus: Vec<String> = (0..8).map(|n| format!("s{n}")).collect();
    let items: Vec<(&str, u64)> = skus.iter().map(|sku| (sku.as_str(), STOCK)).collect();
    let (status, body) = send(
        nodes[0]
            .admin(Method::POST, "/admin/promotions")
            .json(&live_promotion("spread", &items, false)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    nodes.push(Node::start(&deployment, "node-b", PARTITIONS).await);
    nodes.push(Node::start(&deployment, "node-c", PARTITIONS).await);
    wait_for_view(&nodes[0], "three nodes share the partitions", |view| {
        view.len() == 3 && view.iter().all(|(_, held)| *held >= 1)
    })
    .await;

    // Every node sells every item (most of them owned elsewhere), and reads every order.
    let mut orders: Vec<(String, Value)> = Vec::new();
    for (n, sku) in skus.iter().enumerate() {
        for round in 0..3 {
            let node = &nodes[(n + round) % 3];
            let (status, order) = buy(node, sku, &format!("u{round}")).await;
            assert_eq!(
                status,
                StatusCode::CREATED,
                "{sku} through node {}: {order}",
                (n + round) % 3
            );
            orders.push((format!("u{round}"), order));
        }
    }
    for (i, (user, order)) in orders.iter().enumerate() {
        let id = order["order_id"].as_str().expect("an order id");
        let node = &nodes[(i + 1) % 3];
        let (status, seen) = send(
            node.client
                .get(node.url(&format!("/orders/{id}")))
                .header("X-User-Id", user.as_str()),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{id} read through another node: {seen}"
        );
        assert_eq!(&seen, order, "the owner's answer, whichever node is asked");
    }
    // A promotion that requires a token: the token through one node, the purchase through
    // another, neither of them (for most items) the owner.
    let tokened: Vec<String> = (0..4).map(|n| format!("t{n}")).collect();
    let tokened_items: Vec<(&str, u64)> = tokened.iter().map(|sku| (sku.as_str(), STOCK)).collect();
    let (status, body) = send(
        nodes[2]
            .admin(Method::POST, "/admin/promotions")
            .json(&live_promotion("tokened", &tokened_items, true)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for (n, sku) in tokened.iter().enumerate() {
        let asked = &nodes[(n + 1) % 3];
        let (status, grant) = send(
            asked
                .client
                .post(asked.url(&format!("/promotions/tokened/items/{sku}/token")))
                .header("X-User-Id", "holder"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "a token for {sku}: {grant}");
        let buyer = &nodes[(n + 2) % 3];
        let (status, order) = send(
            buyer
                .client
                .post(buyer.url(&format!("/promotions/tokened/items/{sku}/purchase")))
                .header("X-User-Id", "holder")
                .json(&json!({"request_id": format!("holder-{sku}"), "token": grant["token"]})),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{sku} bought with its token: {order}"
        );
    }

    let (status, stats) = send(nodes[1].admin(Method::GET, "/admin/promotions/spread")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    for item in stats["items"].as_array().expect("items") {
        assert_eq!(
            item["reserved"], 3,
            "every item's figures from its owner: {item}"
        );
    }

    sold_out_everywhere(&nodes).await;

    // kill -9 of node-b: the others take its partitions; writes to its items answer 503
    // for a while, then succeed.
    let killed = Instant::now();
    if let Some(mut child) = nodes[1].child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let survivors = [&nodes[0], &nodes[2]];
    let mut gap = Duration::ZERO;
    for (n, sku) in skus.iter().enumerate() {
        let node = survivors[n % 2];
        loop {
            let (status, order) = buy(node, sku, "after").await;
            if status == StatusCode::CREATED {
                gap = gap.max(killed.elapsed());
                orders.push(("after".into(), order));
                break;
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{sku}: {order}");
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "{sku} never sold again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "after kill -9 of one node of three, every item sold again within {gap:?} (lease TTL 3 s)"
    );
    assert!(gap < Duration::from_secs(15), "api.md: at most 15 s of 503");
    // Nothing acknowledged was lost, and nothing sold twice.
    for (user, order) in &orders {
        let id = order["order_id"].as_str().expect("an order id");
        let (status, seen) = send(
            nodes[2]
                .client
                .get(nodes[2].url(&format!("/orders/{id}")))
                .header("X-User-Id", user.as_str()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{id} after the takeover: {seen}");
    }
    let (status, stats) = send(nodes[0].admin(Method::GET, "/admin/promotions/spread")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    for item in stats["items"].as_array().expect("items") {
        assert_eq!(
            item["reserved"], 4,
            "three before, one after, each once: {item}"
        );
    }
    let items = assert_acked_present(&[&nodes[0], &nodes[2]], "spread", &orders, STOCK).await;
    let caught_up = assert_sql_matches(&schema, "spread", &orders, &items).await;
    println!("(a) SQL equal to the engine {caught_up:?} after the last check began");
    for index in [0, 2] {
        let status = nodes[index].terminate().await;
        assert_eq!(status.code(), Some(0), "{}", nodes[index].stderr());
    }
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_mid_sale_and_a_node_paused_past_its_leases_lose_and_repeat_nothing() {
    const PARTITIONS: u32 = 4;
    // More than the buyers can buy in the test's seconds: every refusal seen is a fault's.
    const STOCK: u64 = 100_000;
    // 7 s in CI (past the 3 s lease TTL); the README's full run sets 20, as the issue asks.
    let pause_s: u64 = env_value("SECKILL_TEST_PAUSE_S")
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let Some((deployment, schema, _dir)) = deployment().await else {
        return;
    };
    let mut nodes = vec![
        Node::start(&deployment, "node-a", PARTITIONS).await,
        Node::start(&deployment, "node-b", PARTITIONS).await,
    ];
    let skus = create_storm(&nodes[0], STOCK).await;

    // (d) a third node joins while buyers buy through the first two.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let buyers = tokio::spawn(keep_buying(
        vec![nodes[0].endpoint(), nodes[1].endpoint()],
        skus.clone(),
        stopped.clone(),
        "d",
        Shoppers::NewEach,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes.push(Node::start(&deployment, "node-c", PARTITIONS).await);
    wait_for_view(&nodes[0], "three nodes share the partitions", |view| {
        view.len() == 3 && view.iter().all(|(_, held)| *held >= 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);
    let (mut acked, answers) = buyers.await.expect("the buyers end");
    let refused = answers.iter().filter(|a| a.status != 201).count();
    println!(
        "(d) a node joined mid-sale: {} purchases, {} acknowledged, {refused} refused ({:?})",
        answers.len(),
        acked.len(),
        refusals(&answers)
    );
    assert!(
        answers.iter().all(|a| matches!(a.status, 201 | 503)),
        "only sales and 503 during the hand-overs: {:?}",
        refusals(&answers)
    );

    // (b) node-a is paused past its leases while buyers buy through every node, node-a
    // included (those requests wait in its socket), then goes on.
    // One buyer a node: the ones of the running nodes go on while node-a's waits.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let buyers = buyer_per_node(
        &nodes,
        &["ba", "bb", "bc"],
        &skus,
        &stopped,
        Shoppers::Shared,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes[0].signal("STOP");
    let paused = Instant::now();
    tokio::time::sleep(Duration::from_secs(pause_s)).await;
    nodes[0].signal("CONT");
    let resumed = Instant::now();
    wait_for_view(
        &nodes[1],
        "node-a rejoins and holds partitions again",
        |view| view.len() == 3 && view.iter().all(|(_, held)| *held >= 1),
    )
    .await;
    stop.send_replace(true);
    for (buyer, tag) in
        buyers
            .into_iter()
            .zip(["through node-a", "through node-b", "through node-c"])
    {
        let (more, answers) = buyer.await.expect("the buyers end");
        println!(
            "(b) node-a paused {pause_s} s (lease TTL 3 s), then rejoined; {tag}: {} purchases, {} acknowledged, refused with {:?}; longest stretch without a sale while paused {:?}",
            answers.len(),
            more.len(),
            refusals(&answers),
            longest_gap(&answers, paused, resumed)
        );
        assert!(
            answers.iter().all(fault_answer),
            "{tag}: only sales, 503 and the per-user limit while a node is paused: {:?}",
            refusals(&answers)
        );
        acked.extend(more);
    }

    // Every acknowledged order is there, on any node, no unit was sold twice, no shopper
    // holds more than the limit, and SQL says the same as the engine.
    let on = [&nodes[0], &nodes[1], &nodes[2]];
    let items = assert_acked_present(&on, "storm", &acked, STOCK).await;
    let caught_up = assert_sql_matches(&schema, "storm", &acked, &items).await;
    println!("(b), (d): SQL equal to the engine {caught_up:?} after the last check began");
    for node in nodes.iter_mut() {
        let status = node.terminate().await;
        assert_eq!(status.code(), Some(0), "{}", node.stderr());
    }
    schema.drop_schema().await;
}

/// A bound on a view reaching every node: api.md's 1 s is what the test reports; this
/// only means "never".
const VIEW_LIMIT: Duration = Duration::from_secs(10);

/// Promotion "gone", four items of one unit each, all bought through `nodes[0]` (most of
/// them owned elsewhere). Every node's public view shows them sold out soon after (the
/// time is printed: api.md allows 1 s); every node refuses a new shopper's purchase
/// `sold_out` (the owner's answer) and token `sold_out` (by itself, from the owners'
/// views). A cancel brings the stock back in every node's view.
async fn sold_out_everywhere(nodes: &[Node]) {
    let skus = ["g0", "g1", "g2", "g3"];
    let items: Vec<(&str, u64)> = skus.iter().map(|sku| (*sku, 1)).collect();
    let (status, body) = send(
        nodes[0]
            .admin(Method::POST, "/admin/promotions")
            .json(&live_promotion("gone", &items, false)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut orders = Vec::new();
    for sku in skus {
        let (status, order) = send(
            nodes[0]
                .shopper(
                    Method::POST,
                    &format!("/promotions/gone/items/{sku}/purchase"),
                )
                .json(&json!({"request_id": format!("first-{sku}")})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{sku}: {order}");
        orders.push(order);
    }
    let sold = Instant::now();
    let shown = wait_until_every_node_shows(nodes, |item| {
        item["sold_out"] == true && item["remaining"] == 0
    })
    .await;
    println!("views: sold out shown by every node {shown:?} after the last sale (api.md: 1 s)");

    // A purchase of a live item is the owner's to refuse (a view cannot know of an order
    // placed since it was built, which a retry must get back); a token, the node's own.
    refuse_everywhere(nodes, &skus, "purchase").await;
    let handed_before = join_all(nodes.iter().map(forwarded_calls)).await;
    refuse_everywhere(nodes, &skus, "token").await;
    let handed_after = join_all(nodes.iter().map(forwarded_calls)).await;
    let handed: u64 = handed_after
        .iter()
        .zip(&handed_before)
        .map(|(after, before)| after - before)
        .sum();
    let asked = (nodes.len() * skus.len()) as u64;
    println!("views: {handed} of {asked} sold-out token refusals were handed to an owner");
    // Every one of them when the views do not work (three in four items are owned
    // elsewhere); a view gone stale on a loaded machine may hand over one or two.
    assert!(
        handed * 2 < asked,
        "the sold-out token refusals are every node's own: {handed} of {asked} handed over"
    );
    // The buyer's retry still gets its order, through a node that is not the owner too.
    for (n, node) in nodes.iter().enumerate() {
        let sku = skus[n];
        let (status, again) = send(
            node.shopper(
                Method::POST,
                &format!("/promotions/gone/items/{sku}/purchase"),
            )
            .json(&json!({"request_id": format!("first-{sku}")})),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{sku} retried through node {n}: {again}"
        );
        assert_eq!(again["order_id"], orders[n]["order_id"]);
    }

    let id = orders[0]["order_id"].as_str().expect("an order id");
    let (status, cancelled) =
        send(nodes[2].shopper(Method::POST, &format!("/orders/{id}/cancel"))).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let back = Instant::now();
    let shown = wait_until_every_node_shows(nodes, |item| {
        item["sku"] != "g0" || (item["sold_out"] == false && item["remaining"] == 1)
    })
    .await;
    println!("views: stock back shown by every node {shown:?} after the cancel (api.md: 1 s); sold out {:?} before", back - sold);
}

/// A new shopper's `route` (`purchase` or `token`) of every sku of "gone" through every
/// node answers 409 `sold_out`.
async fn refuse_everywhere(nodes: &[Node], skus: &[&str], route: &str) {
    for (n, node) in nodes.iter().enumerate() {
        for sku in skus {
            let (status, body) = send(
                node.client
                    .post(node.url(&format!("/promotions/gone/items/{sku}/{route}")))
                    .header("X-User-Id", format!("late-{n}-{sku}"))
                    .json(&json!({"request_id": "r1"})),
            )
            .await;
            assert_eq!(
                (status, &body["error"]["code"]),
                (StatusCode::CONFLICT, &json!("sold_out")),
                "{route} of {sku} through node {n}"
            );
        }
    }
}

/// Polls every node's `GET /promotions/gone` until `check` holds for each of its items;
/// the time it took.
async fn wait_until_every_node_shows(nodes: &[Node], check: impl Fn(&Value) -> bool) -> Duration {
    let started = Instant::now();
    for node in nodes {
        loop {
            let (status, view) = send(node.client.get(node.url("/promotions/gone"))).await;
            assert_eq!(status, StatusCode::OK, "{view}");
            if view["items"]
                .as_array()
                .is_some_and(|items| items.iter().all(&check))
            {
                break;
            }
            assert!(
                started.elapsed() < VIEW_LIMIT,
                "not shown by {}: {view}",
                node.base
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    started.elapsed()
}

/// How many calls `node` has handed to other nodes, by its `/metrics`.
async fn forwarded_calls(node: &Node) -> u64 {
    let text = node
        .client
        .get(node.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|line| line.starts_with("seckill_cluster_forward_seconds_count"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|count| count as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_on_two_nodes_never_both_get_a_sku_into_overlapping_windows() {
    const ROUNDS: usize = 100;
    let Some((deployment, schema, _dir)) = deployment().await else {
        return;
    };
    const STOCK: u64 = 100_000;
    let mut nodes = [
        Node::start(&deployment, "node-a", 2).await,
        Node::start(&deployment, "node-b", 2).await,
    ];
    // Under a running sale: a buyer on each node throughout.
    let skus = create_storm(&nodes[0], STOCK).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let buyers = buyer_per_node(&nodes, &["ea", "eb"], &skus, &stopped, Shoppers::Shared);
    let started = Instant::now();
    for round in 0..ROUNDS {
        let sku = format!("shared-{round}");
        let create = |node: &Node, side: &str| {
            node.admin(Method::POST, "/admin/promotions")
                .json(&live_promotion(
                    &format!("race-{round}-{side}"),
                    &[(sku.as_str(), 5)],
                    false,
                ))
        };
        let ((status_a, body_a), (status_b, body_b)) =
            tokio::join!(send(create(&nodes[0], "a")), send(create(&nodes[1], "b")));
        let mut statuses = [status_a, status_b];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "round {round}: exactly one create wins: {body_a} / {body_b}"
        );
        let refusal = if status_a == StatusCode::CONFLICT {
            &body_a
        } else {
            &body_b
        };
        assert_eq!(
            refusal["error"]["code"], "sku_in_other_promotion",
            "{refusal}"
        );
    }
    let raced = started.elapsed();
    stop.send_replace(true);
    let (mut acked, mut answers) = (Vec::new(), Vec::new());
    for buyer in buyers {
        let (more, seen) = buyer.await.expect("the buyers end");
        acked.extend(more);
        answers.extend(seen);
    }
    println!(
        "(e) {ROUNDS} rounds of two creates sharing a sku on two nodes at once: one won each, in {raced:?}; meanwhile {} purchases, {} acknowledged, refused with {:?}",
        answers.len(),
        acked.len(),
        refusals(&answers)
    );
    assert!(
        answers.iter().all(fault_answer),
        "only sales, 503 and the per-user limit beside the creates: {:?}",
        refusals(&answers)
    );
    let items = assert_acked_present(&[&nodes[0], &nodes[1]], "storm", &acked, STOCK).await;
    assert_sql_matches(&schema, "storm", &acked, &items).await;
    for node in nodes.iter_mut() {
        let status = node.terminate().await;
        assert_eq!(status.code(), Some(0), "{}", node.stderr());
    }
    schema.drop_schema().await;
}
