//! [`JetStreamJournal`]: the engine's journal on NATS JetStream, one fenced stream per
//! partition and one for the catalog, for a node that owns every partition.
//!
//! A shard's batch becomes one message per lane it touched (item events go to their
//! partition's lane, promotion-level events to the catalog's), appended by the lanes' writer
//! tasks (see `writer`). The call returns once every message is on a quorum; if JetStream
//! does not answer within the patience, the shard hears "pending", refuses writes and answers
//! reads, and asks again with [`Journal::pending_append`] until the messages land.
//!
//! Opening: the cluster record (partition count, deployment id), every lane's lease (waiting
//! while another node holds it; each kept from the moment it is taken), a new epoch, a
//! takeover record on every lane conditional on its tail, then the snapshot and every lane's
//! batches before its takeover record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::Context;
use async_nats::jetstream::object_store::ObjectStore;
use async_nats::{ConnectOptions, ServerAddr};
use bytes::Bytes;
use seckill_engine::{
    EngineImage, Event, Journal, JournalError, PendingAppend, Recovery, EVENT_VERSION,
};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch};

use super::error::{nats, AppendError, ClusterError, LeaseError};
use super::lease::Lease;
use super::meta::{self, ClusterRecord};
use super::names::{all_lanes, item_lane, Names, CATALOG_LANE};
use super::options::ClusterOptions;
use super::partition_log::{PartitionLog, StreamSettings};
use super::snapshot::{self, SnapshotFile};
use super::tail::read_range;
use super::writer::{keep_lease, spawn_writer, Job, LaneHandle, LeaseMode, LeaseState};
use crate::journal::layout::encode_batch;

/// How often `open` asks again for a lease another node holds.
const LEASE_POLL: Duration = Duration::from_millis(500);
/// How long a JetStream request may take before it counts as unanswered (and is retried).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a takeover record is tried before `open` gives up.
const TAKEOVER_ATTEMPTS: usize = 20;

pub(crate) type Answer = oneshot::Receiver<Result<u64, AppendError>>;

/// The local sequence of a snapshot cut and every lane's `(lane, last sequence)` at it.
type Cut = (u64, Vec<(u32, u64)>);

/// The journal on JetStream. See the module docs.
pub struct JetStreamJournal {
    runtime: Option<Runtime>,
    js: Context,
    names: Names,
    record: ClusterRecord,
    epoch: u64,
    node_id: String,
    patience: Duration,
    /// The largest message sent (see [`MESSAGE_BYTES_MAX`]).
    message_bytes_max: usize,
    /// Indexed by lane.
    lanes: HashMap<u32, LaneHandle>,
    snapshots: ObjectStore,
    /// This process's batch count: the engine's sequence numbers (sinks, snapshot headers).
    local_seq: AtomicU64,
    /// Batches whose append outlived the patience, by the shard thread that appended them.
    pending: Mutex<HashMap<ThreadId, Vec<Answer>>>,
    /// Per lane: everything up to here is in SQL (the flusher's cursor).
    floors: HashMap<u32, AtomicU64>,
    /// Per lane: the last sequence the latest snapshot holds.
    snapshot_seqs: HashMap<u32, AtomicU64>,
    stop_leases: Arc<watch::Sender<bool>>,
    /// Where every lane stood at the last `snapshot_cut` (the shards paused), with the
    /// local sequence it was taken at.
    cut: Mutex<Option<Cut>>,
}

impl std::fmt::Debug for JetStreamJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamJournal")
            .field("node_id", &self.node_id)
            .field("partitions", &self.record.partitions)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// A lane taken (at open, or by a partition journal's take): its lease (kept by its
/// keeper task) and its log.
pub(crate) struct Taken {
    pub lane: u32,
    pub lease_epoch: u64,
    pub state: Arc<LeaseState>,
    pub log: PartitionLog,
}

