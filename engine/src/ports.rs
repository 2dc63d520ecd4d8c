//! The three seams through which the engine meets the world: the journal (durability), the
//! clock (time) and the order sink (whoever wants the events). The engine itself does no I/O
//! and reads no clock; tests plug in [`MemoryJournal`], [`ManualClock`] and failures.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;

use crate::error::{JournalError, JournalResult};
use crate::event::Event;
use crate::ids::partition_of;
use crate::image::EngineImage;
use crate::model::ArchivedItem;
use crate::model::Order;
use crate::partition::PartitionRecovery;

/// The ports an engine runs on.
#[derive(Clone)]
pub struct Ports {
    pub journal: Arc<dyn Journal>,
    pub clock: Arc<dyn Clock>,
    pub sink: Arc<dyn OrderSink>,
}

impl fmt::Debug for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ports").finish_non_exhaustive()
    }
}

impl fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

impl fmt::Debug for dyn Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Journal")
    }
}

impl fmt::Debug for dyn OrderSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OrderSink")
    }
}

/// Where batches of events become durable.
///
/// `append` is called from a shard's own thread, once per batch (through
/// [`Journal::append_partitioned`], whose default calls it), and may block: the shard
/// replies to nobody in the batch until it returns `Ok`. Concurrent calls from several shards
/// are expected, which is what lets a log share one fsync among them (group commit).
pub trait Journal: Send + Sync + 'static {
    /// Makes `events` durable (as the journal's durability mode defines it) and returns the
    /// sequence number given to this batch. Sequence numbers increase with every call.
    fn append(&self, events: &[Event]) -> Result<u64, JournalError>;

    /// Like [`Journal::append`], for a journal that writes each partition's events to a lane
    /// of its own and may lose some lanes while the others land (a cluster node whose lease
    /// of a partition was taken over): then it answers [`AppendOutcome::PartlyLost`], and
    /// the shard answers and keeps what landed. The shard calls this, never `append`.
    ///
    /// The default is `append`'s outcome, whole: durable, or failed.
    fn append_partitioned(&self, events: &[Event]) -> AppendOutcome {
        match self.append(events) {
            Ok(seq) => AppendOutcome::Durable(seq),
            Err(error) => AppendOutcome::Failed(error),
        }
    }

    /// Like [`Journal::append_partitioned`], told the holding (the lease epoch) each
    /// partition's events were decided under: `holding_of(partition)`. A journal of leased
    /// lanes lands a partition's part only in the lane of that very holding, and answers it
    /// lost otherwise: a lease lost and taken again is another holding, whose replay did not
    /// see these events, so they must never reach its lane. A cluster engine's shard calls
    /// this with the epochs it adopted its partitions under.
    ///
    /// The default ignores the holdings: [`Journal::append_partitioned`].
    fn append_held(
        &self,
        events: &[Event],
        holding_of: &dyn Fn(u32) -> Option<u64>,
    ) -> AppendOutcome {
        let _ = holding_of;
        self.append_partitioned(events)
    }

    /// The highest sequence number handed out so far (0 when none).
    fn last_seq(&self) -> u64;

    /// Asked by a shard, on its own thread, after its `append` failed: whether the journal
    /// goes on writing that batch in the background (a replicated log waiting out an
    /// election or an outage, retrying with the same message id). While it does, the shard
    /// refuses writes and answers reads; once the batch lands, it carries on as if the append
    /// had returned. The default: a failure is final ([`PendingAppend::Final`]), the shard
    /// stays fenced until a restart.
    fn pending_append(&self) -> PendingAppend {
        PendingAppend::Final
    }

    /// Called by the snapshot taker while every shard is paused (nothing is being appended):
    /// the point of the log the image will hold, which becomes `image.through_seq`. A log
    /// of several streams notes where each one stands for the `save_snapshot` that follows.
    /// The default: [`Journal::last_seq`].
    fn snapshot_cut(&self) -> u64 {
        self.last_seq()
    }

    /// Stores a snapshot of the whole engine; the events up to `image.through_seq` are then
    /// no longer needed for recovery. The default keeps no snapshots.
    fn save_snapshot(&self, image: &EngineImage) -> Result<(), JournalError> {
        let _ = image;
        Ok(())
    }

    /// True when this journal keeps an archive (`archive_item` and the reads below work).
    fn keeps_archive(&self) -> bool {
        false
    }

    /// Stores an ended item's final stats and all its orders, durably, before the engine
    /// journals that it archived them and drops them from memory (see `archive.rs`). Trimming
    /// and snapshots never remove the archive. The default has no archive: items stay in
    /// memory.
    fn archive_item(&self, item: &ArchivedItem, orders: &[Order]) -> Result<(), JournalError> {
        let _ = (item, orders);
        Err(JournalError("this journal keeps no archive".into()))
    }

    /// The archived item with key `key`, if any.
    fn archived_item(&self, key: u64) -> JournalResult<Option<ArchivedItem>> {
        let _ = key;
        Ok(None)
    }

    /// Order `order_seq` of an archived item, if any.
    fn archived_order(&self, key: u64, order_seq: u64) -> JournalResult<Option<Order>> {
        let _ = (key, order_seq);
        Ok(None)
    }

    /// The sequence number of the order that `user`'s purchase `request` placed on an
    /// archived item, if any.
    fn archived_request(&self, key: u64, user: &str, request: &str) -> JournalResult<Option<u64>> {
        let _ = (key, user, request);
        Ok(None)
    }
}

