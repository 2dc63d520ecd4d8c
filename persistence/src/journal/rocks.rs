//! [`RocksJournal`]: the engine's [`Journal`] on one RocksDB database.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rocksdb::{DBRecoveryMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};
use seckill_engine::{EngineImage, Event, Journal, JournalError, Recovery, EVENT_VERSION};

use super::layout::{
    check_version, decode_batch, decode_header, decode_image, decode_u64, decode_version,
    encode_batch, encode_header, encode_image, encode_u64, encode_version, log_key, log_seq,
    snapshot_chunk_key, SnapshotHeader, LOG_END, META_SNAPSHOT, META_TRIMMED, META_VERSION,
    SNAPSHOT_CHUNK_BYTES,
};
use super::recovery::LogStream;
use super::{Durability, JournalOptions, PersistenceError, JOURNAL_DIR_NAME};

/// Trimming from `set_retain_floor` waits until this many batches can go at once: one range
/// tombstone per call of the flusher would be churn for nothing.
const TRIM_STEP_BATCHES: u64 = 1024;

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

/// What the snapshot and trimming code remembers.
#[derive(Debug, Default)]
struct TrimState {
    /// `through_seq` of the latest stored snapshot.
    snapshot_through: Option<u64>,
    /// Every log entry up to and including this is deleted.
    trimmed_through: u64,
}

