//! The order events end to end: a sale over real HTTP against the `seckill` server, with
//! its `--events` targets read back by the shop's side: a webhook receiver written here
//! (axum) that checks every `Seckill-Signature`, NATS JetStream, and RabbitMQ.
//!
//! The sale has a few thousand orders in all four states: paid by the operator, cancelled
//! by the shopper, expired (a promotion with the shortest payment timeout, waited out) and
//! still pending; one item sells out. Every target must get every event the sale makes
//! (derived from the orders the test made), each order's events in the order of its life,
//! after its promotion's creation, and an id only ever again as a repeat with the same
//! body. Then the outages, each in the middle of a sale, each ending with nothing missing:
//! a webhook answering 503 for a while; a NATS server of the test's own killed and started
//! again on its store; the shared RabbitMQ stopped and started (`rabbitmqctl stop_app`,
//! only with `SECKILL_TEST_AMQP_OUTAGE=1`: it disturbs everyone using the broker); and
//! seckill itself killed (-9) and stopped (SIGTERM) while its targets are down, restarted
//! on its data directory each time, the targets brought back only at the end.
//!
//! Targets: the webhook always; NATS at `SECKILL_TEST_EVENTS_NATS_URL` and RabbitMQ at
//! `SECKILL_TEST_AMQP_URL` (a test whose target is not set says it is skipped); the NATS
//! outage runs `nats-server` (found on PATH) on a free loopback port. The shared stream and
//! exchange carry other runs' events too: each run's promotions have ids of their own, and
//! only their events are kept.
//!
//! Each test prints what it measured (events per second per target, the largest lag from
//! the engine's decision to the shop's receipt): run with `-- --nocapture` to see it.
#![cfg(feature = "persistence")]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use reqwest::StatusCode;
use seckill_persistence::events::amqp::EXCHANGE;
use seckill_persistence::events::cloudevent::{
    TYPE_ITEM_SOLD_OUT, TYPE_ORDER_CANCELLED, TYPE_ORDER_CREATED, TYPE_ORDER_EXPIRED,
    TYPE_ORDER_PAID, TYPE_PROMOTION_CREATED,
};
use seckill_persistence::events::nats::{STREAM, SUBJECT_PREFIX};
use seckill_persistence::events::webhook::{verify_signature, CONTENT_TYPE, SIGNATURE_HEADER};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use common::{Mode, TestServer, ADMIN_KEY, GENEROUS_LIMITS};

/// Orders per sale.
const ORDERS: usize = 3_000;
/// Shoppers at once.
const CONCURRENCY: usize = 32;
/// The shortest payment timeout api.md allows: the orders left unpaid expire during the test.
const PAYMENT_TIMEOUT_S: u64 = 10;
/// How long an outage lasts once the sale is through it.
const OUTAGE: Duration = Duration::from_secs(4);
const SECRET: &str = "whsec_events_end_to_end";
/// How far the receiver lets a signature's time be from its clock.
const SIGNATURE_TOLERANCE_S: i64 = 300;
/// Bounds against a hang; the figures printed are the measurements, not these.
const DELIVERY_WAIT: Duration = Duration::from_secs(180);
const EXPIRY_WAIT: Duration = Duration::from_secs(60);
const START_WAIT: Duration = Duration::from_secs(60);
const STOP_WAIT: Duration = Duration::from_secs(30);
const FETCH_WAIT: Duration = Duration::from_secs(10);
const RABBITMQCTL_WAIT: Duration = Duration::from_secs(90);
/// After every expected event came, how long the targets are watched for a late repeat.
const QUIET: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(100);
/// A test queue on the shared broker disappears once unused this long, also when the test
/// died without deleting it.
const QUEUE_EXPIRES_MS: i32 = 600_000;

/// The RabbitMQ outage stops the shared broker: the other test that uses it waits for it.
static SHARED_BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

const SOLD_SKU: &str = "a-sold";
const MIX_SKU: &str = "a-mix";
const WAIT_SKU: &str = "b-wait";

// ----- the sale -----

/// What a shopper's order comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Paid,
    Cancelled,
    Expired,
    Pending,
}

/// One shopper's part in the sale: one unit of one item, and what becomes of the order.
#[derive(Debug, Clone)]
struct Flow {
    user: String,
    promotion: String,
    sku: &'static str,
    fate: Fate,
}

/// An order the server made.
#[derive(Debug, Clone)]
struct Placed {
    order_id: String,
    fate: Fate,
}

/// A sale of two promotions with ids of this run's own:
/// - `<run>-a`, payment timeout 10 s: `a-sold`, whose stock is its buyers' (the last one
///   sells it out, and all of them pay, so it stays sold out), and `a-mix` with stock to
///   spare, whose orders are paid, cancelled or left to expire;
/// - `<run>-b`, the default payment timeout: `b-wait`, whose orders stay pending.
struct Sale {
    run: String,
    expiring: String,
    waiting: String,
    flows: Vec<Flow>,
}

impl Sale {
    fn plan(orders: usize) -> Sale {
        let run = format!("ev{:08x}", rand::random::<u32>());
        let expiring = format!("{run}-a");
        let waiting = format!("{run}-b");
        let flows = (0..orders)
            .map(|n| {
                // Interleaved, so that every part of the sale has every kind of order.
                let (promotion, sku, fate) = match n % 6 {
                    0 => (&expiring, SOLD_SKU, Fate::Paid),
                    1 => (&expiring, MIX_SKU, Fate::Paid),
                    2 => (&expiring, MIX_SKU, Fate::Cancelled),
                    3 => (&expiring, MIX_SKU, Fate::Expired),
                    _ => (&waiting, WAIT_SKU, Fate::Pending),
                };
                Flow {
                    user: format!("{run}-u{n}"),
                    promotion: promotion.clone(),
                    sku,
                    fate,
                }
            })
            .collect();
        Sale {
            run,
            expiring,
            waiting,
            flows,
        }
    }

