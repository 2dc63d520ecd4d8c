//! [`AmqpSink`]: order events into RabbitMQ's durable topic exchange `seckill.events`, routing
//! key = the event's type, as persistent messages that the broker confirms before `deliver`
//! returns.
//!
//! On each connection: one channel in confirm mode, and the exchange declared (durable,
//! topic; declaring it again with the same settings is a no-op). Queues are the shop's: a
//! message routed to no queue is dropped by the broker (`mandatory` is off), as a topic
//! exchange intends. Any channel or connection error drops the connection; the next
//! delivery opens a new one. Only `amqp://` is built in (no TLS provider is compiled).
//!
//! The events of a chunk are pipelined in runs (`sink::runs`): every message of a run is
//! published before its first confirm is awaited, the next run only once every confirm of this
//! one came, and a run holds at most one event of each subject (order). A nack of one event
//! while the next is acked then reorders only different orders' events; with two of one order
//! in flight the caller's resend would put the nacked first after the acked second.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
};

use super::sink::{runs, OutEvent, Sink, SinkError, SinkSetupError};

/// The exchange the events go to (api.md).
pub const EXCHANGE: &str = "seckill.events";
/// The content type of every message: a CloudEvent in structured mode.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// AMQP's delivery mode of a message the broker keeps on disk.
const DELIVERY_MODE_PERSISTENT: u8 = 2;

/// A bound on the TCP connect, unless the URL sets `connection_timeout` itself.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// A bound on one `deliver` (connecting, publishing the chunk, awaiting every confirm). The
/// caller's chunks are a few thousand events at most, in runs of different orders (a round
/// trip each), which a healthy broker confirms well within it.
const DELIVER_WAIT: Duration = Duration::from_secs(10);

/// A RabbitMQ (AMQP 0-9-1) events target.
pub struct AmqpSink {
    uri: AMQPUri,
    label: String,
    /// Open between a successful connect and the first error.
    link: Option<Link>,
}

/// An open connection and its confirm-mode channel.
struct Link {
    /// Kept so the connection lives as long as the channel is used; closed when dropped.
    _connection: Connection,
    channel: Channel,
}

impl std::fmt::Debug for AmqpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URI holds the password: only the label is shown.
        f.debug_struct("AmqpSink")
            .field("label", &self.label)
            .field("connected", &self.link.is_some())
            .finish()
    }
}

impl AmqpSink {
    /// A sink for `url` (`amqp://USER:PASS@HOST:PORT/VHOST`, the vhost URL-encoded: `%2f` is
    /// `/`). Nothing is connected yet: a broker that is down now fails the first deliveries.
    pub fn new(url: &str) -> Result<AmqpSink, SinkSetupError> {
        let mut uri = parse_uri(url)?;
        uri.query.connection_timeout =
            Some(uri.query.connection_timeout.unwrap_or(CONNECT_TIMEOUT_MS));
        let mut label = format!("rabbitmq {}:{}", uri.authority.host, uri.authority.port);
        if uri.vhost != "/" {
            label.push('/');
            label.push_str(&uri.vhost);
        }
        Ok(AmqpSink {
            uri,
            label,
            link: None,
        })
    }

    async fn deliver_all(&mut self, events: &[OutEvent]) -> Result<(), SinkError> {
        if events.is_empty() {
            return Ok(());
        }
        let outcome =
            match tokio::time::timeout(DELIVER_WAIT, self.connect_and_publish(events)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Failure::Link(format!(
                    "no confirm of {} events within {} s",
                    events.len(),
                    DELIVER_WAIT.as_secs()
                ))),
            };
        match outcome {
            Ok(()) => Ok(()),
            Err(Failure::Link(reason)) => {
                // The channel's state is unknown (late confirms, a closed channel): start over.
                self.link = None;
                Err(SinkError::Unreachable(reason))
            }
            Err(Failure::Sink(error)) => Err(error),
        }
    }

    async fn connect_and_publish(&mut self, events: &[OutEvent]) -> Result<(), Failure> {
        // A link the broker closed since (a restart) is replaced before it fails a run.
        let usable = self
            .link
            .as_ref()
            .is_some_and(|link| link.channel.status().connected());
        if !usable {
            self.link = None;
            self.link = Some(open(&self.uri).await?);
        }
        match &self.link {
            Some(link) => publish_all(&link.channel, events).await,
            None => Err(Failure::Link("no connection".into())),
        }
    }
}

