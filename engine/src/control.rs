//! The control thread: every catalog change (create, start, stop) and every snapshot runs
//! here, one at a time, where no caller can cancel it.
//!
//! A catalog change is several steps (journal the event, install the items on their shards,
//! publish the promotion). Run inside the caller's future, a dropped future (a request
//! timeout, a client that hung up, shutdown aborting the HTTP tasks) could stop it between
//! two steps: journaled but never installed, and a retry journaling it twice. Here the
//! caller only hands the operation over and waits for the answer; whether it waits or not,
//! the operation runs to its end. Being one thread also serialises the changes, which each
//! must see the catalog whole, and keeps snapshots from overlapping them.
//!
//! A cluster engine's adopts, releases and lost partitions run here too (see
//! `partition.rs`), so that a create never installs items of a partition half-way through
//! its adopt or its drop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::oneshot;

use crate::catalog::{item_keys, PromotionEntry, WindowChange};
use crate::catalog_sync;
use crate::command::Command;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::ids::promotion_key;
use crate::image::EngineImage;
use crate::model::PromotionRecord;
use crate::partition::{self, PartitionPart, Released};
use crate::snapshot;

/// How often the control thread looks whether a snapshot is due.
const SNAPSHOT_CHECK_MS: u64 = 500;
/// Operations waiting for the control thread, at most; more answer "overloaded".
const CONTROL_QUEUE_MAX: usize = 1024;

/// What a create found.
#[derive(Debug)]
pub(crate) enum CreateOutcome {
    Created(Arc<PromotionEntry>),
    /// A promotion with this id and the same body exists: the call was a retry.
    Existing,
}

/// One operation for the control thread, with where its answer goes.
#[derive(Debug)]
pub(crate) enum ControlOp {
    Create {
        record: PromotionRecord,
        reply: oneshot::Sender<Result<CreateOutcome>>,
    },
    Window {
        promotion_id: String,
        change: WindowChange,
        reply: oneshot::Sender<Result<()>>,
    },
    Snapshot {
        reply: oneshot::Sender<Result<EngineImage>>,
    },
    /// A cluster engine applies what its catalog log holds past its catalog (see
    /// `catalog_sync::catch_up`); the answer is the sequence the catalog holds then.
    CatchUpCatalog { reply: oneshot::Sender<Result<u64>> },
    /// A cluster engine applies entries of its catalog log that a reader off this thread
    /// read (see `catalog_sync::apply`).
    ApplyCatalog {
        entries: Vec<(u64, Vec<Event>)>,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Every shard's expiry pass, now (tests with a manual clock).
    Tick { reply: oneshot::Sender<Result<()>> },
    /// A cluster engine takes a built partition over (see `partition::adopt`).
    AdoptPartition {
        part: Box<PartitionPart>,
        reply: oneshot::Sender<Result<usize>>,
    },
    /// A cluster engine hands a partition over cleanly (see `partition::release`).
    ReleasePartition {
        partition: u32,
        reply: oneshot::Sender<Result<Released>>,
    },
    /// A cluster engine lost a partition's lease: drop it without waiting. Nobody waits for
    /// the answer, and it always gets into the queue (see [`Control::submit`]).
    LosePartition { partition: u32, epoch: u64 },
    /// Finish the operation under way, stop every live shard after its current batch, and
    /// stop; no snapshot or catalog change runs after this.
    Shutdown { reply: oneshot::Sender<()> },
}

/// The sending side of the control thread.
#[derive(Debug)]
pub(crate) struct Control {
    ops: Sender<ControlOp>,
    /// Operations handed over and not yet taken: at most [`CONTROL_QUEUE_MAX`] but for a
    /// shutdown, which always gets in (the queue itself is unbounded).
    queued: Arc<AtomicUsize>,
}

impl Control {
    /// Starts the control thread over `core`. It holds the core only while it works, so an
    /// engine dropped without `shutdown` still stops its threads.
    pub fn spawn(core: Weak<Core>) -> Result<(Control, JoinHandle<()>)> {
        let (ops, inbox) = crossbeam_channel::unbounded();
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = Arc::clone(&queued);
        let thread = std::thread::Builder::new()
            .name("seckill-control".into())
            .spawn(move || run(&core, &inbox, &taken))
            .map_err(|e| Error::Unavailable(format!("cannot start the control thread: {e}")))?;
        Ok((Control { ops, queued }, thread))
    }

    /// Hands `op` over; from here on it runs whatever the caller does. A shutdown and a
    /// lost partition always get in: neither may be refused as "overloaded".
    pub fn submit(&self, op: ControlOp) -> Result<()> {
        let always = matches!(
            op,
            ControlOp::Shutdown { .. } | ControlOp::LosePartition { .. }
        );
        if self.queued.fetch_add(1, Ordering::AcqRel) >= CONTROL_QUEUE_MAX && !always {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Overloaded);
        }
        self.ops.send(op).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            Error::Unavailable("the engine is shutting down".into())
        })
    }
}