    fn halves(&self) -> (Range<usize>, Range<usize>) {
        let half = self.flows.len() / 2;
        (0..half, half..self.flows.len())
    }

    async fn open(&self, shop: &Shop) {
        let sold_stock = self.flows.iter().filter(|f| f.sku == SOLD_SKU).count();
        let spare = self.flows.len();
        let promotion = |id: &str, items: Vec<Value>, payment_timeout_s: u64| {
            json!({
                "id": id,
                "name": format!("Events test {id}"),
                "starts_at": common::at(-60),
                "ends_at": common::at(3_600),
                "payment_timeout_s": payment_timeout_s,
                "require_token": false,
                "items": items,
            })
        };
        shop.create_promotion(&promotion(
            self.expiring.as_str(),
            vec![item(SOLD_SKU, sold_stock), item(MIX_SKU, spare)],
            PAYMENT_TIMEOUT_S,
        ))
        .await;
        let waiting = promotion(self.waiting.as_str(), vec![item(WAIT_SKU, spare)], 900);
        shop.create_promotion(&waiting).await;
    }

    /// Plays the flows of `range`, `CONCURRENCY` shoppers at once.
    async fn play(&self, shop: &Shop, range: Range<usize>) -> Vec<Placed> {
        futures::stream::iter(&self.flows[range])
            .map(|flow| shop.play(flow))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }

    /// Waits until no order of the expiring promotion is pending any more.
    async fn wait_expired(&self, shop: &Shop) {
        let deadline = Instant::now() + EXPIRY_WAIT;
        loop {
            let reserved = shop.reserved(&self.expiring).await;
            if reserved == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{reserved} units still reserved in {} after {EXPIRY_WAIT:?}",
                self.expiring
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The events the sale must have sent, from the orders it made.
    fn expected(&self, placed: &[Placed]) -> Expected {
        let mut keys = BTreeSet::new();
        let mut lives = BTreeMap::new();
        for promotion in [&self.expiring, &self.waiting] {
            keys.insert((TYPE_PROMOTION_CREATED.to_owned(), promotion.clone()));
        }
        keys.insert((
            TYPE_ITEM_SOLD_OUT.to_owned(),
            format!("{}/{SOLD_SKU}", self.expiring),
        ));
        for order in placed {
            let mut life = vec![TYPE_ORDER_CREATED];
            life.extend(match order.fate {
                Fate::Paid => Some(TYPE_ORDER_PAID),
                Fate::Cancelled => Some(TYPE_ORDER_CANCELLED),
                Fate::Expired => Some(TYPE_ORDER_EXPIRED),
                Fate::Pending => None,
            });
            for kind in &life {
                keys.insert(((*kind).to_owned(), order.order_id.clone()));
            }
            lives.insert(order.order_id.clone(), life);
        }
        Expected { keys, lives }
    }
}

/// One item of a promotion, one unit per shopper.
fn item(sku: &str, stock: usize) -> Value {
    json!({"sku": sku, "stock": stock, "price_cents": 1999, "per_user_limit": 1})
}

/// The shop's side of a sale over HTTP: the operator and the shoppers (`--auth header`).
struct Shop {
    base: String,
    http: reqwest::Client,
}

impl Shop {
    fn new(base: &str) -> Shop {
        Shop {
            base: base.to_owned(),
            http: common::client(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn create_promotion(&self, body: &Value) {
        let request = self
            .http
            .post(self.url("/admin/promotions"))
            .bearer_auth(ADMIN_KEY)
            .json(body);
        let (status, answer) = common::send(request).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }

    /// Buys, then at once pays or cancels as `flow` says (well within the payment timeout).
    async fn play(&self, flow: &Flow) -> Placed {
        let path = format!("/promotions/{}/items/{}/purchase", flow.promotion, flow.sku);
        let purchase = self
            .http
            .post(self.url(&path))
            .header("X-User-Id", flow.user.as_str())
            .json(&json!({"request_id": format!("{}-r", flow.user)}));
        let (status, order) = common::send(purchase).await;
        assert_eq!(status, StatusCode::CREATED, "{}: {order}", flow.user);
        let order_id = order["order_id"].as_str().expect("an order id").to_owned();
        let answer = match flow.fate {
            Fate::Paid => Some(
                self.http
                    .post(self.url(&format!("/admin/orders/{order_id}/pay")))
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"payment_ref": format!("psp-{order_id}")})),
            ),
            Fate::Cancelled => Some(
                self.http
                    .post(self.url(&format!("/orders/{order_id}/cancel")))
                    .header("X-User-Id", flow.user.as_str()),
            ),
            Fate::Expired | Fate::Pending => None,
        };
        if let Some(request) = answer {
            let (status, closed) = common::send(request).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{order_id} ({:?}): {closed}",
                flow.fate
            );
        }
        Placed {
            order_id,
            fate: flow.fate,
        }
    }

    /// Units held by pending orders in `promotion`, over its items.
    async fn reserved(&self, promotion: &str) -> u64 {
        let request = self
            .http
            .get(self.url(&format!("/admin/promotions/{promotion}")))
            .bearer_auth(ADMIN_KEY);
        let (status, body) = common::send(request).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|item| item["reserved"].as_u64().expect("reserved"))
            .sum()
    }

    async fn metrics(&self) -> String {
        let response = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("/metrics");
        response.text().await.expect("the metrics text")
    }
}

/// What `/metrics` must show of a target: its lag, in events and seconds.
fn assert_lag_metrics(metrics: &str, label_prefix: &str) {
    for metric in ["seckill_events_lag_events", "seckill_events_lag_seconds"] {
        let line = format!("{metric}{{target=\"{label_prefix}");
        assert!(
            metrics.lines().any(|l| l.starts_with(&line)),
            "/metrics has no {line}...: {metrics}"
        );
    }
}

