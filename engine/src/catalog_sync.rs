//! A cluster engine's catalog changes through the cluster's one catalog log (see
//! `catalog_log.rs`): validated against the local catalog, appended on the condition that
//! the log still ends where that catalog does, and applied in the log's order on every node.
//! Runs on the control thread, like every catalog change. The cluster plan's Q2 and step 4.
//!
//! Why two nodes can never both create promotions that share a SKU in overlapping windows:
//! each validates against its catalog as of sequence N and appends expecting N. The log
//! keeps one of them at N + 1; the other hears `Behind`, applies N + 1, validates again and
//! finds the conflict. The local catalog is therefore always the log's whole prefix when a
//! change is validated, and no "uncertain" mark is needed: an append whose answer was lost
//! could only ever land at the very position it expected, so once the log holds anything
//! there the outcome is known, and until then any later append (a retry included) expects
//! that same position, and at most one of them lands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{item_keys, PromotionEntry, WindowChange};
use crate::catalog_log::{CatalogAppendError, CatalogLog};
use crate::command::Command;
use crate::control::{self, CreateOutcome};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::model::PromotionRecord;
use crate::partition;
use crate::recovery::replay_catalog;
use tokio::sync::oneshot;

/// Conditional appends a change tries before it answers "busy": each failed one means
/// another node's change landed first, so past this many the log is being written faster
/// than this node can keep up, and "not done" is the exact answer.
const APPEND_ATTEMPTS_MAX: usize = 20;
/// How long one change keeps trying, at most: the control thread, and every catalog change
/// and partition move behind it, waits for it meanwhile.
const CHANGE_PATIENCE: Duration = Duration::from_secs(10);
/// The wait after a refusal whose catch-up found nothing new, times the attempt's number.
const BEHIND_BACKOFF: Duration = Duration::from_millis(5);

/// The catalog log a cluster engine appends to, and how far this engine has applied it.
#[derive(Debug)]
pub(crate) struct CatalogSync {
    log: Arc<dyn CatalogLog>,
    /// The log's last sequence this engine's catalog holds. Written by the control thread
    /// only; read by anyone ([`crate::Engine::catalog_seq`]).
    applied_seq: AtomicU64,
}

/// What the entry at the position an append expected to take turned out to be.
enum Landed {
    /// Our change: it landed, and is applied now.
    Ours,
    /// Another change: ours did not land, and never can.
    Other,
    /// The log holds nothing there yet: ours may still land, or not.
    NotYet,
}

impl CatalogSync {
    pub fn new(log: Arc<dyn CatalogLog>) -> Self {
        CatalogSync {
            log,
            applied_seq: AtomicU64::new(0),
        }
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied_seq.load(Ordering::Acquire)
    }

    /// Where the engine's start left the catalog (its recovery's last sequence).
    pub fn start_at(&self, seq: u64) {
        self.applied_seq.store(seq, Ordering::Release);
    }

    fn applied(&self, seq: u64) {
        debug_assert_eq!(
            seq,
            self.applied_seq() + 1,
            "the catalog is applied in order"
        );
        self.applied_seq.store(seq, Ordering::Release);
    }
}

/// The catalog log of a cluster engine that has one.
pub(crate) fn of(core: &Core) -> Option<&CatalogSync> {
    core.cluster.as_ref()?.catalog.as_ref()
}

/// Creates a promotion through the log (see the module docs). The same id with the same
/// body, found in the log, is a retry.
pub(crate) fn create(
    core: &Core,
    sync: &CatalogSync,
    record: &PromotionRecord,
) -> Result<CreateOutcome> {
    let event = Event::promotion_created(record.clone());
    for attempt in attempts() {
        if let Some(done) = control::check_create(core, record)? {
            return Ok(done);
        }
        // A dead shard refuses the create before anything is appended, as alone.
        control::shards_for(core, record)?;
        match append_once(core, sync, &event, attempt)? {
            Appended::At(seq) => {
                // In the catalog before the position says so: a build that sees the
                // position finds the promotion.
                let created = install_and_insert(core, record);
                sync.applied(seq);
                return created.map(CreateOutcome::Created);
            }
            Appended::Applied => {
                return Ok(CreateOutcome::Created(core.catalog.entry(&record.id)?))
            }
            Appended::Again => {}
        }
    }
    Err(busy())
}

