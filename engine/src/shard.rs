//! A shard: one thread, the single owner of its items.
//!
//! The loop is small on purpose. It takes a first command from its bounded mailbox (or
//! wakes on the expiry tick), drains more up to the batch bound, decides each one in memory
//! against the state as the earlier ones left it, hands all the batch's events to the
//! journal in one call, republishes the gates, and only then answers anybody. A journal
//! failure answers the whole batch "unavailable" and fences the shard: its memory is ahead of
//! the disk, so it must not say yes to anything again until a restart rebuilds it from the log.
//!
//! A journal that writes each partition to a lane of its own (a cluster node's) may lose
//! some lanes of a batch while the others land. Then only the answers about the lost
//! partitions' items fail ("outcome unknown" for writes), the others are sent, and the lost
//! partitions' items leave the shard: their lanes are another node's now, so the shard
//! answers "not the owner" for them and is not fenced.
//!
//! In a cluster engine the shard holds the items of the partitions it was given (an adopt,
//! see `partition.rs`) and answers "not the owner", nothing done, for any other key, and for
//! a partition whose lease is not held for sure: a command that was queued before its
//! partition was dropped never reaches a decision or a 404. A drop journals and answers the
//! batch first and, in a clean hand-over, waits for an append still being written, so no
//! answered batch is lost and no memory ahead of the log is let go.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tokio::sync::oneshot;

use crate::archive;
use crate::command::{Command, OrderAddress, Reply, ReplyScope};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::ids::partition_of;
use crate::item::{DecideContext, Decision, ItemState, Payment};
use crate::model::ArchivedItem;
use crate::model::{ItemStats, Order, PurchaseRequest, Purchased, TokenGrant};
use crate::partition::PartitionSet;
use crate::ports::{AppendOutcome, Clock, Journal, OrderSink, Ownership, PendingAppend};
use crate::pump::PumpBatch;
use crate::shard_state::{ShardState, Slot};

/// Counters shared by the shards and the snapshot taker.
#[derive(Debug, Default)]
pub(crate) struct ShardCounters {
    /// Events journaled since the last snapshot.
    pub events_since_snapshot: AtomicU64,
    /// Orders and tokens the last snapshot held: what the next one costs to take and write.
    pub records_in_last_snapshot: AtomicU64,
}

/// The fixed settings of a shard's loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShardSettings {
    pub index: usize,
    pub batch_requests_max: usize,
    pub expiry_tick: Duration,
    pub token_ttl_ms: i64,
    /// This engine start's epoch, part of every order id.
    pub epoch: u64,
    /// How long after its promotion's end an item stays in memory.
    pub retain_ended_ms: i64,
}

/// How often a shard with a parked drop asks the journal about its pending append, at most:
/// a release is waiting on it.
const PARKED_DROP_POLL: Duration = Duration::from_millis(5);

/// What a shard of a cluster engine knows of the partitions: which ones it decides for, and
/// under which epoch each.
#[derive(Debug)]
pub(crate) struct ShardCluster {
    partitions: u32,
    /// By partition: the epoch of its ownership while this shard holds it, `None` otherwise.
    epochs: Vec<Option<u64>>,
    ownership: Arc<dyn Ownership>,
    /// The engine's standings: a partition being released or lost is decided no more,
    /// even before the control thread has taken its items.
    standings: Arc<PartitionSet>,
}

impl ShardCluster {
    /// `partitions` partitions (at least 1), none held.
    pub fn new(
        partitions: u32,
        ownership: Arc<dyn Ownership>,
        standings: Arc<PartitionSet>,
    ) -> Self {
        let partitions = partitions.max(1);
        ShardCluster {
            partitions,
            epochs: vec![None; partitions as usize],
            ownership,
            standings,
        }
    }

    fn partition(&self, key: u64) -> u32 {
        partition_of(key, self.partitions)
    }

    fn epoch(&self, partition: u32) -> Option<u64> {
        self.epochs.get(partition as usize).copied().flatten()
    }

    /// This shard holds the partition's items (an adopt gave them, no drop took them).
    fn holds(&self, partition: u32) -> bool {
        self.epoch(partition).is_some()
    }

    /// This shard may decide for the partition's items now: it holds them, the engine has
    /// not begun to release them (a lost lease that came back must not revive them), and
    /// the lease is held for sure under the very holding they were adopted under (checked
    /// again here, for commands queued before it lapsed or was taken by another node).
    fn decides(&self, partition: u32) -> bool {
        let Some(epoch) = self.epoch(partition) else {
            return false;
        };
        self.standings.may_decide(partition) && self.ownership.holding(partition) == Some(epoch)
    }

    /// Whether the item `key`'s gate may be published: while its partition is adopted,
    /// owned or released cleanly (what was queued before the release is answered).
    fn shows(&self, key: u64) -> bool {
        self.standings.may_decide(self.partition(key))
    }

    /// Whether the item `key`'s payment deadlines may be acted on now.
    fn decides_key(&self, key: u64) -> bool {
        self.decides(self.partition(key))
    }

    fn hold(&mut self, partition: u32, epoch: u64) {
        if let Some(slot) = self.epochs.get_mut(partition as usize) {
            *slot = Some(epoch);
        }
    }