impl JetStreamJournal {
    /// Connects, takes every lane and reads what recovery needs. Blocking (the journal runs
    /// its own runtime): call it from a plain thread or `spawn_blocking`.
    pub fn open(
        options: &ClusterOptions,
    ) -> Result<(Arc<JetStreamJournal>, Recovery), ClusterError> {
        let runtime = journal_runtime()?;
        let opened = runtime.block_on(open_async(options, runtime.handle()))?;
        let (journal, recovery) = opened.into_journal(runtime);
        Ok((Arc::new(journal), recovery))
    }

    pub fn deployment_id(&self) -> &str {
        &self.record.deployment_id
    }

    pub fn partitions(&self) -> u32 {
        self.record.partitions
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The lanes this node writes, the catalog first.
    pub fn lanes(&self) -> Vec<u32> {
        all_lanes(self.record.partitions)
    }

    /// The last sequence of `lane` this node's appends reached.
    pub fn lane_seq(&self, lane: u32) -> u64 {
        self.lanes
            .get(&lane)
            .map_or(0, |handle| handle.acked_seq.load(Ordering::Acquire))
    }

    /// Releases the leases (a clean hand-over: another node may take the lanes at once).
    /// Call it after the engine stopped. Blocking.
    pub fn shutdown(&self) {
        let _ = self.stop_leases.send(true);
        // The keepers release their leases when told; give them a moment to do it.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && self.lanes.values().any(|l| !l.state.is_settled()) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `future` on the journal's runtime, from a thread outside it.
    pub(crate) fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        match &self.runtime {
            Some(runtime) => runtime.block_on(future),
            None => unreachable!("the runtime lives as long as the journal"),
        }
    }

    pub(crate) fn js(&self) -> &Context {
        &self.js
    }

    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    /// Everything of `lane` up to `seq` is in SQL: the stream may be purged up to there.
    pub(crate) fn set_floor(&self, lane: u32, seq: u64) {
        if let Some(floor) = self.floors.get(&lane) {
            floor.fetch_max(seq, Ordering::AcqRel);
        }
    }

    /// Sends each lane's part of `events` to its writer; the answers to wait for.
    fn submit(&self, events: &[Event]) -> Result<Vec<Answer>, JournalError> {
        let mut by_lane: Vec<(u32, Vec<Event>)> = Vec::new();
        for event in events {
            let lane = match event.item_key() {
                Some(key) => item_lane(key, self.record.partitions),
                None => CATALOG_LANE,
            };
            match by_lane.iter_mut().find(|(l, _)| *l == lane) {
                Some((_, part)) => part.push(event.clone()),
                None => by_lane.push((lane, vec![event.clone()])),
            }
        }
        let mut answers = Vec::with_capacity(by_lane.len());
        for (lane, part) in by_lane {
            let handle = self
                .lanes
                .get(&lane)
                .ok_or_else(|| JournalError(format!("lane {lane} is not this node's")))?;
            let mut payloads = Vec::new();
            encode_parts(&part, self.message_bytes_max, &mut payloads)?;
            // In order, to one writer: a prefix of an item's events is a valid history, so
            // a batch cut into messages that land one by one is never inconsistent.
            for payload in payloads {
                let (done, answer) = oneshot::channel();
                handle
                    .jobs
                    .send(Job { payload, done })
                    .map_err(|_| JournalError(format!("the writer of lane {lane} stopped")))?;
                answers.push(answer);
            }
        }
        Ok(answers)
    }

    /// Waits for `answers` until `deadline`; the ones still unanswered are returned.
    fn wait(&self, answers: Vec<Answer>, deadline: tokio::time::Instant) -> Waited {
        self.block_on(async move {
            let mut answers = answers.into_iter();
            while let Some(mut answer) = answers.next() {
                match tokio::time::timeout_at(deadline, &mut answer).await {
                    Ok(Ok(Ok(_))) => {}
                    Ok(Ok(Err(error))) => return Waited::Failed(JournalError(error.to_string())),
                    Ok(Err(_)) => {
                        return Waited::Failed(JournalError("a lane writer stopped".into()))
                    }
                    Err(_) => {
                        let mut left = vec![answer];
                        left.extend(answers);
                        return Waited::Pending(left);
                    }
                }
            }
            Waited::Done
        })
    }

    fn next_local_seq(&self) -> u64 {
        self.local_seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn check_all_held(&self) -> Result<(), JournalError> {
        match self.lanes.values().find(|l| !l.state.is_held()) {
            Some(lane) => Err(JournalError(format!(
                "lane {} is not held for sure; no snapshot",
                lane.lane
            ))),
            None => Ok(()),
        }
    }

    /// Purges each lane below what both the snapshot and SQL hold.
    fn purge(&self) {
        if self.check_all_held().is_err() {
            return;
        }
        for lane in self.lanes() {
            let snapshot = self
                .snapshot_seqs
                .get(&lane)
                .map_or(0, |s| s.load(Ordering::Acquire));
            let floor = self
                .floors
                .get(&lane)
                .map_or(0, |f| f.load(Ordering::Acquire));
            let keep_after = snapshot.min(floor);
            if keep_after == 0 {
                continue;
            }
            let stream = self.names.stream(lane);
            let js = self.js.clone();
            let purged = self.block_on(async move {
                let handle = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
                handle
                    .purge()
                    .sequence(keep_after + 1)
                    .await
                    .map_err(|e| e.to_string())
            });
            if let Err(error) = purged {
                tracing::warn!(lane, %error, "purging a lane failed; it is tried again after the next snapshot");
            }
        }
    }
}

/// The largest message the journal sends (less when the server's `max_payload` is under
/// twice this): half of NATS's default `max_payload` (1 MiB).
const MESSAGE_BYTES_MAX: usize = 512 * 1024;

/// Encodes `events` as one message, or as several in order when one would be too large.
pub(crate) fn encode_parts(
    events: &[Event],
    bytes_max: usize,
    out: &mut Vec<Bytes>,
) -> Result<(), JournalError> {
    let payload = encode_batch(events).map_err(JournalError::from)?;
    if payload.len() <= bytes_max || events.len() == 1 {
        out.push(Bytes::from(payload));
        return Ok(());
    }
    let (first, second) = events.split_at(events.len() / 2);
    encode_parts(first, bytes_max, out)?;
    encode_parts(second, bytes_max, out)
}

enum Waited {
    Done,
    Failed(JournalError),
    Pending(Vec<Answer>),
}

impl Journal for JetStreamJournal {
    fn append(&self, events: &[Event]) -> Result<u64, JournalError> {
        let deadline = tokio::time::Instant::now() + self.patience;
        let answers = self.submit(events)?;
        match self.wait(answers, deadline) {
            Waited::Done => Ok(self.next_local_seq()),
            Waited::Failed(error) => Err(error),
            Waited::Pending(left) => {
                self.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(std::thread::current().id(), left);
                Err(JournalError(format!(
                    "JetStream did not answer within {} ms; the batch is still being written",
                    self.patience.as_millis()
                )))
            }
        }
    }

    fn pending_append(&self) -> PendingAppend {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let thread = std::thread::current().id();
        let Some(answers) = pending.get_mut(&thread) else {
            return PendingAppend::Final;
        };
        let mut failure = None;
        answers.retain_mut(|answer| match answer.try_recv() {
            Ok(Ok(_)) => false,
            Ok(Err(error)) => {
                failure = Some(JournalError(error.to_string()));
                false
            }
            Err(oneshot::error::TryRecvError::Empty) => true,
            Err(oneshot::error::TryRecvError::Closed) => {
                failure = Some(JournalError("a lane writer stopped".into()));
                false
            }
        });
        if let Some(error) = failure {
            pending.remove(&thread);
            return PendingAppend::Failed(error);
        }
        if answers.is_empty() {
            pending.remove(&thread);
            return PendingAppend::Landed(self.next_local_seq());
        }
        PendingAppend::Waiting
    }

    fn last_seq(&self) -> u64 {
        self.local_seq.load(Ordering::Acquire)
    }

    fn snapshot_cut(&self) -> u64 {
        let lane_seqs = self
            .lanes()
            .into_iter()
            .map(|lane| (lane, self.lane_seq(lane)))
            .collect();
        let seq = self.local_seq.load(Ordering::Acquire);
        *self.cut.lock().unwrap_or_else(PoisonError::into_inner) = Some((seq, lane_seqs));
        seq
    }

    fn save_snapshot(&self, image: &EngineImage) -> Result<(), JournalError> {
        // A node that may have lost a lane must not replace the owner's snapshot (nor purge
        // its streams). What is left: a pause between this check and the write (see
        // ARCHITECTURE.md, "The journal on JetStream").
        self.check_all_held()?;
        // The lanes as they stood while the shards were paused for this very image: read
        // now, after they resumed, they could be past it.
        let lane_seqs = match self
            .cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some((seq, lane_seqs)) if seq == image.through_seq => lane_seqs,
            _ => {
                return Err(JournalError(
                    "no cut of the lanes for this image; snapshot skipped".into(),
                ))
            }
        };
        let file = SnapshotFile {
            image: image.clone(),
            lane_seqs: lane_seqs.clone(),
        };
        let store = self.snapshots.clone();
        self.block_on(async move { snapshot::save(&store, &file).await })
            .map_err(|e| JournalError(e.to_string()))?;
        for (lane, seq) in lane_seqs {
            if let Some(slot) = self.snapshot_seqs.get(&lane) {
                slot.store(seq, Ordering::Release);
            }
        }
        self.purge();
        Ok(())
    }
}

impl Drop for JetStreamJournal {
    fn drop(&mut self) {
        let _ = self.stop_leases.send(true);
        // Dropping a runtime blocks; this may run inside another runtime's task.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What `open_async` gathered, before the journal owns its runtime.
struct Opened {
    js: Context,
    names: Names,
    record: ClusterRecord,
    epoch: u64,
    node_id: String,
    patience: Duration,
    message_bytes_max: usize,
    lanes: HashMap<u32, LaneHandle>,
    snapshots: ObjectStore,
    snapshot_seqs: Vec<(u32, u64)>,
    recovery: Recovery,
    stop_leases: Arc<watch::Sender<bool>>,
}

impl Opened {
    fn into_journal(self, runtime: Runtime) -> (JetStreamJournal, Recovery) {
        let lanes_all: Vec<u32> = self.lanes.keys().copied().collect();
        let seq_of = |lane: u32| {
            self.snapshot_seqs
                .iter()
                .find(|(l, _)| *l == lane)
                .map_or(0, |(_, s)| *s)
        };
        let journal = JetStreamJournal {
            runtime: Some(runtime),
            js: self.js,
            names: self.names,
            record: self.record,
            epoch: self.epoch,
            node_id: self.node_id,
            patience: self.patience,
            message_bytes_max: self.message_bytes_max,
            floors: lanes_all.iter().map(|&l| (l, AtomicU64::new(0))).collect(),
            snapshot_seqs: lanes_all
                .iter()
                .map(|&l| (l, AtomicU64::new(seq_of(l))))
                .collect(),
            lanes: self.lanes,
            snapshots: self.snapshots,
            local_seq: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            stop_leases: self.stop_leases,
            cut: Mutex::new(None),
        };
        (journal, self.recovery)
    }
}

async fn open_async(
    options: &ClusterOptions,
    runtime: &tokio::runtime::Handle,
) -> Result<Opened, ClusterError> {
    let names = Names::new(&options.prefix);
    let (js, message_bytes_max) = connect(options).await?;
    // A cluster that just started (or is electing) answers "timed out" for a while: every
    // step of opening is retried until the connect timeout.
    let deadline = Instant::now() + options.connect_timeout;
    let meta_bucket = names.meta_bucket();
    let meta_store = retry(deadline, || {
        meta::bucket(&js, &meta_bucket, options.replicas)
    })
    .await?;
    let record = retry(deadline, || meta::settle(&meta_store, options.partitions)).await?;
    let lease_bucket = names.lease_bucket();
    let lease_store = retry(deadline, || async {
        Lease::bucket(&js, &lease_bucket, options.lease_ttl, options.replicas)
            .await
            .map_err(ClusterError::from)
    })
    .await?;
    let lanes = all_lanes(record.partitions);
    let (stop_leases, stopped) = watch::channel(false);
    let stop_leases = Arc::new(stop_leases);
    // Each lease is kept (renewed) from the moment it is taken: taking the others may
    // wait for a long time.
    let leases = take_leases(
        &lease_store,
        &names,
        &lanes,
        options,
        runtime,
        (&stopped, &stop_leases),
    )
    .await?;
    // After the leases: a node that waited as a standby must number its orders above the
    // epochs of every start before it took over.
    let epoch = retry(deadline, || meta::next_epoch(&meta_store)).await?;
    let settings = StreamSettings {
        replicas: options.replicas,
        ..StreamSettings::default()
    };
    let mut taken = Vec::with_capacity(lanes.len());
    for (lane, (lease_epoch, state)) in lanes.iter().copied().zip(leases) {
        let (stream, subject) = (names.stream(lane), names.subject(lane));
        let log = retry(deadline, || async {
            PartitionLog::open(js.clone(), &stream, &subject, &settings, lease_epoch)
                .await
                .map_err(ClusterError::from)
        })
        .await?;
        taken.push(Taken {
            lane,
            lease_epoch,
            state,
            log,
        });
    }
    // Each takeover record is appended only while its lease is surely held, and is
    // conditional on the tail, so everything before it (read below) is all the old owners
    // ever wrote, and nothing of theirs can come after it.
    for lane in &mut taken {
        append_takeover(lane, &options.node_id).await?;
    }
    let snapshot_bucket = names.snapshot_bucket();
    let snapshots = retry(deadline, || {
        snapshot::bucket(&js, &snapshot_bucket, options.replicas)
    })
    .await?;
    let file = retry(deadline, || snapshot::load(&snapshots)).await?;
    let (image, snapshot_seqs) = match file {
        Some(file) => {
            check_image(&file.image)?;
            let seqs = file.lane_seqs.clone();
            (Some(file.image), seqs)
        }
        None => (None, Vec::new()),
    };
    let snapshot_file = SnapshotFile {
        image: image.clone().unwrap_or_else(empty_image),
        lane_seqs: snapshot_seqs.clone(),
    };
    let batches = read_tails(&js, &names, &taken, &snapshot_file).await?;
    let mut handles = HashMap::new();
    for Taken {
        lane, state, log, ..
    } in taken
    {
        // The task runs as long as the journal: nothing waits for its end.
        let (handle, _task) = spawn_writer(runtime, lane, log, state);
        handles.insert(lane, handle);
    }
    tracing::info!(
        node = %options.node_id,
        partitions = record.partitions,
        epoch,
        deployment_id = %record.deployment_id,
        batches = batches.len(),
        "JetStream journal opened"
    );
    let image = image.map(|mut image| {
        // The tails are numbered from 1 below: nothing of them is in the image.
        image.through_seq = 0;
        image
    });
    let numbered: Vec<_> = batches
        .into_iter()
        .enumerate()
        .map(|(n, events)| Ok((n as u64 + 1, events)))
        .collect();
    let recovery = Recovery {
        image,
        batches: Box::new(numbered.into_iter()),
        epoch,
    };
    Ok(Opened {
        js,
        names,
        record,
        epoch,
        node_id: options.node_id.clone(),
        patience: options.append_patience,
        message_bytes_max,
        lanes: handles,
        snapshots,
        snapshot_seqs,
        recovery,
        stop_leases,
    })
}

/// The runtime a journal owns (its writers, keepers and requests run there; the shards
/// block on it from their own threads).
pub(crate) fn journal_runtime() -> Result<Runtime, ClusterError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("seckill-jetstream")
        .enable_all()
        .build()
        .map_err(|e| nats("starting the JetStream runtime", e))
}

/// Runs `step` until it succeeds, a refusal that no retry changes, or `deadline`.
pub(crate) async fn retry<T, F, Fut>(deadline: Instant, mut step: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(error @ ClusterError::Nats(_)) if Instant::now() < deadline => {
                tracing::warn!(%error, "JetStream not ready; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

fn empty_image() -> EngineImage {
    EngineImage {
        version: EVENT_VERSION,
        through_seq: 0,
        promotions: Vec::new(),
        items: Vec::new(),
        guards: Vec::new(),
    }
}

fn check_image(image: &EngineImage) -> Result<(), ClusterError> {
    if image.version > EVENT_VERSION {
        return Err(ClusterError::NewerVersion {
            found: image.version,
            supported: EVENT_VERSION,
        });
    }
    Ok(())
}

/// The JetStream context and the largest message the journal may send on it.
pub(crate) async fn connect(options: &ClusterOptions) -> Result<(Context, usize), ClusterError> {
    let client = connect_client(options, &format!("seckill {}", options.node_id)).await?;
    let info = client.server_info();
    check_server_version(&info.version)?;
    // Half the server's limit: room for headers, and for a server whose limit is lower
    // than its neighbours'.
    let message_bytes_max = MESSAGE_BYTES_MAX.min(info.max_payload / 2).max(1);
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(REQUEST_TIMEOUT);
    Ok((js, message_bytes_max))
}

/// A NATS connection to `options.urls`, named `name`, tried again every 250 ms until
/// `options.connect_timeout`.
pub(crate) async fn connect_client(
    options: &ClusterOptions,
    name: &str,
) -> Result<async_nats::Client, ClusterError> {
    let urls = options.urls.join(",");
    let unreachable = |reason: String| ClusterError::Unreachable {
        urls: urls.clone(),
        reason,
    };
    let addresses: Vec<ServerAddr> = options
        .urls
        .iter()
        .map(|url| url.parse::<ServerAddr>())
        .collect::<Result<_, _>>()
        .map_err(|e| unreachable(format!("bad NATS URL: {e}")))?;
    let deadline = Instant::now() + options.connect_timeout;
    loop {
        let attempt = ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(2))
            .connect(addresses.clone())
            .await;
        match attempt {
            Ok(client) => return Ok(client),
            Err(error) if Instant::now() >= deadline => return Err(unreachable(error.to_string())),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The oldest nats-server the conditional appends are sound on (fixes of nats-server
/// issues #4320, #5794 and PRs #6194, #6485 to expected-sequence checks under load).
const SERVER_VERSION_MIN: (u32, u32) = (2, 11);

/// Refuses a server older than [`SERVER_VERSION_MIN`] (what the client can check of the
/// servers' settings; `sync_interval: always` it cannot see, hence the README).
fn check_server_version(version: &str) -> Result<(), ClusterError> {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < SERVER_VERSION_MIN {
        return Err(ClusterError::Nats(format!(
            "nats-server {version} is too old for the journal: {}.{} or later is required",
            SERVER_VERSION_MIN.0, SERVER_VERSION_MIN.1
        )));
    }
    Ok(())
}

/// Takes every lane's lease, waiting (up to `options.lease_wait`) while another node holds
/// some. Returned in the order of `lanes`.
async fn take_leases(
    store: &async_nats::jetstream::kv::Store,
    names: &Names,
    lanes: &[u32],
    options: &ClusterOptions,
    runtime: &tokio::runtime::Handle,
    (stopped, give_up): (&watch::Receiver<bool>, &Arc<watch::Sender<bool>>),
) -> Result<Vec<(u64, Arc<LeaseState>)>, ClusterError> {
    let started = Instant::now();
    let mut leases = Vec::with_capacity(lanes.len());
    let mut warned = false;
    // Since when NATS has failed every lease request in a row (a standby may wait for
    // hours, and must not give up on the first blip after its connect timeout).
    let mut unavailable_since: Option<Instant> = None;
    for &lane in lanes {
        loop {
            match Lease::acquire_key(
                store,
                names.lease_key(lane),
                &options.node_id,
                options.lease_ttl,
            )
            .await
            {
                Ok(lease) => {
                    let state = LeaseState::new(&options.node_id, lease.valid_until());
                    leases.push((lease.epoch(), Arc::clone(&state)));
                    runtime.spawn(keep_lease(
                        lease,
                        state,
                        stopped.clone(),
                        LeaseMode::AllOrNothing(Arc::clone(give_up)),
                    ));
                    break;
                }
                Err(LeaseError::Held { key, holder }) => {
                    unavailable_since = None;
                    let waited_too_long = options
                        .lease_wait
                        .is_some_and(|wait| started.elapsed() >= wait);
                    if waited_too_long {
                        return Err(ClusterError::LeaseHeld {
                            partition: key,
                            holder,
                        });
                    }
                    if !warned {
                        tracing::warn!(lease = %key, %holder, "another node holds this lane; waiting for its lease to be released or to lapse");
                        warned = true;
                    }
                    tokio::time::sleep(LEASE_POLL).await;
                }
                Err(error @ LeaseError::Unavailable { .. }) => {
                    let unreachable_for = *unavailable_since.get_or_insert_with(Instant::now);
                    if unreachable_for.elapsed() >= options.connect_timeout {
                        return Err(error.into());
                    }
                    tokio::time::sleep(LEASE_POLL).await;
                }
            }
        }
    }
    Ok(leases)
}

/// Every lane's batches after the snapshot, the catalog's first (the item events of a
/// partition belong to promotions the catalog creates). Takeover records are left out.
async fn read_tails(
    js: &Context,
    names: &Names,
    taken: &[Taken],
    file: &SnapshotFile,
) -> Result<Vec<Vec<Event>>, ClusterError> {
    let mut batches = Vec::new();
    for lane in taken {
        let from = file.seq_of(lane.lane) + 1;
        let to = lane.log.last_seq();
        let stream = names.stream(lane.lane);
        if from <= to {
            let first = first_seq(js, &stream).await?;
            if first > from {
                return Err(ClusterError::Nats(format!(
                    "stream {stream} starts at {first}, after the snapshot's {}: batches are missing",
                    from - 1
                )));
            }
        }
        for (_, events) in read_range(js, &stream, from, to).await? {
            if !events.is_empty() {
                batches.push(events);
            }
        }
    }
    Ok(batches)
}

pub(crate) async fn first_seq(js: &Context, stream: &str) -> Result<u64, ClusterError> {
    let mut handle = js
        .get_stream(stream)
        .await
        .map_err(|e| nats(&format!("opening stream {stream}"), e))?;
    let info = handle
        .info()
        .await
        .map_err(|e| nats(&format!("reading stream {stream}"), e))?;
    Ok(info.state.first_sequence)
}

/// Appends the takeover record of this ownership, conditional on the stream's tail. A
/// refusal means someone appended since the tail was read (an old owner's last batch): the
/// tail is read again and the record tried again, so it lands after everything they wrote.
pub(crate) async fn append_takeover(lane: &mut Taken, node: &str) -> Result<(), ClusterError> {
    let owner = format!("{node}/{}", lane.lease_epoch);
    for _ in 0..TAKEOVER_ATTEMPTS {
        if !lane.state.is_held() {
            return Err(ClusterError::LeaseHeld {
                partition: lane.log.stream().to_owned(),
                holder: "another node (this node's lease lapsed while it opened)".into(),
            });
        }
        let message_id = lane.log.next_message_id();
        match lane
            .log
            .publish(Bytes::new(), &message_id, Some(&owner))
            .await
        {
            Ok(_) => return Ok(()),
            Err(AppendError::Unknown { .. }) => {
                if lane.log.resolve_id(&message_id).await.unwrap_or(false) {
                    return Ok(());
                }
            }
            Err(AppendError::Fenced { .. }) => {
                if lane.log.resolve_id(&message_id).await.unwrap_or(false) {
                    return Ok(());
                }
            }
            Err(error) => return Err(error.into()),
        }
        lane.log.refresh().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ClusterError::Nats(format!(
        "the takeover record of {} was not acknowledged",
        lane.log.stream()
    )))
}

#[cfg(test)]
mod tests {
    use super::check_server_version;

    #[test]
    fn servers_older_than_2_11_are_refused() {
        assert!(check_server_version("2.9.25").is_err());
        assert!(check_server_version("2.10.22").is_err());
        assert!(check_server_version("garbage").is_err());
        assert!(check_server_version("2.11.0").is_ok());
        assert!(check_server_version("2.15.1").is_ok());
        assert!(check_server_version("3.0.0-beta").is_ok());
    }
}