/// Starts or stops a promotion from now through the log; a change that changes nothing (on
/// the catalog as the log has it) is not appended.
pub(crate) fn change_window(
    core: &Core,
    sync: &CatalogSync,
    promotion_id: &str,
    change: WindowChange,
) -> Result<()> {
    for attempt in attempts() {
        let entry = core.catalog.entry(promotion_id)?;
        let now_ms = core.clock.now_ms();
        if !change.needed(entry.status(now_ms))? {
            return Ok(());
        }
        let event = change.event(promotion_id, now_ms);
        match append_once(core, sync, &event, attempt)? {
            Appended::At(seq) => {
                entry.apply_window(change, now_ms);
                sync.applied(seq);
                return Ok(());
            }
            Appended::Applied => return Ok(()),
            Appended::Again => {}
        }
    }
    Err(busy())
}

/// The attempts a change has: [`APPEND_ATTEMPTS_MAX`] of them, numbered from 1, within
/// [`CHANGE_PATIENCE`].
fn attempts() -> impl Iterator<Item = usize> {
    let deadline = Instant::now() + CHANGE_PATIENCE;
    (1..=APPEND_ATTEMPTS_MAX).take_while(move |_| Instant::now() < deadline)
}

/// What one conditional append of a change came to.
enum Appended {
    /// It landed at this sequence: the caller applies it and marks it applied.
    At(u64),
    /// Its answer was lost, and the log holds it: applied by the catch-up already.
    Applied,
    /// Another change came first (caught up now): validate again and append again.
    Again,
}

/// Appends `event` expecting the log to end where the catalog does. An error when the
/// change did not land (`Unavailable`) or may land still (`OutcomeUnknown`).
fn append_once(core: &Core, sync: &CatalogSync, event: &Event, attempt: usize) -> Result<Appended> {
    let expected_seq = sync.applied_seq();
    match sync
        .log
        .append_if(expected_seq, std::slice::from_ref(event))
    {
        Ok(seq) => check_position(expected_seq, seq).map(|()| Appended::At(seq)),
        Err(CatalogAppendError::Behind { .. }) => {
            catch_up_after_refusal(core, sync, attempt).map(|()| Appended::Again)
        }
        Err(CatalogAppendError::Unknown(error)) => {
            // A log that cannot be read now leaves the change as unknown as the append.
            let landed = resolve(core, sync, expected_seq, event).map_err(|read_error| {
                tracing::warn!(%error, %read_error, "a catalog append's outcome cannot be read");
                Error::OutcomeUnknown
            })?;
            match landed {
                Landed::Ours => Ok(Appended::Applied),
                Landed::Other => Ok(Appended::Again),
                Landed::NotYet => {
                    tracing::warn!(%error, "a catalog append's outcome is unknown");
                    Err(Error::OutcomeUnknown)
                }
            }
        }
        Err(CatalogAppendError::Failed(error)) => {
            Err(Error::Unavailable(format!("the catalog log: {error}")))
        }
    }
}

/// Applies, in order, every entry the log holds past this engine's catalog; returns the
/// sequence the catalog holds now.
pub(crate) fn catch_up(core: &Core, sync: &CatalogSync) -> Result<u64> {
    let entries = read_after(sync, sync.applied_seq())?;
    apply(core, sync, entries)
}

/// The log's entries after `after_seq`; a log that cannot be read is `Unavailable`.
fn read_after(sync: &CatalogSync, after_seq: u64) -> Result<Vec<(u64, Vec<Event>)>> {
    sync.log
        .read_after(after_seq)
        .map_err(|error| Error::Unavailable(format!("the catalog log: {error}")))
}

/// After an append refused as behind: catches up. A log read may lag the append that
/// refused ours by a moment (a replicated stream's state is reported a little after it
/// stored the message); when the read brought nothing, wait a little longer each attempt
/// before the next, instead of spending every attempt at once on the same refusal.
fn catch_up_after_refusal(core: &Core, sync: &CatalogSync, attempt: usize) -> Result<()> {
    let before = sync.applied_seq();
    if catch_up(core, sync)? == before {
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        std::thread::sleep(BEHIND_BACKOFF.saturating_mul(attempt));
    }
    Ok(())
}

/// After an append whose answer was lost at `expected_seq`: catches up, and tells what the
/// log holds at the position the append would have taken.
fn resolve(core: &Core, sync: &CatalogSync, expected_seq: u64, ours: &Event) -> Result<Landed> {
    let entries = read_after(sync, expected_seq)?;
    let landed = match entries.first() {
        None => Landed::NotYet,
        Some((seq, events)) if *seq == expected_seq + 1 && is_only(events, ours) => Landed::Ours,
        Some(_) => Landed::Other,
    };
    apply(core, sync, entries)?;
    Ok(landed)
}

