//! Who holds each partition's lease, as this node last read the lease bucket (issue 13,
//! "Q5. Membership and assignment" in `docs/cluster-plan.md`): the `holders` and
//! `unheld_since_ms` of the planner's [`View`].
//!
//! The view is advice, like the plan made on it: a take is decided by the lease's create, a
//! release by its conditional delete. What matters is that it converges quickly:
//!
//! - A watch on the partition keys (`partition.*`; the catalog's duty lease is left out)
//!   reports takes, renewals and clean releases (a delete is an entry whose `operation` is
//!   `Delete`) within milliseconds.
//! - A lease that lapses (its holder died or stopped renewing) leaves the bucket by
//!   `max_age`, and nothing reports that (async-nats 0.51 watches report puts, deletes and
//!   purges only; the bucket has no limit markers). So every [`POLL_EVERY`] the poll lists the
//!   keys (`keys`, which skips deleted ones) and reads the entry of every partition whose
//!   listing disagrees with the view; every [`FULL_READ_EVERY`] polls, and after the watch
//!   was made again, it reads every partition's entry, for what a stalled watch missed.
//! - Entries only move the view forward (a higher revision), so a replica that answers a
//!   read from behind changes nothing; a lapse has no revision and is believed only once a
//!   read of the key finds it gone.
//!
//! `unheld_since_ms` is the local instant at which this node first saw a partition unheld,
//! in ms since the [`Owners`] started (a monotonic clock of its own, as the planner wants:
//! only differences on one node's clock are compared).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::{Entry, Operation, Store, Watch};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::watch;

use super::assign::{NodeId, View};
use super::registry::{stop_requested, MembershipError};
use crate::jetstream::{ClusterOptions, Lease, LeaseRecord, Names};

/// How often the lease bucket is listed, besides the watch.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// Every this many polls, every partition's entry is read, not only the disagreeing ones.
pub const FULL_READ_EVERY: u32 = 20;
/// A view whose last poll is older than this is not handed out: planning on it could take
/// what is held, or wait for what lapsed long ago.
pub const STALE_AFTER: Duration = Duration::from_secs(2);
/// The pause before a watch that ended or failed is made again.
const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// The key filter of the partition leases (see [`Lease::key`]).
const PARTITION_KEYS: &str = "partition.*";
/// The holder named for a lease whose record does not decode: held, by nobody we know.
const UNREADABLE_HOLDER: &str = "(an unreadable lease record)";

/// The lease holders as one consistent picture, with the clock the planner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnersView {
    /// By partition: the holder's node id, `None` when no lease is held.
    pub holders: Vec<Option<NodeId>>,
    /// By partition: when this node first saw it unheld (ms on [`OwnersView::now_ms`]'s
    /// clock); `None` for held partitions.
    pub unheld_since_ms: Vec<Option<i64>>,
    /// Now, on the same clock.
    pub now_ms: i64,
}

impl OwnersView {
    /// The planner's view of these holders with `live` nodes.
    pub fn view<'a>(&'a self, live: &'a [NodeId]) -> View<'a> {
        View {
            // One entry per partition: the count fits, it came from a u32.
            partitions: u32::try_from(self.holders.len()).unwrap_or(u32::MAX),
            live,
            holders: &self.holders,
            unheld_since_ms: &self.unheld_since_ms,
            now_ms: self.now_ms,
        }
    }
}

/// The lease view of this node. Stops on [`Owners::stop`] or when dropped.
#[derive(Debug)]
pub struct Owners {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    partitions: u32,
    /// The origin of the view's clock.
    origin: Instant,
    state: Mutex<State>,
    /// Bumped whenever a holder changed.
    changes: watch::Sender<u64>,
}

#[derive(Debug)]
struct State {
    /// By partition.
    slots: Vec<Slot>,
    /// When a poll last succeeded.
    polled_at: Option<Instant>,
    /// The next poll reads every partition's entry.
    full_read_due: bool,
}

#[derive(Debug, Clone, Default)]
struct Slot {
    holder: Option<NodeId>,
    /// The revision of the last entry taken in (0: none yet).
    revision: u64,
    /// When it was first seen unheld; `None` while held, or before the first poll.
    unheld_since: Option<Instant>,
}