/// What became of one batch handed to [`Journal::append_partitioned`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Every event is durable; the batch has this sequence number.
    Durable(u64),
    /// Nothing is known to be durable (as an `Err` of [`Journal::append`]): the shard asks
    /// [`Journal::pending_append`] next.
    Failed(JournalError),
    /// Every lane's part landed except the parts of the partitions in `lost` (taken over, or
    /// given up): those never land, or their outcome is unknown. The catalog's events
    /// belong to no partition: a journal that cannot land them answers `Failed` instead.
    PartlyLost {
        /// The sequence number of the part that landed. When no part landed (the batch
        /// touched lost partitions only) nothing new is in the log, and this is the
        /// journal's last sequence number.
        seq: u64,
        /// The lost partitions the batch touched, ascending, each once; never empty.
        lost: Vec<u32>,
        /// The number of partitions the journal cuts the item space into: an event's
        /// partition is [`crate::partition_of`]`(item_key, partitions)`. Carried here so
        /// the shard sorts its answers by the very count the journal used.
        partitions: u32,
        error: JournalError,
    },
}

/// What became of a batch whose `append` failed (see [`Journal::pending_append`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingAppend {
    /// The failure stands: the batch may or may not be in the log, and nothing more will
    /// be done about it in this process.
    Final,
    /// Still being written in the background; ask again later.
    Waiting,
    /// It is in the log after all, with this sequence number.
    Landed(u64),
    /// It never will be (the partition was taken over): the failure stands.
    Failed(JournalError),
    /// It landed except the parts of the partitions in `lost`, which never will (see
    /// [`AppendOutcome::PartlyLost`], whose fields these are).
    PartlyLost {
        seq: u64,
        lost: Vec<u32>,
        partitions: u32,
    },
}

/// Which partitions this node holds (implemented by the JetStream journal from its leases).
///
/// The engine asks it before it lets a command reach a shard: an item of a partition not
/// held is answered [`crate::Error::NotOwner`], so a node whose lease lapsed never decides
/// for an item that another node may be selling.
pub trait Ownership: Send + Sync + 'static {
    /// How many partitions the item space is cut into (fixed for the deployment).
    fn partitions(&self) -> u32;

    /// The epoch of this node's holding of `partition`'s lease, while the lease is held for
    /// sure now (its local validity has not run out); `None` otherwise.
    ///
    /// Each holding has its own epoch (drawn when the lease was taken, above every earlier
    /// one), so the engine can tell the holding a partition was adopted under from a later
    /// one: items adopted under one holding decide only while that very holding lasts. A
    /// lease lost and taken again is a new holding, and whatever was adopted under the old
    /// one (after another node may have sold its items) decides nothing.
    fn holding(&self, partition: u32) -> Option<u64>;

    /// The lease of `partition` is held for sure now, under whatever holding.
    fn is_held(&self, partition: u32) -> bool {
        self.holding(partition).is_some()
    }
}