/// Waits for an operation's answer. A dropped reply means the control thread stopped while
/// running it, so the outcome is unknown.
pub(crate) async fn answer<T>(reply: oneshot::Receiver<Result<T>>) -> Result<T> {
    reply.await.unwrap_or(Err(Error::OutcomeUnknown))
}

fn run(core: &Weak<Core>, inbox: &Receiver<ControlOp>, queued: &AtomicUsize) {
    let mut warned_down = false;
    loop {
        let next = inbox.recv_timeout(Duration::from_millis(SNAPSHOT_CHECK_MS));
        if next.is_ok() {
            queued.fetch_sub(1, Ordering::AcqRel);
        }
        let Some(core) = core.upgrade() else { return };
        match next {
            Ok(ControlOp::Shutdown { reply }) => {
                stop_shards(&core);
                let _ = reply.send(());
                return;
            }
            Ok(op) => handle(&core, op),
            Err(RecvTimeoutError::Timeout) => snapshot_if_due(&core, &mut warned_down),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn handle(core: &Core, op: ControlOp) {
    match op {
        ControlOp::Create { record, reply } => drop(reply.send(create(core, record))),
        ControlOp::Window {
            promotion_id,
            change,
            reply,
        } => drop(reply.send(change_window(core, &promotion_id, change))),
        ControlOp::Snapshot { reply } => drop(reply.send(snapshot::take_and_save(core))),
        ControlOp::CatchUpCatalog { reply } => drop(reply.send(catch_up_catalog(core))),
        ControlOp::ApplyCatalog { entries, reply } => {
            let applied = catalog_sync::of(core)
                .ok_or_else(no_catalog_log)
                .and_then(|sync| catalog_sync::apply(core, sync, entries));
            drop(reply.send(applied))
        }
        ControlOp::Tick { reply } => {
            drop(reply.send(on_every_shard(core, |reply| Command::Tick { reply })))
        }
        ControlOp::AdoptPartition { part, reply } => {
            drop(reply.send(partition::adopt(core, *part)))
        }
        ControlOp::ReleasePartition {
            partition: which,
            reply,
        } => drop(reply.send(partition::release(core, which))),
        ControlOp::LosePartition {
            partition: which,
            epoch,
        } => partition::lose(core, which, epoch),
        ControlOp::Shutdown { reply } => drop(reply.send(())),
    }
}

fn snapshot_if_due(core: &Core, warned_down: &mut bool) {
    if !snapshot::is_due(core) {
        return;
    }
    let down = core.shards.down();
    if !down.is_empty() {
        // The log is kept whole until a restart brings the shard back.
        if !*warned_down {
            tracing::warn!(?down, "snapshots skipped while a shard is down");
            *warned_down = true;
        }
        metrics::counter!("seckill_snapshots_skipped_total").increment(1);
        return;
    }
    if let Err(error) = snapshot::take_and_save(core) {
        metrics::counter!("seckill_snapshot_failures_total").increment(1);
        tracing::warn!(%error, "snapshot aborted; the log is kept whole");
    }
}

/// Creates a promotion: refuses conflicts, journals it, installs its items, publishes it.
/// The same id with the same body is a retry and changes nothing. A cluster engine with a
/// catalog log creates through the log instead (`catalog_sync.rs`).
fn create(core: &Core, record: PromotionRecord) -> Result<CreateOutcome> {
    if let Some(sync) = catalog_sync::of(core) {
        return catalog_sync::create(core, sync, &record);
    }
    if let Some(done) = check_create(core, &record)? {
        return Ok(done);
    }
    let by_shard = shards_for(core, &record)?;
    let event = Event::promotion_created(record.clone());
    if let Err(error) = journal_catalog(core, &record.id, event) {
        if error == Error::OutcomeUnknown {
            // Until a restart reads the log, nobody may reuse the id or the SKUs.
            core.catalog.mark_uncertain(record);
        }
        return Err(error);
    }
    // Journaled: from here on the promotion exists, whatever fails below.
    install_created(core, &record, by_shard)
}

/// What the catalog says of a create before it is journaled: `Some` for a retry of one
/// that exists (its items are sent to their shards again), an error when it may not be
/// made, `None` when it may.
pub(crate) fn check_create(core: &Core, record: &PromotionRecord) -> Result<Option<CreateOutcome>> {
    if let Ok(existing) = core.catalog.entry(&record.id) {
        return if existing.record.same_body(record) {
            reinstall(core, &existing)?;
            Ok(Some(CreateOutcome::Existing))
        } else {
            Err(Error::AlreadyExists)
        };
    }
    if core.catalog.is_uncertain(&record.id) {
        // An earlier create of this id may be in the log or not; a restart tells.
        return Err(Error::OutcomeUnknown);
    }
    match core.catalog.conflict(record) {
        Some(conflict) => Err(conflict),
        None => Ok(None),
    }
}

/// The shards that take the items of a new promotion, with their items. In a cluster,
/// only the items of partitions owned here: the adopt of another partition installs that
/// partition's items itself. Refused while one of them is down.
pub(crate) fn shards_for(
    core: &Core,
    record: &PromotionRecord,
) -> Result<BTreeMap<usize, Vec<u64>>> {
    let keys = partition::installed_here(core, item_keys(record));
    let by_shard = core.shards.by_shard(keys.into_iter());
    match by_shard.keys().find(|&&shard| core.shards.is_down(shard)) {
        Some(&down) => Err(Error::ShardDown(down)),
        None => Ok(by_shard),
    }
}

/// A journaled create: its items go to their shards, then it joins the catalog.
fn install_created(
    core: &Core,
    record: &PromotionRecord,
    by_shard: BTreeMap<usize, Vec<u64>>,
) -> Result<CreateOutcome> {
    let entry = PromotionEntry::new(record.clone(), &item_keys(record));
    let installed = install(core, &entry, by_shard);
    let entry = core.catalog.insert_entry(entry)?;
    installed.map(|()| CreateOutcome::Created(entry))
}

/// Sends each shard its items of `entry` and waits until every one has them.
fn install(
    core: &Core,
    entry: &Arc<PromotionEntry>,
    by_shard: BTreeMap<usize, Vec<u64>>,
) -> Result<()> {
    let mut waits = Vec::with_capacity(by_shard.len());
    for (shard, keys) in by_shard {
        let (reply, installed) = oneshot::channel();
        let command = Command::Install {
            entry: Arc::clone(entry),
            keys,
            reply,
        };
        // Journaled already: the items must arrive, however long a busy mailbox takes.
        core.shards.send_until_placed(shard, command)?;
        waits.push((shard, installed));
    }
    for (shard, installed) in waits {
        installed
            .blocking_recv()
            .unwrap_or(Err(Error::ShardDown(shard)))?;
    }
    Ok(())
}

/// A retried create sends the items to their shards again (an install is idempotent), so
/// a create whose install was cut short is completed by its retry.
fn reinstall(core: &Core, entry: &Arc<PromotionEntry>) -> Result<()> {
    if catalog_sync::of(core).is_some() {
        // A cluster engine waits for no shard (see `catalog_sync::place_installs`).
        catalog_sync::place_installs(core, entry);
        return Ok(());
    }
    let keys = entry.gates.iter().map(|gate| gate.key).collect();
    let keys = partition::installed_here(core, keys);
    install(core, entry, core.shards.by_shard(keys.into_iter()))
}

/// Starts or stops a promotion from now; a change that changes nothing is not journaled.
fn change_window(core: &Core, promotion_id: &str, change: WindowChange) -> Result<()> {
    if let Some(sync) = catalog_sync::of(core) {
        return catalog_sync::change_window(core, sync, promotion_id, change);
    }
    let entry = core.catalog.entry(promotion_id)?;
    let now_ms = core.clock.now_ms();
    if change.needed(entry.status(now_ms))? {
        journal_catalog(core, promotion_id, change.event(promotion_id, now_ms))?;
        entry.apply_window(change, now_ms);
    }
    Ok(())
}

fn catch_up_catalog(core: &Core) -> Result<u64> {
    let sync = catalog_sync::of(core).ok_or_else(no_catalog_log)?;
    catalog_sync::catch_up(core, sync)
}

fn no_catalog_log() -> Error {
    Error::invalid("catalog", "this engine has no catalog log")
}

/// Sends the command `make` builds to every shard and waits for every answer; the first
/// refusal is the answer.
fn on_every_shard(
    core: &Core,
    make: impl Fn(oneshot::Sender<Result<()>>) -> Command,
) -> Result<()> {
    let mut waits = Vec::with_capacity(core.shards.count());
    for shard in 0..core.shards.count() {
        let (reply, done) = oneshot::channel();
        core.shards.send_blocking(shard, make(reply))?;
        waits.push((shard, done));
    }
    for (shard, done) in waits {
        done.blocking_recv()
            .unwrap_or(Err(Error::ShardDown(shard)))?;
    }
    Ok(())
}

/// Stops every shard after its current batch; dead ones are skipped (nobody waits on them).
fn stop_shards(core: &Core) {
    for shard in 0..core.shards.count() {
        let (reply, stopped) = oneshot::channel();
        if core
            .shards
            .send_until_placed(shard, Command::Shutdown { reply })
            .is_ok()
        {
            let _ = stopped.blocking_recv();
        }
    }
}

/// Journals a promotion-level event through the promotion's home shard, or the next live
/// one. A reply that never comes (the shard died with it) leaves the outcome unknown.
fn journal_catalog(core: &Core, promotion_id: &str, event: Event) -> Result<()> {
    // Any shard can journal a catalog event: this thread serialises them. The home shard
    // spreads them; a dead one is skipped, so its promotions can still start and stop.
    let home = core.shards.of(promotion_key(promotion_id));
    let home = core.shards.alive_from(home).ok_or(Error::ShardDown(home))?;
    let (reply, journaled) = oneshot::channel();
    core.shards
        .send_blocking(home, Command::JournalCatalog { event, reply })?;
    journaled
        .blocking_recv()
        .unwrap_or(Err(Error::OutcomeUnknown))
}
