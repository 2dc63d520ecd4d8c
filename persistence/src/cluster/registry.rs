//! Membership (issue 13, "Q5. Membership and assignment" in `docs/cluster-plan.md`): every
//! node puts its [`NodeRecord`] into the KV bucket `<prefix>_NODES` every second, and reads
//! the bucket to know which nodes are live.
//!
//! # Liveness by local instants
//!
//! A node is live while its record's revision changed within [`LIVE_WITHIN`] on *this*
//! node's monotonic clock, and it is not draining. The records' server timestamps are shown
//! (`last_seen_ms`, for `/admin/cluster`) but never compared with the local clock, so clock
//! skew between nodes does not matter. A record found by the first read at start counts as
//! not changed yet: a dead node's record (kept for [`RECORD_MAX_AGE`]) must not look live for
//! three seconds after this node starts; a live one changes within a heartbeat. This node
//! itself is live while its own heartbeats land and it is not draining.
//!
//! # What the bucket reports
//!
//! `Store::watch_all` (async-nats 0.51) delivers new puts, and deletes and purges as entries
//! whose `operation` is `Delete` or `Purge`; a record that ages out by `max_age` disappears
//! without any entry (the bucket has no limit markers). Liveness needs no report of an
//! expiry (a record that aged out has not changed for 30 s), but the watch is one consumer
//! that can stall or end, so a poll (`keys`, then `entry` of each) every [`POLL_EVERY`] finds
//! what it missed and drops the records that are gone. Both only move a record forward (a
//! higher revision), so a replica that answers the poll from behind changes nothing.
//!
//! # One process per node id
//!
//! Leases name their holder by node id, so two processes with one id would each take the
//! other's partitions for their own. At start, a record of the same id from another
//! incarnation (a random number per process) that changes within [`LIVE_WITHIN`] refuses the
//! start ([`MembershipError::NodeIdInUse`]); one that stays still that long belongs to a dead
//! process and is taken over by a compare-and-set on its revision. Heartbeats are
//! compare-and-sets too: a node whose record was overwritten by another incarnation (it was
//! paused longer than the window and a new process took the id) stops heartbeating and
//! reports itself [`Registry::is_displaced`]; the driver then plans as a node that is not
//! live and hands its partitions over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::{Config, CreateErrorKind, Entry, Operation, Store, Watch};
use async_nats::jetstream::stream::StorageType;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;

use super::assign::NodeId;
use crate::jetstream::{connect_client, ClusterError, ClusterOptions};

/// How often a node puts its record.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A node is live while its record changed within this long (on the reader's clock).
pub const LIVE_WITHIN: Duration = Duration::from_secs(3);
/// The bucket forgets a record this long after its last put: a dead node's record goes.
pub const RECORD_MAX_AGE: Duration = Duration::from_secs(30);
/// How often the bucket is read in full, besides the watch.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// The pause before a watch that ended or failed is made again.
const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How often the start looks at a record of its own id while it waits to see it change.
const CLAIM_LOOK_EVERY: Duration = Duration::from_millis(250);
/// Conditional first writes of the record before the start gives up (each refusal means the
/// key moved under it: another start of the same id racing this one).
const CLAIM_ATTEMPTS_MAX: usize = 5;
/// How many times [`Registry::set_draining`] tries to land the draining record.
const DRAINING_ATTEMPTS_MAX: usize = 3;

/// The name of the membership bucket under `prefix`.
// TODO(builder): move into `jetstream::Names` (names.rs) next to the other buckets.
pub fn nodes_bucket(prefix: &str) -> String {
    format!("{prefix}_NODES")
}

/// What a node says of itself, every [`HEARTBEAT_EVERY`], under its node id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: NodeId,
    /// Where its peers reach it (`host:port` of its RPC server).
    pub advertise: String,
    /// Random per process: tells a restarted node (or a second process with the same id)
    /// from the one that wrote the record before.
    pub incarnation: u64,
    /// When the process started, unix ms (its own clock; shown, never compared).
    pub started_ms: i64,
    /// Set on SIGTERM: the node hands its partitions over and takes none.
    pub draining: bool,
}

/// One node as this node sees it (for `GET /admin/cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub record: NodeRecord,
    /// The bucket revision of the record as last read.
    pub revision: u64,
    /// The server's timestamp of that revision, unix ms.
    pub last_seen_ms: i64,
    /// Live by the rule of the module docs.
    pub live: bool,
}