impl Sink for AmqpSink {
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

/// Why a delivery failed, and so whether the connection is dropped.
enum Failure {
    /// The connection or channel failed, or went quiet: reconnect next time.
    Link(String),
    /// The broker answered (a nack) or the event cannot be sent: the link is fine.
    Sink(SinkError),
}

impl From<lapin::Error> for Failure {
    fn from(error: lapin::Error) -> Failure {
        Failure::Link(error.to_string())
    }
}

/// Parses `url`, refusing what lapin would misread or cannot do.
fn parse_uri(url: &str) -> Result<AMQPUri, SinkSetupError> {
    // Parsed once by the url crate as well: its errors never repeat the input (which holds a
    // password), and it knows the host when it is an IP address, which lapin's parser
    // replaces by "localhost" (it reads only domain names).
    let parsed =
        reqwest::Url::parse(url).map_err(|e| SinkSetupError::new("amqp", e.to_string()))?;
    let host = match parsed.host_str() {
        Some(host) if !host.is_empty() && !parsed.cannot_be_a_base() => host,
        _ => return Err(SinkSetupError::new("amqp", "the URL has no host")),
    };
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|reason: String| SinkSetupError::new("amqp", reason))?;
    if uri.scheme == AMQPScheme::AMQPS {
        return Err(SinkSetupError::new(
            "amqp",
            "amqps:// needs TLS, which this build of seckill leaves out; use amqp://",
        ));
    }
    // An IPv6 host comes bracketed; the socket address wants it bare.
    uri.authority.host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(uri)
}

/// Connects, opens a channel in confirm mode and declares the exchange.
async fn open(uri: &AMQPUri) -> Result<Link, Failure> {
    let properties = ConnectionProperties::default().with_connection_name("seckill events".into());
    let connection = Connection::connect_uri(uri.clone(), properties).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    Ok(Link {
        _connection: connection,
        channel,
    })
}

/// Publishes `events` run by run, each run confirmed before the next is published.
async fn publish_all(channel: &Channel, events: &[OutEvent]) -> Result<(), Failure> {
    // Every message is made before the first is sent: an event that cannot be sent fails
    // the chunk before any of it goes out.
    let mut messages = events
        .iter()
        .map(message_of)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::Sink)?
        .into_iter();
    for run in runs(events) {
        let run_messages: Vec<(ShortString, BasicProperties)> =
            messages.by_ref().take(run.len()).collect();
        publish_run(channel, &events[run], run_messages).await?;
    }
    Ok(())
}

/// Publishes `messages`, those of `run`'s events (no two of one subject), then awaits the
/// confirms: one round trip of latency for the run.
///
/// The publishes are awaited together, not one after the other: lapin's `basic_publish`
/// resolves only once its I/O loop has written the frames, so awaiting each in turn costs a
/// wake-up of that loop, a write and a hop back per message (it held the sink to some 4,000
/// events/s on a loaded machine). Queued together, the loop writes the run in a few
/// syscalls. Their order on the wire does not matter: a run holds one event per subject.
async fn publish_run(
    channel: &Channel,
    run: &[OutEvent],
    messages: Vec<(ShortString, BasicProperties)>,
) -> Result<(), Failure> {
    let publishes = run
        .iter()
        .zip(messages)
        .map(|(event, (routing_key, properties))| {
            channel.basic_publish(
                EXCHANGE.into(),
                routing_key,
                BasicPublishOptions::default(),
                &event.body,
                properties,
            )
        });
    let confirms: Vec<PublisherConfirm> = futures::future::try_join_all(publishes).await?;
    let confirmations = futures::future::try_join_all(confirms).await?;
    for (event, confirmation) in run.iter().zip(confirmations) {
        match confirmation {
            Confirmation::Ack(_) => {}
            // The broker could not store it (an internal error): sent again by the caller.
            Confirmation::Nack(_) => {
                return Err(Failure::Sink(SinkError::Unreachable(format!(
                    "the broker nacked event {}",
                    event.id
                ))))
            }
            Confirmation::NotRequested => {
                return Err(Failure::Link("the channel is not in confirm mode".into()))
            }
        }
    }
    Ok(())
}

