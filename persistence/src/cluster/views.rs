//! The views between nodes (cluster plan, Q3 and step 5): every node publishes the figures
//! of the partitions it owns, and keeps the figures the other owners publish, so that it
//! answers the cheap refusals of every item itself (api.md: "cheap refusals ... from its
//! own replicated view").
//!
//! Each owned partition's [`PartitionView`] goes out every [`PUBLISH_EVERY`] on
//! `<prefix>.view.<node_id>`, one message a partition: whole figures, not deltas, so a lost
//! message costs nothing but its interval, and a view is as fresh as the last message heard
//! (the engine refuses by one for 1 s at most, see `remote_view.rs`). Core NATS, not a KV:
//! a KV put is a replicated, fsync'd write, and these are many a second and worthless a
//! second later.
//!
//! A view is a few bytes an item plus the partition's strikes. One too large for a message
//! (NATS's `max_payload`) goes without its strikes: bans from that partition are then the
//! owner's to give, which is slower but right.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use seckill_engine::{Engine, PartitionView};
use tokio::task::JoinHandle;

use super::wire::{decode_view, encode_view, ViewFrame, WIRE_VERSION};
use crate::jetstream::ClusterError;

/// How often an owner publishes its partitions' figures: ten views a second, so a view
/// missed is replaced well inside the engine's 1 s of freshness.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// The subject node `node_id` of the deployment `prefix` publishes its views on.
pub fn view_subject(prefix: &str, node_id: &str) -> String {
    format!("{prefix}.view.{node_id}")
}

/// When each other node's last view arrived.
type HeardFrom = Arc<Mutex<HashMap<String, Instant>>>;

/// The publisher and the listener of one node. Stopped when dropped.
#[derive(Debug)]
pub struct GateViews {
    publisher: JoinHandle<()>,
    listener: JoinHandle<()>,
    heard: HeardFrom,
    client: async_nats::Client,
    subject: String,
    node_id: String,
}

impl GateViews {
    /// Listens to every other node's views (into `engine`), and publishes `engine`'s own as
    /// the node `node_id`.
    pub async fn start(
        client: &async_nats::Client,
        prefix: &str,
        node_id: &str,
        engine: Engine,
    ) -> Result<GateViews, ClusterError> {
        let subscription = super::subscribe_now(client, &view_subject(prefix, "*")).await?;
        let subject = view_subject(prefix, node_id);
        let heard = HeardFrom::default();
        let listener = tokio::spawn(listen(
            subscription,
            node_id.to_owned(),
            engine.clone(),
            Arc::clone(&heard),
        ));
        let publisher = tokio::spawn(publish(
            client.clone(),
            subject.clone(),
            node_id.to_owned(),
            engine,
        ));
        Ok(GateViews {
            publisher,
            listener,
            heard,
            client: client.clone(),
            subject,
            node_id: node_id.to_owned(),
        })
    }

    /// SIGTERM: stops publishing, and tells the other nodes that this one is leaving, so
    /// that they stop handing it calls on its views' account at once (a call to a node
    /// that stopped serving would wait out its answer time and end "unknown"). Best effort:
    /// a lost message leaves them the 1 s of [`GateViews::heard_within`].
    pub async fn leave(&self) {
        self.publisher.abort();
        let frame = ViewFrame {
            version: WIRE_VERSION,
            from: self.node_id.clone(),
            leaving: true,
            view: None,
        };
        let sent = self
            .client
            .publish(self.subject.clone(), encode_view(&frame).into())
            .await;
        if sent.is_ok() {
            let _ = self.client.flush().await;
        }
    }

    /// The nodes a view arrived from within `within` (running, whatever their membership
    /// records say; see [`GateViews::heard_within`]).
    pub fn heard_from(&self, within: Duration) -> Vec<String> {
        self.heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, at)| at.elapsed() < within)
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// True when a view of `node` arrived within `within`: it runs and reaches this node
    /// over core NATS, even while its membership heartbeat (a JetStream write) is held up,
    /// as during a NATS server's leader election.
    pub fn heard_within(&self, node: &str, within: Duration) -> bool {
        self.heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .is_some_and(|at| at.elapsed() < within)
    }
}

impl Drop for GateViews {
    fn drop(&mut self) {
        self.publisher.abort();
        self.listener.abort();
    }
}

