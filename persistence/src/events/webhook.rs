//! [`WebhookSink`]: order events as signed HTTP POSTs to a shop's endpoint; and
//! [`sign`] / [`verify_signature`], the signature both ends compute.
//!
//! One POST per event (one CloudEvent per request, the body is the event, structured mode),
//! in order per subject and concurrent across subjects: a run's events are grouped by
//! `subject` (an order's events share the order id, a promotion's the promotion id), a
//! group's next POST goes only once the previous was answered `2xx`, and up to
//! [`WEBHOOK_POSTS_IN_FLIGHT_MAX`] groups are posted at once. One POST in turn is too slow
//! for a sale (one round trip per event); what the contract promises is each order's events
//! in order, and that holds. A promotion's event (`seckill.promotion.*`) goes alone, after
//! every event before it in the run and before every event after it: orders and items name
//! their promotion, and a shop must not learn of an order before its promotion exists, nor
//! of the promotion's end before the orders that came before it.
//!
//! How many POSTs go at once adapts to the endpoint (additive, multiplicative): a run that
//! fails as unreachable (a timeout, a refused connection, `5xx`, `429`) halves the bound,
//! down to one, and each run delivered whole doubles it again, up to the maximum. An
//! endpoint that takes only a few requests at once then still gets every event, at its pace,
//! instead of refusing the same burst of concurrent POSTs on every retry.
//!
//! A run is delivered only when every event was answered `2xx`. After a failure no new POST
//! starts (those in flight are let finish, so the endpoint never has two requests of one
//! subject at once) and the run fails with the first error: the caller sends the whole run
//! again, so the events of other subjects that went through come twice (at least once) and
//! none after a failed one is skipped. Answers:
//! - `2xx`: delivered.
//! - no answer within the timeout, a connection that fails, `5xx`, `408`, `429`:
//!   [`SinkError::Unreachable`] (408 and 429 are HTTP's own "try again later").
//! - any other status (`4xx`, and `3xx`: redirects are not followed, a POST must not turn
//!   into a GET elsewhere): [`SinkError::Refused`] with the status, counted in
//!   `seckill_events_webhook_refused_total{target}`. The caller retries it too: a shop's
//!   broken endpoint must not lose its events.
//!
//! Each request carries `Seckill-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>." + body)>`. A receiver recomputes it over the raw body, compares in constant time,
//! and refuses a `t` too far from its clock (a replayed request). Several `v1=` entries may
//! appear (a receiver accepts any that matches), which leaves room to rotate secrets.
//!
//! `http://` and `https://` (rustls with the `ring` provider, installed as the process
//! default when the sink is made: reqwest's own rustls feature would build aws-lc-sys, a
//! long C build).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, StreamExt};
use hmac::{Hmac, Mac};
use reqwest::{redirect, Client, Response, StatusCode, Url};
use sha2::Sha256;

use super::sink::{OutEvent, Sink, SinkError, SinkSetupError};

/// The request header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Seckill-Signature";
/// The content type of every request: a CloudEvent in structured mode.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// How much of a refusing answer's body goes into the error (and so the log).
const REASON_BYTES_MAX: usize = 200;
/// How much of an accepting answer's body is read so the connection can be reused; a
/// longer body is dropped with its connection.
const DRAIN_BYTES_MAX: usize = 64 * 1024;
/// Most POSTs in flight at once, each for another subject. On a loaded machine (a sale, its
/// load and the endpoint on two cores) a round trip is several milliseconds of scheduling:
/// 32 at once delivered some 7,700 events/s there, 128 some 15,000 (`events-lag.sh`). A
/// shop's endpoint that cannot take so many at once answers 429 or 503, and the bound
/// comes down (see the module doc).
pub const WEBHOOK_POSTS_IN_FLIGHT_MAX: usize = 128;
/// The type prefix of the events that go alone in a run (see the module doc).
const PROMOTION_TYPE_PREFIX: &str = "seckill.promotion.";

type HmacSha256 = Hmac<Sha256>;