/// Everything the writers, the background syncer and the recovery stream share.
pub(super) struct Shared {
    pub(super) db: DB,
    path: PathBuf,
    write: Mutex<WriteState>,
    /// Mirror of `write.last_seq` readable without the lock.
    last_seq: AtomicU64,
    /// Held by the one thread running an fsync (the group-commit leader).
    leader: Mutex<()>,
    /// Highest sequence number covered by a finished fsync; written under `leader` only.
    durable_seq: AtomicU64,
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

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("path", &self.path)
            .field("last_seq", &self.last_seq)
            .field("durable_seq", &self.durable_seq)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, PersistenceError> {
    mutex
        .lock()
        .map_err(|_| PersistenceError::Io("a journal lock was poisoned by a panic".into()))
}

fn db_error(what: &str, error: rocksdb::Error) -> PersistenceError {
    PersistenceError::Io(format!("{what}: {error}"))
}

impl Shared {
    fn new(db: DB, path: PathBuf, last_seq: u64) -> Self {
        Shared {
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

    fn check_healthy(&self) -> Result<(), PersistenceError> {
        match self.failed.get() {
            Some(reason) => Err(PersistenceError::Io(format!(
                "journal stopped after an earlier failure ({reason}); restart to recover"
            ))),
            None => Ok(()),
        }
    }

    fn fail(&self, error: PersistenceError) -> PersistenceError {
        let _ = self.failed.set(error.to_string());
        error
    }

    /// Writes one batch to the WAL and memtable without fsync; returns its sequence number.
    fn write_batch(&self, events: &[Event]) -> Result<u64, PersistenceError> {
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
    fn sync_through(&self, seq: u64) -> Result<(), PersistenceError> {
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
        let fsync_seconds = fsync_elapsed.as_secs_f64();
        let appends = target_seq - self.durable_seq.swap(target_seq, Ordering::AcqRel);
        let events = target_events - self.durable_events.swap(target_events, Ordering::AcqRel);
        self.fsyncs_total.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros_total.fetch_add(
            u64::try_from(fsync_elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.appends_synced_total
            .fetch_add(appends, Ordering::Relaxed);
        self.events_synced_total
            .fetch_add(events, Ordering::Relaxed);
        metrics::histogram!("seckill_log_fsync_seconds").record(fsync_seconds);
        metrics::histogram!("seckill_log_batch_appends").record(appends as f64);
        metrics::histogram!("seckill_log_batch_events").record(events as f64);
        Ok(())
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
}

/// The stop signal of the background syncer.
#[derive(Debug, Default)]
struct Stop {
    stopping: Mutex<bool>,
    wake: Condvar,
}

/// The engine's journal on RocksDB. See the module documentation of `journal` for the
/// durability rules; open it with [`RocksJournal::open`].
pub struct RocksJournal {
    shared: Arc<Shared>,
    durability: Durability,
    trim: Mutex<TrimState>,
    /// One snapshot at a time: a second one could delete the chunks of the first between
    /// their writing and its header's.
    snapshotting: Mutex<()>,
    /// The SQL flusher's committed cursor (meaningful once `floor_set`).
    retain_floor: AtomicU64,
    /// Nothing is trimmed until the flusher has said how far it got.
    floor_set: AtomicBool,
    stop: Arc<Stop>,
    syncer: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for RocksJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksJournal")
            .field("path", &self.shared.path)
            .field("durability", &self.durability)
            .field("last_seq", &self.shared.last_seq)
            .field("durable_seq", &self.shared.durable_seq)
            .finish_non_exhaustive()
    }
}

impl RocksJournal {
    /// Opens (or creates) the journal in `options.data_dir` and reads what a restart needs:
    /// the latest snapshot, and a stream of the batches after it for `Engine::start`.
    ///
    /// Refuses a directory held by another process ([`PersistenceError::Locked`]) and one
    /// written by a newer build ([`PersistenceError::NewerVersion`], checked before anything
    /// is written).
    pub fn open(
        options: &JournalOptions,
    ) -> Result<(Arc<RocksJournal>, Recovery), PersistenceError> {
        let started = Instant::now();
        let path = options.data_dir.join(JOURNAL_DIR_NAME);
        create_dir(&options.data_dir, &path)?;
        if path.join("CURRENT").exists() {
            probe_version(&path)?;
        }
        check_writable(&options.data_dir, &path)?;
        let db = DB::open(&db_options(options), &path).map_err(|e| open_error(&path, e))?;
        init_version(&db)?;

        let Stored {
            image,
            snapshot_through,
            trimmed_through,
            last_seq,
        } = read_stored(&db)?;
        let shared = Arc::new(Shared::new(db, path.clone(), last_seq));
        let stop = Arc::new(Stop::default());
        let syncer = match options.durability {
            Durability::Sync => None,
            Durability::Async => Some(spawn_syncer(
                Arc::clone(&shared),
                Arc::clone(&stop),
                Duration::from_millis(options.async_sync_interval_ms.max(1)),
            )?),
        };
        let from_seq = snapshot_through.map_or(1, |through| through + 1);
        let journal = Arc::new(RocksJournal {
            shared: Arc::clone(&shared),
            durability: options.durability,
            trim: Mutex::new(TrimState {
                snapshot_through,
                trimmed_through,
            }),
            snapshotting: Mutex::new(()),
            retain_floor: AtomicU64::new(0),
            floor_set: AtomicBool::new(false),
            stop,
            syncer: Mutex::new(syncer),
        });
        tracing::info!(
            path = %path.display(),
            durability = %options.durability,
            snapshot_through = ?snapshot_through,
            last_seq,
            "journal opened"
        );
        let recovery = Recovery {
            image,
            batches: Box::new(LogStream::start(shared, from_seq, last_seq, started)?),
        };
        Ok((journal, recovery))
    }

    /// Where the database lives (`<data_dir>/journal`).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Up to `max_batches` durable batches with a sequence number above `after_seq`, in
    /// order. Only batches already fsync'd are returned, so a consumer never sees what a
    /// power loss could still take back (in async mode they lag by up to one sync interval).
    pub fn read_batches(
        &self,
        after_seq: u64,
        max_batches: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, PersistenceError> {
        let trimmed_through = lock(&self.trim)?.trimmed_through;
        if after_seq < trimmed_through {
            return Err(PersistenceError::Io(format!(
                "the log up to batch {trimmed_through} was trimmed; cannot read after {after_seq}"
            )));
        }
        let durable_seq = self.shared.durable_seq.load(Ordering::Acquire);
        let Some(from_seq) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.shared
            .read_range(from_seq, durable_seq, max_batches, usize::MAX)
    }

    /// Tells the journal how far the SQL flusher has committed: batches after `seq` are never
    /// trimmed. Until this is first called, nothing is trimmed at all.
    pub fn set_retain_floor(&self, seq: u64) {
        self.retain_floor.fetch_max(seq, Ordering::AcqRel);
        self.floor_set.store(true, Ordering::Release);
        if let Err(error) = self.trim_log(TRIM_STEP_BATCHES) {
            tracing::warn!(%error, "trimming the log failed; it is kept whole");
        }
    }

    /// Fsyncs the WAL now (shutdown in async mode). A failure is logged: the caller is
    /// shutting down and has nobody left to tell.
    pub fn flush(&self) {
        if let Err(error) = self.try_flush() {
            tracing::error!(%error, "final fsync of the journal failed");
        }
    }

    /// [`RocksJournal::flush`] with its error.
    pub fn try_flush(&self) -> Result<(), PersistenceError> {
        self.shared
            .sync_through(self.shared.last_seq.load(Ordering::Acquire))
    }

    pub fn stats(&self) -> JournalStats {
        let shared = &self.shared;
        JournalStats {
            last_seq: shared.last_seq.load(Ordering::Acquire),
            durable_seq: shared.durable_seq.load(Ordering::Acquire),
            appends_total: shared.appends_total.load(Ordering::Relaxed),
            events_total: lock(&shared.write).map_or(0, |w| w.events_total),
            fsyncs_total: shared.fsyncs_total.load(Ordering::Relaxed),
            fsync_micros_total: shared.fsync_micros_total.load(Ordering::Relaxed),
            appends_synced_total: shared.appends_synced_total.load(Ordering::Relaxed),
            events_synced_total: shared.events_synced_total.load(Ordering::Relaxed),
        }
    }

    /// The log is trimmed through this sequence number (0: nothing trimmed).
    pub fn trimmed_through(&self) -> u64 {
        lock(&self.trim).map_or(0, |t| t.trimmed_through)
    }

    fn append_batch(&self, events: &[Event]) -> Result<u64, PersistenceError> {
        let seq = self.shared.write_batch(events)?;
        if self.durability == Durability::Sync {
            self.shared.sync_through(seq)?;
        }
        Ok(seq)
    }

    fn store_snapshot(&self, image: &EngineImage) -> Result<(), PersistenceError> {
        let _one_at_a_time = lock(&self.snapshotting)?;
        self.shared.check_healthy()?;
        if image.version != EVENT_VERSION {
            return Err(PersistenceError::Io(format!(
                "refusing a snapshot of version {} (this build writes {EVENT_VERSION})",
                image.version
            )));
        }
        let through_seq = image.through_seq;
        if through_seq > self.shared.last_seq.load(Ordering::Acquire) {
            return Err(PersistenceError::Io(format!(
                "snapshot through {through_seq} is ahead of the log"
            )));
        }
        {
            // A snapshot through the same point holds the same state; writing it again would
            // overwrite the chunks the stored header points at.
            let trim = lock(&self.trim)?;
            if trim
                .snapshot_through
                .is_some_and(|stored| stored >= through_seq)
            {
                return Ok(());
            }
        }
        let bytes = encode_image(image)?;
        let mut unsynced = WriteOptions::default();
        unsynced.set_sync(false);
        let mut chunks: u32 = 0;
        // Chunks go in separate writes so that a large snapshot never holds up the shards'
        // appends for long; until the header below points at them they are invisible.
        for chunk in bytes.chunks(SNAPSHOT_CHUNK_BYTES) {
            self.shared
                .db
                .put_opt(snapshot_chunk_key(through_seq, chunks), chunk, &unsynced)
                .map_err(|e| db_error("cannot write a snapshot", e))?;
            chunks += 1;
        }
        let header = SnapshotHeader {
            version: EVENT_VERSION,
            through_seq,
            chunks,
            bytes_total: bytes.len() as u64,
        };
        let mut batch = WriteBatch::default();
        batch.put(META_SNAPSHOT, encode_header(&header)?);
        // Older snapshots (and the chunks of any that a crash left without a header).
        batch.delete_range(snapshot_chunk_key(0, 0), snapshot_chunk_key(through_seq, 0));
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        self.shared.db.write_opt(batch, &synced).map_err(|e| {
            self.shared
                .fail(db_error("cannot write a snapshot header", e))
        })?;
        lock(&self.trim)?.snapshot_through = Some(through_seq);
        metrics::histogram!("seckill_snapshot_bytes").record(bytes.len() as f64);
        tracing::info!(through_seq, bytes = bytes.len(), "snapshot stored");
        self.trim_log(1)
    }

    /// Deletes the log entries that neither recovery (they are behind the snapshot) nor the
    /// SQL flusher (they are behind its cursor) still needs, if at least `step_min` can go.
    fn trim_log(&self, step_min: u64) -> Result<(), PersistenceError> {
        if !self.floor_set.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut trim = lock(&self.trim)?;
        let Some(snapshot_through) = trim.snapshot_through else {
            return Ok(());
        };
        let floor = self.retain_floor.load(Ordering::Acquire);
        let target = snapshot_through.min(floor);
        if target < trim.trimmed_through.saturating_add(step_min) {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.delete_range(log_key(0), log_key(target + 1));
        batch.put(META_TRIMMED, encode_u64(target));
        // Unsynced: losing a trim to a crash only means it is done again later.
        let mut options = WriteOptions::default();
        options.set_sync(false);
        self.shared
            .db
            .write_opt(batch, &options)
            .map_err(|e| db_error("cannot trim the log", e))?;
        trim.trimmed_through = target;
        metrics::gauge!("seckill_log_trimmed_through").set(target as f64);
        Ok(())
    }
}

impl Journal for RocksJournal {
    fn append(&self, events: &[Event]) -> Result<u64, JournalError> {
        self.append_batch(events).map_err(JournalError::from)
    }

    fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    fn save_snapshot(&self, image: &EngineImage) -> Result<(), JournalError> {
        self.store_snapshot(image).map_err(JournalError::from)
    }
}

impl Drop for RocksJournal {
    fn drop(&mut self) {
        if let Ok(mut stopping) = self.stop.stopping.lock() {
            *stopping = true;
        }
        self.stop.wake.notify_all();
        let handle = self.syncer.lock().ok().and_then(|mut s| s.take());
        if let Some(handle) = handle {
            // The syncer runs a last fsync before it returns; joining here means the
            // database is closed once the last handle is dropped, so a restart in the same
            // process finds the directory unlocked.
            let _ = handle.join();
        }
    }
}

/// The background fsync of async mode.
fn spawn_syncer(
    shared: Arc<Shared>,
    stop: Arc<Stop>,
    interval: Duration,
) -> Result<JoinHandle<()>, PersistenceError> {
    std::thread::Builder::new()
        .name("seckill-journal-sync".into())
        .spawn(move || loop {
            let stopping = match stop.stopping.lock() {
                Ok(guard) => match stop.wake.wait_timeout(guard, interval) {
                    Ok((guard, _)) => *guard,
                    Err(_) => true,
                },
                Err(_) => true,
            };
            let written = shared.last_seq.load(Ordering::Acquire);
            if let Err(error) = shared.sync_through(written) {
                tracing::error!(%error, "background fsync of the journal failed");
                return;
            }
            if stopping {
                return;
            }
        })
        .map_err(|e| PersistenceError::Io(format!("cannot start the journal syncer: {e}")))
}

fn db_options(options: &JournalOptions) -> Options {
    let mut db = Options::default();
    db.create_if_missing(true);
    // A torn last record (crash in the middle of a write) is dropped with everything after
    // it; nothing before it is, and a record in the middle never is.
    db.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    db.set_write_buffer_size(options.write_buffer_size_bytes);
    // A snapshot passes ~100 bytes per order through the memtables; a third one lets the
    // shards keep appending while two flush, instead of stalling behind them.
    db.set_max_write_buffer_number(3);
    // Bounds the WAL a restart replays: past this, RocksDB flushes memtables to SST files.
    db.set_max_total_wal_size((options.write_buffer_size_bytes as u64).saturating_mul(4));
    db.set_max_background_jobs(2);
    db.set_keep_log_file_num(4);
    db.set_max_log_file_size(8 << 20);
    db
}

fn create_dir(data_dir: &Path, path: &Path) -> Result<(), PersistenceError> {
    fs::create_dir_all(path).map_err(|e| {
        PersistenceError::Io(format!(
            "cannot create data directory {}: {e}",
            data_dir.display()
        ))
    })
}

/// Proves the directory writable, for a clear error at start-up rather than at the first
/// purchase.
fn check_writable(data_dir: &Path, path: &Path) -> Result<(), PersistenceError> {
    let probe = path.join(format!(".write-check-{}", std::process::id()));
    fs::write(&probe, b"seckill").map_err(|e| {
        PersistenceError::Io(format!(
            "data directory {} is not writable: {e}",
            data_dir.display()
        ))
    })?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// Reads the format version without opening for writing: a newer directory must be refused
/// before RocksDB writes its manifest, options or a flushed WAL into it.
///
/// A probe that cannot open (say, another process is rotating its files under it) decides
/// nothing: the real open that follows reports the lock, and checks the version again.
fn probe_version(path: &Path) -> Result<(), PersistenceError> {
    let db = match DB::open_for_read_only(&Options::default(), path, false) {
        Ok(db) => db,
        Err(error) => {
            tracing::debug!(%error, "read-only version probe failed; the open decides");
            return Ok(());
        }
    };
    let found = db
        .get(META_VERSION)
        .map_err(|e| db_error("cannot read the format version", e))?;
    match found {
        Some(bytes) => check_version(decode_version(&bytes)?),
        None => Ok(()),
    }
}

/// Checks the stored format version (again, now under the lock) or stamps a fresh database.
fn init_version(db: &DB) -> Result<(), PersistenceError> {
    let found = db
        .get(META_VERSION)
        .map_err(|e| db_error("cannot read the format version", e))?;
    match found {
        Some(bytes) => {
            let version = decode_version(&bytes)?;
            check_version(version)?;
            if version == EVENT_VERSION {
                return Ok(());
            }
        }
        None => {
            if last_log_seq(db)?.is_some() {
                return Err(PersistenceError::Io(
                    "corrupt journal: log entries without a format version".into(),
                ));
            }
        }
    }
    // From here on this build writes: an older build must see our version and refuse.
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.put_opt(META_VERSION, encode_version(EVENT_VERSION), &options)
        .map_err(|e| db_error("cannot write the format version", e))
}

/// What a reopened database holds besides the log itself.
struct Stored {
    image: Option<EngineImage>,
    snapshot_through: Option<u64>,
    trimmed_through: u64,
    /// The highest sequence number ever handed out that is still known: the last batch in
    /// the log, or the snapshot's when the log behind it was trimmed away.
    last_seq: u64,
}

fn read_stored(db: &DB) -> Result<Stored, PersistenceError> {
    let header = match db
        .get(META_SNAPSHOT)
        .map_err(|e| db_error("cannot read the snapshot header", e))?
    {
        Some(bytes) => Some(decode_header(&bytes)?),
        None => None,
    };
    let image = match &header {
        Some(header) => Some(load_image(db, header)?),
        None => None,
    };
    let trimmed_through = match db
        .get(META_TRIMMED)
        .map_err(|e| db_error("cannot read the trim point", e))?
    {
        Some(bytes) => decode_u64("trim point", &bytes)?,
        None => 0,
    };
    let snapshot_through = header.map(|h| h.through_seq);
    if trimmed_through > snapshot_through.unwrap_or(0) {
        return Err(PersistenceError::Io(format!(
            "corrupt journal: log trimmed through {trimmed_through}, past the snapshot at {snapshot_through:?}"
        )));
    }
    let log_last = last_log_seq(db)?;
    Ok(Stored {
        image,
        snapshot_through,
        trimmed_through,
        last_seq: log_last.unwrap_or(0).max(snapshot_through.unwrap_or(0)),
    })
}

fn last_log_seq(db: &DB) -> Result<Option<u64>, PersistenceError> {
    let mut iterator = db.raw_iterator();
    iterator.seek_for_prev(log_key(u64::MAX));
    let last = match iterator.key() {
        Some(key) => log_seq(key),
        None => None,
    };
    iterator
        .status()
        .map_err(|e| db_error("cannot read the log", e))?;
    Ok(last)
}

fn load_image(db: &DB, header: &SnapshotHeader) -> Result<EngineImage, PersistenceError> {
    let mut bytes = Vec::with_capacity(usize::try_from(header.bytes_total).unwrap_or(0));
    for chunk in 0..header.chunks {
        let piece = db
            .get_pinned(snapshot_chunk_key(header.through_seq, chunk))
            .map_err(|e| db_error("cannot read the snapshot", e))?
            .ok_or_else(|| {
                PersistenceError::Io(format!(
                    "corrupt snapshot {}: chunk {chunk} is missing",
                    header.through_seq
                ))
            })?;
        bytes.extend_from_slice(&piece);
    }
    if bytes.len() as u64 != header.bytes_total {
        return Err(PersistenceError::Io(format!(
            "corrupt snapshot {}: {} bytes, the header says {}",
            header.through_seq,
            bytes.len(),
            header.bytes_total
        )));
    }
    let image = decode_image(&bytes)?;
    check_version(image.version)?;
    if image.through_seq != header.through_seq {
        return Err(PersistenceError::Io(format!(
            "corrupt snapshot: image through {} under a header through {}",
            image.through_seq, header.through_seq
        )));
    }
    Ok(image)
}

/// RocksDB reports a held LOCK file as an I/O error; the user needs to hear "locked".
fn open_error(path: &Path, error: rocksdb::Error) -> PersistenceError {
    let message = error.to_string();
    if message.contains("lock hold by current process")
        || message.contains("While lock file")
        || message.contains("/LOCK:")
    {
        return PersistenceError::Locked {
            path: path
                .parent()
                .map_or_else(|| path.to_path_buf(), Path::to_path_buf),
        };
    }
    PersistenceError::Io(format!("cannot open {}: {message}", path.display()))
}