impl Owners {
    /// Reads the lease bucket of `options.prefix` (created if absent, as the journal makes
    /// it: `options.lease_ttl`, `options.replicas`) once for `partitions` partitions, then
    /// watches and polls it on the current Tokio runtime.
    pub async fn start(
        js: &Context,
        options: &ClusterOptions,
        partitions: u32,
    ) -> Result<Owners, MembershipError> {
        let bucket = Names::new(&options.prefix).lease_bucket();
        let store = Lease::bucket(js, &bucket, options.lease_ttl, options.replicas)
            .await
            .map_err(|e| MembershipError::Nats(e.to_string()))?;
        // Made before the first read, so nothing written in between is missed.
        let watcher = watch_leases(&store).await?;
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store,
            partitions,
            origin: Instant::now(),
            state: Mutex::new(State {
                slots: vec![Slot::default(); partitions as usize],
                polled_at: None,
                full_read_due: true,
            }),
            changes,
        });
        shared.poll_once().await?;
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(follow(Arc::clone(&shared), watcher, stopped.clone()));
        tokio::spawn(poll(Arc::clone(&shared), stopped));
        Ok(Owners { shared, stop })
    }

    pub fn partitions(&self) -> u32 {
        self.shared.partitions
    }

    /// The holders and since-instants now, or `None` while the view is stale (no poll
    /// succeeded within [`STALE_AFTER`]: NATS out of reach).
    pub fn view(&self) -> Option<OwnersView> {
        let now = Instant::now();
        let state = self.shared.lock();
        let fresh = state
            .polled_at
            .is_some_and(|at| now.saturating_duration_since(at) <= STALE_AFTER);
        if !fresh {
            return None;
        }
        let ms = |at: Instant| self.shared.ms_at(at);
        Some(OwnersView {
            holders: state.slots.iter().map(|slot| slot.holder.clone()).collect(),
            unheld_since_ms: state
                .slots
                .iter()
                .map(|slot| match slot.holder {
                    Some(_) => None,
                    None => slot.unheld_since.map(ms),
                })
                .collect(),
            now_ms: ms(now),
        })
    }

    /// The holders as last read, however old (for `GET /admin/cluster`).
    pub fn holders(&self) -> Vec<Option<NodeId>> {
        let state = self.shared.lock();
        state.slots.iter().map(|slot| slot.holder.clone()).collect()
    }

    /// Now, on the clock of [`OwnersView`].
    pub fn now_ms(&self) -> i64 {
        self.shared.ms_at(Instant::now())
    }

    /// A receiver that sees a change whenever a holder changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// `node` just released `partition` (its delete went through): unheld from now, unless
    /// the view already shows a later holder. Saves the planner waiting for the watch.
    pub fn note_released(&self, partition: u32, node: &str) {
        let changed = {
            let mut state = self.shared.lock();
            match state.slots.get_mut(partition as usize) {
                Some(slot) if slot.holder.as_deref() == Some(node) => {
                    slot.holder = None;
                    slot.unheld_since = Some(Instant::now());
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.shared.bump();
        }
    }

    /// Stops the watch and the poll.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for Owners {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changes
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    fn ms_at(&self, at: Instant) -> i64 {
        let since = at.saturating_duration_since(self.origin);
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }

    /// The partition of a lease key, if it is one of ours.
    fn partition_of_key(&self, key: &str) -> Option<u32> {
        let partition: u32 = key.strip_prefix("partition.")?.parse().ok()?;
        (partition < self.partitions).then_some(partition)
    }

    /// Takes in one entry of a partition key (from the watch or a read).
    fn observe(&self, entry: &Entry) {
        let Some(partition) = self.partition_of_key(&entry.key) else {
            return;
        };
        let holder = match entry.operation {
            Operation::Put => Some(
                serde_json::from_slice::<LeaseRecord>(&entry.value)
                    .map_or_else(|_| UNREADABLE_HOLDER.to_owned(), |record| record.node),
            ),
            Operation::Delete | Operation::Purge => None,
        };
        let changed = {
            let mut state = self.lock();
            let Some(slot) = state.slots.get_mut(partition as usize) else {
                return;
            };
            if entry.revision <= slot.revision {
                return;
            }
            slot.revision = entry.revision;
            set_holder(slot, holder, Instant::now())
        };
        if changed {
            self.bump();
        }
    }

    /// The revision `partition`'s slot holds now (0: none seen).
    fn revision(&self, partition: u32) -> u64 {
        self.lock()
            .slots
            .get(partition as usize)
            .map_or(0, |slot| slot.revision)
    }

    /// A read found `partition`'s key gone (lapsed, or never taken). `seen_revision` is the
    /// slot's revision when the read began: if the watch brought a newer entry meanwhile
    /// (a take that landed after the read), the read is older news and is dropped.
    fn observe_absent(&self, partition: u32, seen_revision: u64) {
        let changed = {
            let mut state = self.lock();
            match state.slots.get_mut(partition as usize) {
                Some(slot) if slot.revision == seen_revision => {
                    set_holder(slot, None, Instant::now())
                }
                _ => false,
            }
        };
        if changed {
            self.bump();
        }
    }

    /// Lists the keys and reads the partitions whose listing disagrees with the view (all
    /// of them when a full read is due).
    async fn poll_once(&self) -> Result<(), MembershipError> {
        let keys: Vec<String> = self
            .store
            .keys()
            .await
            .map_err(|e| nats("listing the lease bucket", e))?
            .try_collect()
            .await
            .map_err(|e| nats("listing the lease bucket", e))?;
        let mut listed = vec![false; self.partitions as usize];
        for key in &keys {
            if let Some(partition) = self.partition_of_key(key) {
                listed[partition as usize] = true;
            }
        }
        let (to_read, full) = {
            let state = self.lock();
            let full = state.full_read_due;
            let mut to_read = Vec::new();
            let slots = state.slots.iter().zip(&listed);
            for (partition, (slot, &is_listed)) in (0..self.partitions).zip(slots) {
                let disagrees = slot.holder.is_some() != is_listed;
                // Never read yet and not listed: confirm it is unheld, and since when.
                let unknown = slot.holder.is_none() && slot.unheld_since.is_none();
                if full || disagrees || unknown {
                    to_read.push(partition);
                }
            }
            (to_read, full)
        };
        for partition in to_read {
            let seen_revision = self.revision(partition);
            match self.read(partition).await? {
                Some(entry) => self.observe(&entry),
                None => self.observe_absent(partition, seen_revision),
            }
        }
        let mut state = self.lock();
        state.polled_at = Some(Instant::now());
        if full {
            state.full_read_due = false;
        }
        Ok(())
    }

    async fn read(&self, partition: u32) -> Result<Option<Entry>, MembershipError> {
        self.store
            .entry(Lease::key(partition))
            .await
            .map_err(|e| nats(&format!("reading the lease of partition {partition}"), e))
    }
}

/// Sets `slot`'s holder; an unheld slot keeps the instant it was first seen unheld. True
/// when the holder changed.
fn set_holder(slot: &mut Slot, holder: Option<NodeId>, now: Instant) -> bool {
    match holder {
        Some(_) => slot.unheld_since = None,
        None => {
            slot.unheld_since.get_or_insert(now);
        }
    }
    let changed = slot.holder != holder;
    slot.holder = holder;
    changed
}

fn nats(what: &str, error: impl std::fmt::Display) -> MembershipError {
    MembershipError::Nats(format!("{what}: {error}"))
}

async fn watch_leases(store: &Store) -> Result<Watch, MembershipError> {
    store
        .watch(PARTITION_KEYS)
        .await
        .map_err(|e| nats("watching the lease bucket", e))
}

/// Follows the watch; makes it again (and asks the next poll for a full read, for what
/// the gap hid) when it ends or fails.
async fn follow(shared: Arc<Shared>, first: Watch, mut stop: watch::Receiver<bool>) {
    let mut watcher = Some(first);
    loop {
        let current = match watcher.take() {
            Some(current) => Ok(current),
            None => watch_leases(&shared.store).await,
        };
        match current {
            Ok(mut current) => loop {
                tokio::select! {
                    next = current.next() => match next {
                        Some(Ok(entry)) => shared.observe(&entry),
                        Some(Err(error)) => {
                            tracing::warn!(%error, "the lease watch failed; making it again");
                            break;
                        }
                        None => break,
                    },
                    _ = stop_requested(&mut stop) => return,
                }
            },
            Err(error) => tracing::warn!(%error, "the poll goes on"),
        }
        shared.lock().full_read_due = true;
        tokio::select! {
            _ = tokio::time::sleep(WATCH_RETRY_PAUSE) => {}
            _ = stop_requested(&mut stop) => return,
        }
    }
}

async fn poll(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(POLL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls: u32 = 0;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop_requested(&mut stop) => return,
        }
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(FULL_READ_EVERY) {
            shared.lock().full_read_due = true;
        }
        if let Err(error) = shared.poll_once().await {
            tracing::warn!(%error, "reading the lease bucket failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unheld_partition_keeps_the_instant_it_was_first_seen_unheld() {
        let start = Instant::now();
        let mut slot = Slot::default();
        assert!(!set_holder(&mut slot, None, start), "unheld already");
        assert_eq!(slot.unheld_since, Some(start));
        let later = start + Duration::from_secs(1);
        assert!(!set_holder(&mut slot, None, later));
        assert_eq!(
            slot.unheld_since,
            Some(start),
            "first seen unheld, not last"
        );
        assert!(set_holder(&mut slot, Some("a".into()), later));
        assert_eq!(slot.unheld_since, None);
        assert!(set_holder(&mut slot, None, later));
        assert_eq!(slot.unheld_since, Some(later));
    }
}