/// Why membership could not start, or a write of it failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MembershipError {
    /// Another running process uses this node id (its record changed within 3 s).
    #[error("node id {node_id} is in use: its record (incarnation {incarnation:016x}) changed within the last 3 s; stop that node or pick another --node-id")]
    NodeIdInUse { node_id: NodeId, incarnation: u64 },
    /// The node id cannot be a key of the bucket.
    #[error("node id {node_id:?} is not usable: letters, digits, '-', '_', '=', '/' and '.' only, not starting or ending with '.'")]
    InvalidNodeId { node_id: NodeId },
    /// No NATS server answered within the connect timeout.
    #[error("NATS unreachable at {urls}: {reason}")]
    Unreachable { urls: String, reason: String },
    /// JetStream refused or failed a request.
    #[error("JetStream: {0}")]
    Nats(String),
}

fn nats(what: &str, error: impl std::fmt::Display) -> MembershipError {
    MembershipError::Nats(format!("{what}: {error}"))
}

/// A NATS connection of the membership's own: heartbeats and the lease view do not queue
/// behind a journal's appends. Retried until `options.connect_timeout`.
pub async fn connect(options: &ClusterOptions) -> Result<Context, MembershipError> {
    let name = format!("seckill {} membership", options.node_id);
    match connect_client(options, &name).await {
        Ok(client) => Ok(async_nats::jetstream::new(client)),
        Err(ClusterError::Unreachable { urls, reason }) => {
            Err(MembershipError::Unreachable { urls, reason })
        }
        Err(error) => Err(MembershipError::Nats(error.to_string())),
    }
}

/// The membership bucket (created if absent). In memory: a record is rewritten every second
/// and lost records come back within one, so nothing is worth an fsync.
pub async fn bucket(js: &Context, prefix: &str, replicas: usize) -> Result<Store, MembershipError> {
    let name = nodes_bucket(prefix);
    let config = Config {
        bucket: name.clone(),
        history: 1,
        max_age: RECORD_MAX_AGE,
        storage: StorageType::Memory,
        num_replicas: replicas,
        ..Config::default()
    };
    js.create_key_value(config)
        .await
        .map_err(|e| nats(&format!("the membership bucket {name}"), e))
}

/// This node's membership: its heartbeat and its view of the others. Stops (the heartbeats
/// end, the record ages out) on [`Registry::stop`] or when dropped.
#[derive(Debug)]
pub struct Registry {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    me: NodeId,
    incarnation: u64,
    state: Mutex<State>,
    /// Bumped whenever the live set or a record's draining flag may have changed.
    changes: watch::Sender<u64>,
}

