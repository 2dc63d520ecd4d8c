//! How a journal is opened: the data directory, the durability mode and the tuning knobs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

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
