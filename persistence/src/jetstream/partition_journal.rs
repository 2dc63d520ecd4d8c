//! [`PartitionJournal`]: the journal of a cluster node in join mode (cluster plan, step 6).
//!
//! It starts owning no partition. [`PartitionJournal::take_partition`] takes one lease (no
//! waiting: another node's holding is refused at once), appends the takeover record
//! conditional on the stream's tail, and reads back everything before it for the engine's
//! `build_partition`; [`PartitionJournal::release_partition`] writes what is queued and
//! lets the lease go. A lease taken by another node loses that partition alone: the keeper
//! reports [`LaneEvent::Lost`], and the partition's part of every later batch is answered
//! lost ([`AppendOutcome::PartlyLost`]) while the other partitions' parts land.
//!
//! The catalog is not written here: a cluster engine's creates, starts and stops go to the
//! cluster's one catalog log ([`JetStreamCatalogLog`], which `join` opens), and a batch
//! with a catalog event is refused whole.
//!
//! What keeps the money right:
//! - One writer per partition: the lease, and the takeover record conditional on the tail
//!   (an old owner's late append fails, or lands before the record and is replayed).
//! - A partition's events land only in the lane of the holding they were decided under
//!   ([`Journal::append_held`]): a lease lost and taken again is a new lane, and the old
//!   holding's late batch is answered lost instead of slipping in after the new replay.
//! - Nothing is acknowledged before it is on a quorum: an answer that outlives the
//!   patience leaves the shard suspended until the writer knows (see `writer`).
//! - A release waits for the lane's queue to be written before the lease goes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::Store;
use seckill_engine::{
    AppendOutcome, Event, Journal, JournalError, Ownership, PartitionRecovery, PendingAppend,
    Recovery,
};
use tokio::runtime::Runtime;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use super::catalog_log::JetStreamCatalogLog;
use super::error::ClusterError;
use super::journal::{
    append_takeover, connect, encode_parts, first_seq, journal_runtime, retry, Answer, Taken,
};
use super::lease::Lease;
use super::meta::{self, ClusterRecord};
use super::names::{Names, FIRST_PARTITION_LANE};
use super::options::ClusterOptions;
use super::partition_log::{PartitionLog, StreamSettings};
use super::tail::read_range;
use super::writer::{keep_lease, spawn_writer, Job, LaneHandle, LeaseMode, LeaseState, PerLane};

/// How long a release waits for the lane's queued appends before it gives the lease up
/// anyway (they are answered lost: the next owner's takeover fences them).
const RELEASE_DRAIN_WAIT: Duration = Duration::from_secs(5);
/// How long a release waits for the keeper to delete the lease.
const RELEASE_LEASE_WAIT: Duration = Duration::from_secs(2);
/// How often the catalog log's last sequence is read for the SQL flusher.
const CATALOG_POLL: Duration = Duration::from_millis(250);
/// Lane events kept for a slow listener before the oldest are dropped (it then hears
/// `Lagged`, and reads [`PartitionJournal::owned_partitions`] instead).
const LANE_EVENTS_KEPT: usize = 1_024;

/// What happened to one of this node's partitions, as its lease keeper saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneEvent {
    /// The holding under `epoch` is over: another node took the lease (or the stream held
    /// someone else's append). Tell the engine (`lose_partition(partition, epoch)`); a new
    /// take is a new holding.
    Lost { partition: u32, epoch: u64 },
}

/// One partition this node holds.
struct Lane {
    /// The holding's epoch: drawn from the cluster's epoch counter after the lease was
    /// taken, so above every epoch any earlier holder gave its orders.
    epoch: u64,
    handle: LaneHandle,
    writer: Mutex<Option<JoinHandle<()>>>,
    stop_lease: watch::Sender<bool>,
    paused: Arc<AtomicBool>,
}

/// A batch handed to its lanes' writers: the answers to wait for, by partition, and the
/// partitions whose part could not be handed over (lost).
struct Submitted {
    answers: Vec<(u32, Answer)>,
    lost: Vec<u32>,
}

