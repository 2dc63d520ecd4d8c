//! A cluster node's partitions in a running engine: which ones it decides for, how one is
//! installed (built from its lane off the shards, then adopted by every shard) and how one
//! is dropped (a clean hand-over, or a lease lost). The cluster plan's Q1 and step 3.
//!
//! The unit a node owns is a partition, `partition_of(item_key, partitions)`: one lease and
//! one journal lane. A cluster engine routes items to shards by `(key / partitions) %
//! shards` (`shards::Routing`), so a partition's items are spread over every shard, and
//! adopting and dropping are broadcast to all of them.
//!
//! What keeps the money right:
//! - One copy decides. A command for an item reaches a shard only while the item's partition
//!   is Owned here and its lease is held ([`ClusterState::check`]); the shard checks again
//!   (its own set of held partitions, and the lease), so a command that was already queued
//!   when its partition was dropped answers `NotOwner`, nothing done, never a 404 or a sale.
//!   An adopt takes only a partition that is not installed, and a shard asserts that it
//!   never holds two states of one item.
//! - No answered batch is lost on a release: every shard journals and answers what it has
//!   decided before it lets the partition go, and waits for an append still being written.
//! - No yes for what did not land: the adopt's expiries are journaled in the adopt's own
//!   batch, and the adopt is answered after that batch (a lane lost in it fails the adopt).
//! - A half-built partition bans nobody: the replay's strikes are collected into the part
//!   and reach the ban board only when the part is adopted.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::catalog_log::CatalogLog;
use crate::catalog_sync::CatalogSync;
use crate::command::Command;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::partition_of;
use crate::item::ItemState;
use crate::ports::{BatchStream, Ownership};
use crate::recovery::install_missing;
use crate::remote_view::RemoteViews;
use crate::shard_state::{ShardState, Strike};

/// How often a release with patience looks for the shards' answers.
const ANSWER_POLL: Duration = Duration::from_millis(1);

/// What a cluster engine runs on besides its [`crate::Ports`] (see
/// [`crate::Engine::start_cluster`]).
///
#[derive(Debug, Clone)]
pub struct ClusterPorts {
    /// Which partitions this node holds the lease of, now.
    pub ownership: Arc<dyn Ownership>,
    /// The cluster's one catalog log, which every node appends its catalog changes to under
    /// a condition and applies in order (see [`CatalogLog`]). `None`: the catalog changes
    /// are journaled through the engine's own journal, as a one-node engine does (a
    /// cluster of one writer, and tests of the partitions alone).
    pub catalog_log: Option<Arc<dyn CatalogLog>>,
}

/// What the journal hands over when this node takes a partition: its snapshot's items and
/// its lane after the snapshot (see [`crate::Engine::build_partition`]).
pub struct PartitionRecovery {
    pub partition: u32,
    /// The partition's snapshot object, possibly empty.
    pub items: Vec<ItemState>,
    /// The lane's sequence the snapshot's items hold everything through (0: no snapshot).
    /// Batches at or below it are in the items already and are skipped, so a lane handed
    /// over with some of them still kept is not applied twice.
    pub through_seq: u64,
    /// The lane's batches after the snapshot, up to the takeover record, in order. The
    /// catalog's events, if a lane holds any, are skipped: the catalog comes from its own log.
    pub batches: BatchStream,
    /// Drawn for this ownership: above every epoch in the lane and the snapshot (a build
    /// refuses it otherwise). Every order id made for the partition's items carries it.
    pub epoch: u64,
    /// The catalog log's last sequence at takeover: every promotion the lane's events name
    /// is in the log at or below it. A build is refused until the engine's catalog holds it
    /// ([`crate::Engine::catch_up_catalog`]); 0 when the engine has no catalog log.
    pub catalog_seq: u64,
}

impl fmt::Debug for PartitionRecovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionRecovery")
            .field("partition", &self.partition)
            .field("items", &self.items.len())
            .field("through_seq", &self.through_seq)
            .field("epoch", &self.epoch)
            .field("catalog_seq", &self.catalog_seq)
            .finish_non_exhaustive()
    }
}

