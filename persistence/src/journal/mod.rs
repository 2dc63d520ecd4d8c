//! The engine's journal on RocksDB: group-committed batches, snapshots, log trimming,
//! recovery, the data-directory lock and the on-disk version check.
//!
//! Layout (each module imports only modules above it in this list):
//! - `options`: [`JournalOptions`] and [`Durability`].
//! - `error`: [`PersistenceError`].
//! - `layout`: the keys of the database and the encoding of what is stored under them (a
//!   versioned postcard envelope around the engine's events and snapshot images).
//! - `store`: the database and the log in it, shared by the journal, its background syncer
//!   and the recovery stream: sequence numbers, group-committed fsyncs, range reads.
//! - `open`: what opening a data directory checks and reads (directory, lock, version, the
//!   stored snapshot and trim point).
//! - `identity`: the deployment id and the start counter (epoch) of the data directory.
//! - `archive`: items of ended promotions that left the engine's memory, with their orders.
//! - `recovery`: the stream of batches handed to `Engine::start` after a snapshot.
//! - `rocks`: [`RocksJournal`] itself: opening, appending with group commit, snapshots and
//!   trimming, reading batches for the SQL flusher.
//!
//! Durability in one paragraph: every `append` writes its batch to RocksDB's write-ahead log
//! under a small lock that also hands out the sequence number, so the order of the log on disk
//! is the order of sequence numbers and a crash can only lose a suffix, never a hole. With
//! [`Durability::Sync`] the caller then waits until an fsync of the WAL covers its write; one
//! caller at a time runs that fsync (the leader) and it covers every write made before it, so
//! all shards waiting at that moment share it (group commit). A shard also keeps deciding
//! into its next batch while an fsync runs, so under load one fsync carries a whole batch of
//! requests (about 1,500 in `benches/benches/durable.rs`). With [`Durability::Async`] the
//! caller returns at once and a background thread fsyncs every
//! [`DEFAULT_ASYNC_SYNC_INTERVAL_MS`] ms.
//!
//! Snapshots: [`RocksJournal`]'s `save_snapshot` stores the engine's image in chunks, then
//! switches the snapshot header to it in one synced write, and deletes the log entries that
//! neither recovery (they are behind the snapshot) nor the SQL flusher (they are at or
//! behind the floor given to [`RocksJournal::set_retain_floor`]) still needs. Until the
//! flusher first reports its floor nothing is trimmed.
//!
//! Identity: the first open of a data directory makes its deployment id (128 random bits,
//! hex), which the SQL flusher records in the database so that it refuses tables written
//! by another deployment ([`RocksJournal::deployment_id`]). Every open adds one to the start
//! counter and fsyncs it before recovery is handed to the engine, whatever the durability
//! mode, so every start's epoch (`Recovery::epoch`) is above every earlier start's, even one
//! whose last writes a power cut took back in async mode; the engine puts it into its order
//! ids. Both live among the metadata keys, which neither trimming nor snapshots touch.
//!
//! Opening: a second opener (in this or another process) gets [`PersistenceError::Locked`]
//! from RocksDB's `LOCK` file; a directory stamped with a newer format version gets
//! [`PersistenceError::NewerVersion`] from a read-only probe, before anything is written.
//! Recovery reads and decodes the log on a thread of its own while the engine applies it.
//!
//! Metrics: `seckill_log_fsync_seconds` (each WAL fsync), `seckill_log_batch_appends` and
//! `seckill_log_batch_events` (appends and events made durable by one fsync: the group
//! commit), `seckill_snapshot_bytes`, `seckill_log_trimmed_through` and
//! `seckill_recovery_seconds` (open until the last batch was handed to the engine). The
//! engine itself records `seckill_snapshot_seconds` and per-append figures.

mod archive;
mod error;
mod identity;
pub(crate) mod layout;
mod open;
mod options;
mod recovery;
mod rocks;
mod store;

pub use error::PersistenceError;
pub use options::{Durability, JournalOptions, DEFAULT_ASYNC_SYNC_INTERVAL_MS, JOURNAL_DIR_NAME};
pub use rocks::RocksJournal;
pub use store::JournalStats;