    fn let_go(&mut self, partition: u32) {
        if let Some(slot) = self.epochs.get_mut(partition as usize) {
            *slot = None;
        }
    }
}

/// The ports a shard writes through.
#[derive(Clone)]
pub(crate) struct ShardPorts {
    pub journal: Arc<dyn Journal>,
    pub clock: Arc<dyn Clock>,
    pub sink: Arc<dyn OrderSink>,
    pub counters: Arc<ShardCounters>,
}

/// The running shard: its state, its mailbox and the ports it writes through.
pub(crate) struct Shard {
    settings: ShardSettings,
    state: ShardState,
    mailbox: Receiver<Command>,
    ports: ShardPorts,
    events: Vec<Event>,
    replies: Vec<Reply>,
    /// What each of `replies` depends on, index for index (kept so by `handle`).
    scopes: Vec<ReplyScope>,
    /// Partitions whose lane the journal lost: their items left the shard, and commands
    /// about them are answered `NotOwner`.
    lost: Option<LostPartitions>,
    /// A cluster engine's shard: the partitions it holds. `None` when the engine runs alone
    /// (every key is this shard's by routing alone).
    cluster: Option<ShardCluster>,
    /// Drops of a clean hand-over that wait for the suspended batch to land or fail: the
    /// partition and where its answer goes.
    parked_drops: Vec<(u32, oneshot::Sender<Result<usize>>)>,
    /// The batch's answers for callers on threads with a [`crate::ReplyPump`].
    pumps: PumpBatch,
    touched: Vec<u64>,
    /// Set once a journal write failed for good: every later command is refused.
    fenced: Option<Error>,
    /// A batch whose append the journal goes on writing in the background: its effects are
    /// in memory, so writes wait (refused) until it lands; reads are answered meanwhile.
    suspended: Option<Suspended>,
    stopping: Option<tokio::sync::oneshot::Sender<Result<()>>>,
    /// This batch was cut short: a snapshot's pause, or a partition's drop that journaled
    /// the batch, waited, so the time read at its start is stale.
    paused: bool,
    last_housekeeping: Instant,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("index", &self.settings.index)
            .finish_non_exhaustive()
    }
}

impl Shard {
    pub fn new(
        settings: ShardSettings,
        state: ShardState,
        mailbox: Receiver<Command>,
        ports: ShardPorts,
        cluster: Option<ShardCluster>,
    ) -> Self {
        Shard {
            settings,
            state,
            mailbox,
            ports,
            events: Vec::new(),
            replies: Vec::new(),
            scopes: Vec::new(),
            lost: None,
            cluster,
            parked_drops: Vec::new(),
            pumps: PumpBatch::default(),
            touched: Vec::new(),
            fenced: None,
            suspended: None,
            stopping: None,
            paused: false,
            last_housekeeping: Instant::now(),
        }
    }

    /// The shard's loop; returns when told to shut down or when every sender is gone.
    pub fn run(mut self) {
        loop {
            let wait = if self.parked_drops.is_empty() {
                self.settings.expiry_tick
            } else {
                PARKED_DROP_POLL.min(self.settings.expiry_tick)
            };
            let first = match self.mailbox.recv_timeout(wait) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if self.suspended.is_some() {
                self.check_suspended();
            }
            let now_ms = self.ports.clock.now_ms();
            self.upkeep(now_ms);
            if let Some(command) = first {
                self.handle(command, now_ms);
            }
            // A pause (snapshot) ends the batch: the time read at its start is stale after it.
            while self.replies.len() < self.settings.batch_requests_max
                && self.stopping.is_none()
                && !self.paused
            {
                match self.mailbox.try_recv() {
                    Ok(command) => self.handle(command, now_ms),
                    Err(_) => break,
                }
            }
            self.paused = false;
            self.commit();
            if let Some(reply) = self.stopping.take() {
                let _ = reply.send(Ok(()));
                return;
            }
        }
        self.commit();
    }

    /// Expiries on every pass; the item scan of housekeeping once per tick.
    fn upkeep(&mut self, now_ms: i64) {
        if self.fenced.is_some() || self.suspended.is_some() {
            return;
        }
        // Housekeeping first: the gates it publishes then show journaled state only.
        if self.last_housekeeping.elapsed() >= self.settings.expiry_tick {
            self.last_housekeeping = Instant::now();
            self.housekeep(now_ms);
        }
        self.expire_due(now_ms);
    }

    /// Expires the orders whose payment deadline passed; in a cluster engine only those of
    /// partitions this shard decides for now (the others' deadlines wait: their items are
    /// on their way out, or their lease is in doubt).
    fn expire_due(&mut self, now_ms: i64) {
        let cluster = self.cluster.as_ref();
        self.state.expire_due_where(
            now_ms,
            |key| cluster.is_none_or(|cluster| cluster.decides_key(key)),
            &mut self.events,
            &mut self.touched,
        );
    }

