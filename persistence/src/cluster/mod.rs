//! The cluster of seckill nodes (issue 13, `docs/cluster-plan.md`), built step by step.
//!
//! - `assign`: the pure partition-assignment planner: each live node's quota, and what one
//!   node should take or release next (advice; the leases decide).
//! - `registry`: membership: each node's [`registry::NodeRecord`] in the `<prefix>_NODES`
//!   bucket, put every second; which nodes are live, by local instants; one process per
//!   node id.
//! - `catalog_acks`: every node announces the catalog position it applied; a node that made
//!   a change waits (1 s at most) until every live node has it.
//! - `catalog_tail`: has the engine apply the catalog log's changes as they land (woken by
//!   the catalog stream's own messages, and every 200 ms).
//! - `owners`: the holder of every partition's lease, from the lease bucket (watch and
//!   poll), and since when each unheld one is unheld: the planner's view.
//! - `wire`: the frames nodes send each other (calls, answers), postcard-encoded and
//!   versioned.
//! - `rpc`: [`rpc::Forwarder`] hands calls to their partition's owner, many to a frame;
//!   [`rpc::RpcServer`] runs them on the owner's engine and answers many to a frame.
//! - `views`: [`views::GateViews`]: every owner publishes its partitions' gate figures ten
//!   times a second, and every node keeps the others' for its cheap refusals.
//! - `node`: [`node::ClusterNode`], the driver: plans on every tick and change, takes
//!   (journal, then engine) and releases (engine, then journal) one partition at a time,
//!   reports lost leases to the engine, hands everything over on SIGTERM.

pub mod assign;
pub mod catalog_acks;
pub mod catalog_tail;
pub mod node;
pub mod owners;
pub mod registry;
pub mod rpc;
pub mod views;
pub mod wire;

/// Subscribes to `subject` and waits until the server has the subscription (it answered a
/// flush), so that every message published from then on reaches it.
pub(crate) async fn subscribe_now(
    client: &async_nats::Client,
    subject: &str,
) -> Result<async_nats::Subscriber, crate::jetstream::ClusterError> {
    let failed = |e: &dyn std::fmt::Display| {
        crate::jetstream::ClusterError::Nats(format!("subscribing to {subject}: {e}"))
    };
    let subscription = client
        .subscribe(subject.to_owned())
        .await
        .map_err(|e| failed(&e))?;
    client.flush().await.map_err(|e| failed(&e))?;
    Ok(subscription)
}