/// A partition rebuilt from its lane and not yet adopted: one state per shard, the strikes
/// its items gave (on no board yet), and the epoch its items will be decided under. Made by
/// [`crate::Engine::build_partition`], taken by [`crate::Engine::adopt_partition`] of the same
/// engine.
pub struct PartitionPart {
    pub(crate) partition: u32,
    pub(crate) epoch: u64,
    /// The [`ClusterState::instance`] of the engine that built it: a part holds that
    /// engine's catalog entries and gates, so no other engine may adopt it.
    pub(crate) instance: u64,
    /// Index for index, the engine's shards.
    pub(crate) states: Vec<ShardState>,
    pub(crate) strikes: Vec<Strike>,
}

impl PartitionPart {
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The epoch of the ownership the part's items are decided under once adopted.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many items the part holds so far (the adopt adds those of promotions created
    /// since the build).
    pub fn items(&self) -> usize {
        self.states.iter().map(ShardState::item_count).sum()
    }
}

impl fmt::Debug for PartitionPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionPart")
            .field("partition", &self.partition)
            .field("epoch", &self.epoch)
            .field("items", &self.items())
            .field("strikes", &self.strikes.len())
            .finish_non_exhaustive()
    }
}

/// What a clean hand-over let go (see [`crate::Engine::release_partition`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub partition: u32,
    /// Items that left the shards by the answer (when `waited_out`, those of the shards
    /// that answered within the patience).
    pub items: usize,
    /// A batch of the partition was still being written past
    /// [`crate::EngineConfig::release_wait_ms`]: the partition was dropped as a lost one is,
    /// without waiting for it. Its callers hear what the journal makes of it (landed before
    /// the next owner's takeover record, or fenced by it), so the lease may be given up all
    /// the same.
    pub waited_out: bool,
}

/// Where a partition stands in this engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// No shard holds its items; its commands answer `NotOwner`.
    NotInstalled,
    /// Its shards are taking its items over; its commands answer `NotOwner` until they all
    /// did.
    Adopting,
    /// Installed: its commands go to the shards (while its lease is held).
    Owned,
    /// Being released: new commands answer `NotOwner`; those already in a shard's mailbox
    /// are still decided (the lease is held until the drop is done).
    Releasing,
    /// Its lease was lost: nothing of it is decided any more, not even a command already in
    /// a mailbox, whatever the lease says by the time the shard reads it (it may be a new
    /// holding, after another node sold the items).
    Losing,
}

impl Standing {
    fn code(self) -> u8 {
        match self {
            Standing::NotInstalled => 0,
            Standing::Adopting => 1,
            Standing::Owned => 2,
            Standing::Releasing => 3,
            Standing::Losing => 4,
        }
    }

    fn of(code: u8) -> Standing {
        match code {
            1 => Standing::Adopting,
            2 => Standing::Owned,
            3 => Standing::Releasing,
            4 => Standing::Losing,
            _ => Standing::NotInstalled,
        }
    }
}

/// Every partition's [`Standing`], readable from any thread without a lock (`route` reads
/// it on every command). Moved by the control thread, but for the first step of a lost
/// lease ([`crate::Engine::lose_partition`]), which any thread takes.
#[derive(Debug)]
pub(crate) struct PartitionSet {
    standings: Box<[AtomicU8]>,
    /// By partition: the epoch of the lease holding it is adopted (or being adopted) under,
    /// 0 while none. Items decide only while the lease is held under this very epoch.
    epochs: Box<[AtomicU64]>,
    /// By partition: drops handed to a thread of their own (a full mailbox) and not placed
    /// yet. No adopt is taken while any is on its way; once placed, a drop comes before any
    /// later adopt, since a mailbox reads in order.
    drops_unplaced: Box<[AtomicU32]>,
    /// By partition: the newest holding (epoch) it was dropped under without waiting for its
    /// appends (a lost lease, a failed adopt, a release that waited out the journal). Only a
    /// later holding adopts it again: an append of that one may still land, and a new
    /// holding's takeover record is what fences it, or puts it in the lane the next build
    /// replays.
    dropped_unwaited: Box<[AtomicU64]>,
    /// Held while a partition's epoch changes (an adopt ties it, an uninstall unties it) and
    /// while a loss is checked against it and marked: a late loss report of an earlier
    /// holding must never mark a later holding's adopt lost. Never on the hot path.
    ties: std::sync::Mutex<()>,
}

