//! [`ClusterNode`]: the driver of one cluster node (cluster plan, step 7).
//!
//! Every tick, and whenever the membership or the lease holders change, it plans
//! (`assign::plan` over the live nodes and the lease holders) and carries the actions out
//! one at a time:
//! - a take: the journal takes the lease and replays the lane (`take_partition`), the
//!   engine catches up with the catalog, builds the partition off the control thread and
//!   adopts it; if any of that fails, the lease is given back, so another node can try;
//! - a release: the engine lets the partition go first (nothing of it is decided or in
//!   flight any more), then the journal writes its queue and deletes the lease.
//!
//! A lease the journal loses (taken by another node while this one was paused or cut off)
//! is reported to the engine at once (`lose_partition`), from the journal's lane events and,
//! should one be missed, from the reconciliation every round makes first (which also gives
//! back a lease the engine never adopted). A take that fails is tried again after a pause
//! that doubles up to 10 s. [`ClusterNode::hand_over_all`] is the
//! SIGTERM path: draining (the others stop counting this node), every partition released,
//! the membership record deleted.
//!
//! Nothing here decides who may write: the leases do. The plan is advice, and two nodes that
//! plan on different views cost a hand-over at most.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use seckill_engine::Engine;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::assign::{plan, Action};
use super::owners::Owners;
use super::registry::Registry;
use crate::jetstream::{ClusterError, LaneEvent, PartitionJournal};

/// How often the driver plans when nothing woke it.
pub const TICK: Duration = Duration::from_millis(250);

/// The running driver of one node. Stops on [`ClusterNode::stop`],
/// [`ClusterNode::hand_over_all`], or when dropped.
pub struct ClusterNode {
    driver: Arc<Driver>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("node", &self.driver.registry.node_id())
            .finish_non_exhaustive()
    }
}

/// What one driver works with.
struct Driver {
    journal: Arc<PartitionJournal>,
    engine: Engine,
    registry: Registry,
    owners: Owners,
    /// Set by a stop: the round under way ends after its current action.
    stopping: AtomicBool,
    /// By partition: takes that failed in a row, and when the next may be tried.
    failed_takes: Mutex<HashMap<u32, (u32, Instant)>>,
}

/// The pause after a take that failed, doubled with each failure in a row up to
/// [`TAKE_BACKOFF_MAX`]: a node that cannot adopt (a dead shard, a lane that does not
/// replay) must not spin taking and giving back, writing a takeover record each time.
const TAKE_BACKOFF_FIRST: Duration = Duration::from_millis(250);
const TAKE_BACKOFF_MAX: Duration = Duration::from_secs(10);