/// A webhook events target.
pub struct WebhookSink {
    client: Client,
    url: Url,
    secret: String,
    timeout_ms: u64,
    label: String,
    /// How many POSTs may be in flight now: 1..=WEBHOOK_POSTS_IN_FLIGHT_MAX, halved by a
    /// run that failed as unreachable, doubled by one delivered whole.
    posts_in_flight_limit: AtomicUsize,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL's path or query may be the shop's token, and the secret is a secret.
        f.debug_struct("WebhookSink")
            .field("label", &self.label)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl WebhookSink {
    /// A sink that POSTs to `url` (`http://`), signing with `secret`, giving each request
    /// `timeout_ms` to be answered. Nothing is connected yet.
    pub fn new(
        url: String,
        secret: String,
        timeout_ms: u64,
    ) -> Result<WebhookSink, SinkSetupError> {
        // The url crate's errors never repeat the input.
        let url = Url::parse(&url).map_err(|e| SinkSetupError::new("webhook", e.to_string()))?;
        check_url(&url)?;
        if secret.is_empty() {
            return Err(SinkSetupError::new(
                "webhook",
                "a webhook needs --events-secret",
            ));
        }
        if timeout_ms == 0 {
            return Err(SinkSetupError::new(
                "webhook",
                "the timeout must be above 0 ms",
            ));
        }
        let timeout = Duration::from_millis(timeout_ms);
        // Err only means a provider is installed already, which is all that is needed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(redirect::Policy::none())
            // One connection per POST in flight, each kept for the next run. (reqwest keeps
            // any number by default; the bound says how many this sink ever needs.)
            .pool_max_idle_per_host(WEBHOOK_POSTS_IN_FLIGHT_MAX)
            .user_agent("seckill-events")
            .build()
            .map_err(|e| SinkSetupError::new("webhook", error_chain(e)))?;
        let label = label_of(&url);
        Ok(WebhookSink {
            client,
            url,
            secret,
            timeout_ms,
            label,
            posts_in_flight_limit: AtomicUsize::new(WEBHOOK_POSTS_IN_FLIGHT_MAX),
        })
    }

    /// Delivers `events` a segment after the other (see [`segments`]); stops at the first
    /// segment that fails.
    async fn deliver_all(&self, events: &[OutEvent]) -> Result<(), SinkError> {
        for segment in segments(events) {
            let delivered = self.deliver_segment(segment).await;
            // A lone event (a promotion's) says nothing of how many at once the endpoint
            // takes.
            if segment.len() > 1 || delivered.is_err() {
                self.adapt_limit(delivered.as_ref().err());
            }
            delivered?;
        }
        Ok(())
    }

    /// The bound on POSTs at once after a segment: halved when the endpoint could not keep
    /// up (unreachable), doubled when it took the segment whole; a refusal (4xx) says
    /// nothing of its capacity.
    fn adapt_limit(&self, failure: Option<&SinkError>) {
        let limit = self.posts_in_flight_limit.load(Ordering::Relaxed);
        let adapted = match failure {
            None => next_limit_up(limit),
            Some(SinkError::Unreachable(_)) => next_limit_down(limit),
            Some(SinkError::Refused { .. }) => limit,
        };
        self.posts_in_flight_limit.store(adapted, Ordering::Relaxed);
    }

    /// Posts `events` by subject, up to the current bound of subjects at once;
    /// Ok when every event was answered `2xx`, else the first error. After a failure no
    /// group starts, and those in flight stop after their current POST.
    async fn deliver_segment(&self, events: &[OutEvent]) -> Result<(), SinkError> {
        let failed = AtomicBool::new(false);
        let mut waiting = by_subject(events).into_iter();
        // A named async fn's futures, not a closure's in `buffer_unordered`: the boxed
        // future must be Send, which rustc cannot always prove through a closure's output.
        let mut in_flight = FuturesUnordered::new();
        let mut first_error: Option<SinkError> = None;
        let limit = self.posts_in_flight_limit.load(Ordering::Relaxed);
        loop {
            while first_error.is_none() && in_flight.len() < limit {
                let Some(group) = waiting.next() else { break };
                in_flight.push(self.post_in_turn(group, &failed));
            }
            match in_flight.next().await {
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    failed.store(true, Ordering::Relaxed);
                    if first_error.is_none() {
                        first_error = Some(error);
                    }
                }
                // Nothing in flight: every group is done, or none may start.
                None => break,
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Posts one subject's events in turn, each once the previous was answered `2xx`. Err
    /// only for its own failure; once `failed` (another group failed) it posts nothing
    /// more and returns Ok, as the run fails anyway and is sent again from its first event.
    async fn post_in_turn(
        &self,
        group: Vec<&OutEvent>,
        failed: &AtomicBool,
    ) -> Result<(), SinkError> {
        for event in group {
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            self.post(event).await?;
        }
        Ok(())
    }

    async fn post(&self, event: &OutEvent) -> Result<(), SinkError> {
        let signature = sign(self.secret.as_bytes(), unix_now_s(), &event.body);
        let sent = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(SIGNATURE_HEADER, signature)
            .body(event.body.clone())
            .send()
            .await;
        let response = sent.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        match outcome_of(status) {
            Outcome::Delivered => {
                drain(response).await;
                Ok(())
            }
            Outcome::Unreachable => {
                let reason = reason_of(response).await;
                Err(SinkError::Unreachable(format!(
                    "event {}: HTTP {status}: {reason}",
                    event.id
                )))
            }
            Outcome::Refused => {
                metrics::counter!("seckill_events_webhook_refused_total", "target" => self.label.clone())
                    .increment(1);
                let reason = reason_of(response).await;
                Err(SinkError::Refused {
                    status: status.as_u16(),
                    reason: format!("event {}: {reason}", event.id),
                })
            }
        }
    }

    fn unreachable(&self, error: reqwest::Error) -> SinkError {
        if error.is_timeout() {
            return SinkError::Unreachable(format!("no answer within {} ms", self.timeout_ms));
        }
        SinkError::Unreachable(error_chain(error))
    }
}

impl Sink for WebhookSink {
    fn deliver<'a>(
        &'a mut self,
        events: &'a [OutEvent],
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(self.deliver_all(events))
    }

    fn label(&self) -> String {
        self.label.clone()
    }
}

/// The bound on POSTs at once after a segment delivered whole.
fn next_limit_up(limit: usize) -> usize {
    limit
        .saturating_mul(2)
        .clamp(1, WEBHOOK_POSTS_IN_FLIGHT_MAX)
}

/// The bound on POSTs at once after a segment the endpoint could not keep up with.
fn next_limit_down(limit: usize) -> usize {
    (limit / 2).clamp(1, WEBHOOK_POSTS_IN_FLIGHT_MAX)
}

/// `events` cut so that each promotion event is a segment of its own and the events
/// between two of them are one segment; in the run's order, none empty.
fn segments(events: &[OutEvent]) -> Vec<&[OutEvent]> {
    let mut segments = Vec::new();
    let mut start = 0;
    for (at, event) in events.iter().enumerate() {
        if event.kind.starts_with(PROMOTION_TYPE_PREFIX) {
            if start < at {
                segments.push(&events[start..at]);
            }
            segments.push(&events[at..=at]);
            start = at + 1;
        }
    }
    if start < events.len() {
        segments.push(&events[start..]);
    }
    segments
}

/// `events` grouped by subject: each group in the run's order, the groups in the order of
/// their first event (the oldest waiting subject starts first).
fn by_subject(events: &[OutEvent]) -> Vec<Vec<&OutEvent>> {
    let mut group_of: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<Vec<&OutEvent>> = Vec::new();
    for event in events {
        match group_of.entry(event.subject.as_str()) {
            Entry::Occupied(entry) => groups[*entry.get()].push(event),
            Entry::Vacant(entry) => {
                entry.insert(groups.len());
                groups.push(vec![event]);
            }
        }
    }
    groups
}

/// The `Seckill-Signature` header value for `body` sent at `t_s` (Unix seconds):
/// `t=<t_s>,v1=<hex HMAC-SHA256(secret, "<t_s>." + body)>`.
pub fn sign(secret: &[u8], t_s: i64, body: &[u8]) -> String {
    let t = t_s.to_string();
    let mac = mac_of(secret, &t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex_encode(&mac))
}

/// Whether `header_value` (a `Seckill-Signature`) signs `body` with `secret`, at a time
/// within `tolerance_s` of `now_s` (both Unix seconds). For receivers: pass the body exactly
/// as received, before any JSON parsing. False for anything malformed.
pub fn verify_signature(
    secret: &[u8],
    header_value: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> bool {
    let Some((t, candidates)) = parse_signature(header_value) else {
        return false;
    };
    let Ok(t_s) = t.parse::<i64>() else {
        return false;
    };
    if tolerance_s < 0 || now_s.abs_diff(t_s) > tolerance_s.unsigned_abs() {
        return false;
    }
    // The MAC is over `t` as it was sent, not as re-printed from the number.
    candidates.iter().any(|candidate| {
        hex_decode(candidate).is_some_and(|tag| mac_of(secret, t, body).verify_slice(&tag).is_ok())
    })
}

/// `t` and every `v1` of a signature header; None without exactly one `t` or with no `v1`.
/// Other keys are ignored (room for later schemes).
fn parse_signature(header_value: &str) -> Option<(&str, Vec<&str>)> {
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header_value.split(',') {
        let (key, value) = part.trim().split_once('=')?;
        match key {
            "t" if t.is_some() => return None,
            "t" => t = Some(value),
            "v1" => candidates.push(value),
            _ => {}
        }
    }
    if candidates.is_empty() {
        return None;
    }
    t.map(|t| (t, candidates))
}

fn mac_of(secret: &[u8], t: &str, body: &[u8]) -> HmacSha256 {
    // HMAC hashes a key of any length down to its block size: this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// What an HTTP status means for the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Unreachable,
    Refused,
}

fn outcome_of(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Delivered
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Outcome::Unreachable
    } else {
        Outcome::Refused
    }
}

/// Refuses what cannot work whatever the network does.
fn check_url(url: &Url) -> Result<(), SinkSetupError> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(SinkSetupError::new(
                "webhook",
                format!("the scheme must be http or https, not {other}"),
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(SinkSetupError::new("webhook", "the URL has no host"));
    }
    Ok(())
}

/// `webhook HOST:PORT #FINGERPRINT`: the path and query may hold the shop's token, so they
/// are left out; the fingerprint (the first 4 bytes of the URL's SHA-256) tells two
/// webhooks on one host apart and stays the same across restarts.
fn label_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    let port = url.port_or_known_default().unwrap_or(80);
    let digest = <Sha256 as sha2::Digest>::digest(url.as_str().as_bytes());
    let fingerprint = hex_encode(digest.get(..4).unwrap_or(&[]));
    format!("webhook {host}:{port} #{fingerprint}")
}

/// Reads a little of an accepting answer so that its connection goes back to the pool.
async fn drain(mut response: Response) {
    let mut read = 0;
    while read < DRAIN_BYTES_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            // Delivered either way: the status said so.
            Ok(None) | Err(_) => return,
        }
    }
}

