//! A shop's consumer of seckill's order events on NATS JetStream. Run:
//! `cargo run -p seckill-persistence --example consume_nats -- [nats://127.0.0.1:4222]`.
//!
//! A durable pull consumer on the stream `SECKILL_EVENTS` remembers how far it got, so a
//! restart resumes where it stopped. Delivery is at least once: the same event can come
//! twice (seckill resent it after a failure, or this consumer crashed before its ack).
//! The dedupe rule: keep the ids seen, drop a repeat. The id is the CloudEvent `id`, also
//! in the `Nats-Msg-Id` header. Here the ids are kept in memory; a real consumer stores
//! them with what it does (one transaction, a unique key on the id) and keeps them longer
//! than an outage can last.

use std::collections::HashSet;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let js = jetstream::new(async_nats::connect(url.as_str()).await?);
    let stream = js.get_stream("SECKILL_EVENTS").await?;
    let config = pull::Config {
        durable_name: Some("shop-warehouse".into()),
        // The order events only; `seckill.events.>` is every event.
        filter_subject: "seckill.events.seckill.order.>".into(),
        ..pull::Config::default()
    };
    let consumer = stream
        .get_or_create_consumer("shop-warehouse", config)
        .await?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let event: serde_json::Value = serde_json::from_slice(&message.payload)?;
        let id = event["id"].as_str().unwrap_or_default().to_owned();
        if seen.insert(id.clone()) {
            println!("{} {} {id}", event["type"], event["subject"]);
        } else {
            println!("dropped a repeat of {id}");
        }
        // Acked after it was handled: an event not acked comes again.
        message.ack().await?;
    }
    Ok(())
}
