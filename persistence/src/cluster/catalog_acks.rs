//! Catalog changes in force on every node before they are answered (cluster plan, Q2).
//!
//! api.md promises every node "the answers one node would give": after a start answers 200,
//! a purchase on any node finds the promotion live. A change lands in the catalog log on
//! one node; the others apply it from their tails some milliseconds later. So every node
//! announces the catalog sequence it has applied on `<prefix>.catalog.applied` (after each
//! catch-up that moved it, and every [`ANNOUNCE_EVERY`] for nodes that started since), and
//! the node that made a change waits, at most [`ACK_WAIT`], until every live node announced
//! that sequence or a later one. Past the wait the change stands (it is in the log, and the
//! laggards apply it when they can); the caller hears which nodes were late.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::jetstream::ClusterError;

/// How long a change waits for the other live nodes to apply it, at most.
pub const ACK_WAIT: Duration = Duration::from_secs(1);
/// How often a node announces its position without having moved (for nodes that started
/// listening since its last move).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// One announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    node: String,
    seq: u64,
}

/// The subject every node of the deployment `prefix` announces its applied position on.
pub fn applied_subject(prefix: &str) -> String {
    format!("{prefix}.catalog.applied")
}

/// This node's announcements and what it heard of the others'.
#[derive(Debug)]
pub struct CatalogAcks {
    client: async_nats::Client,
    subject: String,
    node_id: String,
    /// Each node's highest announced position.
    heard: watch::Receiver<HashMap<String, u64>>,
    task: JoinHandle<()>,
}

impl CatalogAcks {
    /// Listens to the announcements of the deployment `prefix`, as the node `node_id`.
    pub async fn start(
        client: &async_nats::Client,
        prefix: &str,
        node_id: &str,
    ) -> Result<CatalogAcks, ClusterError> {
        let subject = applied_subject(prefix);
        let subscription = super::subscribe_now(client, &subject).await?;
        let (record, heard) = watch::channel(HashMap::new());
        let task = tokio::spawn(collect(subscription, record));
        Ok(CatalogAcks {
            client: client.clone(),
            subject,
            node_id: node_id.to_owned(),
            heard,
            task,
        })
    }

    /// Tells every node that this one's catalog holds the log through `seq`. Best effort:
    /// an announcement lost only makes a waiter wait its whole [`ACK_WAIT`].
    pub async fn announce(&self, seq: u64) {
        let applied = Applied {
            node: self.node_id.clone(),
            seq,
        };
        let Ok(payload) = serde_json::to_vec(&applied) else {
            return;
        };
        if let Err(error) = self
            .client
            .publish(self.subject.clone(), payload.into())
            .await
        {
            tracing::debug!(%error, "a catalog position was not announced");
        }
    }

    /// Waits until every node of `nodes` but this one announced `seq` or later, for at most
    /// `within`; the nodes that had not by then (empty: all had).
    pub async fn wait_applied(&self, seq: u64, nodes: &[String], within: Duration) -> Vec<String> {
        let mut heard = self.heard.clone();
        let late = |heard: &HashMap<String, u64>| -> Vec<String> {
            nodes
                .iter()
                .filter(|node| **node != self.node_id)
                .filter(|node| heard.get(*node).is_none_or(|at| *at < seq))
                .cloned()
                .collect()
        };
        let all_heard = tokio::time::timeout(within, async {
            heard.wait_for(|heard| late(heard).is_empty()).await.is_ok()
        })
        .await
        .unwrap_or(false);
        if all_heard {
            Vec::new()
        } else {
            late(&self.heard.borrow())
        }
    }

    /// Stops listening.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Keeps each node's highest announced position.
async fn collect(
    mut subscription: async_nats::Subscriber,
    record: watch::Sender<HashMap<String, u64>>,
) {
    while let Some(message) = subscription.next().await {
        // Anything unreadable on the subject is somebody else's: ignored.
        let Ok(applied) = serde_json::from_slice::<Applied>(&message.payload) else {
            continue;
        };
        record.send_if_modified(|heard| {
            let at = heard.entry(applied.node).or_insert(0);
            let moved = applied.seq > *at;
            *at = (*at).max(applied.seq);
            moved
        });
    }
}
