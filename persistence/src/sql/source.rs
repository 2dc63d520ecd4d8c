//! [`EventSource`]: where the flusher reads events, and the two journals that are one.

use seckill_engine::{Event, Journal, MemoryJournal};

use super::error::SqlError;
use crate::journal::RocksJournal;

/// The lane of a source that is one log (RocksDB, the memory journal). Its cursor is the
/// table `flusher_cursor` of the first migration, so tables written before lanes existed
/// go on from where they were.
pub const SINGLE_LANE: u32 = 0;

/// The largest lane the tables can hold (`flusher_lane_cursor.lane` is an `INTEGER`).
pub(crate) const LANE_MAX: u32 = i32::MAX as u32;

/// Where the flusher reads events: the journal, seen from the flusher's side.
///
/// A source is one or more independent logs, its lanes (the JetStream journal has one per
/// stream: the catalog and each partition). Each lane has its own sequence numbers,
/// increasing, one per batch, and the flusher keeps a cursor per lane in SQL, moved in the
/// same transaction as the rows. Within a lane it only ever moves its cursor over a
/// contiguous run of numbers (a batch appended late by one shard must not be skipped because
/// another shard's later batch is already readable).
pub trait EventSource: Send + Sync + 'static {
    /// The lanes to read, in the order to read them each round (a lane whose rows others
    /// refer to, the catalog, comes first). RocksDB and the memory journal: `vec![0]`. The
    /// list may change between rounds: a lane that appears is taken up from its stored cursor,
    /// a lane that goes away (another node writes it now) is dropped with what was read of it.
    fn lanes(&self) -> Vec<u32>;

    /// Up to `batches_max` batches of `lane` with a sequence number above `after_seq`, in
    /// order.
    fn read_batches(
        &self,
        lane: u32,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError>;

    /// The highest sequence number of `lane` appended so far: the flusher reads a lane only
    /// when this is past what it has read of it, and reports the lag from it.
    fn last_seq(&self, lane: u32) -> u64;

    /// Everything of `lane` up to `seq` is in SQL: the log may trim it, and must keep what
    /// follows.
    fn set_retain_floor(&self, lane: u32, seq: u64);

    /// The deployment whose log this is. The flusher records it beside the tables at its
    /// first start and then refuses tables that another deployment wrote. `None` (the
    /// default): a log without a lasting identity, and no such check.
    fn deployment_id(&self) -> Option<String> {
        None
    }
}

/// The in-memory journal is one lane. It keeps every batch and trims nothing, so the floor
/// is ignored. It lasts one process, so it has no deployment id.
impl EventSource for MemoryJournal {
    fn lanes(&self) -> Vec<u32> {
        vec![SINGLE_LANE]
    }

    fn read_batches(
        &self,
        lane: u32,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        if lane != SINGLE_LANE {
            return Ok(Vec::new());
        }
        Ok(self
            .batches()
            .into_iter()
            .filter(|(seq, _)| *seq > after_seq)
            .take(batches_max)
            .collect())
    }

    fn last_seq(&self, lane: u32) -> u64 {
        if lane == SINGLE_LANE {
            Journal::last_seq(self)
        } else {
            0
        }
    }

    fn set_retain_floor(&self, _lane: u32, _seq: u64) {}
}

/// The RocksDB journal, one lane: reads only fsync'd batches, in sequence order without
/// holes, trims nothing past the floor, and names its data directory's deployment.
impl EventSource for RocksJournal {
    fn lanes(&self) -> Vec<u32> {
        vec![SINGLE_LANE]
    }

    fn read_batches(
        &self,
        lane: u32,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        if lane != SINGLE_LANE {
            return Ok(Vec::new());
        }
        RocksJournal::read_batches(self, after_seq, batches_max)
            .map_err(|e| SqlError::Source(e.to_string()))
    }

    fn last_seq(&self, lane: u32) -> u64 {
        if lane == SINGLE_LANE {
            Journal::last_seq(self)
        } else {
            0
        }
    }

    fn set_retain_floor(&self, lane: u32, seq: u64) {
        // Another lane's floor is not this log's: trimming by it would lose batches.
        if lane == SINGLE_LANE {
            RocksJournal::set_retain_floor(self, seq);
        }
    }

    fn deployment_id(&self) -> Option<String> {
        Some(RocksJournal::deployment_id(self).to_owned())
    }
}
