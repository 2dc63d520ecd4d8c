//! The journal on NATS JetStream: one fenced stream per partition and one for the catalog,
//! written by the node that holds their leases.
//!
//! Fencing in one paragraph: a node owns a lane (a partition's stream, or the catalog's)
//! through a lease in a KV bucket ([`Lease`]: created only when absent, renewed by
//! compare-and-set on its revision, gone when not renewed within its TTL). Every append to
//! the stream carries `Nats-Expected-Last-Sequence`, the stream's last sequence as the writer
//! knows it ([`PartitionLog`]). A new owner appends a takeover record conditional on the
//! stream's tail and replays everything before it; from then on the old owner's expected
//! sequence is stale, so every append of its is refused ([`AppendError::Fenced`],
//! JetStream's error 10071, or 10164 from servers that phrase it as a constant) and it stops
//! answering writes for the lane. A publish that times out is retried with the same
//! `Nats-Msg-Id` (the stream's duplicate window makes that safe) and resolved by reading the
//! stream's tail. One append is in flight per lane: pipelined runs are not fenced by
//! sequences alone (see [`PartitionLog`]); throughput comes from the shards' group commit
//! (a batch holds everything a shard decided while the previous append was in flight).
//!
//! Layout:
//! - `error`: [`AppendError`], [`LeaseError`], [`ClusterError`].
//! - `options`: [`ClusterOptions`].
//! - `names`: stream, subject, bucket and lease names; lanes.
//! - `meta`: the cluster record (partition count, deployment id) and the epoch counter.
//! - `lease`: [`Lease`] and [`LeaseRecord`].
//! - `partition_log`: [`PartitionLog`], the conditional appender of one stream.
//! - `writer`: a lane's writer task (retries until known) and its lease keeper.
//! - `tail`: reading a run of a stream back as batches.
//! - `catalog_log`: [`JetStreamCatalogLog`], the cluster's one catalog log, which every node
//!   appends to under a condition.
//! - `snapshot`: the engine's image in an object store, with every lane's sequence.
//! - `journal`: [`JetStreamJournal`], the engine's `Journal` for a node that owns every
//!   partition: opening, appending, snapshots.
//! - `partition_journal`: [`PartitionJournal`], the `Journal` and `Ownership` of a cluster
//!   node that takes and releases partitions while it runs (join mode).
//! - `source`: the journal as the SQL flusher's `EventSource`.
//! - `partition_source`: the partition journal as the SQL flusher's `EventSource` (the
//!   catalog lane and the lanes this node writes).

mod catalog_log;
mod error;
mod journal;
mod lease;
mod meta;
mod names;
mod options;
mod partition_journal;
mod partition_log;
mod partition_source;
mod snapshot;
mod source;
mod tail;
mod writer;

pub use catalog_log::JetStreamCatalogLog;
pub use error::{AppendError, ClusterError, LeaseError};
pub(crate) use journal::connect_client;
pub use journal::JetStreamJournal;
pub use lease::{Lease, LeaseRecord, LEASE_BUCKET};
pub use meta::ClusterRecord;
pub use names::{all_lanes, item_lane, Names, CATALOG_LANE, FIRST_PARTITION_LANE};
pub use options::{ClusterOptions, DEFAULT_PARTITIONS, DEFAULT_PREFIX};
pub use partition_journal::{LaneEvent, PartitionJournal};
pub use partition_log::{PartitionLog, StreamSettings, TAKEOVER_HEADER};
