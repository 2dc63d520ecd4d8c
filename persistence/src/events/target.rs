//! One `--events` value, parsed and checked: which transport, where, and the stable key of
//! the target's cursor.
//!
//! A malformed value is refused here, before anything starts, with a one-line message that
//! names `--events` and never repeats a password (the binary exits 2). Whether the target
//! is reachable is not checked: an unreachable target does not stop the server, its events
//! wait in the journal.
//!
//! The key names the target's cursor file. It is a hash of the target as normalised
//! without its credentials (and, for RabbitMQ, without connection options), so rotating a
//! password or tuning a heartbeat keeps the cursor; a new host, port, vhost or webhook URL
//! is a new target, which starts at the end of the journal.

use reqwest::Url;
use sha2::{Digest, Sha256};

use super::amqp::AmqpSink;
use super::nats::NatsSink;
use super::sink::{Sink, SinkSetupError};
use super::webhook::WebhookSink;

/// NATS's default client port.
const NATS_PORT_DEFAULT: u16 = 4222;
/// RabbitMQ's default AMQP port.
const AMQP_PORT_DEFAULT: u16 = 5672;
/// Bytes of the SHA-256 of the normalised target kept in its key (128 bits, 32 hex digits).
const KEY_HASH_BYTES: usize = 16;

/// A malformed `--events` value (or a webhook without its secret).
#[derive(Debug, thiserror::Error)]
pub enum EventsConfigError {
    /// `value` has its credentials replaced by `***`.
    #[error("--events {value}: {reason}")]
    Invalid { value: String, reason: String },
    #[error(
        "--events {value}: a webhook needs --events-secret (SECKILL_EVENTS_SECRET) to sign \
         its deliveries"
    )]
    MissingSecret { value: String },
    #[error("--events names {label} twice: give each target once")]
    Duplicate { label: String },
}

/// Which transport a target speaks, with what it needs to connect.
#[derive(Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// NATS JetStream; `url` as given (`nats://` or `tls://`, credentials included).
    Nats { url: String },
    /// RabbitMQ; `url` as given (`amqp://USER:PASS@HOST:PORT/VHOST`, options included).
    Amqp { url: String },
    /// A webhook; `url` as given, and the secret that signs each delivery.
    Webhook { url: String, secret: String },
}

/// Without the URLs (they may carry credentials) and the secret.
impl std::fmt::Debug for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetKind::Nats { .. } => "Nats",
            TargetKind::Amqp { .. } => "Amqp",
            TargetKind::Webhook { .. } => "Webhook",
        })
    }
}

/// One events target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTarget {
    pub kind: TargetKind,
    /// Names the target's cursor: `<kind>-<32 hex digits>`, stable across password changes.
    pub key: String,
    /// For logs and messages, without secrets, as the target's sink labels itself:
    /// `nats 127.0.0.1:4222`, `rabbitmq 127.0.0.1:5672/shop`, `webhook shop.example:80
    /// #1a2b3c4d` (a fingerprint of the URL, whose path may hold a token).
    pub label: String,
}

impl EventTarget {
    /// Parses one `--events` value. `secret` is `--events-secret`, which a webhook needs.
    pub fn parse(value: &str, secret: Option<&str>) -> Result<EventTarget, EventsConfigError> {
        let value = value.trim();
        let invalid = |reason: &str| EventsConfigError::Invalid {
            value: redact(value),
            reason: reason.to_owned(),
        };
        let Some((scheme, _)) = value.split_once("://") else {
            return Err(invalid(
                "expected nats://HOST:PORT, amqp://USER:PASS@HOST:PORT/VHOST or http://HOST/PATH",
            ));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "nats" | "tls" => parse_nats(value).map_err(|reason| invalid(&reason)),
            "amqp" => parse_amqp(value).map_err(|reason| invalid(&reason)),
            "amqps" => Err(invalid(
                "amqps:// (RabbitMQ over TLS) is not supported by this build; use amqp://",
            )),
            "http" | "https" => parse_webhook(value, secret),
            _ => Err(invalid(
                "unknown scheme: expected nats://, amqp:// or http://",
            )),
        }
    }

    /// The sink that speaks this target's transport (nothing is connected yet);
    /// `webhook_timeout_ms` bounds each webhook request.
    pub fn sink(&self, webhook_timeout_ms: u64) -> Result<Box<dyn Sink>, SinkSetupError> {
        let sink: Box<dyn Sink> = match &self.kind {
            TargetKind::Nats { url } => Box::new(NatsSink::new(url)?),
            TargetKind::Amqp { url } => Box::new(AmqpSink::new(url)?),
            TargetKind::Webhook { url, secret } => Box::new(WebhookSink::new(
                url.clone(),
                secret.clone(),
                webhook_timeout_ms,
            )?),
        };
        Ok(sink)
    }