impl PartitionSet {
    fn new(partitions: u32) -> Self {
        PartitionSet {
            standings: (0..partitions)
                .map(|_| AtomicU8::new(Standing::NotInstalled.code()))
                .collect(),
            epochs: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            drops_unplaced: (0..partitions).map(|_| AtomicU32::new(0)).collect(),
            dropped_unwaited: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            ties: std::sync::Mutex::new(()),
        }
    }

    fn tie_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ties
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves a partition not installed to Adopting, tied to the holding `epoch`; false when
    /// it was installed.
    fn begin_adopt(&self, partition: u32, epoch: u64) -> bool {
        let _tie = self.tie_lock();
        let begun = self.swap(partition, Standing::NotInstalled, Standing::Adopting);
        if begun {
            self.set_epoch(partition, Some(epoch));
        }
        begun
    }

    /// Not installed, and tied to no holding.
    fn untie(&self, partition: u32) {
        let _tie = self.tie_lock();
        self.set(partition, Standing::NotInstalled);
        self.set_epoch(partition, None);
    }

    /// Marks `partition` Losing if it is tied to the holding `epoch` (installed or being
    /// adopted under it); false, nothing changed, for a report of another holding.
    pub fn lose_if_tied(&self, partition: u32, epoch: u64) -> bool {
        let _tie = self.tie_lock();
        let tied = self.epoch(partition) == Some(epoch);
        if tied {
            self.set(partition, Standing::Losing);
        }
        tied
    }

    /// Why a part built under the holding `epoch` may not be adopted now, if it may not.
    fn adoptable(&self, partition: u32, epoch: u64) -> Result<()> {
        let unplaced =
            nth(&self.drops_unplaced, partition).map_or(0, |n| n.load(Ordering::Acquire));
        if unplaced > 0 {
            return Err(Error::Unavailable(format!(
                "partition {partition}'s drop is still on its way to {unplaced} busy shard(s); adopt again later"
            )));
        }
        let dropped_under =
            nth(&self.dropped_unwaited, partition).map_or(0, |e| e.load(Ordering::Acquire));
        if epoch <= dropped_under {
            return Err(Error::Unavailable(format!(
                "partition {partition} was dropped under holding {dropped_under} without waiting for its appends; only a later holding adopts it (take the lease again)"
            )));
        }
        Ok(())
    }

