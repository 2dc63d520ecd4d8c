//! [`EventSource`]: where the flusher reads events, and the two journals that are one.

use seckill_engine::{Event, Journal, MemoryJournal};

use super::error::SqlError;
use crate::journal::RocksJournal;

/// Where the flusher reads events: the journal, seen from the flusher's side.
///
/// The sequence numbers are the journal's: increasing, one per batch. The flusher only ever
/// moves its cursor over a contiguous run of them (a batch appended late by one shard must
/// not be skipped because another shard's later batch is already readable).
pub trait EventSource: Send + Sync + 'static {
    /// Up to `batches_max` batches with a sequence number above `after_seq`, in order.
    fn read_batches(
        &self,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError>;

    /// The highest sequence number appended so far (for the lag).
    fn last_seq(&self) -> u64;

    /// Everything up to `seq` is in SQL: the log may trim it, and must keep what follows.
    fn set_retain_floor(&self, seq: u64);

    /// The deployment whose log this is. The flusher records it beside the tables at its
    /// first start and then refuses tables that another deployment wrote. `None` (the
    /// default): a log without a lasting identity, and no such check.
    fn deployment_id(&self) -> Option<String> {
        None
    }
}

/// The in-memory journal keeps every batch and trims nothing, so the floor is ignored. It
/// lasts one process, so it has no deployment id.
impl EventSource for MemoryJournal {
    fn read_batches(
        &self,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        Ok(self
            .batches()
            .into_iter()
            .filter(|(seq, _)| *seq > after_seq)
            .take(batches_max)
            .collect())
    }

    fn last_seq(&self) -> u64 {
        Journal::last_seq(self)
    }

    fn set_retain_floor(&self, _seq: u64) {}
}

/// The RocksDB journal: reads only fsync'd batches, in sequence order without holes, trims
/// nothing past the floor, and names its data directory's deployment.
impl EventSource for RocksJournal {
    fn read_batches(
        &self,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        RocksJournal::read_batches(self, after_seq, batches_max)
            .map_err(|e| SqlError::Source(e.to_string()))
    }

    fn last_seq(&self) -> u64 {
        Journal::last_seq(self)
    }

    fn set_retain_floor(&self, seq: u64) {
        RocksJournal::set_retain_floor(self, seq);
    }

    fn deployment_id(&self) -> Option<String> {
        Some(RocksJournal::deployment_id(self).to_owned())
    }
}