#[derive(Debug)]
struct State {
    /// Our record, as the next heartbeat puts it.
    record: NodeRecord,
    /// The revision of our last put that landed.
    revision: u64,
    /// When the last put that landed was sent, and the wall clock then (unix ms).
    landed: Option<(Instant, i64)>,
    /// Another incarnation wrote our key after us: its incarnation.
    displaced_by: Option<u64>,
    /// Every record read from the bucket, ours included, by key.
    seen: HashMap<String, Seen>,
    /// When a full read of the bucket last succeeded.
    polled_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Seen {
    /// `None`: the value does not decode (a record of another build); never live.
    record: Option<NodeRecord>,
    revision: u64,
    server_ms: i64,
    /// When this node saw the revision change; `None` for a record only seen at start.
    changed_at: Option<Instant>,
}

impl Seen {
    fn is_live(&self, now: Instant) -> bool {
        let recent = self
            .changed_at
            .is_some_and(|at| now.saturating_duration_since(at) <= LIVE_WITHIN);
        recent && self.record.as_ref().is_some_and(|record| !record.draining)
    }
}

impl State {
    fn self_live(&self, now: Instant) -> bool {
        let landed_recently = self
            .landed
            .is_some_and(|(at, _)| now.saturating_duration_since(at) <= LIVE_WITHIN);
        landed_recently && !self.record.draining && self.displaced_by.is_none()
    }
}

impl Registry {
    /// Joins the membership as `options.node_id`, reachable at `advertise`: refuses an id in
    /// use (see the module docs; this may take [`LIVE_WITHIN`] when a record of the id
    /// exists), puts the record, reads the bucket once, then heartbeats, watches and polls
    /// on the current Tokio runtime.
    pub async fn start(
        js: &Context,
        options: &ClusterOptions,
        advertise: &str,
    ) -> Result<Registry, MembershipError> {
        let me = options.node_id.clone();
        if !is_valid_key(&me) {
            return Err(MembershipError::InvalidNodeId { node_id: me });
        }
        let store = bucket(js, &options.prefix, options.replicas).await?;
        // Made before the first read, so nothing written in between is missed.
        let watcher = store
            .watch_all()
            .await
            .map_err(|e| nats("watching the membership bucket", e))?;
        let record = NodeRecord {
            node_id: me.clone(),
            advertise: advertise.to_owned(),
            incarnation: rand::random(),
            started_ms: wall_ms(),
            draining: false,
        };
        let revision = claim(&store, &record).await?;
        // After the claim, which may have waited out a dead process's record: our record
        // landed now, not when the claim began.
        let sent = Instant::now();
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store,
            me,
            incarnation: record.incarnation,
            state: Mutex::new(State {
                record,
                revision,
                landed: Some((sent, wall_ms())),
                displaced_by: None,
                seen: HashMap::new(),
                polled_at: None,
            }),
            changes,
        });
        shared.poll_once(true).await?;
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(heartbeat(Arc::clone(&shared), stopped.clone()));
        tokio::spawn(follow(Arc::clone(&shared), watcher, stopped.clone()));
        tokio::spawn(poll(Arc::clone(&shared), stopped));
        tracing::info!(node = %shared.me, incarnation = shared.incarnation, "joined the cluster membership");
        Ok(Registry { shared, stop })
    }

    pub fn node_id(&self) -> &str {
        &self.shared.me
    }

    /// The live nodes, sorted by id: this one while its heartbeats land and it is neither
    /// draining nor displaced, the others by the rule of the module docs.
    pub fn live(&self) -> Vec<NodeId> {
        let now = Instant::now();
        let state = self.shared.lock();
        let mut live: Vec<NodeId> = state
            .seen
            .iter()
            .filter(|(key, seen)| **key != self.shared.me && seen.is_live(now))
            .map(|(key, _)| key.clone())
            .collect();
        if state.self_live(now) {
            live.push(self.shared.me.clone());
        }
        live.sort_unstable();
        live
    }

    /// Whether this node's view of the bucket is recent: its own heartbeat and a full read
    /// both succeeded within [`LIVE_WITHIN`]. When NATS is out of reach every peer looks
    /// dead; a driver must not plan on that.
    pub fn is_in_touch(&self) -> bool {
        let now = Instant::now();
        let state = self.shared.lock();
        let recent = |at: Option<Instant>| {
            at.is_some_and(|at| now.saturating_duration_since(at) <= LIVE_WITHIN)
        };
        recent(state.landed.map(|(at, _)| at)) && recent(state.polled_at)
    }

    /// Another process took this node's id over (see the module docs): this one is not
    /// live any more, whatever the bucket shows under its id.
    pub fn is_displaced(&self) -> bool {
        self.shared.lock().displaced_by.is_some()
    }

    /// Marks this node draining (SIGTERM): from now on it is not live, here at once and
    /// for the others as soon as the record lands (tried a few times; the heartbeat keeps
    /// putting it anyway).
    pub async fn set_draining(&self) -> Result<(), MembershipError> {
        self.shared.lock().record.draining = true;
        self.shared.bump();
        let mut last = Ok(false);
        for _ in 0..DRAINING_ATTEMPTS_MAX {
            last = self.shared.beat().await;
            if matches!(last, Ok(true)) {
                return Ok(());
            }
        }
        last.map(|_| ())
    }

    /// Every record in the bucket as this node last read it, this node's own included,
    /// sorted by node id.
    pub fn records(&self) -> Vec<NodeStatus> {
        let now = Instant::now();
        let state = self.shared.lock();
        let mut records: Vec<NodeStatus> = state
            .seen
            .iter()
            .filter(|(key, _)| **key != self.shared.me)
            .filter_map(|(_, seen)| {
                Some(NodeStatus {
                    record: seen.record.clone()?,
                    revision: seen.revision,
                    last_seen_ms: seen.server_ms,
                    live: seen.is_live(now),
                })
            })
            .collect();
        let mine_ms = state.seen.get(&self.shared.me).map(|seen| seen.server_ms);
        records.push(NodeStatus {
            record: state.record.clone(),
            revision: state.revision,
            last_seen_ms: mine_ms.or(state.landed.map(|(_, ms)| ms)).unwrap_or(0),
            live: state.self_live(now),
        });
        records.sort_unstable_by(|left, right| left.record.node_id.cmp(&right.record.node_id));
        records
    }

    /// A receiver that sees a change whenever the live set or a draining flag may have
    /// changed (liveness also lapses with time alone: poll as well).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Stops the heartbeats, the watch and the poll. The record stays until it ages out;
    /// the others see this node dead [`LIVE_WITHIN`] after its last heartbeat (a crash looks
    /// the same).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Stops, then deletes the record (if it is still ours), so the others see this node
    /// gone at once.
    pub async fn leave(&self) -> Result<(), MembershipError> {
        self.stop();
        let revision = {
            let state = self.shared.lock();
            if state.displaced_by.is_some() {
                return Ok(());
            }
            state.revision
        };
        self.shared
            .store
            .delete_expect_revision(&self.shared.me, Some(revision))
            .await
            .map_err(|e| nats("deleting this node's record", e))
    }
}