    fn housekeep(&mut self, now_ms: i64) {
        self.state.housekeep(now_ms);
        // A cluster node keeps its items in memory: an archive is one node's, and the next
        // owner of the partition could not read it.
        if self.ports.journal.keeps_archive() && self.cluster.is_none() {
            for key in self.state.archivable(now_ms, self.settings.retain_ended_ms) {
                self.archive_item(key);
            }
        }
    }

    /// Writes an ended item to the journal's archive, then drops it from memory with an
    /// `ItemArchived` event (journaled with this batch, after the archive is durable).
    fn archive_item(&mut self, key: u64) {
        let Some(slot) = self.state.items.get_mut(&key) else {
            return;
        };
        let item = ArchivedItem {
            key,
            promotion_id: slot.state.promotion_id.clone(),
            stats: slot.state.stats(),
            orders: slot.state.orders.len() as u64,
        };
        let orders: Vec<Order> = slot.state.orders.iter().cloned().collect();
        match self.ports.journal.archive_item(&item, &orders) {
            Ok(()) => {
                let event = Event::ItemArchived { item_key: key };
                self.state.apply(&event);
                self.events.push(event);
                metrics::counter!("seckill_items_archived_total").increment(1);
            }
            Err(error) => {
                tracing::warn!(%error, item = key, "archiving an ended item failed; it stays in memory and is tried again");
            }
        }
    }

    /// The archived item `key` and its promotion, or `NotFound`.
    fn archived(
        &self,
        key: u64,
    ) -> Result<(
        ArchivedItem,
        &std::sync::Arc<crate::catalog::PromotionEntry>,
    )> {
        let entry = self
            .state
            .archived
            .get(&key)
            .ok_or_else(|| missing_item(self.cluster.is_some()))?;
        let item = archive::item(&*self.ports.journal, key)?.ok_or(Error::NotFound)?;
        Ok((item, entry))
    }

    /// Journals the batch, republishes what it changed, then answers everybody.
    fn commit(&mut self) {
        let outcome = if self.events.is_empty() {
            BatchOutcome::Landed
        } else {
            self.journal_batch()
        };
        debug_assert_eq!(self.scopes.len(), self.replies.len(), "a scope per answer");
        if !self.replies.is_empty() {
            metrics::histogram!("seckill_shard_batch_requests").record(self.replies.len() as f64);
        }
        let mut accepted = 0u64;
        let mut scopes = self.scopes.drain(..);
        for reply in self.replies.drain(..) {
            let failure = outcome.failure_for(scopes.next().as_ref());
            if failure.is_none() {
                if let BatchOutcome::PartlyLost(lost) = &outcome {
                    // Never a yes whose lane did not land: checked against the order id
                    // itself, apart from the scope that chose the failure.
                    assert!(
                        reply
                            .answered_order_key()
                            .is_none_or(|key| lost.partition(key).is_none()),
                        "an answer about an item of a lost partition was about to be sent"
                    );
                }
                accepted += u64::from(reply.is_accepted_purchase());
            }
            reply.send(failure, &mut self.pumps);
        }
        drop(scopes);
        if accepted > 0 {
            metrics::counter!("seckill_orders_accepted_total").increment(accepted);
        }
        self.pumps.flush();
        self.events.clear();
        self.touched.clear();
    }

    /// Appends the batch's events; on failure suspends the shard (the journal goes on
    /// writing the batch) or fences it (it does not). When the journal lost some partitions'
    /// part of the batch, keeps the rest and drops those partitions' items instead.
    fn journal_batch(&mut self) -> BatchOutcome {
        let started = Instant::now();
        let outcome = match &self.cluster {
            // Every event of a partition in the batch was decided under the epoch this shard
            // holds it under (an adopt joins a batch before any of its events, a drop ends
            // the batch first).
            Some(cluster) => self
                .ports
                .journal
                .append_held(&self.events, &|partition| cluster.epoch(partition)),
            None => self.ports.journal.append_partitioned(&self.events),
        };
        match outcome {
            AppendOutcome::Durable(seq) => {
                metrics::histogram!("seckill_journal_append_seconds")
                    .record(started.elapsed().as_secs_f64());
                self.after_durable(seq);
                BatchOutcome::Landed
            }
            AppendOutcome::PartlyLost {
                seq,
                lost,
                partitions,
                error,
            } => {
                metrics::counter!("seckill_journal_errors_total").increment(1);
                let lost = LostPartitions::new(partitions, lost);
                self.keep_landed(seq, &lost, &error);
                BatchOutcome::PartlyLost(lost)
            }
            AppendOutcome::Failed(error) => {
                metrics::counter!("seckill_journal_errors_total").increment(1);
                match self.ports.journal.pending_append() {
                    PendingAppend::Landed(seq) => {
                        self.after_durable(seq);
                        BatchOutcome::Landed
                    }
                    PendingAppend::PartlyLost {
                        seq,
                        lost,
                        partitions,
                    } => {
                        let lost = LostPartitions::new(partitions, lost);
                        self.keep_landed(seq, &lost, &error);
                        BatchOutcome::PartlyLost(lost)
                    }
                    PendingAppend::Waiting if self.events.iter().any(is_catalog_event) => {
                        // The control thread heard "unknown" for this catalog change and
                        // will not learn that it landed; only a restart's replay tells.
                        self.fence(&error);
                        BatchOutcome::Failed(Error::OutcomeUnknown)
                    }
                    PendingAppend::Waiting => {
                        tracing::warn!(shard = self.settings.index, %error, "journal append not answered in time; writes wait for it, reads go on");
                        metrics::gauge!("seckill_shards_suspended").increment(1.0);
                        self.suspended = Some(Suspended {
                            events: std::mem::take(&mut self.events),
                            touched: std::mem::take(&mut self.touched),
                        });
                        // The batch lands later, or never: its callers learn which by
                        // repeating the call.
                        BatchOutcome::Failed(Error::OutcomeUnknown)
                    }
                    PendingAppend::Final | PendingAppend::Failed(_) => {
                        self.fence(&error);
                        BatchOutcome::Failed(Error::OutcomeUnknown)
                    }
                }
            }
        }
    }

