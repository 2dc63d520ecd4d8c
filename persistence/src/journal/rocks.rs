//! [`RocksJournal`]: the engine's [`Journal`] on one RocksDB database.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rocksdb::{WriteBatch, WriteOptions};
use seckill_engine::{
    ArchivedItem, EngineImage, Event, Journal, JournalError, JournalResult, Order, Recovery,
    EVENT_VERSION,
};

use super::archive;
use super::error::{db_error, PersistenceError};
use super::identity::{record_start, Identity};
use super::layout::{
    encode_header, encode_image, encode_u64, log_key, snapshot_chunk_key, SnapshotHeader,
    META_SNAPSHOT, META_TRIMMED, SNAPSHOT_CHUNK_BYTES,
};
use super::open::{open_database, read_stored, Stored};
use super::options::{Durability, JournalOptions};
use super::recovery::LogStream;
use super::store::{lock, JournalStats, Store};

/// Trimming from `set_retain_floor` waits until this many batches can go at once: one range
/// tombstone per call of the flusher would be churn for nothing.
const TRIM_STEP_BATCHES: u64 = 1024;

/// What the snapshot and trimming code remembers.
#[derive(Debug, Default)]
struct TrimState {
    /// `through_seq` of the latest stored snapshot.
    snapshot_through: Option<u64>,
    /// Every log entry up to and including this is deleted.
    trimmed_through: u64,
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
    store: Arc<Store>,
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
    /// See [`RocksJournal::deployment_id`].
    deployment_id: String,
    /// See [`RocksJournal::epoch`].
    epoch: u64,
}