impl fmt::Debug for dyn Ownership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ownership")
            .field("partitions", &self.partitions())
            .finish_non_exhaustive()
    }
}

/// An [`Ownership`] that tests set by hand: `partitions` partitions, each held or not as
/// told, under the epoch it was told (all held at first, under epoch 0).
#[derive(Debug)]
pub struct StaticOwnership {
    partitions: u32,
    /// By partition: the holding's epoch, and whether it is held for sure now.
    held: Mutex<Vec<(u64, bool)>>,
}

impl StaticOwnership {
    /// `partitions` partitions (0 counts as 1, as in [`crate::partition_of`]), all held
    /// under epoch 0.
    pub fn all_held(partitions: u32) -> Arc<Self> {
        let partitions = partitions.max(1);
        Arc::new(StaticOwnership {
            partitions,
            held: Mutex::new(vec![(0, true); partitions as usize]),
        })
    }

    /// Marks `partition` held for sure or not, keeping its holding's epoch (a lease whose
    /// validity ran out and was renewed); a partition out of range is ignored.
    pub fn set_held(&self, partition: u32, held: bool) {
        self.update(partition, |slot| slot.1 = held);
    }

    /// A new holding of `partition`, under `epoch`, held for sure (a lease taken).
    pub fn hold(&self, partition: u32, epoch: u64) {
        self.update(partition, |slot| *slot = (epoch, true));
    }

    fn update(&self, partition: u32, change: impl FnOnce(&mut (u64, bool))) {
        let mut all = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = all.get_mut(partition as usize) {
            change(slot);
        }
    }
}

impl Ownership for StaticOwnership {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn holding(&self, partition: u32) -> Option<u64> {
        let all = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match all.get(partition as usize) {
            Some(&(epoch, true)) => Some(epoch),
            _ => None,
        }
    }
}

/// Time, as the engine sees it: unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// Receives every batch of events after it is durable, in the order of the shard that made
/// it. Called on the shard's thread: it must not block (hand the events to a queue).
pub trait OrderSink: Send + Sync + 'static {
    fn publish(&self, seq: u64, events: &[Event]);
}

/// The journaled batches a recovery replays, `(seq, events)` in sequence order.
pub type BatchStream = Box<dyn Iterator<Item = Result<(u64, Vec<Event>), JournalError>> + Send>;

/// What a journal hands back at start-up: the latest snapshot, if any, every batch after
/// it in sequence order, and the epoch of this start.
pub struct Recovery {
    pub image: Option<EngineImage>,
    pub batches: BatchStream,
    /// The number of this start of the deployment, made durable by the journal before it
    /// hands the recovery over and greater than every earlier start's, even one whose last
    /// writes a crash took back. Every order id the engine makes carries it, so no id is
    /// ever given to two orders.
    pub epoch: u64,
}

impl Recovery {
    /// Nothing to recover: a fresh engine, epoch 1.
    pub fn empty() -> Self {
        Recovery {
            image: None,
            batches: Box::new(std::iter::empty()),
            epoch: 1,
        }
    }
}