// ----- what the targets must get -----

/// The events of a sale: each `(type, subject)` once (repeats aside), and each order's
/// types in the order of its life.
struct Expected {
    keys: BTreeSet<(String, String)>,
    lives: BTreeMap<String, Vec<&'static str>>,
}

impl Expected {
    fn missing_from(&self, got: &[Got]) -> usize {
        let have: BTreeSet<(&str, &str)> = got
            .iter()
            .map(|event| (event.kind.as_str(), event.subject.as_str()))
            .collect();
        self.keys
            .iter()
            .filter(|(kind, subject)| !have.contains(&(kind.as_str(), subject.as_str())))
            .count()
    }
}

/// One CloudEvent as a target got it.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    kind: String,
    subject: String,
    source: String,
    /// The bytes as delivered: a repeat must be the same bytes.
    body: Vec<u8>,
    event: Value,
    arrived_ms: i64,
}

impl Got {
    /// When the engine decided it: the CloudEvent `time`.
    fn decided_ms(&self) -> Option<i64> {
        self.event["time"].as_str().and_then(rfc3339_ms)
    }

    /// From the engine's decision to the receipt.
    fn lag_ms(&self) -> i64 {
        self.decided_ms()
            .map_or(0, |decided_ms| self.arrived_ms - decided_ms)
    }
}

/// How an event came: what the transport says of it, to be checked against the event.
enum Via<'a> {
    Webhook,
    Nats {
        msg_id: Option<&'a str>,
        subject: &'a str,
    },
    Amqp {
        message_id: Option<&'a str>,
        routing_key: &'a str,
        delivery_mode: Option<u8>,
    },
}

impl Via<'_> {
    fn problem(&self, id: &str, kind: &str) -> Option<String> {
        match self {
            Via::Webhook => None,
            Via::Nats { msg_id, subject } => {
                let want_subject = format!("{SUBJECT_PREFIX}.{kind}");
                (*msg_id != Some(id) || *subject != want_subject)
                    .then(|| format!("event {id}: Nats-Msg-Id {msg_id:?}, subject {subject}"))
            }
            Via::Amqp {
                message_id,
                routing_key,
                delivery_mode,
            } => (*message_id != Some(id) || *routing_key != kind || *delivery_mode != Some(2))
                .then(|| {
                    format!(
                        "event {id}: message_id {message_id:?}, routing key {routing_key}, \
                         delivery mode {delivery_mode:?} (2 is persistent)"
                    )
                }),
        }
    }
}

/// What one target got of this run's events, in the order they came.
struct Inbox {
    /// The run's promotion ids start with this.
    prefix: String,
    got: Mutex<Vec<Got>>,
    problems: Mutex<Vec<String>>,
}

impl Inbox {
    fn new(run: &str) -> Arc<Inbox> {
        Arc::new(Inbox {
            prefix: format!("{run}-"),
            got: Mutex::new(Vec::new()),
            problems: Mutex::new(Vec::new()),
        })
    }

    /// Keeps `body` if it is an event of this run.
    fn accept(&self, body: &[u8], via: Via<'_>) {
        let Ok(event) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        if !self.is_ours(&event) {
            return;
        }
        let text = |field: &str| event[field].as_str().unwrap_or_default().to_owned();
        let (id, kind) = (text("id"), text("type"));
        let (subject, source) = (text("subject"), text("source"));
        if let Some(problem) = via.problem(&id, &kind) {
            self.problem(problem);
        }
        let got = Got {
            id,
            kind,
            subject,
            source,
            body: body.to_vec(),
            arrived_ms: unix_now_ms(),
            event,
        };
        self.got.lock().expect("the inbox").push(got);
    }

    /// Whether `event` is about one of this run's promotions (its orders and items carry
    /// `data.promotion_id`; a promotion event's subject is the promotion).
    fn is_ours(&self, event: &Value) -> bool {
        let promotion = event["data"]["promotion_id"].as_str().or_else(|| {
            let kind = event["type"].as_str().unwrap_or_default();
            kind.starts_with("seckill.promotion.")
                .then(|| event["subject"].as_str())
                .flatten()
        });
        promotion.is_some_and(|id| id.starts_with(&self.prefix))
    }

    fn problem(&self, problem: String) {
        self.problems.lock().expect("the inbox").push(problem);
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().expect("the inbox").clone()
    }

    fn problems(&self) -> Vec<String> {
        self.problems.lock().expect("the inbox").clone()
    }
}

/// A target by name, with what it got.
#[derive(Clone)]
struct Target {
    name: String,
    inbox: Arc<Inbox>,
}