impl Drop for Registry {
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

    /// Puts our record on the revision of our last put. `Ok(true)` when it landed.
    async fn beat(&self) -> Result<bool, MembershipError> {
        let (record, revision) = {
            let state = self.lock();
            if state.displaced_by.is_some() {
                return Ok(false);
            }
            (state.record.clone(), state.revision)
        };
        let sent = Instant::now();
        match self.store.update(&self.me, encode(&record), revision).await {
            Ok(revision) => {
                self.landed(revision, sent);
                Ok(true)
            }
            // Refused (or unanswered): look at what the key holds now.
            Err(refused) => self.after_refused_beat(&record, sent, refused).await,
        }
    }

    fn landed(&self, revision: u64, sent: Instant) {
        let was_live = {
            let mut state = self.lock();
            let was_live = state.self_live(Instant::now());
            state.revision = state.revision.max(revision);
            state.landed = Some((sent, wall_ms()));
            was_live
        };
        if !was_live {
            self.bump();
        }
    }

    async fn after_refused_beat(
        &self,
        record: &NodeRecord,
        sent: Instant,
        refused: impl std::fmt::Display,
    ) -> Result<bool, MembershipError> {
        let entry = self.store.entry(self.me.as_str()).await.map_err(|e| {
            nats(
                &format!("heartbeat refused ({refused}); reading the record"),
                e,
            )
        })?;
        match entry {
            Some(entry) if entry.operation == Operation::Put => match decode(&entry.value) {
                // Our own earlier put, whose answer was lost: carry on from its revision
                // (the next beat puts the record as it is now).
                Some(found) if found.incarnation == self.incarnation => {
                    let mut state = self.lock();
                    state.revision = state.revision.max(entry.revision);
                    Ok(false)
                }
                found => {
                    let other = found.map_or(0, |found| found.incarnation);
                    tracing::error!(node = %self.me, other, "another process took this node id over; this node stops heartbeating and hands its partitions over");
                    self.lock().displaced_by = Some(other);
                    self.bump();
                    Ok(false)
                }
            },
            // Gone (aged out while NATS was out of reach, or deleted): put it back.
            _ => match self.store.create(&self.me, encode(record)).await {
                Ok(revision) => {
                    self.landed(revision, sent);
                    Ok(true)
                }
                Err(error) => Err(nats("putting this node's record back", error)),
            },
        }
    }

    /// Takes in one entry of the bucket (from the watch or the poll). `at_start`: the first
    /// read, whose records count as not changed yet.
    fn observe(&self, entry: &Entry, at_start: bool) {
        let now = Instant::now();
        let changed = {
            let mut state = self.lock();
            match entry.operation {
                Operation::Delete | Operation::Purge => {
                    let newer = state
                        .seen
                        .get(&entry.key)
                        .is_some_and(|seen| entry.revision > seen.revision);
                    newer && state.seen.remove(&entry.key).is_some()
                }
                Operation::Put => self.observe_put(&mut state, entry, at_start, now),
            }
        };
        if changed {
            self.bump();
        }
    }