impl fmt::Debug for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recovery")
            .field(
                "image_through_seq",
                &self.image.as_ref().map(|i| i.through_seq),
            )
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        // A clock before 1970 is a broken machine; 0 keeps every window "upcoming" rather than
        // panicking in the middle of a sale.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when a test moves it.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> Arc<Self> {
        Arc::new(ManualClock {
            now_ms: AtomicI64::new(now_ms),
        })
    }

    pub fn set_ms(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance_ms(&self, delta_ms: i64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// A journal in memory: keeps every batch (for tests that restart an engine from it), can be
/// told to fail, to stall, or to lose its tail as a power cut would, and keeps snapshots.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    batches: Mutex<Vec<(u64, Vec<Event>)>>,
    snapshot: Mutex<Option<EngineImage>>,
    last_seq: AtomicU64,
    failing: AtomicBool,
    keep_events: bool,
    /// The epoch of the latest start on this journal (the first start, with
    /// `Recovery::empty()`, is epoch 1); survives `lose_after`, as a synced counter would.
    epoch: AtomicU64,
    /// While true, appends wait (a disk or a replica that does not answer).
    stalled: Mutex<bool>,
    unstalled: Condvar,
    archive: Mutex<FxHashMap<u64, (ArchivedItem, Vec<Order>)>>,
    /// The partitions an event's item key is sorted into (`partition_of(key, partitions)`)
    /// by [`MemoryJournal::lose_partition`]; set by [`MemoryJournal::with_partitions`], 0
    /// (one partition) otherwise.
    partitions: u32,
    /// Partitions whose events never land from now on (ascending, each once).
    lost: Mutex<Vec<u32>>,
}

impl MemoryJournal {
    /// A journal that keeps every batch, so that [`MemoryJournal::recovery`] can rebuild.
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryJournal {
            keep_events: true,
            // A fresh engine on a new journal starts with `Recovery::empty()`, epoch 1.
            epoch: AtomicU64::new(1),
            ..MemoryJournal::default()
        })
    }

    /// [`MemoryJournal::new`] for a cluster's partitioned log: item events are sorted into
    /// `partitions` partitions by [`crate::partition_of`] (as the JetStream journal sorts
    /// them into lanes), so that [`MemoryJournal::lose_partition`] can lose one of them.
    pub fn with_partitions(partitions: u32) -> Arc<Self> {
        Arc::new(MemoryJournal {
            keep_events: true,
            epoch: AtomicU64::new(1),
            partitions,
            ..MemoryJournal::default()
        })
    }

    /// From now on the events of `partition`'s items never land, as if another node had
    /// taken its lane over: a batch that holds some answers [`AppendOutcome::PartlyLost`]
    /// from [`Journal::append_partitioned`] and keeps only its other events (catalog events
    /// included); [`Journal::append`] keeps the same and answers an error. Batches that
    /// touch no lost partition are durable as before. Partitions are counted as
    /// [`MemoryJournal::with_partitions`] set them (one, for the other constructors).
    ///
    /// # Panics
    ///
    /// When `partition` is not below that count: a test that loses a partition the
    /// journal does not have would test nothing.
    pub fn lose_partition(&self, partition: u32) {
        assert!(
            partition < self.partitions.max(1),
            "partition {partition} of {} partitions",
            self.partitions.max(1)
        );
        let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(at) = lost.binary_search(&partition) {
            lost.insert(at, partition);
        }
    }

    /// Splits a batch into the events that land and the lost partitions it touches.
    fn landing(&self, events: &[Event]) -> (Vec<Event>, Vec<u32>) {
        let lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        if lost.is_empty() {
            return (events.to_vec(), Vec::new());
        }
        let mut touched = Vec::new();
        let landed = events
            .iter()
            .filter(|event| {
                let Some(key) = event.item_key() else {
                    return true;
                };
                let partition = partition_of(key, self.partitions);
                if lost.binary_search(&partition).is_err() {
                    return true;
                }
                if let Err(at) = touched.binary_search(&partition) {
                    touched.insert(at, partition);
                }
                false
            })
            .cloned()
            .collect();
        (landed, touched)
    }

    /// A journal that only counts: for benches, where keeping millions of events would
    /// measure the allocator instead of the engine.
    pub fn discarding() -> Arc<Self> {
        Arc::new(MemoryJournal::default())
    }

    /// From now on every append fails (a disk that went away).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// While `stalled`, every append waits; setting it back releases them.
    pub fn set_stalled(&self, stalled: bool) {
        *self.stalled.lock().unwrap_or_else(PoisonError::into_inner) = stalled;
        self.unstalled.notify_all();
    }

    /// Forgets every batch after `seq`, as a power cut forgets writes that `async` mode had
    /// acknowledged but not yet synced. The epoch counter is kept (it is synced first).
    pub fn lose_after(&self, seq: u64) {
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        batches.retain(|(s, _)| *s <= seq);
        self.last_seq.store(seq, Ordering::SeqCst);
    }

    fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn wait_while_stalled(&self) {
        let stalled = self.stalled.lock().unwrap_or_else(PoisonError::into_inner);
        let _released = self
            .unstalled
            .wait_while(stalled, |stalled| *stalled)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Every kept batch, in order.
    pub fn batches(&self) -> Vec<(u64, Vec<Event>)> {
        self.batches.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// What a restart would read: the last snapshot and the batches after it.
    pub fn recovery(&self) -> Recovery {
        let image = self.snapshot.lock().ok().and_then(|s| s.clone());
        let through = image.as_ref().map_or(0, |i| i.through_seq);
        let batches: Vec<_> = self
            .batches()
            .into_iter()
            .filter(|(seq, _)| *seq > through)
            .map(Ok)
            .collect();
        Recovery {
            image,
            batches: Box::new(batches.into_iter()),
            epoch: self.next_epoch(),
        }
    }

    /// What a cluster node's journal hands over when it takes `partition` (as
    /// [`MemoryJournal::with_partitions`] counts them): the items of the last snapshot in
    /// that partition, the partition's events of every batch after it (the other
    /// partitions' and the catalog's left out), and a fresh epoch. For tests that move a
    /// partition from one engine to another. Its `catalog_seq` is this journal's last
    /// sequence, the catalog's position when the catalog is journaled here; a test whose
    /// engines have a catalog log of their own sets that log's position instead.
    pub fn partition_recovery(&self, partition: u32) -> PartitionRecovery {
        let partitions = self.partitions;
        let in_partition = move |key: u64| partition_of(key, partitions) == partition;
        let image = self.snapshot();
        let through = image.as_ref().map_or(0, |i| i.through_seq);
        let items = image
            .map(|image| {
                image
                    .items
                    .into_iter()
                    .filter(|item| in_partition(item.key))
                    .collect()
            })
            .unwrap_or_default();
        let batches =
            self.batches_after(through, |event| event.item_key().is_some_and(in_partition));
        PartitionRecovery {
            partition,
            items,
            through_seq: through,
            batches,
            epoch: self.next_epoch(),
            catalog_seq: self.last_seq(),
        }
    }

    /// What a cluster node's journal hands over at the node's start: the catalog alone
    /// (the last snapshot without its items, and the catalog's events of every batch after
    /// it), for [`crate::Engine::start_cluster`].
    pub fn catalog_recovery(&self) -> Recovery {
        let image = self.snapshot().map(|mut image| {
            image.items.clear();
            image
        });
        let through = image.as_ref().map_or(0, |i| i.through_seq);
        Recovery {
            image,
            batches: self.batches_after(through, |event| event.item_key().is_none()),
            epoch: self.next_epoch(),
        }
    }

    /// The batches after `through`, each cut to the events `keep` takes; a batch left with
    /// none is left out.
    fn batches_after(&self, through: u64, keep: impl Fn(&Event) -> bool) -> BatchStream {
        let batches: Vec<_> = self
            .batches()
            .into_iter()
            .filter(|(seq, _)| *seq > through)
            .map(|(seq, events)| (seq, events.into_iter().filter(|e| keep(e)).collect()))
            .filter(|(_, events): &(u64, Vec<Event>)| !events.is_empty())
            .map(Ok)
            .collect();
        Box::new(batches.into_iter())
    }

    /// Like [`MemoryJournal::recovery`] but ignoring the snapshot: the log alone.
    pub fn recovery_from_log_only(&self) -> Recovery {
        let batches: Vec<_> = self.batches().into_iter().map(Ok).collect();
        Recovery {
            image: None,
            batches: Box::new(batches.into_iter()),
            epoch: self.next_epoch(),
        }
    }

    /// The snapshot saved last, if any.
    pub fn snapshot(&self) -> Option<EngineImage> {
        self.snapshot.lock().ok().and_then(|s| s.clone())
    }
}

impl Journal for MemoryJournal {
    fn append(&self, events: &[Event]) -> Result<u64, JournalError> {
        match self.append_partitioned(events) {
            AppendOutcome::Durable(seq) => Ok(seq),
            // What landed stays: an error means "may be in the log", which holds for it.
            AppendOutcome::Failed(error) | AppendOutcome::PartlyLost { error, .. } => Err(error),
        }
    }

    fn append_partitioned(&self, events: &[Event]) -> AppendOutcome {
        self.wait_while_stalled();
        if self.failing.load(Ordering::SeqCst) {
            return AppendOutcome::Failed(JournalError("memory journal told to fail".into()));
        }
        if !self.keep_events {
            return AppendOutcome::Durable(self.last_seq.fetch_add(1, Ordering::SeqCst) + 1);
        }
        let (landed, lost) = self.landing(events);
        // Sequence and push under one lock so the kept order is the sequence order.
        let Ok(mut batches) = self.batches.lock() else {
            return AppendOutcome::Failed(JournalError("memory journal lock poisoned".into()));
        };
        if lost.is_empty() {
            let seq = self.last_seq.fetch_add(1, Ordering::SeqCst) + 1;
            batches.push((seq, landed));
            return AppendOutcome::Durable(seq);
        }
        let seq = if landed.is_empty() {
            // Every part was lost: nothing new is in the log.
            self.last_seq.load(Ordering::SeqCst)
        } else {
            let seq = self.last_seq.fetch_add(1, Ordering::SeqCst) + 1;
            batches.push((seq, landed));
            seq
        };
        let error = JournalError(format!(
            "memory journal lost the parts of partitions {lost:?}"
        ));
        AppendOutcome::PartlyLost {
            seq,
            lost,
            partitions: self.partitions.max(1),
            error,
        }
    }

    fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::SeqCst)
    }

    fn save_snapshot(&self, image: &EngineImage) -> Result<(), JournalError> {
        let mut slot = self
            .snapshot
            .lock()
            .map_err(|_| JournalError("memory journal lock poisoned".into()))?;
        *slot = Some(image.clone());
        Ok(())
    }

    fn keeps_archive(&self) -> bool {
        true
    }

    fn archive_item(&self, item: &ArchivedItem, orders: &[Order]) -> Result<(), JournalError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(JournalError("memory journal told to fail".into()));
        }
        let mut archive = self.archive.lock().unwrap_or_else(PoisonError::into_inner);
        archive.insert(item.key, (item.clone(), orders.to_vec()));
        Ok(())
    }

    fn archived_item(&self, key: u64) -> JournalResult<Option<ArchivedItem>> {
        let archive = self.archive.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(archive.get(&key).map(|(item, _)| item.clone()))
    }

    fn archived_order(&self, key: u64, order_seq: u64) -> JournalResult<Option<Order>> {
        let archive = self.archive.lock().unwrap_or_else(PoisonError::into_inner);
        let index = usize::try_from(order_seq.saturating_sub(1)).unwrap_or(usize::MAX);
        Ok(archive
            .get(&key)
            .and_then(|(_, orders)| orders.get(index).cloned()))
    }

    fn archived_request(&self, key: u64, user: &str, request: &str) -> JournalResult<Option<u64>> {
        let archive = self.archive.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(archive.get(&key).and_then(|(_, orders)| {
            orders
                .iter()
                .position(|o| o.user_id == user && o.request_id == request)
                .map(|index| index as u64 + 1)
        }))
    }
}