/// Waits until every target got every expected event, then a moment more for repeats.
async fn wait_for_all(targets: &[Target], expected: &Expected) {
    let deadline = Instant::now() + DELIVERY_WAIT;
    loop {
        let missing: Vec<(String, usize, Vec<String>)> = targets
            .iter()
            .map(|t| {
                let problems: Vec<String> = t.inbox.problems().into_iter().take(3).collect();
                (
                    t.name.clone(),
                    expected.missing_from(&t.inbox.got()),
                    problems,
                )
            })
            .filter(|(_, missing, _)| *missing > 0)
            .collect();
        if missing.is_empty() {
            tokio::time::sleep(QUIET).await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {DELIVERY_WAIT:?}, of {} events still missing (target, count, problems): \
             {missing:?}",
            expected.keys.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A target's distinct events, in the order they first came, checked.
struct Checked {
    target: String,
    firsts: Vec<Got>,
    repeats: usize,
}

/// Checks the rules of the contract on what `target` got: nothing missing and nothing
/// else, one id per event and one body per id, each order's life in order and after its
/// promotion's creation, the CloudEvents envelope, and what the transport says.
fn check(target: &Target, expected: &Expected) -> Checked {
    let name = &target.name;
    let problems = target.inbox.problems();
    assert!(
        problems.is_empty(),
        "{name}: {} problems, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    let got = target.inbox.got();
    let firsts = distinct(name, &got);
    check_set(name, &firsts, expected);
    check_order(name, &firsts, expected);
    let source = firsts.first().map(|e| e.source.clone()).unwrap_or_default();
    assert!(source.starts_with("/seckill/"), "{name}: source {source:?}");
    for event in &firsts {
        check_envelope(name, event, &source);
    }
    Checked {
        target: name.clone(),
        repeats: got.len() - firsts.len(),
        firsts: firsts.into_iter().cloned().collect(),
    }
}

/// The first arrival of each id; a repeat must have the body of the first, and each
/// `(type, subject)` one id.
fn distinct<'a>(name: &str, got: &'a [Got]) -> Vec<&'a Got> {
    let mut body_of: HashMap<&str, &[u8]> = HashMap::new();
    let mut id_of: HashMap<(&str, &str), &str> = HashMap::new();
    let mut firsts = Vec::new();
    for event in got {
        let key = (event.kind.as_str(), event.subject.as_str());
        let id = *id_of.entry(key).or_insert(event.id.as_str());
        assert_eq!(id, event.id.as_str(), "{name}: two ids for {key:?}");
        match body_of.get(event.id.as_str()) {
            Some(body) => assert!(
                *body == event.body.as_slice(),
                "{name}: {} came again with another body",
                event.id
            ),
            None => {
                body_of.insert(&event.id, &event.body);
                firsts.push(event);
            }
        }
    }
    firsts
}

fn check_set(name: &str, firsts: &[&Got], expected: &Expected) {
    let have: BTreeSet<(String, String)> = firsts
        .iter()
        .map(|event| (event.kind.clone(), event.subject.clone()))
        .collect();
    let missing: Vec<_> = expected.keys.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "{name}: {} of {} events missing, e.g. {:?}",
        missing.len(),
        expected.keys.len(),
        &missing[..missing.len().min(5)]
    );
    let unexpected: Vec<_> = have.difference(&expected.keys).collect();
    assert!(
        unexpected.is_empty(),
        "{name}: {} events the sale did not make, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );
}

fn check_order(name: &str, firsts: &[&Got], expected: &Expected) {
    let mut created: BTreeSet<&str> = BTreeSet::new();
    let mut lives: HashMap<&str, Vec<&str>> = HashMap::new();
    for event in firsts {
        if event.kind == TYPE_PROMOTION_CREATED {
            created.insert(&event.subject);
        }
        if let Some(promotion) = event.event["data"]["promotion_id"].as_str() {
            assert!(
                created.contains(promotion),
                "{name}: {} came before the creation of {promotion}",
                event.id
            );
        }
        if event.kind.starts_with("seckill.order.") {
            lives.entry(&event.subject).or_default().push(&event.kind);
        }
    }
    for (order, life) in &expected.lives {
        let got_life = lives.get(order.as_str()).cloned().unwrap_or_default();
        assert_eq!(
            got_life, *life,
            "{name}: the events of order {order}, in the order they came"
        );
    }
}

fn check_envelope(name: &str, got: &Got, source: &str) {
    let event = &got.event;
    assert_eq!(event["specversion"], "1.0", "{name}: {event}");
    assert_eq!(
        event["datacontenttype"], "application/json",
        "{name}: {event}"
    );
    assert_eq!(got.source, source, "{name}: one deployment, one source");
    assert!(
        event["time"].as_str().and_then(rfc3339_ms).is_some(),
        "{name}: time: {event}"
    );
    let status = match got.kind.as_str() {
        TYPE_ORDER_CREATED => Some("pending_payment"),
        TYPE_ORDER_PAID => Some("paid"),
        TYPE_ORDER_CANCELLED => Some("cancelled"),
        TYPE_ORDER_EXPIRED => Some("expired"),
        _ => None,
    };
    if let Some(status) = status {
        assert_eq!(
            event["data"]["order_id"],
            got.subject.as_str(),
            "{name}: {event}"
        );
        assert_eq!(event["data"]["status"], status, "{name}: {event}");
    }
    if got.kind == TYPE_ITEM_SOLD_OUT {
        assert_eq!(event["data"]["sku"], SOLD_SKU, "{name}: {event}");
        assert_eq!(event["data"]["remaining"], 0, "{name}: {event}");
    }
}

impl Checked {
    /// Prints the pace of the events decided by `decided_by_ms` that first came at or after
    /// `since_ms` (the sale's events while it ran, or the backlog of an outage once the
    /// target was back), and the lag from the engine's decision to the receipt, over all.
    fn report(&self, what: &str, since_ms: i64, decided_by_ms: i64) {
        let counted: Vec<&Got> = self
            .firsts
            .iter()
            .filter(|e| e.arrived_ms >= since_ms)
            .filter(|e| e.decided_ms().is_some_and(|at| at <= decided_by_ms))
            .collect();
        let last_ms = counted
            .iter()
            .map(|e| e.arrived_ms)
            .max()
            .unwrap_or(since_ms);
        let seconds = (last_ms - since_ms).max(1) as f64 / 1_000.0;
        let mut lags: Vec<i64> = self.firsts.iter().map(Got::lag_ms).collect();
        lags.sort_unstable();
        let percentile = |p: usize| lags.get(lags.len().saturating_sub(1) * p / 100).copied();
        println!(
            "events e2e: {}: {what}: {} events in {seconds:.1} s ({:.0} events/s); {} \
             distinct events, {} repeats; lag p50 {} ms, p99 {} ms, largest {} ms",
            self.target,
            counted.len(),
            counted.len() as f64 / seconds,
            self.firsts.len(),
            self.repeats,
            percentile(50).unwrap_or(0),
            percentile(99).unwrap_or(0),
            lags.last().copied().unwrap_or(0),
        );
    }
}

// ----- the webhook receiver -----

/// The shop's webhook endpoint: checks each signature (a bad one is a problem, answered 401),
/// then answers with the status it is set to, keeping the events it accepts.
struct Webhook {
    url: String,
    port: u16,
    state: Arc<HookState>,
    task: JoinHandle<()>,
}

struct HookState {
    inbox: Arc<Inbox>,
    status: AtomicU16,
    refused: AtomicU64,
}

impl Webhook {
    async fn start(run: &str) -> Webhook {
        let state = Arc::new(HookState {
            inbox: Inbox::new(run),
            status: AtomicU16::new(200),
            refused: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/hooks/orders", post(receive))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let port = listener.local_addr().expect("its address").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Webhook {
            url: format!("http://127.0.0.1:{port}/hooks/orders"),
            port,
            state,
            task,
        }
    }

    /// From now on, answers `status` to every correctly signed delivery.
    fn answer(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    fn target(&self) -> Target {
        Target {
            name: "webhook".into(),
            inbox: Arc::clone(&self.state.inbox),
        }
    }

    /// The start of the label seckill gives this target in `/metrics`.
    fn label_prefix(&self) -> String {
        format!("webhook 127.0.0.1:{} #", self.port)
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<Arc<HookState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signature = header(SIGNATURE_HEADER);
    // Over the raw body, before anything reads it.
    if !verify_signature(
        SECRET.as_bytes(),
        &signature,
        &body,
        unix_now_ms() / 1_000,
        SIGNATURE_TOLERANCE_S,
    ) {
        state.inbox.problem(format!(
            "a bad signature {signature:?} on {} bytes",
            body.len()
        ));
        return StatusCode::UNAUTHORIZED;
    }
    let content_type = header("content-type");
    if content_type != CONTENT_TYPE {
        state
            .inbox
            .problem(format!("content type {content_type:?}"));
    }
    let status = state.status.load(Ordering::SeqCst);
    if status != 200 {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    }
    state.inbox.accept(&body, Via::Webhook);
    StatusCode::OK
}

// ----- NATS JetStream -----

/// Reads `SECKILL_EVENTS` in the background from a sequence number on, keeping this run's
/// events; after any error (the server went away) it takes up where it stopped.
struct NatsReader {
    inbox: Arc<Inbox>,
    task: JoinHandle<()>,
}

impl NatsReader {
    /// Reads what the stream gets from now on (the stream is made, as the sink makes it,
    /// if it is not there yet).
    async fn start(url: &str, run: &str) -> NatsReader {
        // A server just started listens before it answers (it recovers its JetStream
        // store first; seconds on a loaded machine): the handshake is tried again.
        let deadline = Instant::now() + START_WAIT;
        let client = loop {
            match async_nats::connect(url).await {
                Ok(client) => break client,
                Err(error) => assert!(Instant::now() < deadline, "NATS at {url}: {error}"),
            }
            tokio::time::sleep(POLL).await;
        };
        let js = async_nats::jetstream::new(client);
        let from_seq = stream_end(&js).await + 1;
        let inbox = Inbox::new(run);
        let task = tokio::spawn(read_nats(js, from_seq, Arc::clone(&inbox)));
        NatsReader { inbox, task }
    }

    fn target(&self, name: &str) -> Target {
        Target {
            name: name.to_owned(),
            inbox: Arc::clone(&self.inbox),
        }
    }
}

impl Drop for NatsReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The stream's last sequence number (a JetStream that is still starting is waited for).
async fn stream_end(js: &async_nats::jetstream::Context) -> u64 {
    use async_nats::jetstream::stream::{Config, StorageType};
    let config = Config {
        name: STREAM.to_owned(),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        storage: StorageType::File,
        num_replicas: 1,
        ..Config::default()
    };
    let deadline = Instant::now() + START_WAIT;
    loop {
        let stream = js.get_or_create_stream(config.clone()).await;
        let info = match stream {
            Ok(stream) => stream.get_info().await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match info {
            Ok(info) => return info.state.last_sequence,
            Err(error) => assert!(Instant::now() < deadline, "the stream {STREAM}: {error}"),
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn read_nats(js: async_nats::jetstream::Context, mut next_seq: u64, inbox: Arc<Inbox>) {
    loop {
        // An error is a server that went away or a consumer it lost: start again from the
        // next sequence number, with a new consumer.
        let _ = read_nats_from(&js, &mut next_seq, &inbox).await;
        tokio::time::sleep(POLL * 3).await;
    }
}

async fn read_nats_from(
    js: &async_nats::jetstream::Context,
    next_seq: &mut u64,
    inbox: &Inbox,
) -> Result<(), String> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let stream = js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: *next_seq,
            },
            ack_policy: AckPolicy::None,
            filter_subject: format!("{SUBJECT_PREFIX}.>"),
            inactive_threshold: Duration::from_secs(60),
            ..pull::Config::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let fetched = tokio::time::timeout(FETCH_WAIT, async {
            let batch = consumer
                .fetch()
                .max_messages(1_000)
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(batch.collect::<Vec<_>>().await)
        })
        .await
        .map_err(|_| "a fetch did not answer".to_owned())??;
        if fetched.is_empty() {
            tokio::time::sleep(POLL).await;
            continue;
        }
        for message in fetched {
            let message = message.map_err(|e| e.to_string())?;
            let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
            if seq < *next_seq {
                continue;
            }
            *next_seq = seq + 1;
            let msg_id = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get("Nats-Msg-Id"))
                .map(|id| id.as_str());
            let via = Via::Nats {
                msg_id,
                subject: message.subject.as_str(),
            };
            inbox.accept(&message.payload, via);
        }
    }
}

/// A `nats-server` of the test's own on a free loopback port, with JetStream on a store
/// that outlives a kill; killed (by its pid) when dropped.
struct NatsServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// `nats-server` on PATH (or Debian's), or None with a printed line.
    fn binary() -> Option<PathBuf> {
        let on_path = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file());
        let found = on_path.or_else(|| {
            let debian = PathBuf::from("/usr/sbin/nats-server");
            debian.is_file().then_some(debian)
        });
        if found.is_none() {
            println!("skipped: no nats-server on PATH");
        }
        found
    }

    /// Not started yet: its URL already names its port.
    fn new(binary: PathBuf) -> NatsServer {
        NatsServer {
            binary,
            port: common::process::free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same store) and waits until it takes connections.
    async fn start(&mut self) {
        let store = self.dir.path().join("store");
        let log = self.dir.path().join("nats-server.log");
        let port = self.port.to_string();
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", port.as_str()])
            .arg("-sd")
            .arg(&store)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + START_WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}: {}",
                self.port,
                tail(&log)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL, by its pid: what JetStream acknowledged is in its store.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ----- RabbitMQ -----

/// A durable queue of this run bound to every event type, read in the background with
/// acknowledgements, so that it survives a broker restart and loses nothing across one;
/// the reader connects again after any error.
struct AmqpReader {
    url: String,
    queue: String,
    inbox: Arc<Inbox>,
    task: JoinHandle<()>,
}

impl AmqpReader {
    /// Binds the queue before it returns: the exchange drops what no queue is bound to.
    async fn start(url: &str, run: &str) -> AmqpReader {
        let queue = format!("seckill-events-test-{run}");
        // Declared and bound now; the reader declares it again (the same: a no-op).
        open_queue(url, &queue).await.expect("RabbitMQ");
        let inbox = Inbox::new(run);
        let task = tokio::spawn(read_amqp(url.to_owned(), queue.clone(), Arc::clone(&inbox)));
        AmqpReader {
            url: url.to_owned(),
            queue,
            inbox,
            task,
        }
    }

    fn target(&self) -> Target {
        Target {
            name: "rabbitmq".into(),
            inbox: Arc::clone(&self.inbox),
        }
    }

    /// Stops reading and deletes the queue (which would otherwise expire by itself).
    async fn delete(self) {
        use lapin::options::QueueDeleteOptions;
        self.task.abort();
        if let Ok((_connection, channel)) = open_queue(&self.url, &self.queue).await {
            let _ = channel
                .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

impl Drop for AmqpReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn open_queue(
    url: &str,
    queue: &str,
) -> Result<(lapin::Connection, lapin::Channel), lapin::Error> {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // Declared as the sink declares it (no conflict), so the queue can be bound first.
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            EXCHANGE.into(),
            lapin::ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(QUEUE_EXPIRES_MS));
    channel
        .queue_declare(queue.into(), durable_queue, arguments)
        .await?;
    channel
        .queue_bind(
            queue.into(),
            EXCHANGE.into(),
            "seckill.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((connection, channel))
}

async fn read_amqp(url: String, queue: String, inbox: Arc<Inbox>) {
    loop {
        // An error is a broker that went away: connect again; what was not acknowledged
        // comes again from the queue.
        let _ = read_amqp_once(&url, &queue, &inbox).await;
        tokio::time::sleep(POLL * 5).await;
    }
}

async fn read_amqp_once(url: &str, queue: &str, inbox: &Inbox) -> Result<(), lapin::Error> {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    use lapin::types::FieldTable;
    let (_connection, channel) = open_queue(url, queue).await?;
    channel.basic_qos(500, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let via = Via::Amqp {
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str()),
            routing_key: delivery.routing_key.as_str(),
            delivery_mode: *delivery.properties.delivery_mode(),
        };
        inbox.accept(&delivery.data, via);
        // After it was kept: an event not acknowledged comes again.
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// The shared broker's RabbitMQ application, stopped by this test; started again when
/// dropped, also when the test fails.
struct RabbitStopped {
    stopped: bool,
}

impl RabbitStopped {
    async fn stop() -> RabbitStopped {
        rabbitmqctl(&["stop_app"]).await;
        RabbitStopped { stopped: true }
    }

    async fn start(mut self) {
        rabbitmqctl(&["start_app"]).await;
        self.stopped = false;
        rabbitmqctl(&["await_startup"]).await;
    }
}

impl Drop for RabbitStopped {
    fn drop(&mut self) {
        if self.stopped {
            let _ = Command::new("rabbitmqctl").arg("start_app").status();
        }
    }
}

async fn rabbitmqctl(args: &[&str]) {
    let run = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RABBITMQCTL_WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("rabbitmqctl {args:?} did not finish in {RABBITMQCTL_WAIT:?}"))
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ----- seckill as a process -----

/// The built `seckill` as a child process on a free port, its output in a log file; killed
/// (by its pid) when dropped.
struct SeckillProcess {
    child: Option<Child>,
    base: String,
    log: PathBuf,
}

impl SeckillProcess {
    async fn start(args: &[String], log: &Path) -> SeckillProcess {
        let listen = format!("127.0.0.1:{}", common::process::free_port());
        let output = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the log file");
        let child = common::process::seckill()
            .arg("serve")
            .args(args)
            .args(["--listen", &listen])
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("the log file"))
            .stderr(output)
            .spawn()
            .expect("spawn seckill");
        let mut server = SeckillProcess {
            child: Some(child),
            base: format!("http://{listen}"),
            log: log.to_owned(),
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        let http = common::client();
        let deadline = Instant::now() + START_WAIT;
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("seckill exited at start with {status}: {}", tail(&self.log));
            }
            let ready = http.get(format!("{}/readyz", self.base)).send().await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "seckill did not become ready: {}",
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// kill -9, by its pid.
    fn kill_hard(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, by its pid, and the exit status.
    async fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let signalled = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(signalled.success());
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "seckill did not stop within {STOP_WAIT:?}: {}",
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SeckillProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ----- helpers -----

/// The URL in `name`, or None (and a printed line) when the test has none.
fn env_url(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ => {
            println!("skipped: {name} not set");
            None
        }
    }
}

fn unix_now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

fn rfc3339_ms(text: &str) -> Option<i64> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The end of a log file, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(3_000);
    let start = (start..text.len())
        .find(|&at| text.is_char_boundary(at))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// The flags that send this server's events to `targets`.
fn events_flags(targets: &[String]) -> Vec<String> {
    let mut flags = Vec::new();
    for target in targets {
        flags.push("--events".to_owned());
        flags.push(target.clone());
    }
    flags.extend(["--events-secret".to_owned(), SECRET.to_owned()]);
    flags
}

/// An in-process server (`--auth header`) whose events go to `targets`.
async fn server_with_events(targets: &[String]) -> TestServer {
    let flags = events_flags(targets);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestServer::start_with_args(Mode::Header, GENEROUS_LIMITS, &flags).await
}

/// Plays the whole sale and waits for its unpaid orders to expire; returns the orders, when
/// the sale began and when its buying ended.
async fn whole_sale(sale: &Sale, shop: &Shop) -> (Vec<Placed>, i64, i64) {
    let began_ms = unix_now_ms();
    sale.open(shop).await;
    let started = Instant::now();
    let placed = sale.play(shop, 0..sale.flows.len()).await;
    let ended_ms = unix_now_ms();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "events e2e: the sale: {} orders in {seconds:.1} s ({:.0} orders/s, with their \
         payments and cancellations)",
        placed.len(),
        placed.len() as f64 / seconds.max(0.001)
    );
    sale.wait_expired(shop).await;
    (placed, began_ms, ended_ms)
}

// ----- the tests -----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_target_gets_every_event_of_a_sale_in_order() {
    let _broker = SHARED_BROKER.read().await;
    let sale = Sale::plan(ORDERS);
    let webhook = Webhook::start(&sale.run).await;
    let mut nats = None;
    if let Some(url) = env_url("SECKILL_TEST_EVENTS_NATS_URL") {
        nats = Some((NatsReader::start(&url, &sale.run).await, url));
    }
    let mut amqp = None;
    if let Some(url) = env_url("SECKILL_TEST_AMQP_URL") {
        amqp = Some((AmqpReader::start(&url, &sale.run).await, url));
    }
    let mut urls = vec![webhook.url.clone()];
    let mut targets = vec![webhook.target()];
    if let Some((reader, url)) = &nats {
        urls.push(url.clone());
        targets.push(reader.target("nats"));
    }
    if let Some((reader, url)) = &amqp {
        urls.push(url.clone());
        targets.push(reader.target());
    }
    let server = server_with_events(&urls).await;
    let shop = Shop::new(&server.base);

    let (placed, began_ms, ended_ms) = whole_sale(&sale, &shop).await;
    let expected = sale.expected(&placed);
    wait_for_all(&targets, &expected).await;
    for target in &targets {
        let checked = check(target, &expected);
        checked.report("the sale's events while it ran", began_ms, ended_ms);
    }
    assert_eq!(webhook.refused(), 0);
    let metrics = shop.metrics().await;
    assert_lag_metrics(&metrics, &webhook.label_prefix());
    if nats.is_some() {
        assert_lag_metrics(&metrics, "nats ");
    }
    if amqp.is_some() {
        assert_lag_metrics(&metrics, "rabbitmq ");
    }

    server.stop().await.expect("a clean stop");
    if let Some((reader, _)) = amqp {
        reader.delete().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_answering_503_mid_sale_gets_everything_once_it_answers_200() {
    let sale = Sale::plan(ORDERS);
    let webhook = Webhook::start(&sale.run).await;
    let server = server_with_events(std::slice::from_ref(&webhook.url)).await;
    let shop = Shop::new(&server.base);

    sale.open(&shop).await;
    let (first, second) = sale.halves();
    let mut placed = sale.play(&shop, first).await;
    webhook.answer(503);
    placed.extend(sale.play(&shop, second).await);
    tokio::time::sleep(OUTAGE).await;
    webhook.answer(200);
    let back_ms = unix_now_ms();
    sale.wait_expired(&shop).await;

    let expected = sale.expected(&placed);
    wait_for_all(&[webhook.target()], &expected).await;
    let checked = check(&webhook.target(), &expected);
    assert!(webhook.refused() > 0, "the outage refused nothing");
    checked.report("the backlog, after the 503s ended", back_ms, back_ms);
    let metrics = shop.metrics().await;
    let failures = format!(
        "seckill_events_failures_total{{target=\"{}",
        webhook.label_prefix()
    );
    assert!(
        metrics.lines().any(|l| l.starts_with(&failures)),
        "/metrics counts no failure of the webhook: {metrics}"
    );
    server.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_server_killed_mid_sale_gets_everything_once_it_is_back() {
    let Some(binary) = NatsServer::binary() else {
        return;
    };
    let mut nats = NatsServer::new(binary);
    nats.start().await;
    let sale = Sale::plan(ORDERS);
    let reader = NatsReader::start(&nats.url(), &sale.run).await;
    let server = server_with_events(&[nats.url()]).await;
    let shop = Shop::new(&server.base);

    sale.open(&shop).await;
    let (first, second) = sale.halves();
    let mut placed = sale.play(&shop, first).await;
    nats.kill();
    placed.extend(sale.play(&shop, second).await);
    tokio::time::sleep(OUTAGE).await;
    nats.start().await;
    let back_ms = unix_now_ms();
    sale.wait_expired(&shop).await;

    let expected = sale.expected(&placed);
    let target = reader.target("nats (killed and restarted)");
    wait_for_all(std::slice::from_ref(&target), &expected).await;
    let checked = check(&target, &expected);
    checked.report("the backlog, after the restart", back_ms, back_ms);
    server.stop().await.expect("a clean stop");
    drop(reader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_stopped_mid_sale_gets_everything_once_it_is_back() {
    let Some(url) = env_url("SECKILL_TEST_AMQP_URL") else {
        return;
    };
    if std::env::var("SECKILL_TEST_AMQP_OUTAGE").as_deref() != Ok("1") {
        println!(
            "skipped: SECKILL_TEST_AMQP_OUTAGE=1 not set (this test stops the shared RabbitMQ \
             for a few seconds)"
        );
        return;
    }
    let _broker = SHARED_BROKER.write().await;
    let sale = Sale::plan(ORDERS);
    let reader = AmqpReader::start(&url, &sale.run).await;
    let server = server_with_events(std::slice::from_ref(&url)).await;
    let shop = Shop::new(&server.base);

    sale.open(&shop).await;
    let (first, second) = sale.halves();
    let mut placed = sale.play(&shop, first).await;
    let stopped = RabbitStopped::stop().await;
    placed.extend(sale.play(&shop, second).await);
    tokio::time::sleep(OUTAGE).await;
    stopped.start().await;
    let back_ms = unix_now_ms();
    sale.wait_expired(&shop).await;

    let expected = sale.expected(&placed);
    wait_for_all(&[reader.target()], &expected).await;
    let checked = check(&reader.target(), &expected);
    checked.report("the backlog, after the broker came back", back_ms, back_ms);
    server.stop().await.expect("a clean stop");
    reader.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seckill_killed_and_restarted_while_its_targets_are_down_loses_nothing() {
    let sale = Sale::plan(ORDERS);
    let webhook = Webhook::start(&sale.run).await;
    webhook.answer(503);
    // Down from the start: seckill starts all the same, and its events wait.
    let mut nats = NatsServer::binary().map(NatsServer::new);
    let mut urls = vec![webhook.url.clone()];
    urls.extend(nats.as_ref().map(NatsServer::url));

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("seckill.toml");
    std::fs::write(&config, GENEROUS_LIMITS).expect("the config file");
    let log = dir.path().join("seckill.log");
    let mut args: Vec<String> = ["--auth", "header", "--admin-key", ADMIN_KEY, "--data-dir"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.push(dir.path().join("data").display().to_string());
    args.extend(["--config".to_owned(), config.display().to_string()]);
    args.extend(events_flags(&urls));

    let server = SeckillProcess::start(&args, &log).await;
    sale.open(&Shop::new(&server.base)).await;
    let (first, second) = sale.halves();
    let mut placed = sale.play(&Shop::new(&server.base), first).await;
    server.kill_hard();

    let server = SeckillProcess::start(&args, &log).await;
    placed.extend(sale.play(&Shop::new(&server.base), second).await);
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", tail(&log));

    let server = SeckillProcess::start(&args, &log).await;
    let shop = Shop::new(&server.base);
    sale.wait_expired(&shop).await;
    assert!(
        webhook.target().inbox.got().is_empty(),
        "the webhook was down"
    );

    webhook.answer(200);
    let mut targets = vec![webhook.target()];
    let mut reader = None;
    if let Some(nats) = nats.as_mut() {
        nats.start().await;
        let started = NatsReader::start(&nats.url(), &sale.run).await;
        targets.push(started.target("nats (down until the end)"));
        reader = Some(started);
    }
    let back_ms = unix_now_ms();
    let expected = sale.expected(&placed);
    wait_for_all(&targets, &expected).await;
    for target in &targets {
        let checked = check(target, &expected);
        checked.report("the backlog of two restarts, once back", back_ms, back_ms);
    }
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", tail(&log));
    drop(reader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_settings_exit_2_and_a_target_that_is_down_does_not() {
    const EXIT_LIMIT: Duration = Duration::from_secs(60);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data").display().to_string();
    let flags = [
        "--auth",
        "header",
        "--admin-key",
        "k",
        "--data-dir",
        data.as_str(),
    ];
    let listen = format!("127.0.0.1:{}", common::process::free_port());
    let run_to_exit = |events: &[&str]| {
        let mut args = vec!["serve", "--listen", listen.as_str()];
        args.extend(flags);
        args.extend(events);
        common::process::run_to_exit(&args, EXIT_LIMIT)
    };

    // Malformed: refused before anything is opened, in one line, without the password.
    for (value, says) in [
        ("amqp://shop:hunter2@/%2f", "--events"),
        ("http://127.0.0.1:9/hook", "--events-secret"),
    ] {
        let output = run_to_exit(&["--events", value]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{value}: {stderr}");
        assert!(stderr.contains(says), "{value}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }

    // A damaged cursor file: the server refuses to start, naming it.
    let target = "nats://127.0.0.1:9";
    let key = seckill_persistence::events::EventTarget::parse(target, None)
        .expect("a valid target")
        .key;
    let cursors = dir.path().join("data").join("events");
    std::fs::create_dir_all(&cursors).expect("the cursor directory");
    let cursor = cursors.join(format!("{key}.json"));
    std::fs::write(&cursor, b"{\"version\": 1, \"lan").expect("a damaged cursor");
    let output = run_to_exit(&["--events", target]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let last_line = stderr.lines().last().unwrap_or_default();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(last_line.starts_with("seckill: "), "{stderr}");
    assert!(last_line.contains("damaged"), "{stderr}");
    assert!(last_line.contains(&key), "{stderr}");

    // Its cursor moved away, the same target (nothing listens on port 9) does not keep the
    // server from starting; SIGTERM stops it with exit 0.
    std::fs::remove_file(&cursor).expect("moved away");
    let args: Vec<String> = flags
        .iter()
        .chain(&["--events", target])
        .map(|arg| (*arg).to_owned())
        .collect();
    let log = dir.path().join("seckill.log");
    let server = SeckillProcess::start(&args, &log).await;
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", tail(&log));
}
