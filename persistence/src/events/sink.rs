//! The one interface every events target speaks: [`Sink`] takes a run of [`OutEvent`]s and
//! answers only once the target has acknowledged all of them.
//!
//! A sink knows its target's protocol and nothing of the journal: the cursor, the retries and
//! their backoff belong to the caller (`deliver`). Every sink connects on its first
//! `deliver`, not when it is made, so a target that is down when seckill starts holds back
//! only its own events; [`SinkSetupError`] is for what no retry can fix (a malformed URL).

use std::future::Future;
use std::pin::Pin;

/// One CloudEvent ready to send.
#[derive(Debug, Clone)]
pub struct OutEvent {
    /// Stable: the same on every delivery (consumers dedupe on it).
    pub id: String,
    /// The CloudEvents `type`, e.g. "seckill.order.created".
    pub kind: &'static str,
    /// The CloudEvents `subject`: the order id or the promotion id.
    pub subject: String,
    /// The whole CloudEvent, structured-mode JSON.
    pub body: Vec<u8>,
    /// The CloudEvents `time`, in milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// Why a run of events was not (wholly) delivered. Both are retried by the caller: a
/// refusal too, since a shop's broken endpoint must not lose its events.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// No answer, a connection that failed, a timeout, a server error (HTTP 5xx), a broker's
    /// nack: the target may work again by itself.
    #[error("target unreachable: {0}")]
    Unreachable(String),
    /// The target answered and said no: an HTTP status outside 2xx and 5xx for webhooks;
    /// `status` 0 when a broker or the sink itself refuses the event (too large for the
    /// broker, an id too long for AMQP). Needs a person: the events wait until then.
    #[error("target refused the event ({status}): {reason}")]
    Refused { status: u16, reason: String },
}

/// A target of the order events.
pub trait Sink: Send + 'static {
    /// Delivers `events` in order; Ok only once the target acknowledged every one. On Err,
    /// some prefix may have been delivered: the caller resends from the first (at least once).
    fn deliver<'a>(
        &'a mut self,
        events: &'a [OutEvent],
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

    /// A short name for logs and metric labels, without secrets ("rabbitmq 127.0.0.1:5672").
    fn label(&self) -> String;
}

/// An `--events` target that no retry can make work (seckill refuses to start: exit 2).
/// Never carries the target's password or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {scheme} events target: {reason}")]
pub struct SinkSetupError {
    /// "nats", "amqp" or "webhook".
    pub scheme: &'static str,
    pub reason: String,
}

impl SinkSetupError {
    pub(crate) fn new(scheme: &'static str, reason: impl Into<String>) -> SinkSetupError {
        SinkSetupError {
            scheme,
            reason: reason.into(),
        }
    }
}
