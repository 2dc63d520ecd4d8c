//! [`NatsSink`]: order events into the JetStream stream `SECKILL_EVENTS`, one message per
//! event on `seckill.events.<type>` with `Nats-Msg-Id` = the event id, each acknowledged by
//! the server before `deliver` returns.
//!
//! The stream is made on the first delivery if it is missing (file storage, one replica,
//! the server's default limits and duplicate window); an existing stream is used as it is,
//! so operators who want three replicas or a retention limit create it themselves first.
//! Within the stream's duplicate window (two minutes by default) the server drops a
//! redelivered id and answers it as a duplicate, which counts as delivered; after it,
//! consumers dedupe on the id (README).
//!
//! The events of a chunk are pipelined in runs (`sink::runs`): every publish of a run is sent
//! before its first ack is awaited, the next run only once every ack of this one came, and a
//! run holds at most one event of each subject (order). A publish lost on a dying socket while
//! a later one, queued in the client, goes out after the reconnect then reorders only different
//! orders' events; with two of one order in flight the caller's resend would store the first
//! after the second (and the second's repeat would be dropped as a duplicate).
//!
//! The client is made once and kept: async-nats reconnects by itself, and a client dropped
//! while its server is down would go on reconnecting in the background forever. What is
//! redone after a failure is the stream check (the stream may have been deleted).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::context::{Context, PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, StorageType};
use async_nats::{ConnectOptions, ServerAddr};
use bytes::Bytes;

use super::sink::{runs, OutEvent, Sink, SinkError, SinkSetupError};

/// The stream the events go to (api.md).
pub const STREAM: &str = "SECKILL_EVENTS";
/// Every event's subject is this, a dot, and its type.
pub const SUBJECT_PREFIX: &str = "seckill.events";

/// A bound on one connection attempt: a server that does not answer is Unreachable.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// A bound on one `deliver` (publishing the chunk and awaiting every ack), and on each
/// JetStream API request. The caller's chunks are a few thousand events at most, in runs of
/// different orders (a round trip each), which a healthy server acknowledges well within it.
const DELIVER_WAIT: Duration = Duration::from_secs(10);

/// A JetStream events target.
pub struct NatsSink {
    address: ServerAddr,
    label: String,
    /// Made on the first delivery; kept afterwards (the client reconnects by itself).
    js: Option<Context>,
    /// Whether the stream was found or made on this client since the last failure.
    stream_checked: bool,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The address may hold a user and password: only the label is shown.
        f.debug_struct("NatsSink")
            .field("label", &self.label)
            .field("connected", &self.js.is_some())
            .finish()
    }
}

impl NatsSink {
    /// A sink for `url` (`nats://[USER:PASS@]HOST[:PORT]`, or `tls://`). Nothing is
    /// connected yet: a server that is down now fails the first deliveries, not this.
    pub fn new(url: &str) -> Result<NatsSink, SinkSetupError> {
        // The parse error names the part that is wrong, never the URL itself.
        let address: ServerAddr = url
            .parse()
            .map_err(|e: std::io::Error| SinkSetupError::new("nats", e.to_string()))?;
        if address.host().is_empty() {
            return Err(SinkSetupError::new("nats", "the URL has no host"));
        }
        let label = format!("nats {}:{}", address.host(), address.port());
        Ok(NatsSink {
            address,
            label,
            js: None,
            stream_checked: false,
        })
    }

    async fn deliver_all(&mut self, events: &[OutEvent]) -> Result<(), SinkError> {
        if events.is_empty() {
            return Ok(());
        }
        let js = self.ready().await?;
        let outcome = match tokio::time::timeout(DELIVER_WAIT, publish_all(&js, events)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(SinkError::Unreachable(format!(
                "no acknowledgement of {} events within {} s",
                events.len(),
                DELIVER_WAIT.as_secs()
            ))),
        };
        if outcome.is_err() {
            self.stream_checked = false;
        }
        outcome
    }

    /// The JetStream context, connected and with the stream checked.
    async fn ready(&mut self) -> Result<Context, SinkError> {
        let js = match &self.js {
            Some(js) => js.clone(),
            None => {
                let js = connect(&self.address).await?;
                self.js = Some(js.clone());
                js
            }
        };
        if !self.stream_checked {
            ensure_stream(&js).await?;
            self.stream_checked = true;
        }
        Ok(js)
    }
}