    /// What follows a batch whose part for the `lost` partitions did not land: the items
    /// of those partitions leave the shard (their memory is ahead of a lane that is another
    /// node's now, so this shard must never decide for them again), and the events that
    /// landed are published as a durable batch's are. The shard is not fenced: every item
    /// it keeps is exactly as its lane has it.
    fn keep_landed(&mut self, seq: u64, lost: &LostPartitions, error: &crate::error::JournalError) {
        // Catalog events belong to no partition: a journal that could not land them
        // answers a whole failure, never a partial one.
        self.events.retain(|event| {
            event
                .item_key()
                .is_none_or(|key| lost.partition(key).is_none())
        });
        self.touched.retain(|key| lost.partition(*key).is_none());
        let dropped = self.state.drop_items(|key| lost.partition(key).is_some());
        if let Some(cluster) = self.cluster.as_mut() {
            debug_assert_eq!(
                cluster.partitions, lost.partitions,
                "the journal and the leases count partitions alike"
            );
            for partition in &lost.lost {
                cluster.let_go(*partition);
            }
        }
        self.lost
            .get_or_insert_with(|| LostPartitions::new(lost.partitions, Vec::new()))
            .merge(lost);
        tracing::warn!(
            shard = self.settings.index,
            partitions = ?lost.lost,
            items_dropped = dropped,
            %error,
            "the journal lost these partitions' part of a batch; their items left the shard"
        );
        if !self.events.is_empty() {
            self.after_durable(seq);
        }
    }

    /// Later commands were never tried: "not done". The failed batch may be in the log all
    /// the same (a write that reached it before its fsync failed is replayed after a
    /// restart), so its callers learn the outcome by repeating the call.
    fn fence(&mut self, error: &crate::error::JournalError) {
        tracing::error!(shard = self.settings.index, %error, "journal append failed; shard fenced until restart");
        self.fenced = Some(Error::Unavailable(error.to_string()));
    }

    /// What follows a durable batch: counters, gates, the sink.
    fn after_durable(&mut self, seq: u64) {
        metrics::histogram!("seckill_journal_batch_events").record(self.events.len() as f64);
        self.ports
            .counters
            .events_since_snapshot
            .fetch_add(self.events.len() as u64, Ordering::Relaxed);
        self.publish_gates();
        self.ports.sink.publish(seq, &self.events);
    }

    /// Asks the journal about the suspended batch: landed (carry on), lost for good
    /// (fence), or still on its way.
    fn check_suspended(&mut self) {
        let outcome = self.ports.journal.pending_append();
        if outcome == PendingAppend::Waiting {
            return;
        }
        let Some(suspended) = self.suspended.take() else {
            return;
        };
        metrics::gauge!("seckill_shards_suspended").decrement(1.0);
        match outcome {
            PendingAppend::Landed(seq) => {
                tracing::info!(
                    shard = self.settings.index,
                    seq,
                    "the suspended batch landed; writes resume"
                );
                debug_assert!(self.events.is_empty() && self.touched.is_empty());
                self.events = suspended.events;
                self.touched = suspended.touched;
                self.after_durable(seq);
                self.events.clear();
                self.touched.clear();
            }
            PendingAppend::PartlyLost {
                seq,
                lost,
                partitions,
            } => {
                // Its callers heard "outcome unknown" already; what landed is kept.
                debug_assert!(self.events.is_empty() && self.touched.is_empty());
                self.events = suspended.events;
                self.touched = suspended.touched;
                let lost = LostPartitions::new(partitions, lost);
                let error = crate::error::JournalError("the suspended batch landed in part".into());
                self.keep_landed(seq, &lost, &error);
                self.events.clear();
                self.touched.clear();
            }
            PendingAppend::Failed(error) => self.fence(&error),
            PendingAppend::Final => self.fence(&crate::error::JournalError(
                "the journal gave up on a suspended batch".into(),
            )),
            PendingAppend::Waiting => unreachable!("returned above"),
        }
        // The batch is in the log or never will be: the memory of a partition being handed
        // over is no longer ahead of its lane, and may go.
        self.finish_parked_drops();
    }

