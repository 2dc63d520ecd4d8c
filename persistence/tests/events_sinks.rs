//! The three events sinks against real targets: NATS JetStream and RabbitMQ when
//! `SECKILL_TEST_EVENTS_NATS_URL` (nats://127.0.0.1:4222) and `SECKILL_TEST_AMQP_URL`
//! (amqp://guest:guest@127.0.0.1:5672/%2f) are set, skipped with a printed line otherwise;
//! and a webhook receiver written here (a small HTTP/1.1 server) that checks every
//! signature. Each target gets a few hundred events and they are read back: every id, in
//! order (on the webhook, in order per subject: subjects are posted concurrently), with the
//! message id and properties the contract promises.
//!
//! What a failing target does to one `deliver` is checked here (an Err, after which the
//! caller resends from the first event); the retry loop with its backoff is `deliver.rs`'s,
//! and the outage tests of a whole sale are its too.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use seckill_persistence::events::amqp::AmqpSink;
use seckill_persistence::events::nats::NatsSink;
use seckill_persistence::events::webhook::{verify_signature, WebhookSink};
use seckill_persistence::events::{OutEvent, Sink, SinkError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Events per test, delivered in chunks of [`CHUNK`] as the caller would.
const EVENTS: usize = 300;
const CHUNK: usize = 100;
/// A bound on reading the events back, against a hang; not a speed requirement.
const READ_BACK_WAIT: Duration = Duration::from_secs(20);
/// How long a read-back waits for anything more than was expected (a duplicate).
const QUIET_WAIT: Duration = Duration::from_millis(300);
const CONTENT_TYPE: &str = "application/cloudevents+json";

// ----- the events -----

/// The target's URL from `name`, or None (and a printed line) when the test has none.
fn env_url(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ => {
            println!("skipped: {name} not set");
            None
        }
    }
}

/// Unique per run: the ids, and the type, of one test's events.
fn run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A type of the run's own, so that its subject (NATS) and routing key (RabbitMQ) carry no
/// one else's events: other tests and earlier runs share the stream and the exchange.
/// Leaked: a few bytes per test.
fn run_kind(run: &str) -> &'static str {
    Box::leak(format!("seckill.test.r{run}").into_boxed_str())
}

/// The same events, all of one order (one subject): the webhook sends them one at a time,
/// so a scripted receiver sees them in the order sent.
fn one_subject(mut events: Vec<OutEvent>) -> Vec<OutEvent> {
    for event in &mut events {
        event.subject = "order-0".into();
    }
    events
}

fn events(run: &str, kind: &'static str, count: usize) -> Vec<OutEvent> {
    (0..count)
        .map(|n| {
            let id = format!("{run}-{n}");
            let subject = format!("order-{n}");
            let body = serde_json::json!({
                "specversion": "1.0",
                "id": id,
                "source": "seckill/events-sinks-test",
                "type": kind,
                "subject": subject,
                "time": "2024-01-01T00:00:00Z",
                "datacontenttype": "application/json",
                "data": { "n": n },
            })
            .to_string()
            .into_bytes();
            OutEvent {
                id,
                kind,
                subject,
                body,
                time_ms: 1_704_067_200_000 + n as i64,
            }
        })
        .collect()
}

/// Delivers `events` in chunks, each of which must be acknowledged at once.
async fn deliver_in_chunks(sink: &mut dyn Sink, events: &[OutEvent]) {
    for chunk in events.chunks(CHUNK) {
        if let Err(error) = sink.deliver(chunk).await {
            panic!("{}: {error}", sink.label());
        }
    }
}

fn ids(events: &[OutEvent]) -> Vec<String> {
    events.iter().map(|event| event.id.clone()).collect()
}

/// A local port with nothing listening on it.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    listener.local_addr().expect("its address").port()
}

// ----- NATS JetStream -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_stores_every_event_once_in_order_with_its_message_id() {
    let Some(url) = env_url("SECKILL_TEST_EVENTS_NATS_URL") else {
        return;
    };
    let run = run_id();
    let kind = run_kind(&run);
    let sent = events(&run, kind, EVENTS);
    let mut sink = NatsSink::new(&url).expect("a valid URL");
    deliver_in_chunks(&mut sink, &sent).await;
    // A resend after a failure (the same ids) is acknowledged as duplicates: delivered, and
    // stored once.
    sink.deliver(&sent[..CHUNK])
        .await
        .expect("a redelivery is acknowledged");

    let subject = format!("seckill.events.{kind}");
    let stored = read_back_jetstream(&url, &subject).await;
    let stored_ids: Vec<String> = stored.iter().map(|m| message_id(m).to_owned()).collect();
    assert_eq!(stored_ids, ids(&sent), "each id once, in order");
    for (message, event) in stored.iter().zip(&sent) {
        assert_eq!(message.subject.as_str(), subject);
        assert_eq!(&message.payload[..], event.body.as_slice());
    }
}