/// Whether `events` is the one change `ours`. A create is compared by the promotion it
/// makes: a guarded one's guard travels beside its record, so the events read back are not
/// equal to the one sent although they make the same promotion.
fn is_only(events: &[Event], ours: &Event) -> bool {
    match (events, ours.created_promotion()) {
        ([theirs], Some(record)) => theirs.created_promotion().as_ref() == Some(&record),
        ([theirs], None) => theirs == ours,
        _ => false,
    }
}

/// Applies, in order, `entries` read from the log (by a reader off the control thread);
/// returns the sequence the catalog holds then.
pub(crate) fn apply(
    core: &Core,
    sync: &CatalogSync,
    entries: Vec<(u64, Vec<Event>)>,
) -> Result<u64> {
    for (seq, events) in entries {
        apply_entry(core, sync, seq, &events)?;
    }
    Ok(sync.applied_seq())
}

/// Applies one log entry at `seq`: an entry at or below the catalog's sequence is in it
/// already, and a gap is refused (the reader reads again).
fn apply_entry(core: &Core, sync: &CatalogSync, seq: u64, events: &[Event]) -> Result<()> {
    let applied = sync.applied_seq();
    if seq <= applied {
        return Ok(());
    }
    if seq != applied + 1 {
        return Err(Error::Unavailable(format!(
            "the catalog log skipped from {applied} to {seq}; read again"
        )));
    }
    for event in events {
        match event.created_promotion() {
            Some(record) => apply_created(core, record),
            None => replay_catalog(&core.catalog, event, |_| {}),
        }
    }
    sync.applied(seq);
    Ok(())
}

/// A promotion another node created: its items of the partitions owned here are sent to
/// their shards, then it joins the catalog. Nothing here waits for a shard (one may be stuck
/// inside a journal append, its mailbox full, and the control thread must go on): an
/// install is placed at once or from a thread of its own, a shard that meets a call before
/// its install answers "retry", and an install that arrives after its partition was dropped
/// makes nothing (a shard installs only items of partitions it holds). A second creation of
/// one id keeps the first, as a replay does.
fn apply_created(core: &Core, record: PromotionRecord) {
    if let Ok(existing) = core.catalog.entry(&record.id) {
        let same_body = existing.record.same_body(&record);
        tracing::warn!(promotion = %record.id, same_body, "the catalog log creates this promotion again; the first creation stands");
        return;
    }
    if let Err(error) = install_and_insert(core, &record) {
        tracing::warn!(%error, "a promotion from the catalog log does not join the catalog");
    }
}

/// A promotion in the log (ours or another node's) joins this engine: its items of the
/// partitions owned here are placed on their shards without waiting for any (see
/// [`apply_created`]), then it joins the catalog.
fn install_and_insert(core: &Core, record: &PromotionRecord) -> Result<Arc<PromotionEntry>> {
    let entry = PromotionEntry::new(record.clone(), &item_keys(record));
    place_installs(core, &entry);
    core.catalog.insert_entry(entry)
}

/// Places the install of `entry`'s items of the partitions owned here on every live shard
/// that holds some, waiting for no shard: a stuck one must not hold the control thread.
/// An install is idempotent, and a shard installs only the items of partitions it holds.
pub(crate) fn place_installs(core: &Core, entry: &Arc<PromotionEntry>) {
    let keys = entry.gates.iter().map(|gate| gate.key).collect();
    let keys = partition::installed_here(core, keys);
    for (shard, keys) in core.shards.by_shard(keys.into_iter()) {
        let (reply, _) = oneshot::channel();
        let command = Command::Install {
            entry: Arc::clone(entry),
            keys,
            reply,
        };
        core.shards.place_soon(shard, command, || {});
    }
}

/// An append that answered a position other than the one after the one it expected: the
/// log broke its promise, and nothing of this change is applied.
fn check_position(expected_seq: u64, seq: u64) -> Result<()> {
    if seq == expected_seq + 1 {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "the catalog log put an append expecting {expected_seq} at {seq}"
        )))
    }
}

fn busy() -> Error {
    Error::Unavailable("the catalog is busy with other nodes' changes; retry".into())
}