/// The start of a refusing answer's body, on one line; the status's name if it is empty.
async fn reason_of(mut response: Response) -> String {
    let status = response.status();
    let mut body = Vec::new();
    while body.len() < REASON_BYTES_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(REASON_BYTES_MAX);
    let text: String = String::from_utf8_lossy(&body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_owned()
    } else {
        text.to_owned()
    }
}

/// An error with its causes: reqwest's own message alone is "error sending request". The
/// URL, which reqwest's message would name, is left out: its path or query may be the
/// shop's token. The causes (hyper's, the socket's) do not name it.
fn error_chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = std::error::Error::source(cause);
    }
    text
}

fn unix_now_s() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Lower- or upper-case hex; None for an odd length or a non-hex digit.
fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            u8::try_from(high * 16 + low).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"id":"e-1"}"#;
    const T_S: i64 = 1_700_000_000;
    const ORDER_KIND: &str = "seckill.order.created";
    const PROMOTION_KIND: &str = "seckill.promotion.created";
    /// How long the endpoint holds each request before it answers.
    const HOLD: Duration = Duration::from_millis(50);
    /// How much longer it holds a request while it never had two at once: a concurrent
    /// sink gets its second request in by then however slow the machine, and the test
    /// counts requests in flight instead of timing the run.
    const LONELY_HOLD_MAX: Duration = Duration::from_secs(2);

    /// An event whose id and body are both `<subject>/<n>`.
    fn event(kind: &'static str, subject: &str, n: usize) -> OutEvent {
        let body = format!("{subject}/{n}");
        OutEvent {
            id: body.clone(),
            kind,
            subject: subject.to_owned(),
            body: body.into_bytes(),
            time_ms: 0,
        }
    }

    /// `rounds` events of each subject, interleaved as a sale's journal has them: every
    /// subject's first, then every subject's second, and so on.
    fn interleaved(subjects: &[&str], rounds: usize) -> Vec<OutEvent> {
        (0..rounds)
            .flat_map(|n| {
                subjects
                    .iter()
                    .map(move |subject| event(ORDER_KIND, subject, n))
            })
            .collect()
    }

    /// What the endpoint saw.
    #[derive(Debug, Default)]
    struct EndpointLog {
        /// The bodies, in the order the requests arrived.
        arrived: Vec<String>,
        in_flight: usize,
        in_flight_peak: usize,
        /// Bodies to answer 503, each once.
        failing: Vec<String>,
        /// Requests past this many at once are answered 503 (an endpoint of few workers).
        capacity: Option<usize>,
    }

    impl EndpointLog {
        /// Logs a request as arrived and in flight; true when it is to be answered 503.
        fn arrive(&mut self, body: &str) -> bool {
            self.arrived.push(body.to_owned());
            self.in_flight += 1;
            self.in_flight_peak = self.in_flight_peak.max(self.in_flight);
            if self
                .capacity
                .is_some_and(|capacity| self.in_flight > capacity)
            {
                return true;
            }
            match self.failing.iter().position(|failing| failing == body) {
                Some(at) => {
                    self.failing.remove(at);
                    true
                }
                None => false,
            }
        }
    }

    /// A local HTTP/1.1 endpoint (keep-alive, `content-length` bodies) that holds each
    /// request [`HOLD`], and longer while it never had two at once (up to
    /// [`LONELY_HOLD_MAX`]), then answers 200, or 503 to a body it was told to fail.
    struct Endpoint {
        url: String,
        log: Arc<Mutex<EndpointLog>>,
    }

    impl Endpoint {
        async fn start(failing: &[&str]) -> Endpoint {
            Endpoint::start_with(failing, None).await
        }

        async fn start_with(failing: &[&str], capacity: Option<usize>) -> Endpoint {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
            let address = listener.local_addr().expect("its address");
            let log = Arc::new(Mutex::new(EndpointLog {
                failing: failing.iter().map(|body| (*body).to_owned()).collect(),
                capacity,
                ..EndpointLog::default()
            }));
            let accepting = Arc::clone(&log);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, Arc::clone(&accepting)));
                }
            });
            Endpoint {
                url: format!("http://{address}/hooks"),
                log,
            }
        }

        fn sink(&self) -> WebhookSink {
            WebhookSink::new(self.url.clone(), "whsec_test".into(), 5_000).expect("valid")
        }

        fn arrived(&self) -> Vec<String> {
            self.log.lock().expect("the log").arrived.clone()
        }

        fn in_flight_peak(&self) -> usize {
            self.log.lock().expect("the log").in_flight_peak
        }
    }

    async fn serve(mut stream: TcpStream, log: Arc<Mutex<EndpointLog>>) {
        let mut buffer = Vec::new();
        while let Some(body) = read_body(&mut stream, &mut buffer).await {
            let failing = with_log(&log, |log| log.arrive(&body));
            hold(&log).await;
            with_log(&log, |log| log.in_flight -= 1);
            let status = if failing {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// The lock taken and released in a plain function: never held across an await.
    fn with_log<T>(log: &Mutex<EndpointLog>, f: impl FnOnce(&mut EndpointLog) -> T) -> T {
        f(&mut log.lock().expect("the log"))
    }

    async fn hold(log: &Mutex<EndpointLog>) {
        tokio::time::sleep(HOLD).await;
        let lonely_since = Instant::now();
        loop {
            let lonely = with_log(log, |log| log.in_flight_peak) < 2;
            if !lonely || lonely_since.elapsed() >= LONELY_HOLD_MAX {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The body of the next request on the connection (`buffer` keeps what was read past
    /// it); None at its end.
    async fn read_body(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            read_more(stream, buffer).await?;
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        let body_end = head_end + 4 + length;
        while buffer.len() < body_end {
            read_more(stream, buffer).await?;
        }
        let body = String::from_utf8_lossy(&buffer[head_end + 4..body_end]).into_owned();
        buffer.drain(..body_end);
        Some(body)
    }

    async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<()> {
        let mut chunk = [0_u8; 4096];
        let read = stream.read(&mut chunk).await.ok()?;
        (read > 0).then(|| buffer.extend_from_slice(&chunk[..read]))
    }

    /// `subject`'s bodies in `arrived`, in the order they came.
    fn of_subject(arrived: &[String], subject: &str) -> Vec<String> {
        let prefix = format!("{subject}/");
        arrived
            .iter()
            .filter(|body| body.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// `subject`'s bodies `0..count` as they should come.
    fn expected(subject: &str, count: usize) -> Vec<String> {
        (0..count).map(|n| format!("{subject}/{n}")).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_subjects_events_come_in_order_while_subjects_are_posted_at_once() {
        let endpoint = Endpoint::start(&[]).await;
        let subjects = [
            "order-a", "order-b", "order-c", "order-d", "order-e", "order-f",
        ];
        let events = interleaved(&subjects, 3);
        endpoint
            .sink()
            .deliver(&events)
            .await
            .expect("every event answered 200");
        let arrived = endpoint.arrived();
        assert_eq!(
            arrived.len(),
            events.len(),
            "one POST per event: {arrived:?}"
        );
        for subject in subjects {
            assert_eq!(
                of_subject(&arrived, subject),
                expected(subject, 3),
                "{arrived:?}"
            );
        }
        assert!(
            endpoint.in_flight_peak() > 1,
            "the subjects were posted one at a time"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_bound_of_posts_are_in_flight() {
        let endpoint = Endpoint::start(&[]).await;
        let subjects: Vec<String> = (0..WEBHOOK_POSTS_IN_FLIGHT_MAX + 8)
            .map(|n| format!("order-{n}"))
            .collect();
        let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
        let events = interleaved(&subjects, 1);
        endpoint
            .sink()
            .deliver(&events)
            .await
            .expect("every event answered 200");
        assert_eq!(endpoint.arrived().len(), events.len());
        let peak = endpoint.in_flight_peak();
        assert!(peak <= WEBHOOK_POSTS_IN_FLIGHT_MAX, "{peak} in flight");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_endpoint_of_few_workers_gets_every_event_once_the_bound_comes_down() {
        const CAPACITY: usize = 12;
        let endpoint = Endpoint::start_with(&[], Some(CAPACITY)).await;
        let subjects: Vec<String> = (0..WEBHOOK_POSTS_IN_FLIGHT_MAX)
            .map(|n| format!("order-{n}"))
            .collect();
        let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
        let events = interleaved(&subjects, 2);
        let mut sink = endpoint.sink();
        // The caller's retries, without its backoff: with a fixed bound of 128 every
        // attempt would send the same burst and be refused again.
        let mut attempts = 0;
        while sink.deliver(&events).await.is_err() {
            attempts += 1;
            assert!(attempts < 12, "still refused after {attempts} attempts");
        }
        assert!(
            attempts > 0,
            "the endpoint never refused: the test proves nothing"
        );
        let arrived = endpoint.arrived();
        for subject in subjects {
            let seen = of_subject(&arrived, subject);
            assert!(
                seen.contains(&format!("{subject}/0")) && seen.contains(&format!("{subject}/1")),
                "{subject}: {seen:?}"
            );
        }
        let limit = sink.posts_in_flight_limit.load(Ordering::Relaxed);
        assert!(limit <= 2 * CAPACITY, "the bound stayed at {limit}");
    }

    #[test]
    fn the_bound_halves_down_to_one_and_doubles_up_to_the_maximum() {
        assert_eq!(
            next_limit_down(WEBHOOK_POSTS_IN_FLIGHT_MAX),
            WEBHOOK_POSTS_IN_FLIGHT_MAX / 2
        );
        assert_eq!(next_limit_down(1), 1);
        assert_eq!(next_limit_up(1), 2);
        assert_eq!(
            next_limit_up(WEBHOOK_POSTS_IN_FLIGHT_MAX),
            WEBHOOK_POSTS_IN_FLIGHT_MAX
        );
        assert_eq!(
            next_limit_up(WEBHOOK_POSTS_IN_FLIGHT_MAX / 2 + 1),
            WEBHOOK_POSTS_IN_FLIGHT_MAX
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_promotion_event_comes_after_what_was_before_it_and_before_what_follows() {
        let endpoint = Endpoint::start(&[]).await;
        let events = vec![
            event(ORDER_KIND, "order-a", 0),
            event(ORDER_KIND, "order-b", 0),
            event(PROMOTION_KIND, "promo", 0),
            event(ORDER_KIND, "order-a", 1),
            event(ORDER_KIND, "order-c", 0),
        ];
        endpoint
            .sink()
            .deliver(&events)
            .await
            .expect("every event answered 200");
        let arrived = endpoint.arrived();
        let at = |body: &str| arrived.iter().position(|seen| seen == body);
        let promotion = at("promo/0").expect("the promotion event came");
        for before in ["order-a/0", "order-b/0"] {
            assert!(
                at(before).is_some_and(|index| index < promotion),
                "{arrived:?}"
            );
        }
        for after in ["order-a/1", "order-c/0"] {
            assert!(
                at(after).is_some_and(|index| index > promotion),
                "{arrived:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_stops_its_subject_fails_the_run_and_a_resend_skips_nothing() {
        let endpoint = Endpoint::start(&["order-a/1"]).await;
        let subjects = ["order-a", "order-b", "order-c"];
        let events = interleaved(&subjects, 3);
        let mut sink = endpoint.sink();
        match sink.deliver(&events).await {
            Err(SinkError::Unreachable(reason)) => {
                assert!(reason.contains("order-a/1"), "{reason}");
            }
            other => panic!("expected the 503 as unreachable, got {other:?}"),
        }
        let first_try = endpoint.arrived();
        assert!(
            !first_try.iter().any(|body| body == "order-a/2"),
            "an event went out after its subject's previous one failed: {first_try:?}"
        );
        // The caller's retry: the whole run again, answered 200 this time.
        sink.deliver(&events)
            .await
            .expect("delivered on the resend");
        let arrived = endpoint.arrived();
        for subject in subjects {
            let mut firsts = of_subject(&arrived, subject);
            let mut seen = std::collections::HashSet::new();
            firsts.retain(|body| seen.insert(body.clone()));
            assert_eq!(firsts, expected(subject, 3), "{arrived:?}");
        }
    }

    #[test]
    fn a_run_is_grouped_by_subject_in_the_order_of_each_groups_first_event() {
        let events = vec![
            event(ORDER_KIND, "a", 0),
            event(ORDER_KIND, "b", 0),
            event(ORDER_KIND, "a", 1),
            event(ORDER_KIND, "c", 0),
            event(ORDER_KIND, "b", 1),
        ];
        let groups = by_subject(&events);
        let ids: Vec<Vec<&str>> = groups
            .iter()
            .map(|group| group.iter().map(|event| event.id.as_str()).collect())
            .collect();
        assert_eq!(ids, [vec!["a/0", "a/1"], vec!["b/0", "b/1"], vec!["c/0"]]);
    }

    #[test]
    fn each_promotion_event_is_a_segment_of_its_own() {
        let events = vec![
            event(PROMOTION_KIND, "p", 0),
            event(ORDER_KIND, "a", 0),
            event(ORDER_KIND, "b", 0),
            event("seckill.promotion.started", "p", 1),
            event("seckill.promotion.ended", "p", 2),
            event(ORDER_KIND, "a", 1),
        ];
        let cut = segments(&events);
        let ids: Vec<Vec<&str>> = cut
            .iter()
            .map(|segment| segment.iter().map(|event| event.id.as_str()).collect())
            .collect();
        assert_eq!(
            ids,
            [
                vec!["p/0"],
                vec!["a/0", "b/0"],
                vec!["p/1"],
                vec!["p/2"],
                vec!["a/1"]
            ]
        );
        assert!(segments(&[]).is_empty());
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_t_dot_body_in_lower_hex() {
        // Computed independently: python3 hmac.new(b"whsec_test",
        // b'1700000000.{"id":"e-1"}', hashlib.sha256).hexdigest().
        assert_eq!(
            sign(SECRET, T_S, BODY),
            "t=1700000000,v1=48772b28582ffa69eed3c6d56b138febc0e79565f0d8418d090328a1fe544d71"
        );
    }

    #[test]
    fn hex_encoding_matches_rfc_4231_test_case_2() {
        let mut mac = HmacSha256::new_from_slice(b"Jefe").expect("any key length");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex_encode(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_signature_verifies_within_the_tolerance_on_either_side() {
        let header = sign(SECRET, T_S, BODY);
        assert!(verify_signature(SECRET, &header, BODY, T_S, 0));
        assert!(verify_signature(SECRET, &header, BODY, T_S + 300, 300));
        assert!(verify_signature(SECRET, &header, BODY, T_S - 300, 300));
    }

    #[test]
    fn a_stale_or_future_signature_is_refused() {
        let header = sign(SECRET, T_S, BODY);
        assert!(!verify_signature(SECRET, &header, BODY, T_S + 301, 300));
        assert!(!verify_signature(SECRET, &header, BODY, T_S - 301, 300));
        assert!(!verify_signature(SECRET, &header, BODY, T_S, -1));
    }

    #[test]
    fn another_body_or_secret_or_time_does_not_verify() {
        let header = sign(SECRET, T_S, BODY);
        assert!(!verify_signature(
            SECRET,
            &header,
            br#"{"id":"e-2"}"#,
            T_S,
            300
        ));
        assert!(!verify_signature(b"whsec_other", &header, BODY, T_S, 300));
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert!(!verify_signature(SECRET, &moved, BODY, T_S, 300));
    }

    #[test]
    fn any_matching_v1_verifies_so_secrets_can_rotate() {
        let old = sign(b"whsec_old", T_S, BODY);
        let new = sign(SECRET, T_S, BODY);
        let old_v1 = old.split_once(",v1=").map(|(_, v1)| v1).unwrap_or("");
        let both = format!("{new},v1={old_v1}");
        assert!(verify_signature(SECRET, &both, BODY, T_S, 0));
        assert!(verify_signature(b"whsec_old", &both, BODY, T_S, 0));
    }

    #[test]
    fn malformed_headers_do_not_verify() {
        let good = sign(SECRET, T_S, BODY);
        let v1 = good.split_once(",v1=").map(|(_, v1)| v1).unwrap_or("");
        for header in [
            String::new(),
            format!("v1={v1}"),
            "t=1700000000".to_owned(),
            format!("t=abc,v1={v1}"),
            format!("t=1700000000,t=1700000000,v1={v1}"),
            format!("t=1700000000,v1={}", &v1[1..]),
            format!("t=1700000000,v1={}", &v1[..62]),
            format!("t=1700000000,v1={}zz", &v1[..62]),
            format!("t=1700000000;v1={v1}"),
        ] {
            assert!(
                !verify_signature(SECRET, &header, BODY, T_S, 300),
                "{header:?}"
            );
        }
    }

    #[test]
    fn upper_case_hex_and_spaces_after_commas_are_accepted() {
        let good = sign(SECRET, T_S, BODY);
        let v1 = good.split_once(",v1=").map(|(_, v1)| v1).unwrap_or("");
        let header = format!("t=1700000000, v1={}", v1.to_uppercase());
        assert!(verify_signature(SECRET, &header, BODY, T_S, 0));
    }

    #[test]
    fn statuses_map_to_delivered_retried_or_refused() {
        assert_eq!(outcome_of(StatusCode::OK), Outcome::Delivered);
        assert_eq!(outcome_of(StatusCode::NO_CONTENT), Outcome::Delivered);
        assert_eq!(
            outcome_of(StatusCode::SERVICE_UNAVAILABLE),
            Outcome::Unreachable
        );
        assert_eq!(
            outcome_of(StatusCode::INTERNAL_SERVER_ERROR),
            Outcome::Unreachable
        );
        assert_eq!(
            outcome_of(StatusCode::TOO_MANY_REQUESTS),
            Outcome::Unreachable
        );
        assert_eq!(outcome_of(StatusCode::NOT_FOUND), Outcome::Refused);
        assert_eq!(outcome_of(StatusCode::BAD_REQUEST), Outcome::Refused);
        assert_eq!(outcome_of(StatusCode::MOVED_PERMANENTLY), Outcome::Refused);
    }

    #[test]
    fn the_label_leaves_out_the_path_query_and_password() {
        let sink = WebhookSink::new(
            "http://shop:hunter2@hooks.shop.example:8080/T0/B0/token?key=sesame".into(),
            "whsec".into(),
            1_000,
        )
        .expect("a valid webhook");
        let label = sink.label();
        assert!(
            label.starts_with("webhook hooks.shop.example:8080 #"),
            "{label}"
        );
        for secret in ["hunter2", "token", "sesame", "whsec"] {
            assert!(!label.contains(secret), "{label}");
            assert!(!format!("{sink:?}").contains(secret));
        }
    }

    #[test]
    fn two_webhooks_on_one_host_have_different_labels() {
        let a = WebhookSink::new("http://h.example/a".into(), "s".into(), 1_000).expect("valid");
        let b = WebhookSink::new("http://h.example/b".into(), "s".into(), 1_000).expect("valid");
        assert_ne!(a.label(), b.label());
    }

    #[test]
    fn what_cannot_work_is_refused_when_the_sink_is_made() {
        let make = |url: &str, secret: &str, timeout_ms| {
            WebhookSink::new(url.into(), secret.into(), timeout_ms)
        };
        assert!(make("https://h.example/hook", "s", 1_000).is_ok());
        assert!(make("ftp://h.example/hook", "s", 1_000).is_err());
        assert!(make("not a url", "s", 1_000).is_err());
        assert!(make("http://h.example/hook", "", 1_000).is_err());
        assert!(make("http://h.example/hook", "s", 0).is_err());
    }
}