fn message_id(message: &async_nats::jetstream::Message) -> &str {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get("Nats-Msg-Id"))
        .map_or("", |id| id.as_str())
}

/// Every message of the stream on `subject`, by an ephemeral consumer that starts at the
/// stream's first message; returns once a fetch brings nothing more.
async fn read_back_jetstream(url: &str, subject: &str) -> Vec<async_nats::jetstream::Message> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let client = async_nats::connect(url).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream("SECKILL_EVENTS")
        .await
        .expect("the sink made the stream");
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..pull::Config::default()
        })
        .await
        .expect("an ephemeral consumer");
    let deadline = Instant::now() + READ_BACK_WAIT;
    let mut stored = Vec::new();
    loop {
        let batch = consumer
            .fetch()
            .max_messages(500)
            .messages()
            .await
            .expect("a fetch");
        let fetched: Vec<_> = tokio::time::timeout(QUIET_WAIT * 10, batch.collect::<Vec<_>>())
            .await
            .expect("a fetch answers at once");
        if fetched.is_empty() {
            return stored;
        }
        for message in fetched {
            stored.push(message.expect("a stored message"));
        }
        assert!(
            Instant::now() < deadline,
            "still reading after {READ_BACK_WAIT:?}"
        );
    }
}

// ----- RabbitMQ -----

/// A test's own queue, bound to the exchange before anything is published (a topic
/// exchange drops what no queue is bound to). Exclusive: gone with the connection.
struct TestQueue {
    _connection: Connection,
    _channel: Channel,
    consumer: Consumer,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_routes_every_event_in_order_persistent_with_its_message_id() {
    let Some(url) = env_url("SECKILL_TEST_AMQP_URL") else {
        return;
    };
    let run = run_id();
    let kind = run_kind(&run);
    let sent = events(&run, kind, EVENTS);
    let mut queue = bind_queue(&url, kind).await;
    let mut sink = AmqpSink::new(&url).expect("a valid URL");
    deliver_in_chunks(&mut sink, &sent).await;
    sink.deliver(&sent[..CHUNK])
        .await
        .expect("a redelivery is confirmed");

    // RabbitMQ does not dedupe: the consumer sees the resent chunk again, after the rest,
    // and drops it by its ids.
    let expected: Vec<&OutEvent> = sent.iter().chain(&sent[..CHUNK]).collect();
    let got = read_deliveries(&mut queue.consumer, expected.len()).await;
    let got_ids: Vec<String> = got.iter().map(|d| amqp_message_id(d).to_owned()).collect();
    let expected_ids: Vec<String> = expected.iter().map(|event| event.id.clone()).collect();
    assert_eq!(got_ids, expected_ids, "every id, in order");
    for (delivery, event) in got.iter().zip(&expected) {
        assert_eq!(delivery.exchange.as_str(), "seckill.events");
        assert_eq!(delivery.routing_key.as_str(), kind, "routing key = type");
        assert_eq!(*delivery.properties.delivery_mode(), Some(2), "persistent");
        let content_type = delivery.properties.content_type().as_ref();
        assert_eq!(content_type.map(|c| c.as_str()), Some(CONTENT_TYPE));
        assert_eq!(delivery.data, event.body);
    }
}

fn amqp_message_id(delivery: &Delivery) -> &str {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map_or("", |id| id.as_str())
}

async fn bind_queue(url: &str, kind: &str) -> TestQueue {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("a channel");
    // Declared as the sink declares it (the same settings: no conflict), so that the queue
    // can be bound before the sink's first connection.
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            "seckill.events".into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .expect("the exchange");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await
        .expect("a queue");
    // Bound to the run's own type only: the exchange carries other tests' events too.
    channel
        .queue_bind(
            queue.name().clone(),
            "seckill.events".into(),
            kind.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bound");
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .expect("consuming");
    TestQueue {
        _connection: connection,
        _channel: channel,
        consumer,
    }
}

/// `count` deliveries, then a short wait that must bring no more.
async fn read_deliveries(consumer: &mut Consumer, count: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + READ_BACK_WAIT;
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(delivery)) => got.push(delivery.expect("a delivery")),
            Ok(None) => panic!("the consumer ended after {} deliveries", got.len()),
            Err(_) => panic!(
                "{} of {count} deliveries after {READ_BACK_WAIT:?}",
                got.len()
            ),
        }
    }
    if let Ok(Some(extra)) = tokio::time::timeout(QUIET_WAIT, consumer.next()).await {
        panic!("a delivery past the {count} expected: {extra:?}");
    }
    got
}

