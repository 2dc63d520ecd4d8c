//! [`Store`]: the database and the log in it, shared by the journal, its background syncer
//! and the recovery stream. It hands out sequence numbers, writes batches in their order,
//! runs the group-committed fsync and reads ranges of the log back.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rocksdb::{ReadOptions, WriteOptions, DB};
use seckill_engine::Event;

use super::error::{db_error, PersistenceError};
use super::layout::{decode_batch, encode_batch, log_key, log_seq, LOG_END};

/// Counters of the journal's work since it was opened, for benches and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// The highest sequence number handed out.
    pub last_seq: u64,
    /// The highest sequence number known to be fsync'd.
    pub durable_seq: u64,
    pub appends_total: u64,
    pub events_total: u64,
    /// WAL fsyncs run by the journal (group commits, background syncs, flushes).
    pub fsyncs_total: u64,
    /// Time spent in those fsyncs.
    pub fsync_micros_total: u64,
    /// Appends made durable by those fsyncs: `appends_synced_total / fsyncs_total` is the
    /// average number of appends that shared one fsync.
    pub appends_synced_total: u64,
    pub events_synced_total: u64,
}

/// The ordered part of writing: who gets the next sequence number. Held across the (unsynced)
/// RocksDB write so that the WAL order is the sequence order.
#[derive(Debug, Default)]
struct WriteState {
    last_seq: u64,
    events_total: u64,
}

/// Everything the writers, the background syncer and the recovery stream share.
pub(super) struct Store {
    pub(super) db: DB,
    pub(super) path: PathBuf,
    write: Mutex<WriteState>,
    /// Mirror of `write.last_seq` readable without the lock.
    pub(super) last_seq: AtomicU64,
    /// Held by the one thread running an fsync (the group-commit leader).
    leader: Mutex<()>,
    /// Highest sequence number covered by a finished fsync; written under `leader` only.
    pub(super) durable_seq: AtomicU64,
    durable_events: AtomicU64,
    /// Set forever by the first failed write or fsync: after a failed fsync the state of the
    /// file is unknown (a retried fsync may report success for pages the kernel dropped), so
    /// the journal stops acknowledging anything until a restart replays what is really there.
    failed: OnceLock<String>,
    appends_total: AtomicU64,
    fsyncs_total: AtomicU64,
    fsync_micros_total: AtomicU64,
    appends_synced_total: AtomicU64,
    events_synced_total: AtomicU64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("last_seq", &self.last_seq)
            .field("durable_seq", &self.durable_seq)
            .finish_non_exhaustive()
    }
}

/// Takes a journal lock; a lock poisoned by a panic is an error, not a second panic.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, PersistenceError> {
    mutex
        .lock()
        .map_err(|_| PersistenceError::Io("a journal lock was poisoned by a panic".into()))
}

impl Store {
    pub(super) fn new(db: DB, path: PathBuf, last_seq: u64) -> Self {
        Store {
            db,
            path,
            write: Mutex::new(WriteState {
                last_seq,
                events_total: 0,
            }),
            last_seq: AtomicU64::new(last_seq),
            leader: Mutex::new(()),
            // What is in the database at open was recovered from disk: it is durable (a
            // write left unsynced by a crash that RocksDB recovered is on disk now).
            durable_seq: AtomicU64::new(last_seq),
            durable_events: AtomicU64::new(0),
            failed: OnceLock::new(),
            appends_total: AtomicU64::new(0),
            fsyncs_total: AtomicU64::new(0),
            fsync_micros_total: AtomicU64::new(0),
            appends_synced_total: AtomicU64::new(0),
            events_synced_total: AtomicU64::new(0),
        }
    }

    pub(super) fn check_healthy(&self) -> Result<(), PersistenceError> {
        match self.failed.get() {
            Some(reason) => Err(PersistenceError::Io(format!(
                "journal stopped after an earlier failure ({reason}); restart to recover"
            ))),
            None => Ok(()),
        }
    }

    /// Remembers the first failure for good (see `failed`) and hands the error back.
    pub(super) fn fail(&self, error: PersistenceError) -> PersistenceError {
        let _ = self.failed.set(error.to_string());
        error
    }