    fn publish_gates(&mut self) {
        self.touched.sort_unstable();
        self.touched.dedup();
        let now_ms = self.ports.clock.now_ms();
        let cluster = self.cluster.as_ref();
        for key in &self.touched {
            // A partition on its way out after its lease was lost, or that waited out a
            // release, keeps its gates as the drop left them: no node's view of it may come
            // back from a shard that no longer decides for it.
            if cluster.is_some_and(|cluster| !cluster.shows(*key)) {
                continue;
            }
            if let Some(slot) = self.state.items.get_mut(key) {
                slot.publish(now_ms);
                metrics::gauge!("seckill_item_remaining", "promotion" => slot.state.promotion_id.clone(), "sku" => slot.state.item.sku.clone())
                    .set(slot.state.remaining as f64);
            }
        }
    }

    fn handle(&mut self, command: Command, now_ms: i64) {
        match command {
            Command::Fault => panic!("fault injected into shard {}", self.settings.index),
            Command::Shutdown { reply } => self.stopping = Some(reply),
            Command::Adopt {
                partition,
                epoch,
                state,
                reply,
            } => self.adopt(partition, epoch, *state, reply, now_ms),
            Command::DropPartition {
                partition,
                wait,
                reply,
            } => self.drop_partition(partition, wait, reply),
            command => {
                let scope = command.scope();
                if let Some(partition) = self.refused_partition(scope.keys()) {
                    // Its items are not this shard's to decide (lost, dropped, never
                    // adopted, or the lease is not held for sure): nothing is decided here,
                    // the owner may be asked instead.
                    command.refuse(Error::NotOwner { partition }, &mut self.replies);
                } else {
                    match self.fenced.clone() {
                        Some(error) => command.refuse(error, &mut self.replies),
                        None if self.suspended.is_some() && command.may_write() => {
                            command.refuse(suspended_error(), &mut self.replies);
                        }
                        None => self.run_command(command, now_ms),
                    }
                }
                // Every answer the command left waiting is about its items (a pause
                // commits first, which empties both).
                debug_assert!(self.scopes.len() <= self.replies.len());
                self.scopes.resize(self.replies.len(), scope);
            }
        }
    }

    /// The first of `keys` in a partition this shard lost, if any.
    fn lost_partition(&self, keys: &[u64]) -> Option<u32> {
        let lost = self.lost.as_ref()?;
        keys.iter().find_map(|key| lost.partition(*key))
    }

    /// The first of `keys` this shard may not decide for: in a partition it lost, or, in a
    /// cluster engine, in one it does not hold or whose lease is not held for sure.
    fn refused_partition(&self, keys: &[u64]) -> Option<u32> {
        if let Some(partition) = self.lost_partition(keys) {
            return Some(partition);
        }
        let cluster = self.cluster.as_ref()?;
        keys.iter()
            .map(|key| cluster.partition(*key))
            .find(|partition| !cluster.decides(*partition))
    }