/// The routing key and the properties of `event`'s message.
fn message_of(event: &OutEvent) -> Result<(ShortString, BasicProperties), SinkError> {
    let routing_key = short(event.kind, event)?;
    let properties = BasicProperties::default()
        .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
        .with_message_id(short(&event.id, event)?)
        .with_content_type(CONTENT_TYPE.into())
        .with_type(routing_key.clone())
        // AMQP timestamps are whole seconds.
        .with_timestamp(u64::try_from(event.time_ms.div_euclid(1_000)).unwrap_or(0));
    Ok((routing_key, properties))
}

/// `text` as an AMQP short string (at most 255 bytes; `From` would panic past that).
fn short(text: &str, event: &OutEvent) -> Result<ShortString, SinkError> {
    ShortString::try_new(text).map_err(|e| SinkError::Refused {
        status: 0,
        reason: format!("event {}: {e}", event.id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> OutEvent {
        OutEvent {
            id: id.to_owned(),
            kind: "seckill.order.paid",
            subject: "o-1".into(),
            body: b"{}".to_vec(),
            time_ms: 1_700_000_000_999,
        }
    }

    #[test]
    fn an_ip_address_host_is_kept_not_replaced_by_localhost() {
        let sink = AmqpSink::new("amqp://guest:guest@10.1.2.3:5672/%2f").expect("a valid URL");
        assert_eq!(sink.uri.authority.host, "10.1.2.3");
        assert_eq!(sink.label(), "rabbitmq 10.1.2.3:5672");
    }

    #[test]
    fn the_label_names_a_vhost_other_than_the_default_and_never_the_password() {
        let sink = AmqpSink::new("amqp://shop:hunter2@mq.shop.example/orders").expect("valid");
        assert_eq!(sink.label(), "rabbitmq mq.shop.example:5672/orders");
        assert!(!format!("{sink:?}").contains("hunter2"));
    }

    #[test]
    fn amqps_and_other_schemes_are_refused_at_once() {
        assert!(AmqpSink::new("amqps://guest:guest@127.0.0.1:5671/%2f").is_err());
        assert!(AmqpSink::new("http://127.0.0.1:5672").is_err());
        let error = AmqpSink::new("amqp://shop:hunter2@").expect_err("no host");
        assert!(!error.to_string().contains("hunter2"));
    }

    #[test]
    fn a_message_is_persistent_and_carries_the_event_id_and_type() {
        let (routing_key, properties) = message_of(&event("e-1")).expect("short fields");
        assert_eq!(routing_key.as_str(), "seckill.order.paid");
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(
            properties.message_id().as_ref().map(ShortString::as_str),
            Some("e-1")
        );
        assert_eq!(
            properties.content_type().as_ref().map(ShortString::as_str),
            Some(CONTENT_TYPE)
        );
        assert_eq!(*properties.timestamp(), Some(1_700_000_000));
    }

    #[test]
    fn an_id_too_long_for_amqp_is_refused_not_a_panic() {
        let long = "x".repeat(300);
        match message_of(&event(&long)) {
            Err(SinkError::Refused { status: 0, .. }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
