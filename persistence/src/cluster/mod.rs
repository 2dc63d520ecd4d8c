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

pub mod assign;
pub mod catalog_acks;
pub mod catalog_tail;
pub mod owners;
pub mod registry;