    /// Takes over this shard's items of `partition` (see [`Command::Adopt`]). Refused, with
    /// nothing changed, by a fenced or suspended shard (its memory may be ahead of the log,
    /// and a pending batch could still drop the partition it is adopting), and by one that
    /// holds the partition or any of its items already.
    fn adopt(
        &mut self,
        partition: u32,
        epoch: u64,
        part: ShardState,
        reply: oneshot::Sender<Result<()>>,
        now_ms: i64,
    ) {
        if let Err(error) = self.can_adopt(partition, &part) {
            let _ = reply.send(Err(error));
            return;
        }
        let keys = self.state.absorb(part, epoch);
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.hold(partition, epoch);
        }
        let emptied = self.lost.as_mut().is_some_and(|lost| {
            lost.forget(partition);
            lost.lost.is_empty()
        });
        if emptied {
            self.lost = None;
        }
        // The gates show the log's state of the items: publish them before anything more is
        // decided (a sold-out storm is refused at the gate from now on).
        for key in &keys {
            if let Some(slot) = self.state.items.get_mut(key) {
                slot.publish(now_ms);
            }
        }
        // Payment deadlines that passed while the partition had no owner expire now, in
        // this very batch, journaled before the adopt is answered: those of every partition
        // this shard decides for now, under its lease (checked again here: the adopt may
        // have waited in the mailbox), and no other's.
        self.expire_due(now_ms);
        self.replies.push(Reply::Unit(reply, Ok(())));
        self.scopes.push(ReplyScope::writes(keys));
    }

    fn can_adopt(&self, partition: u32, part: &ShardState) -> Result<()> {
        let Some(cluster) = &self.cluster else {
            return Err(crate::partition::not_a_cluster());
        };
        if let Some(error) = &self.fenced {
            return Err(error.clone());
        }
        if self.suspended.is_some() {
            return Err(suspended_error());
        }
        if cluster.holds(partition) || self.state.holds_any_of(part) {
            return Err(Error::Unavailable(format!(
                "shard {} holds partition {partition} already",
                self.settings.index
            )));
        }
        Ok(())
    }

    /// Lets `partition` go (see [`Command::DropPartition`]). Everything decided so far is
    /// journaled and answered first, so no answer for the partition is left behind; with
    /// `wait`, a batch the journal is still writing is waited for (the drop is parked and
    /// finished by `check_suspended`), so no memory ahead of the log is let go.
    fn drop_partition(
        &mut self,
        partition: u32,
        wait: bool,
        reply: oneshot::Sender<Result<usize>>,
    ) {
        self.commit();
        // The journal write may have taken long: later commands read the time anew.
        self.paused = true;
        if wait && self.suspended.is_some() {
            self.parked_drops.push((partition, reply));
            return;
        }
        let dropped = self.let_partition_go(partition);
        let _ = reply.send(Ok(dropped));
        // A release that stopped waiting sends this drop after its parked one: the parked
        // one must not finish later, when the partition may be adopted here again.
        self.parked_drops.retain(|(parked, _)| *parked != partition);
    }

    /// Drops every item of `partition` and stops holding it; returns how many left.
    fn let_partition_go(&mut self, partition: u32) -> usize {
        let Some(cluster) = self.cluster.as_mut() else {
            return 0;
        };
        cluster.let_go(partition);
        let partitions = cluster.partitions;
        let dropped = self
            .state
            .drop_items(|key| partition_of(key, partitions) == partition);
        tracing::info!(
            shard = self.settings.index,
            partition,
            items_dropped = dropped,
            "partition let go"
        );
        dropped
    }

    fn finish_parked_drops(&mut self) {
        for (partition, reply) in std::mem::take(&mut self.parked_drops) {
            let dropped = self.let_partition_go(partition);
            let _ = reply.send(Ok(dropped));
        }
    }

    fn run_command(&mut self, command: Command, now_ms: i64) {
        match command {
            Command::JournalCatalog { event, reply } => {
                self.events.push(event);
                self.replies.push(Reply::Unit(reply, Ok(())));
            }
            Command::Install {
                entry,
                mut keys,
                reply,
            } => {
                // A lost partition's items are another node's: none is made here. Nor, in a
                // cluster, any of a partition not held (its adopt installs them); a lease
                // that lapsed for a moment keeps the partition's items all the same.
                keys.retain(|key| self.lost_partition(std::slice::from_ref(key)).is_none());
                if let Some(cluster) = &self.cluster {
                    keys.retain(|key| cluster.holds(cluster.partition(*key)));
                }
                let installed =
                    self.state
                        .install(&entry, &keys, self.settings.token_ttl_ms, now_ms);
                if let Some(cluster) = &self.cluster {
                    for key in installed {
                        // Decided under the ownership's epoch, never the engine start's.
                        let epoch = cluster.epoch(cluster.partition(key));
                        assert!(epoch.is_some(), "an item installed in a partition not held");
                        if let Some(slot) = self.state.items.get_mut(&key) {
                            slot.epoch = epoch;
                        }
                    }
                }
                self.replies.push(Reply::Unit(reply, Ok(())));
            }
            Command::Token {
                key,
                user_id,
                reply,
            } => {
                let result = self.token(key, &user_id, now_ms);
                self.replies.push(Reply::Token(reply, result));
            }
            Command::Purchase {
                key,
                user_id,
                request,
                eligible,
                reply,
            } => {
                let result = self.purchase(key, &user_id, &request, eligible, now_ms);
                self.replies.push(Reply::Purchase(reply, result));
            }
            Command::ReadOrder {
                order,
                user_id,
                reply,
            } => {
                let result = self.read_order(&order, user_id.as_deref());
                self.replies.push(Reply::Order(reply, result));
            }
            Command::Cancel {
                order,
                user_id,
                reply,
            } => {
                let result = self.cancel(&order, user_id.as_deref(), now_ms);
                self.replies.push(Reply::Order(reply, result));
            }
            Command::Pay {
                order,
                payment_ref,
                amount_cents,
                reply,
            } => {
                let payment = Payment {
                    payment_ref: &payment_ref,
                    amount_cents,
                };
                let result = self.pay(&order, &payment, now_ms);
                self.replies.push(Reply::Order(reply, result));
            }
            Command::Stats { keys, reply } => {
                let result = self.stats(&keys, now_ms);
                self.replies.push(Reply::Stats(reply, result));
            }
            Command::Pause { image, resume } => self.pause(image, &resume, now_ms),
            Command::Tick { reply } => {
                self.housekeep(now_ms);
                self.expire_due(now_ms);
                self.replies.push(Reply::Unit(reply, Ok(())));
            }
            Command::Shutdown { .. }
            | Command::Fault
            | Command::Adopt { .. }
            | Command::DropPartition { .. } => {
                unreachable!("handled before run_command")
            }
        }
    }

    /// Hands the snapshot taker a copy of every item, then waits for it to finish.
    fn pause(
        &mut self,
        image: tokio::sync::oneshot::Sender<Result<Vec<ItemState>>>,
        resume: &Receiver<()>,
        now_ms: i64,
    ) {
        // Everything decided so far must be journaled before the copy is taken, or the
        // snapshot would hold events the log does not. A failed write fences the shard, and
        // a fenced shard's memory is ahead of its log: it has no image to give.
        self.commit();
        if let Some(error) = &self.fenced {
            let _ = image.send(Err(error.clone()));
            return;
        }
        if self.suspended.is_some() {
            // The commit above may have left a batch pending: memory is ahead of the log.
            let _ = image.send(Err(suspended_error()));
            return;
        }
        if let Some(lost) = &self.lost {
            // The engine's image is of every item, and this shard no longer holds those of
            // the lost partitions: an image without them would lose their journaled orders
            // at the next restart.
            let _ = image.send(Err(Error::Unavailable(format!(
                "shard {} lost partitions {:?}; no whole image to give",
                self.settings.index, lost.lost
            ))));
            return;
        }
        let copy = self
            .state
            .items
            .values_mut()
            .map(|slot| {
                slot.state.forget_expired_tokens(now_ms);
                slot.state.clone()
            })
            .collect();
        self.paused = true;
        if image.send(Ok(copy)).is_ok() {
            // Returns when the taker closes the channel (or, never, sends on it).
            let _ = resume.recv();
        }
    }

    fn context(&self, slot: &Slot, user_id: &str, now_ms: i64) -> DecideContext {
        debug_assert!(
            self.cluster.is_none() || slot.epoch.is_some(),
            "a cluster item decides under its ownership's epoch"
        );
        DecideContext {
            now_ms,
            status: slot.entry.status(now_ms),
            banned: slot.entry.is_banned(user_id),
            // The ownership's epoch, or this engine start's.
            epoch: slot.epoch.unwrap_or(self.settings.epoch),
            // Tokens are checked at the gate; a purchase sets it from its command.
            eligible: true,
        }
    }

    fn token(&mut self, key: u64, user_id: &str, now_ms: i64) -> Result<TokenGrant> {
        if !self.state.items.contains_key(&key) {
            let (_, entry) = self.archived(key)?;
            return Err(crate::rules::refuse_closed(
                entry.is_banned(user_id),
                entry.status(now_ms),
            )
            .err()
            .unwrap_or(Error::Ended));
        }
        let slot = self
            .state
            .items
            .get_mut(&key)
            .ok_or_else(|| missing_item(self.cluster.is_some()))?;
        // Exact count of outstanding tokens: expired ones no longer hold a place.
        slot.state.forget_expired_tokens(now_ms);
        let slot = self
            .state
            .items
            .get(&key)
            .ok_or_else(|| missing_item(self.cluster.is_some()))?;
        let ctx = self.context(slot, user_id, now_ms);
        let decision = slot.state.decide_token(&ctx, user_id, new_token)?;
        Ok(self.settle(key, decision))
    }

    fn purchase(
        &mut self,
        key: u64,
        user_id: &str,
        request: &PurchaseRequest,
        eligible: bool,
        now_ms: i64,
    ) -> Result<Purchased> {
        let Some(slot) = self.state.items.get(&key) else {
            let (_, entry) = self.archived(key)?;
            let banned = entry.is_banned(user_id);
            let journal = &*self.ports.journal;
            let order = archive::purchase(journal, key, user_id, &request.request_id, banned)?;
            return Ok(Purchased {
                order,
                created: false,
            });
        };
        let ctx = DecideContext {
            eligible,
            ..self.context(slot, user_id, now_ms)
        };
        let decision = slot.state.decide_purchase(
            &ctx,
            user_id,
            &request.request_id,
            request.quantity,
            request.token.as_deref(),
        )?;
        let created = matches!(decision, Decision::New { .. });
        let order = self.settle(key, decision);
        if created {
            // A gate that knows every buyer must know this one before the journal write: a
            // retry of this request id that came through it would otherwise be refused.
            if let Some(slot) = self.state.items.get(&key) {
                slot.gate.note_buyer(user_id);
            }
        }
        Ok(Purchased { order, created })
    }

    fn read_order(&self, order: &OrderAddress, user_id: Option<&str>) -> Result<Order> {
        if self
            .suspended
            .as_ref()
            .is_some_and(|s| s.changes_order(&order.order_id))
        {
            // Its last change is not in the log yet and may never be: no answer beats a
            // state the log may not confirm.
            return Err(suspended_error());
        }
        match self.state.items.get(&order.key) {
            Some(slot) => slot
                .state
                .owned_order(&order.order_id, order.seq, user_id)
                .cloned(),
            None => self.archived_order(order, user_id),
        }
    }

    fn archived_order(&self, order: &OrderAddress, user_id: Option<&str>) -> Result<Order> {
        self.archived(order.key)?;
        let journal = &*self.ports.journal;
        archive::order(journal, order.key, &order.order_id, order.seq, user_id)
    }

    fn cancel(
        &mut self,
        order: &OrderAddress,
        user_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Order> {
        if !self.state.items.contains_key(&order.key) {
            let archived = self.archived_order(order, user_id)?;
            return archive::cancel(&archived, order.key, order.seq, now_ms);
        }
        self.decide_and_apply(order.key, |item| {
            item.decide_cancel(now_ms, &order.order_id, order.seq, user_id)
        })
    }

    fn pay(&mut self, order: &OrderAddress, payment: &Payment<'_>, now_ms: i64) -> Result<Order> {
        if !self.state.items.contains_key(&order.key) {
            let archived = self.archived_order(order, None)?;
            return archive::pay(&archived, order.key, order.seq, payment, now_ms);
        }
        self.decide_and_apply(order.key, |item| {
            item.decide_pay(now_ms, &order.order_id, order.seq, payment)
        })
    }

    fn stats(&mut self, keys: &[u64], now_ms: i64) -> Result<Vec<ItemStats>> {
        keys.iter()
            .map(|key| match self.state.items.get_mut(key) {
                Some(slot) => {
                    slot.state.forget_expired_tokens(now_ms);
                    Ok(slot.state.stats())
                }
                None => self.archived(*key).map(|(item, _)| item.stats),
            })
            .collect()
    }

    fn decide_and_apply(
        &mut self,
        key: u64,
        decide: impl FnOnce(&ItemState) -> Result<Decision<Order>>,
    ) -> Result<Order> {
        let slot = self
            .state
            .items
            .get(&key)
            .ok_or_else(|| missing_item(self.cluster.is_some()))?;
        let decision = decide(&slot.state)?;
        Ok(self.settle(key, decision))
    }

    /// The answer of a decision; a new fact is applied and queued for the batch's journal
    /// write first.
    fn settle<T>(&mut self, key: u64, decision: Decision<T>) -> T {
        match decision {
            Decision::Existing(answer) => answer,
            Decision::New { event, answer } => {
                self.state.apply(&event);
                self.events.push(event);
                self.touched.push(key);
                answer
            }
        }
    }
}