/// What a take read: the partition's log (for its writer), its batches before the
/// takeover record, and the catalog log's position after it.
struct Replayed {
    log: PartitionLog,
    batches: Vec<(u64, Vec<Event>)>,
    catalog_seq: u64,
}

/// Parts of a batch still being written after the patience ran out, by shard thread.
struct Pending {
    answers: Vec<(u32, Answer)>,
    lost: Vec<u32>,
    /// Partitions with a part that landed.
    landed: Vec<u32>,
}

/// The journal of a cluster node that takes and releases partitions while it runs. See the
/// module docs.
pub struct PartitionJournal {
    runtime: Option<Runtime>,
    /// The runtime's handle: the keepers and writers run on it.
    handle: tokio::runtime::Handle,
    js: Context,
    names: Names,
    record: ClusterRecord,
    node_id: String,
    epoch: u64,
    patience: Duration,
    connect_timeout: Duration,
    message_bytes_max: usize,
    settings: StreamSettings,
    lease_store: Store,
    meta_store: Store,
    lease_ttl: Duration,
    catalog: Arc<JetStreamCatalogLog>,
    /// The catalog log's last sequence as last seen (polled every [`CATALOG_POLL`]): how
    /// far the SQL flusher may read the catalog lane (every message there is on a quorum).
    catalog_seen: Arc<AtomicU64>,
    /// By partition: the lane of the holding this node has, or had until it was lost.
    slots: Vec<Mutex<Option<Arc<Lane>>>>,
    /// By partition: taken by a take or a release for its whole length (never by the
    /// appends and the ownership checks, which read `slots` alone).
    moving: Vec<Mutex<()>>,
    /// This process's count of batches that landed in part or whole.
    local_seq: AtomicU64,
    pending: Mutex<HashMap<ThreadId, Pending>>,
    events: broadcast::Sender<LaneEvent>,
}