/// Publishes every owned partition's figures every [`PUBLISH_EVERY`].
async fn publish(client: async_nats::Client, subject: String, node_id: String, engine: Engine) {
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let max_payload = client.server_info().max_payload;
        for view in engine.owned_views() {
            let Some(payload) = fitting_payload(&node_id, view, max_payload) else {
                continue;
            };
            if let Err(error) = client.publish(subject.clone(), payload.into()).await {
                // Best effort: the next tick sends the figures again.
                tracing::debug!(%error, "a partition view was not published");
                break;
            }
            metrics::counter!("seckill_cluster_views_total", "direction" => "sent").increment(1);
        }
    }
}

/// `view` encoded as a frame no larger than `max_payload` bytes (without its strikes if
/// need be); `None` when even that is too large (logged: the other nodes then hand every
/// call of the partition over, after their last view went stale).
fn fitting_payload(node_id: &str, view: PartitionView, max_payload: usize) -> Option<Vec<u8>> {
    let partition = view.partition;
    let mut frame = ViewFrame {
        version: WIRE_VERSION,
        from: node_id.to_owned(),
        leaving: false,
        view: Some(view),
    };
    let payload = encode_view(&frame);
    if payload.len() <= max_payload {
        return Some(payload);
    }
    frame.view = frame.view.map(PartitionView::without_strikes);
    let payload = encode_view(&frame);
    if payload.len() <= max_payload {
        return Some(payload);
    }
    tracing::warn!(
        partition,
        bytes = payload.len(),
        max_payload,
        "a partition's view is larger than a NATS message; it is not published"
    );
    None
}

/// Hands every other node's views to `engine`, noting when each node was last heard.
async fn listen(
    mut subscription: async_nats::Subscriber,
    node_id: String,
    engine: Engine,
    heard: HeardFrom,
) {
    while let Some(message) = subscription.next().await {
        match decode_view(&message.payload) {
            Ok(frame) if frame.from == node_id => {}
            Ok(ViewFrame {
                from,
                leaving: true,
                ..
            }) => {
                heard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&from);
            }
            Ok(ViewFrame { from, view, .. }) => {
                note_heard(&heard, &from);
                if let Some(view) = view {
                    engine.apply_view(view);
                }
                metrics::counter!("seckill_cluster_views_total", "direction" => "heard")
                    .increment(1);
            }
            // Another wire version (a rolling upgrade) or noise: the calls of its
            // partitions go to the owner meanwhile.
            Err(error) => tracing::debug!(%error, "an unreadable partition view"),
        }
    }
}

fn note_heard(heard: &HeardFrom, node: &str) {
    let mut heard = heard.lock().unwrap_or_else(PoisonError::into_inner);
    match heard.get_mut(node) {
        Some(at) => *at = Instant::now(),
        None => {
            heard.insert(node.to_owned(), Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seckill_engine::ItemFigures;

    fn view(items: u64, strikes: usize) -> PartitionView {
        PartitionView {
            partition: 1,
            epoch: 4,
            built_at_ms: 1_800_000_000_000,
            items: (0..items)
                .map(|n| ItemFigures {
                    key: n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    remaining: 1_000_000 - n,
                })
                .collect(),
            strikes: (0..strikes)
                .map(|n| ("promotion".into(), format!("user-{n:08}"), 2))
                .collect(),
            strikes_whole: true,
        }
    }

    #[test]
    fn a_view_too_large_for_a_message_goes_without_its_strikes_and_reads_back() {
        let whole = fitting_payload("a", view(2, 3), 1 << 20).expect("fits");
        let frame = decode_view(&whole).expect("decodes");
        assert_eq!((frame.view, frame.from.as_str()), (Some(view(2, 3)), "a"));
        // Items with random keys: about 14 bytes each (postcard varints).
        let items_only = encode_view(&ViewFrame {
            version: WIRE_VERSION,
            from: "a".into(),
            leaving: false,
            view: Some(view(1_000, 0)),
        });
        assert!(items_only.len() < 16_000, "{} bytes", items_only.len());
        let slim =
            fitting_payload("a", view(1_000, 10_000), 100_000).expect("fits without strikes");
        let slim = decode_view(&slim).expect("decodes").view.expect("a view");
        assert!(slim.strikes.is_empty() && !slim.strikes_whole);
        assert_eq!(slim.items, view(1_000, 0).items);
        assert_eq!(fitting_payload("a", view(1_000, 0), 1_000), None);
    }
}
