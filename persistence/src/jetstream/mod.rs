//! The building blocks of the journal on NATS JetStream: a conditional, fenced appender for
//! one partition's stream, and the lease that says which node may write a partition.
//!
//! Fencing in one paragraph: a node owns a partition through a lease in a KV bucket
//! ([`Lease`]: created only when absent, renewed by compare-and-set on its revision, gone
//! when not renewed within its TTL). Every append to the partition's stream carries
//! `Nats-Expected-Last-Sequence`, the stream's last sequence as the writer knows it
//! ([`PartitionLog`]). A new owner reads the stream's last sequence and appends a takeover
//! record conditional on it; from then on the old owner's expected sequence is stale, so
//! every append of its is refused ([`AppendError::Fenced`], JetStream's error 10071, or
//! 10164 from servers that phrase it as a constant) and it must stop answering writes for
//! the partition. A publish that times out is retried with the same `Nats-Msg-Id` (the
//! stream's duplicate window makes that safe) and, failing that, resolved by reading the
//! stream's tail. One append is in flight per writer: pipelined runs are not fenced by
//! sequences alone (see [`PartitionLog`]). The caller must renew its lease after reading
//! the tail and before its takeover append, so that a node whose lease lapsed meanwhile
//! never appends a takeover after a newer owner's.
//!
//! Layout:
//! - `error`: [`AppendError`], [`LeaseError`].
//! - `partition_log`: [`PartitionLog`].
//! - `lease`: [`Lease`] and [`LeaseRecord`].

mod error;
mod lease;
mod partition_log;

pub use error::{AppendError, LeaseError};
pub use lease::{Lease, LeaseRecord, LEASE_BUCKET};
pub use partition_log::{PartitionLog, StreamSettings};