/// A fresh purchase token: 128 random bits, so tokens cannot be guessed from each other.
fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A batch the journal is still writing (see `Shard::suspended`).
#[derive(Debug)]
struct Suspended {
    events: Vec<Event>,
    touched: Vec<u64>,
}

impl Suspended {
    fn changes_order(&self, order_id: &str) -> bool {
        self.events
            .iter()
            .any(|event| event.order().is_some_and(|o| o.order_id == order_id))
    }
}

/// What became of a batch, as its answers see it.
#[derive(Debug)]
enum BatchOutcome {
    /// Every event is durable (or there was none): every answer stands.
    Landed,
    /// Nothing is known to be durable: every answer becomes this error.
    Failed(Error),
    /// The parts of these partitions did not land; the rest did.
    PartlyLost(LostPartitions),
}

impl BatchOutcome {
    /// The error that replaces an answer depending on `scope`, if any. An answer without a
    /// scope depends on everything (it cannot happen; the safe side if it did).
    fn failure_for(&self, scope: Option<&ReplyScope>) -> Option<Error> {
        match self {
            BatchOutcome::Landed => None,
            BatchOutcome::Failed(error) => Some(error.clone()),
            BatchOutcome::PartlyLost(lost) => {
                let Some(scope) = scope else {
                    return Some(Error::OutcomeUnknown);
                };
                let partition = scope.keys().iter().find_map(|key| lost.partition(*key))?;
                Some(if scope.write {
                    // Its event may be in the lost lane or not: repeating the call tells.
                    Error::OutcomeUnknown
                } else {
                    // A read changed nothing; the partition's owner answers it.
                    Error::NotOwner { partition }
                })
            }
        }
    }
}