    /// True when the put changed the live set or a draining flag.
    fn observe_put(&self, state: &mut State, entry: &Entry, at_start: bool, now: Instant) -> bool {
        let known = state.seen.get(&entry.key).cloned();
        if known
            .as_ref()
            .is_some_and(|seen| seen.revision >= entry.revision)
        {
            return false;
        }
        let record = decode(&entry.value);
        let mut displaced_now = false;
        if entry.key == self.me {
            let other = record.as_ref().map_or(0, |found| found.incarnation);
            if other != self.incarnation
                && entry.revision > state.revision
                && state.displaced_by.is_none()
            {
                tracing::error!(node = %self.me, other, "another process wrote this node's record; this node hands its partitions over");
                state.displaced_by = Some(other);
                displaced_now = true;
            }
        }
        let seen = Seen {
            record,
            revision: entry.revision,
            server_ms: server_ms(entry),
            changed_at: (known.is_some() || !at_start).then_some(now),
        };
        let draining = |seen: &Seen| seen.record.as_ref().map(|record| record.draining);
        let changed = known.as_ref().is_none_or(|known| {
            known.is_live(now) != seen.is_live(now) || draining(known) != draining(&seen)
        });
        state.seen.insert(entry.key.clone(), seen);
        changed || displaced_now
    }

    /// Reads the whole bucket: every key's entry, and drops the records that are gone.
    async fn poll_once(&self, at_start: bool) -> Result<(), MembershipError> {
        let keys: Vec<String> = self
            .store
            .keys()
            .await
            .map_err(|e| nats("listing the membership bucket", e))?
            .try_collect()
            .await
            .map_err(|e| nats("listing the membership bucket", e))?;
        for key in &keys {
            if let Some(entry) = self.read(key).await? {
                self.observe(&entry, at_start);
            }
        }
        let missing: Vec<String> = self
            .lock()
            .seen
            .keys()
            .filter(|key| !keys.contains(key))
            .cloned()
            .collect();
        for key in missing {
            // Listed as gone; make sure it did not come back since the listing.
            match self.read(&key).await? {
                Some(entry) => self.observe(&entry, at_start),
                None => {
                    if self.lock().seen.remove(&key).is_some() {
                        self.bump();
                    }
                }
            }
        }
        self.lock().polled_at = Some(Instant::now());
        Ok(())
    }

    async fn read(&self, key: &str) -> Result<Option<Entry>, MembershipError> {
        self.store
            .entry(key)
            .await
            .map_err(|e| nats(&format!("reading the record of {key}"), e))
    }
}

/// The first write of our record: refuses an id in use, takes a dead process's record over.
async fn claim(store: &Store, record: &NodeRecord) -> Result<u64, MembershipError> {
    let key = record.node_id.as_str();
    for _ in 0..CLAIM_ATTEMPTS_MAX {
        let found = store
            .entry(key)
            .await
            .map_err(|e| nats("reading this node id's record", e))?;
        let written = match found {
            Some(entry) if entry.operation == Operation::Put => {
                wait_until_still(store, key, &entry).await?;
                tracing::warn!(node = key, "this node id's record has not changed for 3 s: its process is gone; taking the id over");
                // Refused: the key moved after all; look again.
                store.update(key, encode(record), entry.revision).await.ok()
            }
            _ => match store.create(key, encode(record)).await {
                Ok(revision) => Some(revision),
                Err(error) if error.kind() == CreateErrorKind::AlreadyExists => None,
                Err(error) => return Err(nats("creating this node's record", error)),
            },
        };
        if let Some(revision) = written {
            return Ok(revision);
        }
    }
    Err(MembershipError::Nats(format!(
        "the record of node id {key} keeps changing under this start"
    )))
}

