//! [`WebhookSink`]: order events as signed HTTP POSTs to a shop's endpoint; and
//! [`sign`] / [`verify_signature`], the signature both ends compute.
//!
//! One POST per event, in order, the next sent only once the previous was answered `2xx`:
//! the simplest contract for a shop (one CloudEvent per request, the body is the event,
//! structured mode) and the one that keeps each order's events in order. Answers:
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

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

type HmacSha256 = Hmac<Sha256>;

/// A webhook events target.
pub struct WebhookSink {
    client: Client,
    url: Url,
    secret: String,
    timeout_ms: u64,
    label: String,
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
        })
    }

    async fn deliver_all(&self, events: &[OutEvent]) -> Result<(), SinkError> {
        for event in events {
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
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"id":"e-1"}"#;
    const T_S: i64 = 1_700_000_000;

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