/// Partitions among `partitions` whose lanes the journal lost (see
/// [`AppendOutcome::PartlyLost`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct LostPartitions {
    partitions: u32,
    /// Ascending, each once.
    lost: Vec<u32>,
}

impl LostPartitions {
    fn new(partitions: u32, mut lost: Vec<u32>) -> Self {
        // Not trusted to come sorted: a miss here would answer yes for a lost item.
        lost.sort_unstable();
        lost.dedup();
        LostPartitions { partitions, lost }
    }

    /// The partition of the item `key` when it is a lost one.
    fn partition(&self, key: u64) -> Option<u32> {
        let partition = partition_of(key, self.partitions);
        self.lost
            .binary_search(&partition)
            .is_ok()
            .then_some(partition)
    }

    /// Forgets that `partition` was lost (it was adopted again, from its lane).
    fn forget(&mut self, partition: u32) {
        self.lost.retain(|lost| *lost != partition);
    }

    /// Adds the partitions `more` lost (counted among the same number of partitions).
    fn merge(&mut self, more: &LostPartitions) {
        debug_assert_eq!(
            self.partitions, more.partitions,
            "one partition count per deployment"
        );
        self.lost.extend_from_slice(&more.lost);
        self.lost.sort_unstable();
        self.lost.dedup();
    }
}

fn is_catalog_event(event: &Event) -> bool {
    event.item_key().is_none()
}

fn suspended_error() -> Error {
    Error::Unavailable("the journal is not answering; writes resume once it is back".into())
}
/// The answer for an item the catalog knows and this shard does not hold. Alone, it is an
/// item this shard never had (`NotFound`). In a cluster, a call only reaches the shard while
/// the item's partition is held here, so the item's install is on its way (a promotion
/// another node created, whose install waited for room in a full mailbox): nothing is
/// done, and a retry finds it.
fn missing_item(in_cluster: bool) -> Error {
    if in_cluster {
        Error::Unavailable("the item is not installed on its shard yet; retry".into())
    } else {
        Error::NotFound
    }
}