// ----- webhooks -----

const SECRET: &str = "whsec_events_sinks_test";
/// How far the receiver lets a signature's time be from its clock.
const TOLERANCE_S: i64 = 300;

/// What the receiver answers to a request, in turn; 200 once its script is used up.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// No answer: the connection is held open and silent.
    Silence,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    id: String,
    /// The status answered; 0 for [`Answer::Silence`].
    status: u16,
    signature_ok: bool,
    content_type: Option<String>,
}

#[derive(Debug, Default)]
struct ReceiverLog {
    script: VecDeque<Answer>,
    seen: Vec<Seen>,
}

struct Receiver {
    url: String,
    log: Arc<Mutex<ReceiverLog>>,
}

impl Receiver {
    async fn start(script: Vec<Answer>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("its address");
        let log = Arc::new(Mutex::new(ReceiverLog {
            script: script.into(),
            seen: Vec::new(),
        }));
        tokio::spawn(accept_connections(listener, Arc::clone(&log)));
        Receiver {
            url: format!("http://{address}/hooks/orders"),
            log,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().expect("the receiver's log").seen.clone()
    }

    /// The ids of the requests answered 2xx, in the order they came.
    fn accepted_ids(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|seen| (200..300).contains(&seen.status))
            .map(|seen| seen.id)
            .collect()
    }

    fn assert_every_request_signed(&self) {
        for seen in self.seen() {
            assert!(seen.signature_ok, "a bad signature: {seen:?}");
            assert_eq!(seen.content_type.as_deref(), Some(CONTENT_TYPE), "{seen:?}");
            assert!(
                seen.request_line.starts_with("POST /hooks/orders "),
                "{seen:?}"
            );
        }
    }
}

async fn accept_connections(listener: TcpListener, log: Arc<Mutex<ReceiverLog>>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve_connection(stream, Arc::clone(&log)));
    }
}