/// Returns once `entry` (our id's record, of another process) has stayed the same for
/// [`LIVE_WITHIN`], or is gone; refuses when it changes meanwhile.
async fn wait_until_still(store: &Store, key: &str, entry: &Entry) -> Result<(), MembershipError> {
    let deadline = Instant::now() + LIVE_WITHIN;
    let other = |entry: &Entry| decode(&entry.value).map_or(0, |record| record.incarnation);
    while Instant::now() < deadline {
        tokio::time::sleep(CLAIM_LOOK_EVERY).await;
        let now = store
            .entry(key)
            .await
            .map_err(|e| nats("reading this node id's record", e))?;
        match now {
            Some(now) if now.operation == Operation::Put && now.revision > entry.revision => {
                return Err(MembershipError::NodeIdInUse {
                    node_id: key.to_owned(),
                    incarnation: other(&now),
                })
            }
            Some(now) if now.operation == Operation::Put => {}
            _ => return Ok(()),
        }
    }
    Ok(())
}

async fn heartbeat(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop_requested(&mut stop) => return,
        }
        if let Err(error) = shared.beat().await {
            tracing::warn!(%error, "heartbeat failed; retrying");
        }
    }
}

/// Follows the watch; makes it again when it ends or fails.
async fn follow(shared: Arc<Shared>, first: Watch, mut stop: watch::Receiver<bool>) {
    let mut watcher = Some(first);
    loop {
        let current = match watcher.take() {
            Some(current) => Some(current),
            None => match shared.store.watch_all().await {
                Ok(current) => Some(current),
                Err(error) => {
                    tracing::warn!(%error, "watching the membership bucket failed; the poll goes on");
                    None
                }
            },
        };
        if let Some(mut current) = current {
            loop {
                tokio::select! {
                    next = current.next() => match next {
                        Some(Ok(entry)) => shared.observe(&entry, false),
                        Some(Err(error)) => {
                            tracing::warn!(%error, "the membership watch failed; making it again");
                            break;
                        }
                        None => break,
                    },
                    _ = stop_requested(&mut stop) => return,
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_RETRY_PAUSE) => {}
            _ = stop_requested(&mut stop) => return,
        }
    }
}

async fn poll(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(POLL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop_requested(&mut stop) => return,
        }
        if let Err(error) = shared.poll_once(false).await {
            tracing::warn!(%error, "reading the membership bucket failed; retrying");
        }
    }
}

/// Resolves once `stop` says so, or its sender is gone.
pub(crate) async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The bucket's key rule (async-nats' own check is private): `[-/_=.a-zA-Z0-9]+`, not
/// starting or ending with a dot.
fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=' | '.'))
}

fn encode(record: &NodeRecord) -> bytes::Bytes {
    // A struct of strings, integers and a bool always encodes.
    serde_json::to_vec(record).unwrap_or_default().into()
}

fn decode(value: &[u8]) -> Option<NodeRecord> {
    serde_json::from_slice(value).ok()
}

/// The server's timestamp of `entry`, unix ms.
// TODO(builder): assumes async-nats' default `time` backend (`DateTime` is
// `time::OffsetDateTime`); with its `chrono` feature this is `timestamp_millis()`.
fn server_ms(entry: &Entry) -> i64 {
    i64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked_against_the_key_rule() {
        assert!(is_valid_key("node-1"));
        assert!(is_valid_key("eu_west.a=1/2"));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key(".node"));
        assert!(!is_valid_key("node."));
        assert!(!is_valid_key("node 1"));
        assert!(!is_valid_key("node*"));
    }

    #[test]
    fn a_record_round_trips_as_json() {
        let record = NodeRecord {
            node_id: "node-1".into(),
            advertise: "10.0.0.1:7001".into(),
            incarnation: u64::MAX,
            started_ms: 1_700_000_000_000,
            draining: true,
        };
        assert_eq!(decode(&encode(&record)), Some(record));
        assert_eq!(decode(b"not json"), None);
    }

    #[test]
    fn a_record_seen_only_at_start_is_not_live_and_a_draining_one_never() {
        let now = Instant::now();
        let record = NodeRecord {
            node_id: "b".into(),
            advertise: String::new(),
            incarnation: 1,
            started_ms: 0,
            draining: false,
        };
        let mut seen = Seen {
            record: Some(record.clone()),
            revision: 1,
            server_ms: 0,
            changed_at: None,
        };
        assert!(!seen.is_live(now));
        seen.changed_at = Some(now);
        assert!(seen.is_live(now));
        assert!(!seen.is_live(now + LIVE_WITHIN + Duration::from_millis(1)));
        seen.record = Some(NodeRecord {
            draining: true,
            ..record
        });
        assert!(!seen.is_live(now));
    }
}
