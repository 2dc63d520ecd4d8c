//! A shop's consumer of seckill's order events on RabbitMQ. Run:
//! `cargo run -p seckill-persistence --example consume_rabbitmq -- [amqp://guest:guest@127.0.0.1:5672/%2f]`.
//!
//! The shop owns its queue: durable, bound to the topic exchange `seckill.events` with the
//! types it wants (routing key = type; `seckill.order.*` here, `#` for all). Bind it before
//! the sale: the exchange drops what no queue is bound to. Delivery is at least once: the
//! same event can come twice (seckill resent it after a failure, or this consumer crashed
//! before its ack). The dedupe rule: keep the ids seen, drop a repeat. The id is the
//! message's `message_id` property, also the CloudEvent `id`. Here the ids are kept in
//! memory; a real consumer stores them with what it does (one transaction, a unique key on
//! the id) and keeps them longer than an outage can last.

use std::collections::HashSet;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

const QUEUE: &str = "shop-warehouse";

#[tokio::main]
async fn main() -> Result<(), lapin::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // Declared as seckill declares it (durable topic), so the queue can be bound first.
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            "seckill.events".into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(QUEUE.into(), durable_queue, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            QUEUE.into(),
            "seckill.events".into(),
            "seckill.order.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // At most 100 events in hand and not yet acked.
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            QUEUE.into(),
            "warehouse".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map_or_else(String::new, |id| id.as_str().to_owned());
        if seen.insert(id.clone()) {
            println!("{} {id}", delivery.routing_key);
        } else {
            println!("dropped a repeat of {id}");
        }
        // Acked after it was handled: an event not acked comes again.
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