/// A sink that drops everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSink;

impl OrderSink for NullSink {
    fn publish(&self, _seq: u64, _events: &[Event]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token event of the item with key `item_key` (partition `item_key % 2` of two).
    fn token(item_key: u64) -> Event {
        Event::TokenIssued {
            item_key,
            user_id: "u".into(),
            token: format!("t{item_key}"),
            expires_at_ms: 1,
        }
    }

    fn started() -> Event {
        Event::PromotionStarted {
            promotion_id: "p".into(),
            at_ms: 1,
        }
    }

    #[test]
    fn a_lost_partition_loses_its_part_of_every_later_batch() {
        let journal = MemoryJournal::with_partitions(2);
        assert_eq!(
            journal.append_partitioned(&[token(2), token(3)]),
            AppendOutcome::Durable(1),
            "nothing lost yet"
        );
        journal.lose_partition(1);
        match journal.append_partitioned(&[started(), token(4), token(5), token(7)]) {
            AppendOutcome::PartlyLost {
                seq,
                lost,
                partitions,
                ..
            } => {
                assert_eq!((seq, lost, partitions), (2, vec![1], 2));
            }
            other => panic!("expected a partial loss, got {other:?}"),
        }
        assert_eq!(
            journal.batches().last(),
            Some(&(2, vec![started(), token(4)])),
            "the catalog's and partition 0's events landed, partition 1's did not"
        );
        match journal.append_partitioned(&[token(9)]) {
            AppendOutcome::PartlyLost { seq, lost, .. } => {
                assert_eq!((seq, lost), (2, vec![1]), "nothing new in the log");
            }
            other => panic!("expected a partial loss, got {other:?}"),
        }
        assert_eq!(journal.batches().len(), 2);
        assert_eq!(
            journal.append_partitioned(&[token(6)]),
            AppendOutcome::Durable(3),
            "a batch of partition 0 only is durable"
        );
        assert!(
            journal.append(&[token(8), token(11)]).is_err(),
            "append cannot say \"in part\""
        );
        assert_eq!(journal.batches().last(), Some(&(4, vec![token(8)])));
        let replayed: Vec<Event> = journal
            .recovery_from_log_only()
            .batches
            .flat_map(|batch| batch.map(|(_, events)| events).unwrap_or_default())
            .collect();
        assert!(
            replayed
                .iter()
                .all(|e| e.item_key().is_none_or(|key| partition_of(key, 2) == 0)
                    || e.item_key() == Some(3)),
            "a restart reads no lost event: {replayed:?}"
        );
    }

    #[test]
    #[should_panic(expected = "partition 2 of 2 partitions")]
    fn losing_a_partition_the_journal_does_not_have_is_a_test_bug() {
        MemoryJournal::with_partitions(2).lose_partition(2);
    }

    #[test]
    fn static_ownership_holds_what_it_is_told() {
        let ownership = StaticOwnership::all_held(3);
        assert_eq!(ownership.partitions(), 3);
        assert!((0..3).all(|p| ownership.is_held(p)));
        ownership.set_held(1, false);
        assert!(ownership.is_held(0) && !ownership.is_held(1) && ownership.is_held(2));
        assert!(!ownership.is_held(3), "out of range is never held");
        assert_eq!(ownership.holding(0), Some(0));
        ownership.hold(1, 7);
        assert_eq!(ownership.holding(1), Some(7), "a new holding, held");
        ownership.set_held(1, false);
        assert_eq!(ownership.holding(1), None);
        ownership.set_held(1, true);
        assert_eq!(ownership.holding(1), Some(7), "the same holding again");
        let ownership: Arc<dyn Ownership> = ownership;
        assert_eq!(format!("{ownership:?}"), "Ownership { partitions: 3, .. }");
    }
}