    /// A drop of `partition` is on its way to a busy shard.
    fn drop_sent(&self, partition: u32) {
        if let Some(n) = nth(&self.drops_unplaced, partition) {
            n.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A drop of `partition` on its way is placed.
    fn drop_placed(&self, partition: u32) {
        if let Some(n) = nth(&self.drops_unplaced, partition) {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// `partition` was dropped under the holding `epoch` without waiting for its appends.
    fn dropped_without_waiting(&self, partition: u32, epoch: u64) {
        if let Some(slot) = nth(&self.dropped_unwaited, partition) {
            slot.fetch_max(epoch, Ordering::AcqRel);
        }
    }

    /// The epoch of the holding `partition` is adopted under, if any.
    pub fn epoch(&self, partition: u32) -> Option<u64> {
        let slot = nth(&self.epochs, partition)?;
        match slot.load(Ordering::Acquire) {
            0 => None,
            epoch => Some(epoch),
        }
    }

    /// Ties `partition` to the holding under `epoch` (`None`: to none).
    fn set_epoch(&self, partition: u32, epoch: Option<u64>) {
        if let Some(slot) = nth(&self.epochs, partition) {
            slot.store(epoch.unwrap_or(0), Ordering::Release);
        }
    }

    /// Whether the lease of `partition` is held for sure, under the holding it was adopted
    /// under (a later holding is not enough: the items in memory may be stale by then).
    pub fn holds_lease(&self, partition: u32, ownership: &dyn Ownership) -> bool {
        match ownership.holding(partition) {
            Some(epoch) => self.epoch(partition) == Some(epoch),
            None => false,
        }
    }

    /// A partition out of range is never installed.
    pub fn get(&self, partition: u32) -> Standing {
        match self.slot(partition) {
            Some(slot) => Standing::of(slot.load(Ordering::Acquire)),
            None => Standing::NotInstalled,
        }
    }

    pub fn set(&self, partition: u32, standing: Standing) {
        if let Some(slot) = self.slot(partition) {
            slot.store(standing.code(), Ordering::Release);
        }
    }

    /// Moves `partition` from `from` to `to`; false (nothing changed) when it was not at
    /// `from`.
    pub fn swap(&self, partition: u32, from: Standing, to: Standing) -> bool {
        let Some(slot) = self.slot(partition) else {
            return false;
        };
        let (from, to) = (from.code(), to.code());
        slot.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether a shard holding the partition's items may decide for them now: while they
    /// are adopted (the adopt expires what fell due), owned, or being released cleanly
    /// (what was queued before the release is answered); never once its lease was lost,
    /// whatever the lease says by then.
    pub fn may_decide(&self, partition: u32) -> bool {
        matches!(
            self.get(partition),
            Standing::Adopting | Standing::Owned | Standing::Releasing
        )
    }

    pub fn owned(&self) -> Vec<u32> {
        (0..self.standings.len())
            .filter_map(|index| u32::try_from(index).ok())
            .filter(|&partition| self.get(partition) == Standing::Owned)
            .collect()
    }

    fn slot(&self, partition: u32) -> Option<&AtomicU8> {
        nth(&self.standings, partition)
    }
}

/// The entry of `partition` in a by-partition table; `None` out of range.
fn nth<T>(table: &[T], partition: u32) -> Option<&T> {
    table.get(usize::try_from(partition).ok()?)
}

/// What a cluster engine keeps beside its core: the leases, the partition count and where
/// each partition stands. A one-node engine has none, and pays one `Option` branch per
/// command for it.
#[derive(Debug)]
pub(crate) struct ClusterState {
    pub ownership: Arc<dyn Ownership>,
    /// `ownership.partitions()`, at least 1: fixed for the deployment.
    pub partitions: u32,
    /// Shared with every shard, which checks it again before it decides (a lease lost and
    /// taken back while a command waited in a mailbox must not let old items decide).
    pub standings: Arc<PartitionSet>,
    /// Tells this engine's parts from another engine's (see [`PartitionPart::instance`]).
    pub instance: u64,
    /// The catalog log and how far it is applied, when the engine has one.
    pub catalog: Option<CatalogSync>,
    /// What the other nodes' views say of the partitions owned elsewhere.
    pub views: RemoteViews,
}

impl ClusterState {
    pub fn new(ports: ClusterPorts) -> Self {
        let partitions = ports.ownership.partitions().max(1);
        ClusterState {
            ownership: ports.ownership,
            partitions,
            standings: Arc::new(PartitionSet::new(partitions)),
            instance: rand::random(),
            catalog: ports.catalog_log.map(CatalogSync::new),
            views: RemoteViews::default(),
        }
    }

    pub fn partition(&self, key: u64) -> u32 {
        partition_of(key, self.partitions)
    }

    /// Whether a command for the item `key` may go to its shard: only while the item's
    /// partition is installed here and its lease is held for sure, under the holding it was
    /// adopted under. `NotOwner` (nothing done) otherwise.
    pub fn check(&self, key: u64) -> Result<()> {
        let partition = self.partition(key);
        if self.standings.get(partition) == Standing::Owned
            && self
                .standings
                .holds_lease(partition, self.ownership.as_ref())
        {
            Ok(())
        } else {
            Err(Error::NotOwner { partition })
        }
    }

    /// Refuses a partition this deployment does not have.
    pub fn check_partition(&self, partition: u32) -> Result<()> {
        if partition < self.partitions {
            Ok(())
        } else {
            Err(Error::invalid(
                "partition",
                format!("must be below {}", self.partitions),
            ))
        }
    }
}

/// The answer of a partition operation on an engine started alone.
pub(crate) fn not_a_cluster() -> Error {
    Error::invalid(
        "partition",
        "this engine runs alone (Engine::start): it has no partitions to install or drop",
    )
}

fn cluster_of(core: &Core) -> Result<&ClusterState> {
    core.cluster.as_ref().ok_or_else(not_a_cluster)
}

/// The keys among `keys` whose items this engine installs when their promotion is created:
/// all of them when it runs alone; in a cluster, those of partitions Owned here (the adopt
/// of another partition installs that partition's items itself).
pub(crate) fn installed_here(core: &Core, keys: Vec<u64>) -> Vec<u64> {
    match &core.cluster {
        None => keys,
        Some(cluster) => keys
            .into_iter()
            .filter(|key| cluster.standings.get(cluster.partition(*key)) == Standing::Owned)
            .collect(),
    }
}

/// Adopts a built partition (on the control thread, so no create runs meanwhile): fresh
/// items for the promotions created since the build, the replay's strikes onto the board,
/// then every shard takes its items and journals the expiries that fell due. Only then is
/// the partition Owned. Returns how many items were adopted.
///
/// On an error nothing of the partition stays installed. The shards may have journaled
/// expiries before it, so a retry builds again from the lane as it stands.
pub(crate) fn adopt(core: &Core, mut part: PartitionPart) -> Result<usize> {
    let cluster = cluster_of(core)?;
    let partition = part.partition;
    if part.instance != cluster.instance || part.states.len() != core.shards.count() {
        return Err(Error::invalid(
            "partition",
            "this part was built by another engine",
        ));
    }
    // A create while the partition was not installed gave it no item: fresh ones now (no
    // event of them can be in the lane, which nobody wrote since the takeover). On this
    // thread, so no create slips in between.
    install_missing(
        &core.catalog,
        &mut part.states,
        partition,
        cluster.partitions,
        core.config.token_ttl_ms(),
        None,
    )?;
    cluster.standings.adoptable(partition, part.epoch)?;
    // Tied to the holding the part was built under before anything decides: the adopt
    // itself decides (it expires orders), so never without that very lease. A loss of it
    // reported from here on finds the epoch and turns the adopt down at its end.
    if !cluster.standings.begin_adopt(partition, part.epoch) {
        return Err(Error::Unavailable(format!(
            "partition {partition} is {:?} here; only a partition not installed is adopted",
            cluster.standings.get(partition)
        )));
    }
    if !cluster
        .standings
        .holds_lease(partition, cluster.ownership.as_ref())
    {
        cluster.standings.untie(partition);
        return Err(Error::NotOwner { partition });
    }
    let items = part.items();
    // What other nodes' views said of the partition goes, its strikes with it (a strike a
    // view carried from a batch that never became durable is not in the replay); under the
    // views' lock, so that a view being applied now cannot put them back.
    cluster.views.forget(partition, part.epoch, || {
        for entry in core.catalog.entries() {
            entry.clear_partition(partition);
        }
    });
    // The replay's strikes first, as absolute figures: an expiry the adopt journals then
    // adds its own strike on top.
    for strike in &part.strikes {
        strike
            .entry
            .set_strikes(partition, strike.user_id.clone(), strike.count);
    }
    let (adopted, placed_any) = adopt_on_every_shard(core, partition, part.epoch, part.states);
    match adopted {
        Ok(())
            if cluster
                .standings
                .swap(partition, Standing::Adopting, Standing::Owned) =>
        {
            tracing::info!(partition, epoch = part.epoch, items, "partition adopted");
            Ok(items)
        }
        outcome => {
            // A shard could not take its part, or the lease was lost meanwhile
            // (`lose_partition` moved the partition on): nothing of it may stay.
            let error = outcome.err().unwrap_or(Error::NotOwner { partition });
            tracing::warn!(partition, %error, "adopt failed; the partition is dropped again");
            if placed_any {
                drop_unwaited(core, cluster, partition, part.epoch);
            }
            // Else no shard got its part: nothing was decided, and the holding may adopt
            // the partition again.
            forget_views(core, cluster.partitions, partition);
            uninstall(cluster, partition);
            Err(error)
        }
    }
}

/// Hands each shard its part and waits for every answer (also after a refusal, so that
/// whatever follows comes after every adopt). The first refusal is the answer; beside it,
/// whether any shard got its part at all.
fn adopt_on_every_shard(
    core: &Core,
    partition: u32,
    epoch: u64,
    states: Vec<ShardState>,
) -> (Result<()>, bool) {
    let mut waits = Vec::with_capacity(states.len());
    let mut first_error = None;
    for (shard, state) in states.into_iter().enumerate() {
        let (reply, adopted) = oneshot::channel();
        let command = Command::Adopt {
            partition,
            epoch,
            state: Box::new(state),
            reply,
        };
        match core.shards.send_blocking(shard, command) {
            Ok(()) => waits.push((shard, adopted)),
            Err(error) => {
                first_error = Some(error);
                break;
            }
        }
    }
    let placed_any = !waits.is_empty();
    for (shard, adopted) in waits {
        let answer = adopted
            .blocking_recv()
            .unwrap_or(Err(Error::ShardDown(shard)));
        if let Err(error) = answer {
            first_error.get_or_insert(error);
        }
    }
    let outcome = match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    };
    (outcome, placed_any)
}

/// The clean hand-over (on the control thread): `partition` is refused from now on, every
/// shard journals and answers what it decided for it and waits for an append still being
/// written, then lets its items go. Returns once no shard holds any of them, so that the
/// caller may give the lease up: nothing is appended for the partition after that.
pub(crate) fn release(core: &Core, partition: u32) -> Result<Released> {
    let cluster = cluster_of(core)?;
    cluster.check_partition(partition)?;
    if cluster.standings.get(partition) == Standing::NotInstalled {
        return Ok(Released {
            partition,
            items: 0,
            waited_out: false,
        });
    }
    // `route` refuses it from here on: no new command for it reaches a shard. The drops
    // below come after every command for it that was sent before, mailbox by mailbox. A
    // lease lost meanwhile (Losing) is never turned back into a release, which would let
    // the queued commands decide again: its own drop is on the way.
    let current = cluster.standings.get(partition);
    if current == Standing::Losing
        || !cluster
            .standings
            .swap(partition, current, Standing::Releasing)
    {
        return Err(Error::NotOwner { partition });
    }
    let patience = Duration::from_millis(core.config.release_wait_ms);
    let (items, waited_out) = match drop_waiting(core, partition, patience) {
        Ok(items) => (items, false),
        Err(dropped) => {
            // The journal holds a batch of the partition past our patience (or a shard
            // stuck in it has a full mailbox): nothing of it decides any more, and the
            // shards let it go without waiting (their parked drops are answered by these).
            cluster.standings.set(partition, Standing::Losing);
            let epoch = cluster.standings.epoch(partition).unwrap_or(0);
            drop_unwaited(core, cluster, partition, epoch);
            let items = dropped;
            tracing::warn!(
                partition,
                patience_ms = core.config.release_wait_ms,
                "a release waited out a batch still being written; dropped as lost"
            );
            (items, true)
        }
    };
    forget_views(core, cluster.partitions, partition);
    uninstall(cluster, partition);
    tracing::info!(partition, items, "partition released");
    Ok(Released {
        partition,
        items,
        waited_out,
    })
}

/// The drop of a partition whose lease was lost (on the control thread; the caller of
/// [`crate::Engine::lose_partition`] marked it Losing already). No shard waits for an
/// append still being written: the journal answers it as lost.
pub(crate) fn lose(core: &Core, partition: u32, epoch: u64) {
    let Some(cluster) = core.cluster.as_ref() else {
        return;
    };
    if cluster.standings.epoch(partition) != Some(epoch) {
        // Dropped already (an adopt that failed on this very loss), or taken again under a
        // later holding since the report: nothing of this holding is left to drop.
        tracing::debug!(partition, epoch, "a lost holding is not installed any more");
        return;
    }
    drop_unwaited(core, cluster, partition, epoch);
    forget_views(core, cluster.partitions, partition);
    uninstall(cluster, partition);
    tracing::warn!(
        partition,
        epoch,
        "partition lost; its items leave the shards"
    );
}

/// Once no shard holds `partition`'s items: not installed, and tied to no holding. Only the
/// control thread gets here, and only it adopts, so no adopt is under way.
fn uninstall(cluster: &ClusterState, partition: u32) {
    cluster.standings.untie(partition);
}

/// Drops `partition` on every live shard, each drop waiting for the shard's append still
/// being written, the whole (placing the drops included) bounded by `patience`. `Ok` with
/// how many items left when every shard let go in time; past it, `Err` with the items that
/// did (the late shards' drops stay parked until [`drop_unwaited`] ends them, and a drop
/// not placed in time is not sent at all). A dead shard holds nothing live and is skipped:
/// it never answered a batch that did not land.
fn drop_waiting(
    core: &Core,
    partition: u32,
    patience: Duration,
) -> std::result::Result<usize, usize> {
    let deadline = Instant::now() + patience;
    let mut waits = Vec::with_capacity(core.shards.count());
    let mut late = false;
    for shard in 0..core.shards.count() {
        let (reply, dropped) = oneshot::channel();
        let command = Command::DropPartition {
            partition,
            wait: true,
            reply,
        };
        match core.shards.send_by(shard, command, deadline) {
            Ok(()) => waits.push((shard, dropped)),
            Err(Error::ShardDown(_)) => {
                tracing::warn!(shard, partition, "a dead shard is skipped by the drop");
            }
            Err(_) => late = true,
        }
    }
    let mut items = 0;
    for (shard, dropped) in waits {
        match answer_by(dropped, deadline) {
            Some(Ok(Ok(count))) => items += count,
            Some(Ok(Err(error))) => {
                tracing::warn!(shard, partition, %error, "a shard refused the drop");
            }
            Some(Err(_)) => tracing::warn!(shard, partition, "a shard died during the drop"),
            None => late = true,
        }
    }
    if late {
        Err(items)
    } else {
        Ok(items)
    }
}

/// Drops `partition`, adopted under the holding `epoch`, on every live shard without
/// waiting for an append still being written, nor for any answer: a shard may be stuck
/// inside the journal's append, its mailbox full. Each drop is placed now, or from a thread
/// of its own; no adopt of the partition is taken before all are placed, and a placed one
/// comes before any later adopt (a mailbox reads in order). It ends a shard's parked drop
/// of the partition. Only a later holding than `epoch` adopts the partition again.
fn drop_unwaited(core: &Core, cluster: &ClusterState, partition: u32, epoch: u64) {
    cluster.standings.dropped_without_waiting(partition, epoch);
    for shard in 0..core.shards.count() {
        let (reply, _) = oneshot::channel();
        let command = Command::DropPartition {
            partition,
            wait: false,
            reply,
        };
        cluster.standings.drop_sent(partition);
        let standings = Arc::clone(&cluster.standings);
        core.shards
            .place_soon(shard, command, move || standings.drop_placed(partition));
    }
}

/// A shard's answer, waited for until `deadline`; `None` past it.
fn answer_by<T>(
    mut answer: oneshot::Receiver<T>,
    deadline: Instant,
) -> Option<std::result::Result<T, oneshot::error::RecvError>> {
    loop {
        match answer.try_recv() {
            Ok(value) => return Some(Ok(value)),
            Err(oneshot::error::TryRecvError::Closed) => {
                return Some(answer.blocking_recv());
            }
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() >= deadline => return None,
            Err(oneshot::error::TryRecvError::Empty) => {
                std::thread::sleep(ANSWER_POLL);
            }
        }
    }
}

/// Once no shard holds `partition`: its strikes leave the board, and its gates no longer
/// claim to know every buyer (no shard republishes them; the adopt that takes the
/// partition again fills them anew).
fn forget_views(core: &Core, partitions: u32, partition: u32) {
    for entry in core.catalog.entries() {
        entry.clear_partition(partition);
        for gate in &entry.gates {
            if partition_of(gate.key, partitions) == partition {
                gate.forget_buyers();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standings_move_only_from_where_they_are() {
        let set = PartitionSet::new(3);
        assert_eq!(set.get(1), Standing::NotInstalled);
        assert!(set.swap(1, Standing::NotInstalled, Standing::Adopting));
        assert!(
            !set.swap(1, Standing::NotInstalled, Standing::Adopting),
            "a second adopt"
        );
        set.set(1, Standing::Releasing);
        assert!(
            !set.swap(1, Standing::Adopting, Standing::Owned),
            "lost meanwhile"
        );
        assert!(set.swap(1, Standing::Releasing, Standing::NotInstalled));
        set.set(2, Standing::Owned);
        assert_eq!(set.owned(), vec![2]);
        assert_eq!(set.get(7), Standing::NotInstalled, "out of range");
        assert!(!set.swap(7, Standing::NotInstalled, Standing::Owned));
    }

    #[test]
    fn a_loss_marks_only_the_holding_it_reports_and_an_unwaited_drop_fences_its_holding() {
        let set = PartitionSet::new(2);
        assert!(set.begin_adopt(1, 7));
        assert!(!set.lose_if_tied(1, 6), "an earlier holding's loss");
        assert_eq!(set.get(1), Standing::Adopting);
        assert!(set.lose_if_tied(1, 7));
        assert_eq!(set.get(1), Standing::Losing);
        set.untie(1);
        assert!(!set.lose_if_tied(1, 7), "nothing is tied once dropped");
        assert_eq!((set.get(1), set.epoch(1)), (Standing::NotInstalled, None));

        set.dropped_without_waiting(1, 7);
        assert!(
            set.adoptable(1, 7).is_err(),
            "the holding a drop did not wait for"
        );
        assert!(set.adoptable(1, 8).is_ok());
        set.drop_sent(1);
        assert!(set.adoptable(1, 8).is_err(), "a drop still on its way");
        set.drop_placed(1);
        assert!(set.adoptable(1, 8).is_ok());
        assert!(set.adoptable(0, 1).is_ok(), "another partition");
    }

    #[test]
    fn a_command_passes_only_for_an_owned_partition_whose_lease_is_held() {
        let ownership = crate::ports::StaticOwnership::all_held(2);
        let cluster = ClusterState::new(ClusterPorts {
            ownership: ownership.clone(),
            catalog_log: None,
        });
        // Keys 4 and 5 are in partitions 0 and 1 of two.
        assert_eq!(cluster.check(4), Err(Error::NotOwner { partition: 0 }));
        cluster.standings.set(0, Standing::Owned);
        assert_eq!(
            cluster.check(4),
            Err(Error::NotOwner { partition: 0 }),
            "installed, but tied to no holding"
        );
        ownership.hold(0, 3);
        cluster.standings.set_epoch(0, Some(3));
        assert_eq!(cluster.check(4), Ok(()));
        assert_eq!(cluster.check(5), Err(Error::NotOwner { partition: 1 }));
        ownership.set_held(0, false);
        assert_eq!(
            cluster.check(4),
            Err(Error::NotOwner { partition: 0 }),
            "installed, but the lease is not held for sure"
        );
        ownership.set_held(0, true);
        assert_eq!(cluster.check(4), Ok(()), "the same holding, valid again");
        ownership.hold(0, 4);
        assert_eq!(
            cluster.check(4),
            Err(Error::NotOwner { partition: 0 }),
            "a later holding of the lease is not the one the items were adopted under"
        );
        ownership.hold(0, 3);
        cluster.standings.set(0, Standing::Releasing);
        assert_eq!(cluster.check(4), Err(Error::NotOwner { partition: 0 }));
    }
}