    /// Writes one batch to the WAL and memtable without fsync; returns its sequence number.
    pub(super) fn write_batch(&self, events: &[Event]) -> Result<u64, PersistenceError> {
        self.check_healthy()?;
        if events.is_empty() {
            return Err(PersistenceError::Io(
                "refusing to journal an empty batch".into(),
            ));
        }
        // Encoding outside the lock: the lock covers only what must be ordered.
        let value = encode_batch(events)?;
        let mut write = lock(&self.write)?;
        let seq = write.last_seq + 1;
        let mut options = WriteOptions::default();
        options.set_sync(false);
        self.db
            .put_opt(log_key(seq), &value, &options)
            .map_err(|e| self.fail(db_error("cannot write to the log", e)))?;
        write.last_seq = seq;
        write.events_total += events.len() as u64;
        self.last_seq.store(seq, Ordering::Release);
        drop(write);
        self.appends_total.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Returns once an fsync of the WAL covers the batch `seq`. Whoever gets the leader lock
    /// fsyncs for everybody written so far; the others find their batch covered when they get
    /// the lock in turn (group commit).
    pub(super) fn sync_through(&self, seq: u64) -> Result<(), PersistenceError> {
        if self.durable_seq.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let _leader = lock(&self.leader)?;
        self.check_healthy()?;
        if self.durable_seq.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let (target_seq, target_events) = {
            let write = lock(&self.write)?;
            (write.last_seq, write.events_total)
        };
        debug_assert!(target_seq >= seq, "syncing a batch that was never written");
        let started = Instant::now();
        self.db
            .flush_wal(true)
            .map_err(|e| self.fail(db_error("cannot fsync the log", e)))?;
        let fsync_elapsed = started.elapsed();
        let appends = target_seq - self.durable_seq.swap(target_seq, Ordering::AcqRel);
        let events = target_events - self.durable_events.swap(target_events, Ordering::AcqRel);
        self.count_fsync(fsync_elapsed, appends, events);
        Ok(())
    }

    /// The counters and metrics of one fsync that made `appends` appends durable.
    fn count_fsync(&self, elapsed: Duration, appends: u64, events: u64) {
        self.fsyncs_total.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros_total.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.appends_synced_total
            .fetch_add(appends, Ordering::Relaxed);
        self.events_synced_total
            .fetch_add(events, Ordering::Relaxed);
        metrics::histogram!("seckill_log_fsync_seconds").record(elapsed.as_secs_f64());
        metrics::histogram!("seckill_log_batch_appends").record(appends as f64);
        metrics::histogram!("seckill_log_batch_events").record(events as f64);
    }

    /// Reads the batches `from_seq..=to_seq`, at most `max_batches` of them and no more once
    /// `max_bytes` of stored batches were read (at least one is), checking that their
    /// sequence numbers follow each other without a gap.
    pub(super) fn read_range(
        &self,
        from_seq: u64,
        to_seq: u64,
        max_batches: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, PersistenceError> {
        let mut batches = Vec::new();
        if from_seq > to_seq || max_batches == 0 {
            return Ok(batches);
        }
        let mut options = ReadOptions::default();
        match to_seq.checked_add(1) {
            Some(end) => options.set_iterate_upper_bound(log_key(end).to_vec()),
            None => options.set_iterate_upper_bound(LOG_END.to_vec()),
        }
        options.set_readahead_size(2 << 20);
        let mut iterator = self.db.raw_iterator_opt(options);
        iterator.seek(log_key(from_seq));
        let mut expected = from_seq;
        let mut bytes = 0usize;
        while batches.len() < max_batches && bytes < max_bytes {
            let Some((key, value)) = iterator.item() else {
                break;
            };
            let seq = log_seq(key).ok_or_else(|| {
                PersistenceError::Io(format!("corrupt log: unexpected key {key:02x?}"))
            })?;
            if seq != expected {
                return Err(PersistenceError::Io(format!(
                    "corrupt log: batch {expected} is missing (found {seq} after it)"
                )));
            }
            batches.push((seq, decode_batch(seq, value)?));
            bytes = bytes.saturating_add(value.len());
            expected += 1;
            iterator.next();
        }
        iterator
            .status()
            .map_err(|e| db_error("cannot read the log", e))?;
        Ok(batches)
    }

    /// The counters since the journal was opened.
    pub(super) fn stats(&self) -> JournalStats {
        JournalStats {
            last_seq: self.last_seq.load(Ordering::Acquire),
            durable_seq: self.durable_seq.load(Ordering::Acquire),
            appends_total: self.appends_total.load(Ordering::Relaxed),
            events_total: lock(&self.write).map_or(0, |w| w.events_total),
            fsyncs_total: self.fsyncs_total.load(Ordering::Relaxed),
            fsync_micros_total: self.fsync_micros_total.load(Ordering::Relaxed),
            appends_synced_total: self.appends_synced_total.load(Ordering::Relaxed),
            events_synced_total: self.events_synced_total.load(Ordering::Relaxed),
        }
    }
}
