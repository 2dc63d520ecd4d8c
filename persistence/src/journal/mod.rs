//! The engine's journal on RocksDB: group-committed batches, snapshots, log trimming,
//! recovery, the data-directory lock and the on-disk version check.
//!
//! Layout:
//! - `layout`: the keys of the database and the encoding of what is stored under them (a
//!   versioned postcard envelope around the engine's events and snapshot images).
//! - `rocks`: [`RocksJournal`] itself: opening (lock, version), appending with group commit,
//!   snapshots and trimming, reading batches for the SQL flusher.
//! - `recovery`: the stream of batches handed to `Engine::start` after a snapshot.
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

mod layout;
mod recovery;
mod rocks;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use seckill_engine::JournalError;
use thiserror::Error;

pub use rocks::{JournalStats, RocksJournal};

/// How long, at most, an acknowledged write waits for its fsync in [`Durability::Async`]
/// mode; it is also the window of loss of that mode on power failure or kernel crash (a
/// killed process loses nothing: its writes are already in the operating system).
pub const DEFAULT_ASYNC_SYNC_INTERVAL_MS: u64 = 10;

/// The sub-directory of the data directory that holds the RocksDB database.
pub const JOURNAL_DIR_NAME: &str = "journal";

/// When a write counts as done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// `append` returns once the batch is fsync'd: an acknowledged write survives `kill -9`
    /// and power loss.
    #[default]
    Sync,
    /// `append` returns once the batch is in the operating system's page cache; a background
    /// fsync follows within `async_sync_interval_ms`. Survives `kill -9`; a power loss or
    /// kernel crash may lose the acknowledged writes of the last interval.
    Async,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Async => "async",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "sync" => Ok(Durability::Sync),
            "async" => Ok(Durability::Async),
            other => Err(format!("durability must be sync or async, not {other:?}")),
        }
    }
}

/// How a journal is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// The data directory; the database lives in its `journal` sub-directory.
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Period of the background fsync in [`Durability::Async`] mode.
    pub async_sync_interval_ms: u64,
    /// RocksDB memtable size: the WAL that a restart replays is bounded by a few of these.
    pub write_buffer_size_bytes: usize,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            data_dir: PathBuf::from("seckill-data"),
            durability: Durability::Sync,
            async_sync_interval_ms: DEFAULT_ASYNC_SYNC_INTERVAL_MS,
            write_buffer_size_bytes: 64 << 20,
        }
    }
}

/// Why the journal could not open, write or read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PersistenceError {
    /// Another process (or another journal in this one) has the directory open.
    #[error("data directory {} is locked by another running seckill (two writers would corrupt it)", path.display())]
    Locked { path: PathBuf },
    /// The directory was written by a newer build; nothing was changed in it.
    #[error("data directory was written with event version {found}, this build supports up to {supported}; upgrade seckill (nothing was changed)")]
    NewerVersion { found: u32, supported: u32 },
    /// The disk or the database failed, or what it holds cannot be decoded.
    #[error("journal: {0}")]
    Io(String),
}

impl From<PersistenceError> for JournalError {
    fn from(error: PersistenceError) -> Self {
        // `JournalError` says "journal: " itself.
        match error {
            PersistenceError::Io(message) => JournalError(message),
            other => JournalError(other.to_string()),
        }
    }
}