impl fmt::Debug for RocksJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksJournal")
            .field("path", &self.store.path)
            .field("durability", &self.durability)
            .field("last_seq", &self.store.last_seq)
            .field("durable_seq", &self.store.durable_seq)
            .field("epoch", &self.epoch)
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
        let (db, path) = open_database(options)?;
        let stored = read_stored(&db)?;
        // Durable before the engine sees anything: see `identity`.
        let identity = record_start(&db)?;
        let epoch = identity.epoch;
        let store = Arc::new(Store::new(db, path, stored.last_seq));
        let journal = RocksJournal::assemble(options, Arc::clone(&store), &stored, identity)?;
        let Stored {
            image,
            snapshot_through,
            last_seq,
            ..
        } = stored;
        tracing::info!(
            path = %journal.path().display(),
            durability = %options.durability,
            snapshot_through = ?snapshot_through,
            last_seq,
            epoch,
            deployment_id = journal.deployment_id(),
            "journal opened"
        );
        let from_seq = snapshot_through.map_or(1, |through| through + 1);
        let recovery = Recovery {
            image,
            batches: Box::new(LogStream::start(store, from_seq, last_seq, started)?),
            epoch,
        };
        Ok((journal, recovery))
    }

    /// The journal around an opened store, with its syncer running in async mode.
    fn assemble(
        options: &JournalOptions,
        store: Arc<Store>,
        stored: &Stored,
        identity: Identity,
    ) -> Result<Arc<RocksJournal>, PersistenceError> {
        let stop = Arc::new(Stop::default());
        let syncer = match options.durability {
            Durability::Sync => None,
            Durability::Async => Some(spawn_syncer(
                Arc::clone(&store),
                Arc::clone(&stop),
                Duration::from_millis(options.async_sync_interval_ms.max(1)),
            )?),
        };
        Ok(Arc::new(RocksJournal {
            store,
            durability: options.durability,
            trim: Mutex::new(TrimState {
                snapshot_through: stored.snapshot_through,
                trimmed_through: stored.trimmed_through,
            }),
            snapshotting: Mutex::new(()),
            retain_floor: AtomicU64::new(0),
            floor_set: AtomicBool::new(false),
            stop,
            syncer: Mutex::new(syncer),
            deployment_id: identity.deployment_id,
            epoch: identity.epoch,
        }))
    }

    /// The id of the deployment this data directory belongs to: made at its first open and
    /// the same at every later one (32 lower-case hex digits). The SQL flusher records it
    /// beside the tables and refuses tables that another deployment wrote.
    pub fn deployment_id(&self) -> &str {
        &self.deployment_id
    }

    /// The epoch of this start: above that of every earlier start of the data directory
    /// (it is also in the [`Recovery`] that [`RocksJournal::open`] returned).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Where the database lives (`<data_dir>/journal`).
    pub fn path(&self) -> &Path {
        &self.store.path
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
        let durable_seq = self.store.durable_seq.load(Ordering::Acquire);
        let Some(from_seq) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.store
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
        self.store
            .sync_through(self.store.last_seq.load(Ordering::Acquire))
    }

    pub fn stats(&self) -> JournalStats {
        self.store.stats()
    }

    /// The log is trimmed through this sequence number (0: nothing trimmed).
    pub fn trimmed_through(&self) -> u64 {
        lock(&self.trim).map_or(0, |t| t.trimmed_through)
    }

    fn append_batch(&self, events: &[Event]) -> Result<u64, PersistenceError> {
        let seq = self.store.write_batch(events)?;
        if self.durability == Durability::Sync {
            self.store.sync_through(seq)?;
        }
        Ok(seq)
    }

    fn store_snapshot(&self, image: &EngineImage) -> Result<(), PersistenceError> {
        let _one_at_a_time = lock(&self.snapshotting)?;
        if !self.snapshot_wanted(image)? {
            return Ok(());
        }
        let through_seq = image.through_seq;
        let bytes = encode_image(image)?;
        let chunks = self.write_snapshot_chunks(through_seq, &bytes)?;
        self.switch_snapshot(SnapshotHeader {
            version: EVENT_VERSION,
            through_seq,
            chunks,
            bytes_total: bytes.len() as u64,
        })?;
        lock(&self.trim)?.snapshot_through = Some(through_seq);
        metrics::histogram!("seckill_snapshot_bytes").record(bytes.len() as f64);
        tracing::info!(through_seq, bytes = bytes.len(), "snapshot stored");
        self.trim_log(1)
    }

    /// Refuses an image that this journal must not store; `false` for one that the stored
    /// snapshot already covers.
    fn snapshot_wanted(&self, image: &EngineImage) -> Result<bool, PersistenceError> {
        self.store.check_healthy()?;
        if image.version != EVENT_VERSION {
            return Err(PersistenceError::Io(format!(
                "refusing a snapshot of version {} (this build writes {EVENT_VERSION})",
                image.version
            )));
        }
        let through_seq = image.through_seq;
        if through_seq > self.store.last_seq.load(Ordering::Acquire) {
            return Err(PersistenceError::Io(format!(
                "snapshot through {through_seq} is ahead of the log"
            )));
        }
        // A snapshot through the same point holds the same state; writing it again would
        // overwrite the chunks the stored header points at.
        let trim = lock(&self.trim)?;
        Ok(trim
            .snapshot_through
            .is_none_or(|stored| stored < through_seq))
    }

    /// Writes the chunks of a snapshot, unsynced (the header's synced write covers them);
    /// returns how many there are.
    fn write_snapshot_chunks(
        &self,
        through_seq: u64,
        bytes: &[u8],
    ) -> Result<u32, PersistenceError> {
        let mut unsynced = WriteOptions::default();
        unsynced.set_sync(false);
        let mut chunks: u32 = 0;
        // Chunks go in separate writes so that a large snapshot never holds up the shards'
        // appends for long; until the header points at them they are invisible.
        for chunk in bytes.chunks(SNAPSHOT_CHUNK_BYTES) {
            self.store
                .db
                .put_opt(snapshot_chunk_key(through_seq, chunks), chunk, &unsynced)
                .map_err(|e| db_error("cannot write a snapshot", e))?;
            chunks += 1;
        }
        Ok(chunks)
    }

    /// Points the snapshot header at the chunks just written, in one synced write that also
    /// deletes older snapshots (and the chunks of any that a crash left without a header).
    fn switch_snapshot(&self, header: SnapshotHeader) -> Result<(), PersistenceError> {
        let mut batch = WriteBatch::default();
        batch.put(META_SNAPSHOT, encode_header(&header)?);
        batch.delete_range(
            snapshot_chunk_key(0, 0),
            snapshot_chunk_key(header.through_seq, 0),
        );
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        self.store.db.write_opt(batch, &synced).map_err(|e| {
            self.store
                .fail(db_error("cannot write a snapshot header", e))
        })
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
        self.store
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
        self.store.last_seq.load(Ordering::Acquire)
    }

    fn save_snapshot(&self, image: &EngineImage) -> Result<(), JournalError> {
        self.store_snapshot(image).map_err(JournalError::from)
    }

    fn keeps_archive(&self) -> bool {
        true
    }

    fn archive_item(&self, item: &ArchivedItem, orders: &[Order]) -> Result<(), JournalError> {
        self.store.check_healthy()?;
        archive::put_item(&self.store.db, item, orders).map_err(JournalError::from)
    }

    fn archived_item(&self, key: u64) -> JournalResult<Option<ArchivedItem>> {
        archive::get_item(&self.store.db, key).map_err(JournalError::from)
    }

    fn archived_order(&self, key: u64, order_seq: u64) -> JournalResult<Option<Order>> {
        archive::get_order(&self.store.db, key, order_seq).map_err(JournalError::from)
    }

    fn archived_request(&self, key: u64, user: &str, request: &str) -> JournalResult<Option<u64>> {
        archive::get_request(&self.store.db, key, user, request).map_err(JournalError::from)
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
    store: Arc<Store>,
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
            let written = store.last_seq.load(Ordering::Acquire);
            if let Err(error) = store.sync_through(written) {
                tracing::error!(%error, "background fsync of the journal failed");
                return;
            }
            if stopping {
                return;
            }
        })
        .map_err(|e| PersistenceError::Io(format!("cannot start the journal syncer: {e}")))
}