impl ClusterNode {
    /// Starts driving `engine` (a cluster engine on `journal`, which is its journal and its
    /// ownership) on the current Tokio runtime.
    ///
    /// Refused when the lease view and the journal count partitions differently (the
    /// planner would never plan some of them, or plan ones that do not exist).
    pub fn start(
        journal: Arc<PartitionJournal>,
        engine: Engine,
        registry: Registry,
        owners: Owners,
    ) -> Result<ClusterNode, ClusterError> {
        if owners.partitions() != journal.partitions() {
            return Err(ClusterError::PartitionsMismatch {
                stored: journal.partitions(),
                given: owners.partitions(),
            });
        }
        let driver = Arc::new(Driver {
            journal,
            engine,
            registry,
            owners,
            stopping: AtomicBool::new(false),
            failed_takes: Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(drive(Arc::clone(&driver), stopped));
        Ok(ClusterNode {
            driver,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// The partitions this node's engine has installed, ascending.
    pub fn owned_partitions(&self) -> Vec<u32> {
        self.driver.engine.owned_partitions()
    }

    pub fn registry(&self) -> &Registry {
        &self.driver.registry
    }

    pub fn owners(&self) -> &Owners {
        &self.driver.owners
    }

    /// Stops planning, after the action under way. Nothing is handed over: the leases
    /// lapse unless the journal releases them.
    pub async fn stop(&self) {
        self.driver.stopping.store(true, Ordering::Release);
        self.stop.send_replace(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // A driver task that panicked is stopped as well.
            let _ = task.await;
        }
    }

    /// The clean shutdown (SIGTERM): this node stops planning, turns draining (no other
    /// node counts on it from here), hands every partition over (engine first, then the
    /// lease), and leaves the membership. Returns how many partitions it released. One the
    /// engine refused to release loses its lease all the same (the journal refuses its
    /// appends from then on; the next owner's takeover fences anything in flight).
    pub async fn hand_over_all(&self) -> usize {
        // Planning stops first: this very call does the releases, and counts them.
        self.stop().await;
        // Then the mark, before any release: the others must not count this node in their
        // quotas when they plan the partitions it lets go.
        if let Err(error) = self.driver.registry.set_draining().await {
            tracing::warn!(%error, "the draining mark did not land; the others see this node go when its record ages");
        }
        let mut released = 0;
        for partition in self.driver.engine.owned_partitions() {
            if self.driver.release(partition).await {
                released += 1;
            }
        }
        // Partitions the journal holds that the engine never adopted (a take cut short).
        let journal = Arc::clone(&self.driver.journal);
        let _ = tokio::task::spawn_blocking(move || journal.release_all()).await;
        if let Err(error) = self.driver.registry.leave().await {
            tracing::warn!(%error, "leaving the membership failed; the record ages out");
        }
        released
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn drive(driver: Arc<Driver>, mut stopped: watch::Receiver<bool>) {
    let mut lanes = driver.journal.lane_events();
    let mut members = driver.registry.subscribe();
    let mut holders = driver.owners.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = members.changed() => {}
            _ = holders.changed() => {}
            event = lanes.recv() => driver.lane_event(event),
            _ = stopped.changed() => {}
        }
        if *stopped.borrow() {
            return;
        }
        driver.step().await;
    }
}

impl Driver {
    fn lane_event(&self, event: Result<LaneEvent, broadcast::error::RecvError>) {
        match event {
            Ok(LaneEvent::Lost { partition, epoch }) => {
                metrics::counter!("seckill_cluster_partitions_lost_total").increment(1);
                self.engine.lose_partition(partition, epoch);
            }
            // Missed ones are found by the reconciliation of every step.
            Err(_) => {}
        }
    }

    /// One round: the engine and the journal made to agree, then a plan and its actions,
    /// when the views are fresh.
    async fn step(&self) {
        self.reconcile().await;
        metrics::gauge!("seckill_cluster_partitions_owned")
            .set(self.engine.owned_partitions().len() as f64);
        if !self.registry.is_in_touch() {
            // Every peer looks dead from here: planning on that would take what is held.
            return;
        }
        let Some(view) = self.owners.view() else {
            return;
        };
        let live = self.registry.live();
        for action in plan(&view.view(&live), self.registry.node_id()) {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            match action {
                Action::Take(partition) if self.may_try(partition) => self.take(partition).await,
                Action::Take(_) => {}
                Action::Release(partition) => {
                    self.release(partition).await;
                }
            }
        }
    }

    /// Makes the engine's partitions and the journal's holdings agree (run before any take
    /// of the round, so no take is under way):
    /// - a partition the engine adopted under a holding the journal no longer has (lost, or
    ///   replaced by a take whose loss report was missed) is lost to the engine;
    /// - a holding the engine is not tied to (a take cut short, a release the engine did
    ///   not finish) gives its lease back, so another node may take the partition.
    async fn reconcile(&self) {
        for partition in 0..self.journal.partitions() {
            let journal = self.journal.writing_epoch(partition);
            match self.engine.partition_epoch(partition) {
                Some(epoch) if journal != Some(epoch) => {
                    self.engine.lose_partition(partition, epoch);
                }
                None if journal.is_some() => {
                    tracing::warn!(
                        partition,
                        "the journal holds a partition the engine does not; its lease goes back"
                    );
                    self.give_back(partition).await;
                }
                _ => {}
            }
        }
    }

    /// Whether a take of `partition` is due (not backing off after failures).
    fn may_try(&self, partition: u32) -> bool {
        let failed = self
            .failed_takes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        failed
            .get(&partition)
            .is_none_or(|(_, next)| Instant::now() >= *next)
    }

    /// Records the outcome of a take of `partition`.
    fn took(&self, partition: u32, adopted: bool) {
        let mut failed = self
            .failed_takes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if adopted {
            failed.remove(&partition);
            return;
        }
        let count = failed.get(&partition).map_or(0, |(count, _)| *count) + 1;
        let pause = TAKE_BACKOFF_FIRST
            .saturating_mul(1 << count.min(6))
            .min(TAKE_BACKOFF_MAX);
        if count >= 3 {
            tracing::error!(
                partition,
                failures = count,
                ?pause,
                "this node keeps failing to take the partition"
            );
        }
        failed.insert(partition, (count, Instant::now() + pause));
    }

    /// Takes, builds and adopts `partition`; gives the lease back when any step fails.
    async fn take(&self, partition: u32) {
        let journal = Arc::clone(&self.journal);
        let taken = tokio::task::spawn_blocking(move || journal.take_partition(partition)).await;
        let recovery = match taken {
            Ok(Ok(recovery)) => recovery,
            // Another node was quicker: the plan is advice.
            Ok(Err(ClusterError::LeaseHeld { .. })) => return,
            Ok(Err(error)) => {
                tracing::warn!(partition, %error, "taking the partition failed; the next plan tries again");
                self.took(partition, false);
                return;
            }
            Err(error) => {
                tracing::error!(partition, %error, "the take's thread failed");
                self.took(partition, false);
                return;
            }
        };
        let epoch = recovery.epoch;
        match self.install(recovery).await {
            Ok(items) => {
                metrics::counter!("seckill_cluster_takeovers_total").increment(1);
                tracing::info!(partition, epoch, items, "partition adopted");
                self.took(partition, true);
            }
            Err(error) => {
                tracing::warn!(partition, %error, "the partition was taken but not adopted; its lease goes back");
                self.give_back(partition).await;
                self.took(partition, false);
            }
        }
    }

    /// The engine's half of a take: the catalog caught up, the partition built (off the
    /// control thread and this runtime's workers) and adopted.
    async fn install(
        &self,
        recovery: seckill_engine::PartitionRecovery,
    ) -> Result<usize, seckill_engine::Error> {
        self.engine.catch_up_catalog().await?;
        let engine = self.engine.clone();
        let part = tokio::task::spawn_blocking(move || engine.build_partition(recovery))
            .await
            .map_err(|e| {
                seckill_engine::Error::Unavailable(format!("the build's thread: {e}"))
            })??;
        self.engine.adopt_partition(part).await
    }

    async fn give_back(&self, partition: u32) {
        let journal = Arc::clone(&self.journal);
        let released =
            tokio::task::spawn_blocking(move || journal.release_partition(partition)).await;
        if !matches!(released, Ok(Ok(()))) {
            tracing::warn!(
                partition,
                "giving the lease back failed; it lapses by itself"
            );
        }
    }

    /// The clean hand-over of `partition`: the engine lets it go, then the journal. False
    /// when the engine refused (the partition stays here).
    async fn release(&self, partition: u32) -> bool {
        match self.engine.release_partition(partition).await {
            Ok(released) => {
                if released.waited_out {
                    tracing::warn!(partition, "the release waited out a stalled journal");
                }
            }
            Err(error) => {
                tracing::warn!(partition, %error, "the engine did not release the partition; it stays");
                return false;
            }
        }
        self.give_back(partition).await;
        self.owners
            .note_released(partition, self.registry.node_id());
        metrics::counter!("seckill_cluster_handovers_total").increment(1);
        tracing::info!(partition, "partition handed over");
        true
    }
}