    /// Parses every `--events` value and refuses a target given twice (two tasks on one
    /// cursor would each move it past what the other has not delivered).
    pub fn parse_all<S: AsRef<str>>(
        values: &[S],
        secret: Option<&str>,
    ) -> Result<Vec<EventTarget>, EventsConfigError> {
        let mut targets: Vec<EventTarget> = Vec::with_capacity(values.len());
        for value in values {
            let target = EventTarget::parse(value.as_ref(), secret)?;
            if targets.iter().any(|known| known.key == target.key) {
                return Err(EventsConfigError::Duplicate {
                    label: target.label,
                });
            }
            targets.push(target);
        }
        Ok(targets)
    }
}

/// The targets of `SECKILL_EVENTS`: comma-separated, blanks dropped. (A NATS target is one
/// server URL for the same reason: the comma separates targets.)
pub fn split_env_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `nats://[CREDENTIALS@]HOST[:PORT]` (or `tls://`): one server.
fn parse_nats(value: &str) -> Result<EventTarget, String> {
    if value.contains(',') {
        return Err("one NATS server per --events value".to_owned());
    }
    let url = Url::parse(value).map_err(|e| e.to_string())?;
    let host = host_of(&url)?;
    let port = url.port().unwrap_or(NATS_PORT_DEFAULT);
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err("a NATS target is only HOST:PORT (no path or query)".to_owned());
    }
    // nats:// and tls:// to one server are one stream: switching to TLS keeps the cursor.
    let normalised = format!("nats://{host}:{port}");
    Ok(EventTarget {
        kind: TargetKind::Nats {
            url: value.to_owned(),
        },
        key: key_of("nats", &normalised),
        label: format!("nats {host}:{port}"),
    })
}

/// `amqp://[USER[:PASS]@]HOST[:PORT][/VHOST][?OPTIONS]`.
fn parse_amqp(value: &str) -> Result<EventTarget, String> {
    let url = Url::parse(value).map_err(|e| e.to_string())?;
    let host = host_of(&url)?;
    let port = url.port().unwrap_or(AMQP_PORT_DEFAULT);
    let vhost = vhost_of(url.path())?;
    let normalised = format!("amqp://{host}:{port}/{vhost}");
    // The default vhost is left out of the label: `rabbitmq 127.0.0.1:5672`.
    let shown_vhost = if vhost == "/" {
        String::new()
    } else {
        format!("/{vhost}")
    };
    Ok(EventTarget {
        kind: TargetKind::Amqp {
            url: value.to_owned(),
        },
        key: key_of("amqp", &normalised),
        label: format!("rabbitmq {host}:{port}{shown_vhost}"),
    })
}

/// `http://HOST[:PORT]/PATH[?QUERY]`, with the events secret.
fn parse_webhook(value: &str, secret: Option<&str>) -> Result<EventTarget, EventsConfigError> {
    let invalid = |reason: String| EventsConfigError::Invalid {
        value: redact(value),
        reason,
    };
    let url = Url::parse(value).map_err(|e| invalid(e.to_string()))?;
    let host = host_of(&url).map_err(invalid)?;
    let Some(port) = url.port_or_known_default() else {
        return Err(invalid("no port".to_owned()));
    };
    let Some(secret) = secret.filter(|secret| !secret.is_empty()) else {
        return Err(EventsConfigError::MissingSecret {
            value: redact(value),
        });
    };
    let scheme = url.scheme();
    let path = url.path();
    // The query is part of the endpoint (and may carry a token): in the key, hashed, but
    // not in the label.
    let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    let normalised = format!("{scheme}://{host}:{port}{path}{query}");
    // The sink's own label (`webhook::label_of`): the path and query may hold the shop's
    // token, so a fingerprint of the URL tells two webhooks on one host apart instead.
    let digest = Sha256::digest(url.as_str().as_bytes());
    let fingerprint: String = digest[..4]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok(EventTarget {
        kind: TargetKind::Webhook {
            url: value.to_owned(),
            secret: secret.to_owned(),
        },
        key: key_of("webhook", &normalised),
        label: format!("webhook {host}:{port} #{fingerprint}"),
    })
}

/// The host, lowercased (a non-special scheme's host is kept as written by the parser).
fn host_of(url: &Url) -> Result<String, String> {
    match url.host_str() {
        Some(host) if !host.is_empty() => Ok(host.to_ascii_lowercase()),
        _ => Err("no host".to_owned()),
    }
}

/// The vhost an AMQP path names: the path without its leading `/`, percent-decoded; `/` (the
/// default vhost) when empty.
fn vhost_of(path: &str) -> Result<String, String> {
    let encoded = path.strip_prefix('/').unwrap_or(path);
    if encoded.is_empty() {
        return Ok("/".to_owned());
    }
    if encoded.contains('/') {
        return Err("a vhost is one path segment (write / as %2f)".to_owned());
    }
    percent_decode(encoded).ok_or_else(|| "bad percent-encoding in the vhost".to_owned())
}

