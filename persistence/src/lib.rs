//! # seckill-persistence
//!
//! Everything of seckill that touches a disk or a database; the engine knows neither.
//!
//! Layout:
//! - `journal`: the engine's `Journal` on RocksDB: group-committed batches, snapshots, log
//!   trimming, recovery, the data-directory lock and the on-disk version check.
//! - `jetstream`: the building blocks of the journal on NATS JetStream: a fenced,
//!   conditional appender per partition stream, and the partition leases.
//! - `cluster`: the coming cluster of nodes; so far the pure partition-assignment planner.
//! - `events`: order events from the journal (the outbox) to the shop's other systems:
//!   JetStream, RabbitMQ and signed webhooks, each target with its own durable cursor.
//! - `sql`: the flusher that keeps the SQL tables `orders`, `promotions` and
//!   `promotion_items` in step with the journal (SQLite embedded, PostgreSQL in production).

pub mod cluster;
pub mod events;
pub mod jetstream;
pub mod journal;
pub mod sql;