/// Answers the requests of one keep-alive connection, in turn.
async fn serve_connection(mut stream: TcpStream, log: Arc<Mutex<ReceiverLog>>) {
    let mut buffer = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buffer).await {
        match record(&log, &request) {
            Answer::Silence => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            Answer::Status(status) => {
                let response = format!("HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\n\r\n");
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Logs `request` (checking its signature) and takes the next answer of the script.
fn record(log: &Mutex<ReceiverLog>, request: &Request) -> Answer {
    let signature_ok = request
        .header("seckill-signature")
        .is_some_and(|signature| {
            verify_signature(
                SECRET.as_bytes(),
                signature,
                &request.body,
                unix_now_s(),
                TOLERANCE_S,
            )
        });
    let id = serde_json::from_slice::<serde_json::Value>(&request.body)
        .ok()
        .and_then(|event| event["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut log = log.lock().expect("the receiver's log");
    let answer = log.script.pop_front().unwrap_or(Answer::Status(200));
    let status = match answer {
        Answer::Status(status) => status,
        Answer::Silence => 0,
    };
    log.seen.push(Seen {
        request_line: request.request_line.clone(),
        id,
        status,
        signature_ok,
        content_type: request.header("content-type").map(str::to_owned),
    });
    answer
}

struct Request {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// The next request on the connection (`buffer` keeps what was read past it); None at the
/// end of the connection.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Request> {
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        read_more(stream, buffer).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let mut request = Request {
        request_line,
        headers,
        body: Vec::new(),
    };
    let length: usize = request
        .header("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let body_end = head_end + 4 + length;
    while buffer.len() < body_end {
        read_more(stream, buffer).await?;
    }
    request.body = buffer[head_end + 4..body_end].to_vec();
    buffer.drain(..body_end);
    Some(request)
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    let read = stream.read(&mut chunk).await.ok()?;
    if read == 0 {
        return None;
    }
    buffer.extend_from_slice(&chunk[..read]);
    Some(())
}

fn unix_now_s() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

fn webhook(receiver: &Receiver, timeout_ms: u64) -> WebhookSink {
    WebhookSink::new(receiver.url.clone(), SECRET.into(), timeout_ms).expect("a valid webhook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gets_every_event_in_order_each_one_signed() {
    let receiver = Receiver::start(Vec::new()).await;
    let sent = events(&run_id(), "seckill.order.created", EVENTS);
    let mut sink = webhook(&receiver, 2_000);
    deliver_in_chunks(&mut sink, &sent).await;
    // Each event has a subject of its own, so they are posted concurrently: every id once,
    // in any order.
    let mut accepted = receiver.accepted_ids();
    accepted.sort();
    let mut expected = ids(&sent);
    expected.sort();
    assert_eq!(accepted, expected);
    assert_eq!(receiver.seen().len(), sent.len(), "one POST per event");
    receiver.assert_every_request_signed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_fails_the_run_after_a_delivered_prefix_and_a_resend_delivers_it_all() {
    let script = vec![
        Answer::Status(200),
        Answer::Status(200),
        Answer::Status(503),
        Answer::Status(500),
    ];
    let receiver = Receiver::start(script).await;
    let sent = one_subject(events(&run_id(), "seckill.order.paid", 5));
    let mut sink = webhook(&receiver, 2_000);
    // The caller's loop: resend from the first event until the run is acknowledged.
    let mut failures = 0;
    while let Err(error) = sink.deliver(&sent).await {
        assert!(matches!(error, SinkError::Unreachable(_)), "{error}");
        failures += 1;
        assert!(failures < 10, "never delivered");
    }
    assert_eq!(
        failures, 2,
        "503 on the 3rd event, then 500 on the resent 1st"
    );
    // At least once: the prefix that went through before the 503 came again; none skipped.
    let expected: Vec<String> = [0, 1, 0, 1, 2, 3, 4]
        .iter()
        .map(|&n| sent[n].id.clone())
        .collect();
    assert_eq!(receiver.accepted_ids(), expected);
    receiver.assert_every_request_signed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_refused_with_its_status_and_a_resend_delivers() {
    let receiver = Receiver::start(vec![Answer::Status(404)]).await;
    let sent = one_subject(events(&run_id(), "seckill.order.cancelled", 3));
    let mut sink = webhook(&receiver, 2_000);
    match sink.deliver(&sent).await {
        Err(SinkError::Refused {
            status: 404,
            reason,
        }) => {
            assert!(reason.contains(&sent[0].id), "{reason}");
        }
        other => panic!("expected a 404 refusal, got {other:?}"),
    }
    sink.deliver(&sent)
        .await
        .expect("the endpoint works again: delivered");
    assert_eq!(receiver.accepted_ids(), ids(&sent));
    receiver.assert_every_request_signed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_does_not_answer_is_unreachable_within_its_timeout() {
    let receiver = Receiver::start(vec![Answer::Silence]).await;
    let sent = one_subject(events(&run_id(), "seckill.order.expired", 2));
    let mut sink = webhook(&receiver, 300);
    let started = Instant::now();
    match sink.deliver(&sent).await {
        Err(SinkError::Unreachable(reason)) => assert!(reason.contains("300 ms"), "{reason}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    sink.deliver(&sent).await.expect("answered this time");
    assert_eq!(receiver.accepted_ids(), ids(&sent));
}

// ----- targets that are down -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_are_made_while_their_targets_are_down_and_fail_deliveries_as_unreachable() {
    let port = closed_port().await;
    let sent = events(&run_id(), "seckill.order.created", 3);
    let mut sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(NatsSink::new(&format!("nats://127.0.0.1:{port}")).expect("valid")),
        Box::new(
            AmqpSink::new(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).expect("valid"),
        ),
        Box::new(
            WebhookSink::new(
                format!("http://127.0.0.1:{port}/hook"),
                SECRET.into(),
                1_000,
            )
            .expect("valid"),
        ),
    ];
    for sink in &mut sinks {
        // Twice: a failed connect leaves the sink ready to try again, not stuck.
        for _ in 0..2 {
            match tokio::time::timeout(Duration::from_secs(30), sink.deliver(&sent)).await {
                Ok(Err(SinkError::Unreachable(_))) => {}
                other => panic!("{}: expected Unreachable, got {other:?}", sink.label()),
            }
        }
    }
}