impl std::fmt::Debug for PartitionJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionJournal")
            .field("node_id", &self.node_id)
            .field("partitions", &self.record.partitions)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl PartitionJournal {
    /// Connects and joins the cluster: the cluster record (partition count, deployment id),
    /// the buckets, a start epoch, and the catalog log with what a cluster engine starts
    /// from (`Engine::start_cluster`). Takes no partition. Blocking (the journal runs its
    /// own runtime): call it from a plain thread or `spawn_blocking`.
    pub fn join(
        options: &ClusterOptions,
    ) -> Result<(Arc<PartitionJournal>, Recovery), ClusterError> {
        let runtime = journal_runtime()?;
        let handle = runtime.handle().clone();
        let (mut journal, catalog) = runtime.block_on(join_async(options, handle))?;
        journal.runtime = Some(runtime);
        Ok((Arc::new(journal), catalog))
    }

    pub fn partitions(&self) -> u32 {
        self.record.partitions
    }

    pub fn deployment_id(&self) -> &str {
        &self.record.deployment_id
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's start epoch (its catalog appends' message ids).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The cluster's catalog log, for the engine's `ClusterPorts` and the catalog tail.
    pub fn catalog_log(&self) -> Arc<JetStreamCatalogLog> {
        Arc::clone(&self.catalog)
    }

    /// What becomes of this node's partitions (see [`LaneEvent`]).
    pub fn lane_events(&self) -> broadcast::Receiver<LaneEvent> {
        self.events.subscribe()
    }

    /// The partitions whose lease is held for sure now, ascending.
    pub fn owned_partitions(&self) -> Vec<u32> {
        (0..self.record.partitions)
            .filter(|&p| self.holding(p).is_some())
            .collect()
    }

    /// Takes `partition`: its lease (refused with [`ClusterError::LeaseHeld`] while another
    /// node, or this one, holds it), a new epoch, the takeover record conditional on the
    /// stream's tail, and the lane before it, for `Engine::build_partition`. From here on
    /// the lease is kept and [`Ownership::holding`] names the epoch; the engine adopts the
    /// built part under it. Blocking.
    ///
    /// On an error nothing is held: a lease taken on the way is given back.
    pub fn take_partition(&self, partition: u32) -> Result<PartitionRecovery, ClusterError> {
        let slot = self.slot(partition)?;
        let _moving = self.moving(partition);
        {
            let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if held
                .as_ref()
                .is_some_and(|lane| !lane.handle.state.is_lost())
            {
                return Err(ClusterError::LeaseHeld {
                    partition: self.names.lease_key(lane_of(partition)),
                    holder: format!("{} (this node: release it first)", self.node_id),
                });
            }
            // A lost holding's lane takes nothing more: its writer refuses every job. Its
            // loss is reported again (its keeper may not have yet): the engine must drop
            // what it adopted under it before it can adopt the new holding.
            if let Some(lost) = held.take() {
                lost.handle.close();
                let _ = self.events.send(LaneEvent::Lost {
                    partition,
                    epoch: lost.epoch,
                });
            }
        }
        let (lane, recovery) = self.block_on(self.take_async(partition))?;
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(lane));
        Ok(recovery)
    }

    /// The clean hand-over of `partition`, once the engine released it
    /// (`Engine::release_partition` returned: nothing of it is decided or in flight any
    /// more): the lane takes no new append, the queued ones are written, then the lease is
    /// deleted, so another node may take it at once. A partition not held is released at
    /// once. Blocking; waits for a take of the same partition under way.
    ///
    /// Should the queue not be written within [`RELEASE_DRAIN_WAIT`] (JetStream out of
    /// reach), the lane is marked lost and the lease is left to lapse at its TTL instead: an
    /// append may still be on its way, and only the next owner's takeover record fences it.
    pub fn release_partition(&self, partition: u32) -> Result<(), ClusterError> {
        let slot = self.slot(partition)?;
        let _moving = self.moving(partition);
        let Some(lane) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return Ok(());
        };
        lane.handle.close();
        let writer = lane
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            let drained =
                self.block_on(async { tokio::time::timeout(RELEASE_DRAIN_WAIT, writer).await });
            if drained.is_err() {
                tracing::warn!(
                    partition,
                    "the lane's queued appends were not written in time; the lease is left to lapse (the next owner's takeover fences them)"
                );
                lane.handle.state.lose();
            }
        }
        lane.stop_lease.send_replace(true);
        let deadline = Instant::now() + RELEASE_LEASE_WAIT;
        while !lane.handle.state.is_settled() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::info!(partition, epoch = lane.epoch, "partition released");
        Ok(())
    }

    /// Releases every partition held (a shutdown after the engine stopped). Blocking.
    pub fn release_all(&self) {
        for partition in 0..self.record.partitions {
            if let Err(error) = self.release_partition(partition) {
                tracing::warn!(partition, %error, "releasing a partition failed; its lease lapses by itself");
            }
        }
    }

    /// A test hook: while `paused`, the lease of `partition` is not renewed (as if this
    /// node were stopped), so it lapses and another node may take it; renewals that resume
    /// then find it lost.
    #[doc(hidden)]
    pub fn pause_renewals(&self, partition: u32, paused: bool) {
        if let Ok(slot) = self.slot(partition) {
            if let Some(lane) = slot.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                lane.paused.store(paused, Ordering::Release);
            }
        }
    }

    /// The epoch of the holding of `partition` this node writes under now (held, or in
    /// doubt; not lost), if any.
    pub fn writing_epoch(&self, partition: u32) -> Option<u64> {
        let lane = self.lane(partition)?;
        (!lane.handle.state.is_lost()).then_some(lane.epoch)
    }

    /// The lanes of the partitions this node writes now (held, or in doubt; not lost),
    /// ascending.
    pub(crate) fn writing_lanes(&self) -> Vec<u32> {
        (0..self.record.partitions)
            .filter(|&p| {
                self.lane(p)
                    .is_some_and(|lane| !lane.handle.state.is_lost())
            })
            .map(lane_of)
            .collect()
    }

    /// How far this node's appends reached in `lane` (0 for a lane it does not write).
    pub(crate) fn acked_seq(&self, lane: u32) -> u64 {
        lane.checked_sub(FIRST_PARTITION_LANE)
            .and_then(|partition| self.lane(partition))
            .map_or(0, |held| held.handle.acked_seq.load(Ordering::Acquire))
    }

    pub(crate) fn catalog_seen(&self) -> u64 {
        self.catalog_seen.load(Ordering::Acquire)
    }

    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    pub(crate) fn js(&self) -> &Context {
        &self.js
    }

    fn slot(&self, partition: u32) -> Result<&Mutex<Option<Arc<Lane>>>, ClusterError> {
        self.slots.get(partition as usize).ok_or_else(|| {
            ClusterError::Nats(format!(
                "partition {partition} does not exist: the cluster has {}",
                self.record.partitions
            ))
        })
    }

    /// Held by a take or a release of `partition` for its whole length: one at a time.
    fn moving(&self, partition: u32) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.moving
            .get(partition as usize)
            .map(|lock| lock.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn lane(&self, partition: u32) -> Option<Arc<Lane>> {
        self.slots
            .get(partition as usize)?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `future` on the journal's runtime, from a thread outside it.
    pub(crate) fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        match &self.runtime {
            Some(runtime) => runtime.block_on(future),
            None => unreachable!("the runtime lives as long as the journal"),
        }
    }

    /// The steps of a take after the slot was checked; gives the lease back on an error.
    async fn take_async(&self, partition: u32) -> Result<(Lane, PartitionRecovery), ClusterError> {
        let lane = lane_of(partition);
        let lease = Lease::acquire_key(
            &self.lease_store,
            self.names.lease_key(lane),
            &self.node_id,
            self.lease_ttl,
        )
        .await?;
        let lease_epoch = lease.epoch();
        let state = LeaseState::new(&self.node_id, lease.valid_until());
        let (stop_lease, stopped) = watch::channel(false);
        let paused = Arc::new(AtomicBool::new(false));
        // Set once drawn; a loss reported before names no holding the engine adopted.
        let epoch_slot = Arc::new(AtomicU64::new(0));
        let mode = LeaseMode::PerLane(PerLane {
            partition,
            epoch: Arc::clone(&epoch_slot),
            events: self.events.clone(),
            paused: Arc::clone(&paused),
        });
        // Kept from the moment it is taken: drawing the epoch and the replay may take a
        // while.
        let keeper = self
            .handle
            .spawn(keep_lease(lease, Arc::clone(&state), stopped, mode));
        let (epoch, replayed) = match self.draw_and_replay(partition, lease_epoch, &state).await {
            Ok(taken) => taken,
            Err(error) => {
                stop_lease.send_replace(true);
                let _ = tokio::time::timeout(RELEASE_LEASE_WAIT, keeper).await;
                return Err(error);
            }
        };
        epoch_slot.store(epoch, Ordering::Release);
        let Replayed {
            log,
            batches,
            catalog_seq,
        } = replayed;
        let (handle, writer) = spawn_writer(&self.handle, lane, log, state);
        tracing::info!(
            node = %self.node_id,
            partition,
            epoch,
            batches = batches.len(),
            catalog_seq,
            "partition taken"
        );
        let recovery = PartitionRecovery {
            partition,
            items: Vec::new(),
            through_seq: 0,
            batches: Box::new(batches.into_iter().map(Ok)),
            epoch,
            catalog_seq,
        };
        let taken = Lane {
            epoch,
            handle,
            writer: Mutex::new(Some(writer)),
            stop_lease,
            paused,
        };
        Ok((taken, recovery))
    }

    /// A new epoch, drawn after the lease was taken (so above every earlier holder's, each
    /// drawn while it held the lease), then the replay.
    async fn draw_and_replay(
        &self,
        partition: u32,
        lease_epoch: u64,
        state: &Arc<LeaseState>,
    ) -> Result<(u64, Replayed), ClusterError> {
        let deadline = Instant::now() + self.connect_timeout;
        let epoch = retry(deadline, || meta::next_epoch(&self.meta_store)).await?;
        let replayed = self.replay(partition, lease_epoch, state).await?;
        Ok((epoch, replayed))
    }

    /// Opens the partition's stream, appends the takeover record and reads back the lane
    /// before it, and the catalog's position after it.
    async fn replay(
        &self,
        partition: u32,
        lease_epoch: u64,
        state: &Arc<LeaseState>,
    ) -> Result<Replayed, ClusterError> {
        let lane = lane_of(partition);
        let (stream, subject) = (self.names.stream(lane), self.names.subject(lane));
        let deadline = Instant::now() + self.connect_timeout;
        let log = retry(deadline, || async {
            PartitionLog::open(
                self.js.clone(),
                &stream,
                &subject,
                &self.settings,
                lease_epoch,
            )
            .await
            .map_err(ClusterError::from)
        })
        .await?;
        let mut taken = Taken {
            lane,
            lease_epoch,
            state: Arc::clone(state),
            log,
        };
        // After it nothing of an earlier owner lands: what is read below is all they wrote.
        append_takeover(&mut taken, &self.node_id).await?;
        // Every promotion the lane's events name was in the catalog log before them.
        let catalog_seq = self.catalog.last_seq().await?;
        let takeover_seq = taken.log.last_seq();
        let first = first_seq(&self.js, &stream).await?;
        if first > 1 {
            // Join mode keeps no snapshot of a partition yet: a purged lane cannot be
            // rebuilt (a stream an earlier single-owner journal purged below its snapshot).
            return Err(ClusterError::Nats(format!(
                "stream {stream} starts at {first}: the batches before it are in a snapshot this mode does not read; not taken"
            )));
        }
        let batches = read_range(&self.js, &stream, 1, takeover_seq)
            .await?
            .into_iter()
            .filter(|(_, events)| !events.is_empty())
            .collect();
        Ok(Replayed {
            log: taken.log,
            batches,
            catalog_seq,
        })
    }

    /// Sends each partition's part of `events` to the lane of the holding it was decided
    /// under; the answers to wait for, and the partitions whose part cannot be sent.
    fn submit(
        &self,
        events: &[Event],
        holding_of: &dyn Fn(u32) -> Option<u64>,
    ) -> Result<Submitted, JournalError> {
        let partitions = self.record.partitions;
        let mut by_partition: Vec<(u32, Vec<Event>)> = Vec::new();
        for event in events {
            let Some(key) = event.item_key() else {
                return Err(JournalError(
                    "a catalog event reached a partition journal: a cluster engine's catalog changes go to the catalog log".into(),
                ));
            };
            let partition = seckill_engine::partition_of(key, partitions);
            match by_partition.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, part)) => part.push(event.clone()),
                None => by_partition.push((partition, vec![event.clone()])),
            }
        }
        // Every part encoded before any is sent: a failure leaves nothing in flight.
        let mut encoded = Vec::with_capacity(by_partition.len());
        for (partition, part) in by_partition {
            let mut payloads = Vec::new();
            encode_parts(&part, self.message_bytes_max, &mut payloads)?;
            encoded.push((partition, payloads));
        }
        let mut answers = Vec::new();
        let mut lost = Vec::new();
        for (partition, payloads) in encoded {
            let lane = self
                .lane(partition)
                .filter(|lane| Some(lane.epoch) == holding_of(partition));
            let Some(lane) = lane else {
                lost.push(partition);
                continue;
            };
            // In order, to one writer: a prefix of an item's events is a valid history.
            for payload in payloads {
                let (done, answer) = oneshot::channel();
                if lane.handle.jobs.send(Job { payload, done }).is_err() {
                    // Closed (released or lost): whatever of it was sent is answered lost
                    // below, as its writer refuses or drops it.
                    lost.push(partition);
                    break;
                }
                answers.push((partition, answer));
            }
        }
        Ok(Submitted { answers, lost })
    }

    /// Waits for `answers` until `deadline`: the partitions lost among them, those with a
    /// part that landed, and the answers still outstanding.
    fn wait(
        &self,
        answers: Vec<(u32, Answer)>,
        deadline: tokio::time::Instant,
    ) -> (Vec<u32>, Vec<u32>, Vec<(u32, Answer)>) {
        self.block_on(async move {
            let (mut lost, mut landed, mut left) = (Vec::new(), Vec::new(), Vec::new());
            for (partition, mut answer) in answers {
                if !left.is_empty() {
                    left.push((partition, answer));
                    continue;
                }
                match tokio::time::timeout_at(deadline, &mut answer).await {
                    Ok(Ok(Ok(_))) => landed.push(partition),
                    Ok(Ok(Err(error))) => {
                        tracing::warn!(partition, %error, "the lane did not take its part of a batch");
                        lost.push(partition);
                    }
                    Ok(Err(_)) => {
                        tracing::warn!(partition, "the lane's writer stopped under a batch");
                        lost.push(partition);
                    }
                    Err(_) => left.push((partition, answer)),
                }
            }
            (lost, landed, left)
        })
    }

    /// The outcome of a batch whose every answer is in: `landed` names the partitions with
    /// a part that landed (a lost one among them keeps nothing of it).
    fn settled(&self, mut lost: Vec<u32>, landed: &[u32]) -> AppendOutcome {
        if lost.is_empty() {
            return AppendOutcome::Durable(self.next_local_seq());
        }
        lost.sort_unstable();
        lost.dedup();
        let seq = if landed.iter().any(|p| lost.binary_search(p).is_err()) {
            self.next_local_seq()
        } else {
            self.local_seq.load(Ordering::Acquire)
        };
        AppendOutcome::PartlyLost {
            seq,
            lost,
            partitions: self.record.partitions,
            error: JournalError("this node no longer holds these partitions' leases".into()),
        }
    }

    fn next_local_seq(&self) -> u64 {
        self.local_seq.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// The lane of partition `partition`.
fn lane_of(partition: u32) -> u32 {
    FIRST_PARTITION_LANE + partition
}

/// What `join` gathers before the journal owns its runtime.
async fn join_async(
    options: &ClusterOptions,
    runtime: tokio::runtime::Handle,
) -> Result<(PartitionJournal, Recovery), ClusterError> {
    let names = Names::new(&options.prefix);
    let (js, message_bytes_max) = connect(options).await?;
    let deadline = Instant::now() + options.connect_timeout;
    let meta_bucket = names.meta_bucket();
    let meta_store = retry(deadline, || {
        meta::bucket(&js, &meta_bucket, options.replicas)
    })
    .await?;
    let record = retry(deadline, || meta::settle(&meta_store, options.partitions)).await?;
    if record.partitions == 0 {
        return Err(ClusterError::Nats(
            "the cluster record says 0 partitions: it is corrupt".into(),
        ));
    }
    let lease_bucket = names.lease_bucket();
    let lease_store = retry(deadline, || async {
        Lease::bucket(&js, &lease_bucket, options.lease_ttl, options.replicas)
            .await
            .map_err(ClusterError::from)
    })
    .await?;
    let epoch = retry(deadline, || meta::next_epoch(&meta_store)).await?;
    let settings = StreamSettings {
        replicas: options.replicas,
        ..StreamSettings::default()
    };
    let catalog = retry(deadline, || {
        JetStreamCatalogLog::open(js.clone(), runtime.clone(), &names, &settings, epoch)
    })
    .await?;
    let catalog_recovery = retry(deadline, || catalog.recovery(epoch)).await?;
    tracing::info!(
        node = %options.node_id,
        partitions = record.partitions,
        epoch,
        deployment_id = %record.deployment_id,
        "joined the cluster"
    );
    let (events, _) = broadcast::channel(LANE_EVENTS_KEPT);
    let catalog = Arc::new(catalog);
    let catalog_seen = Arc::new(AtomicU64::new(0));
    // Ends with the runtime (the journal's drop).
    runtime.spawn(poll_catalog(
        Arc::clone(&catalog),
        Arc::clone(&catalog_seen),
    ));
    let journal = PartitionJournal {
        runtime: None,
        handle: runtime.clone(),
        js,
        names,
        slots: (0..record.partitions).map(|_| Mutex::new(None)).collect(),
        moving: (0..record.partitions).map(|_| Mutex::new(())).collect(),
        record,
        node_id: options.node_id.clone(),
        epoch,
        patience: options.append_patience,
        connect_timeout: options.connect_timeout,
        message_bytes_max,
        settings,
        lease_store,
        meta_store,
        lease_ttl: options.lease_ttl,
        catalog,
        catalog_seen,
        local_seq: AtomicU64::new(0),
        pending: Mutex::new(HashMap::new()),
        events,
    };
    Ok((journal, catalog_recovery))
}

/// Keeps `seen` at the catalog log's last sequence.
async fn poll_catalog(catalog: Arc<JetStreamCatalogLog>, seen: Arc<AtomicU64>) {
    loop {
        match catalog.last_seq().await {
            Ok(seq) => {
                seen.fetch_max(seq, Ordering::AcqRel);
            }
            Err(error) => tracing::debug!(%error, "reading the catalog's position failed"),
        }
        tokio::time::sleep(CATALOG_POLL).await;
    }
}

impl Drop for PartitionJournal {
    fn drop(&mut self) {
        for slot in &self.slots {
            if let Some(lane) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
                // The keeper deletes the lease if the runtime lets it; it lapses otherwise.
                lane.stop_lease.send_replace(true);
            }
        }
        // Dropping a runtime blocks; this may run inside another runtime's task.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Ownership for PartitionJournal {
    fn partitions(&self) -> u32 {
        self.record.partitions
    }

    fn holding(&self, partition: u32) -> Option<u64> {
        let lane = self.lane(partition)?;
        lane.handle.state.is_held().then_some(lane.epoch)
    }
}

impl Journal for PartitionJournal {
    /// Refused: a partition journal appends only what it is told the holdings of
    /// ([`Journal::append_held`]).
    fn append(&self, _events: &[Event]) -> Result<u64, JournalError> {
        Err(JournalError(
            "a partition journal appends a batch only with the holdings it was decided under"
                .into(),
        ))
    }

    fn append_held(
        &self,
        events: &[Event],
        holding_of: &dyn Fn(u32) -> Option<u64>,
    ) -> AppendOutcome {
        let deadline = tokio::time::Instant::now() + self.patience;
        let Submitted { answers, mut lost } = match self.submit(events, holding_of) {
            Ok(submitted) => submitted,
            Err(error) => return AppendOutcome::Failed(error),
        };
        let (more_lost, landed, left) = self.wait(answers, deadline);
        lost.extend(more_lost);
        if left.is_empty() {
            return self.settled(lost, &landed);
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                std::thread::current().id(),
                Pending {
                    answers: left,
                    lost,
                    landed,
                },
            );
        AppendOutcome::Failed(JournalError(format!(
            "JetStream did not answer within {} ms; the batch is still being written",
            self.patience.as_millis()
        )))
    }

    fn pending_append(&self) -> PendingAppend {
        let mut all = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let thread = std::thread::current().id();
        let Some(pending) = all.get_mut(&thread) else {
            return PendingAppend::Final;
        };
        let mut answers = std::mem::take(&mut pending.answers);
        answers.retain_mut(|(partition, answer)| match answer.try_recv() {
            Ok(Ok(_)) => {
                pending.landed.push(*partition);
                false
            }
            Err(oneshot::error::TryRecvError::Empty) => true,
            Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {
                pending.lost.push(*partition);
                false
            }
        });
        pending.answers = answers;
        if !pending.answers.is_empty() {
            return PendingAppend::Waiting;
        }
        let Some(Pending { lost, landed, .. }) = all.remove(&thread) else {
            return PendingAppend::Final;
        };
        drop(all);
        match self.settled(lost, &landed) {
            AppendOutcome::Durable(seq) => PendingAppend::Landed(seq),
            AppendOutcome::PartlyLost {
                seq,
                lost,
                partitions,
                ..
            } => PendingAppend::PartlyLost {
                seq,
                lost,
                partitions,
            },
            AppendOutcome::Failed(error) => PendingAppend::Failed(error),
        }
    }

    fn last_seq(&self) -> u64 {
        self.local_seq.load(Ordering::Acquire)
    }
}