/// Decodes `%XX` escapes; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = text.get(at + 1..at + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// `<kind>-<hex>`: a file name, with no credential in it.
fn key_of(kind: &str, normalised: &str) -> String {
    let digest = Sha256::digest(normalised.as_bytes());
    let hex: String = digest[..KEY_HASH_BYTES]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{kind}-{hex}")
}

/// `value` with whatever sits between `://` and `@` (user, password, token) replaced by
/// `***`, for error messages.
fn redact(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<EventTarget, EventsConfigError> {
        EventTarget::parse(value, Some("s3cret"))
    }

    #[test]
    fn each_scheme_gives_its_transport_and_a_label_without_secrets() {
        let nats = parse("nats://token123@127.0.0.1:4222").expect("nats");
        assert_eq!(nats.label, "nats 127.0.0.1:4222");
        assert!(matches!(nats.kind, TargetKind::Nats { ref url } if url.contains("token123")));
        assert!(nats.key.starts_with("nats-"));

        let amqp = parse("amqp://shop:pw@Rabbit.local:5673/%2f").expect("amqp");
        assert_eq!(amqp.label, "rabbitmq rabbit.local:5673");
        assert!(matches!(amqp.kind, TargetKind::Amqp { .. }));

        let hook = parse("http://shop.example/hooks/seckill?token=abc").expect("webhook");
        assert!(
            hook.label.starts_with("webhook shop.example:80 #"),
            "{}",
            hook.label
        );
        assert!(!hook.label.contains("token") && !hook.label.contains("hooks"));
        let named = parse("amqp://127.0.0.1/shop").expect("amqp");
        assert_eq!(named.label, "rabbitmq 127.0.0.1:5672/shop");
        match hook.kind {
            TargetKind::Webhook { secret, .. } => assert_eq!(secret, "s3cret"),
            other => panic!("expected a webhook, got {other:?}"),
        }
        for target in [&nats, &amqp] {
            assert!(!target.label.contains("pw") && !target.label.contains("token123"));
        }
    }

    #[test]
    fn a_new_password_keeps_the_cursor_and_a_new_place_does_not() {
        let key = |value: &str| parse(value).expect("valid").key;
        assert_eq!(
            key("amqp://shop:old@127.0.0.1:5672/shop"),
            key("amqp://shop:new@127.0.0.1:5672/shop?heartbeat=10")
        );
        assert_eq!(key("nats://127.0.0.1"), key("tls://a:b@127.0.0.1:4222"));
        assert_ne!(
            key("amqp://127.0.0.1:5672/shop"),
            key("amqp://127.0.0.1:5672/other")
        );
        assert_ne!(key("http://h/a"), key("http://h/b"));
        assert!(key("http://h/a").len() < 64, "a short file name");
    }

    #[test]
    fn malformed_values_are_refused_naming_the_flag_and_hiding_the_password() {
        for bad in [
            "127.0.0.1:4222",
            "kafka://127.0.0.1:9092",
            "nats://",
            "nats://a:4222,nats://b:4222",
            "amqp://user:hunter2@/vhost",
            "amqp://h/a/b",
            "nats://h:notaport",
        ] {
            let error = parse(bad).expect_err(bad).to_string();
            assert!(error.starts_with("--events "), "{bad}: {error}");
            assert!(!error.contains("hunter2"), "{bad}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
        let tls = parse("amqps://u:p@h:5671/v")
            .expect_err("amqps")
            .to_string();
        assert!(tls.contains("not supported"), "{tls}");
        assert!(
            EventTarget::parse("https://shop.example/hook", Some("s")).is_ok(),
            "https webhooks are built in (rustls, ring)"
        );
    }

    #[test]
    fn a_webhook_needs_the_secret() {
        let error = EventTarget::parse("http://127.0.0.1:9000/hook", None).expect_err("secret");
        assert!(matches!(error, EventsConfigError::MissingSecret { .. }));
        let error = EventTarget::parse("http://127.0.0.1:9000/hook", Some("")).expect_err("");
        assert!(matches!(error, EventsConfigError::MissingSecret { .. }));
    }

    #[test]
    fn a_target_given_twice_is_refused() {
        let values = ["nats://127.0.0.1:4222", "nats://u:p@127.0.0.1"];
        let error = EventTarget::parse_all(&values, None).expect_err("duplicate");
        assert!(matches!(error, EventsConfigError::Duplicate { .. }));
        let values = split_env_list(" nats://127.0.0.1:4222 ,, amqp://127.0.0.1/ ");
        assert_eq!(values.len(), 2);
        assert_eq!(EventTarget::parse_all(&values, None).expect("two").len(), 2);
    }
}
