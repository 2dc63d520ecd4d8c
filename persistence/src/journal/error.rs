//! Why the journal could not open, write or read.

use std::path::PathBuf;

use seckill_engine::JournalError;
use thiserror::Error;

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

/// A RocksDB failure, saying what was being done.
pub(super) fn db_error(what: &str, error: rocksdb::Error) -> PersistenceError {
    PersistenceError::Io(format!("{what}: {error}"))
}