impl Sink for NatsSink {
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

/// The subject of an event of type `kind` (the type's dots make more tokens, which lets
/// consumers filter on `seckill.events.seckill.order.>`).
pub fn subject_of(kind: &str) -> String {
    format!("{SUBJECT_PREFIX}.{kind}")
}

async fn connect(address: &ServerAddr) -> Result<Context, SinkError> {
    let client = ConnectOptions::new()
        .name("seckill events")
        .connection_timeout(CONNECT_WAIT)
        .connect(address.clone())
        .await
        .map_err(|e| SinkError::Unreachable(format!("connect: {e}")))?;
    let mut js = async_nats::jetstream::new(client);
    // Bounds every API request and every publish ack of this context.
    js.set_timeout(DELIVER_WAIT);
    Ok(js)
}

/// Finds the stream, or makes it if it is missing; an existing one's config is left alone.
async fn ensure_stream(js: &Context) -> Result<(), SinkError> {
    let config = Config {
        name: STREAM.to_owned(),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        storage: StorageType::File,
        num_replicas: 1,
        ..Config::default()
    };
    js.get_or_create_stream(config)
        .await
        .map(|_| ())
        .map_err(|e| SinkError::Unreachable(format!("stream {STREAM}: {e}")))
}

/// Publishes `events` run by run, each run acknowledged before the next is sent.
async fn publish_all(js: &Context, events: &[OutEvent]) -> Result<(), SinkError> {
    for run in runs(events) {
        publish_run(js, &events[run]).await?;
    }
    Ok(())
}

/// Sends every publish of `run` (no two of one subject), then awaits their acks in order:
/// one round trip of latency for the run instead of one per event. Messages sent on one
/// connection are stored in the order sent.
async fn publish_run(js: &Context, run: &[OutEvent]) -> Result<(), SinkError> {
    let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(run.len());
    for event in run {
        let message = PublishMessage::build()
            .payload(Bytes::copy_from_slice(&event.body))
            .message_id(&event.id);
        let ack = js
            .send_publish(subject_of(event.kind), message)
            .await
            .map_err(|e| publish_failed(event, &e))?;
        acks.push(ack);
    }
    // Acks still unread when one fails are dropped: the client's acker task reads them.
    for (event, ack) in run.iter().zip(acks) {
        let ack = ack.await.map_err(|e| publish_failed(event, &e))?;
        if ack.duplicate {
            // Stored by an earlier delivery within the duplicate window: delivered.
            tracing::debug!(id = %event.id, "JetStream answered a redelivered event as a duplicate");
        }
    }
    Ok(())
}

fn publish_failed(event: &OutEvent, error: &PublishError) -> SinkError {
    match error.kind() {
        // No retry makes it smaller: the server's max_payload must be raised.
        PublishErrorKind::MaxPayloadExceeded => SinkError::Refused {
            status: 0,
            reason: format!("event {} of {} bytes: {error}", event.id, event.body.len()),
        },
        _ => SinkError::Unreachable(format!("publishing event {}: {error}", event.id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_shows_host_and_port_but_never_the_password() {
        let sink = NatsSink::new("nats://shop:hunter2@10.0.0.7:4333").expect("a valid URL");
        assert_eq!(sink.label(), "nats 10.0.0.7:4333");
        assert!(!format!("{sink:?}").contains("hunter2"));
    }

    #[test]
    fn the_port_defaults_to_4222() {
        let sink = NatsSink::new("nats://events.shop.example").expect("a valid URL");
        assert_eq!(sink.label(), "nats events.shop.example:4222");
    }

    #[test]
    fn a_url_of_another_scheme_is_refused_at_once() {
        let error = NatsSink::new("http://127.0.0.1:4222").expect_err("not a NATS URL");
        assert_eq!(error.scheme, "nats");
    }

    #[test]
    fn an_event_goes_to_the_subject_of_its_type() {
        assert_eq!(
            subject_of("seckill.order.created"),
            "seckill.events.seckill.order.created"
        );
    }
}
