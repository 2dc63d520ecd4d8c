//! The delivery task of one events target: each round, for every lane of the journal in
//! the source's order, read after the target's cursor, turn a chunk of whole batches into
//! CloudEvents, send them, and move the cursor once the target acknowledged them all; save
//! the cursor with the derived item state, then let the journal trim up to what is saved.
//!
//! At least once, in order, never skipped: the cursor moves only over batches the target
//! acknowledged, and only over a contiguous run of sequence numbers (a hole is waited for,
//! as the SQL flusher waits, in case its batch is still being written; one older than the
//! gap wait is an append that failed after taking its number, and is passed). A failed
//! send is retried, from the first event the target did not acknowledge, after a capped
//! exponential backoff, forever; the events wait in the journal meanwhile (its floor does
//! not move). A failure ends the round, and the next one starts from the first lane again.
//!
//! Where a target starts: from its saved cursor. A target with none (new, or whose cursor
//! belongs to another deployment's journal) starts, on a node's own journal (RocksDB), at
//! its end: it receives the events decided from its first start on; on JetStream at the
//! start of what each stream keeps (a node that took the partitions over has no cursor of
//! the old owner's, and the streams keep what it had not delivered). That position is saved
//! before anything else happens, so a restart cannot move it later. A lane that appears
//! afterwards (a partition this node took over) is read from its start (or its stored
//! cursor); sequences the stream purged are passed as a hole.
//!
//! The cursor file is written at most every `save_interval` while events flow, and
//! whenever the target has caught up or stops: a crash delivers again what the file does
//! not cover (at least once), and the journal keeps it, since the floor follows the file.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use seckill_engine::Event;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::cloudevent::{decided_at_ms, CloudEventError, EventMaker};
use super::cursor::{CursorError, CursorRecord, CursorStore, CURSOR_FORMAT_VERSION};
use super::sink::{OutEvent, Sink};
use crate::sql::{EventSource, SINGLE_LANE};

/// Default bound on batches read from the journal at once.
pub const DEFAULT_READ_BATCHES_MAX: usize = 256;
/// Default bound on journal events per chunk (a chunk is whole batches, at least one), and
/// on CloudEvents per call to the sink.
pub const DEFAULT_CHUNK_EVENTS_MAX: usize = 500;
/// Default pause between two looks at the journal when it has nothing new.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Default first and last pause of the retry backoff.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Default bound on one call to the sink; past it the call counts as failed.
pub const DEFAULT_DELIVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default wait before a hole in a lane's sequence numbers is taken as permanent.
pub const DEFAULT_GAP_WAIT: Duration = Duration::from_secs(30);
/// Default least time between two writes of the cursor file while events flow (each is an
/// fsync and a rename; at 10,000 orders/s a write per chunk would be dozens a second).
pub const DEFAULT_SAVE_INTERVAL: Duration = Duration::from_millis(100);

/// How a deliverer runs.
#[derive(Debug, Clone)]
pub struct DeliverOptions {
    pub read_batches_max: usize,
    pub chunk_events_max: usize,
    pub poll_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub deliver_timeout: Duration,
    pub gap_wait: Duration,
    /// `Duration::ZERO`: the cursor file is written after every acknowledged chunk.
    pub save_interval: Duration,
}

impl Default for DeliverOptions {
    fn default() -> Self {
        DeliverOptions {
            read_batches_max: DEFAULT_READ_BATCHES_MAX,
            chunk_events_max: DEFAULT_CHUNK_EVENTS_MAX,
            poll_interval: DEFAULT_POLL_INTERVAL,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            deliver_timeout: DEFAULT_DELIVER_TIMEOUT,
            gap_wait: DEFAULT_GAP_WAIT,
            save_interval: DEFAULT_SAVE_INTERVAL,
        }
    }
}

/// What stops a deliverer, or keeps it from starting.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The cursor cannot be read (at start: the server refuses to start) or written.
    #[error(transparent)]
    Cursor(#[from] CursorError),
    /// A bug: a journal event could not be made into a CloudEvent. The task stops with its
    /// cursor where it was (nothing is skipped); the events wait in the journal.
    #[error("events to {target}: {source}")]
    Convert {
        target: String,
        #[source]
        source: CloudEventError,
    },
    #[error("the events task of {target} failed: {reason}")]
    Task { target: String, reason: String },
}

/// Where a deliverer stands (also exported as metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsStatus {
    /// Per lane, the last sequence number the target acknowledged.
    pub delivered_seq: BTreeMap<u32, u64>,
    /// Per lane, the last sequence number in the cursor file.
    pub saved_seq: BTreeMap<u32, u64>,
    /// Journal events not delivered yet, summed over the lanes (estimated from the mean
    /// batch size for batches not read yet).
    pub lag_events: u64,
    /// The age of the oldest event not delivered, over every lane; 0 when caught up.
    pub lag_ms: i64,
    /// Lanes whose cursor is below the journal's last sequence number when last looked at.
    pub lanes_behind: u32,
    pub delivered_total: u64,
    pub failures_total: u64,
    pub gaps_skipped_total: u64,
}

/// What the task shares with its handle.
#[derive(Debug, Default)]
struct Shared {
    delivered_seq: Mutex<BTreeMap<u32, u64>>,
    saved_seq: Mutex<BTreeMap<u32, u64>>,
    lag_events: AtomicU64,
    lag_ms: AtomicI64,
    lanes_behind: AtomicU32,
    delivered_total: AtomicU64,
    failures_total: AtomicU64,
    gaps_skipped_total: AtomicU64,
}

/// A running deliverer. Dropping it stops the task at its next step (the cursor saved
/// first); [`EventsHandle::shutdown`] waits for that.
#[derive(Debug)]
pub struct EventsHandle {
    label: String,
    shared: Arc<Shared>,
    /// `Some(deadline)`: finish the chunk in flight until the deadline, then stop.
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<Result<(), EventsError>>,
}

/// Starts delivering `source`'s events to `sink`, on the current tokio runtime.
///
/// `key` names the target's cursor in `store` ([`super::target::EventTarget::key`]);
/// `deployment` is the journal's deployment id (the CloudEvents `source`, the prefix of
/// every id, and whose journal the cursor's positions are in). Give `source` a view of its
/// own from [`super::floors::SharedFloors`] when other readers (the SQL flusher) share the
/// journal. A cursor that cannot be read is an error here, so the server can refuse to
/// start; an unreachable target is not (its events wait).
pub fn start_events(
    source: Arc<dyn EventSource>,
    sink: Box<dyn Sink>,
    store: Arc<dyn CursorStore>,
    key: String,
    deployment: String,
    options: DeliverOptions,
) -> Result<EventsHandle, EventsError> {
    check_options(&options);
    assert!(
        !deployment.is_empty(),
        "an events deployment id is required"
    );
    let label = sink.label();
    let record = initial_record(source.as_ref(), store.as_ref(), &key, &deployment, &label)?;
    let shared = Arc::new(Shared::default());
    set_seqs(&shared.delivered_seq, &record.lanes);
    set_seqs(&shared.saved_seq, &record.lanes);
    let (stop, stop_rx) = watch::channel(None);
    let deliverer = Deliverer {
        source,
        sink,
        store,
        key,
        label: label.clone(),
        maker: EventMaker::new(&deployment),
        backoff: options.backoff_min,
        options,
        saved_lanes: record.lanes.clone(),
        record,
        dirty: false,
        last_save: Instant::now(),
        save_retry_at: None,
        lanes: BTreeMap::new(),
        in_flight: None,
        shared: Arc::clone(&shared),
        stop: stop_rx,
        events_read_total: 0,
        batches_read_total: 0,
    };
    let task = tokio::spawn(deliverer.run());
    Ok(EventsHandle {
        label,
        shared,
        stop,
        task,
    })
}

/// Options a deliverer cannot run with are a bug of the caller.
fn check_options(options: &DeliverOptions) {
    assert!(
        options.read_batches_max > 0,
        "read_batches_max must be at least 1"
    );
    assert!(
        options.chunk_events_max > 0,
        "chunk_events_max must be at least 1"
    );
    assert!(
        options.backoff_min <= options.backoff_max,
        "backoff_min above backoff_max"
    );
}

/// The saved record, or, for a target without one of this deployment, a record at the end
/// of every lane, saved at once.
fn initial_record(
    source: &dyn EventSource,
    store: &dyn CursorStore,
    key: &str,
    deployment: &str,
    label: &str,
) -> Result<CursorRecord, CursorError> {
    match store.load(key)? {
        Some(mut record) if record.deployment == deployment => {
            record.version = CURSOR_FORMAT_VERSION;
            return Ok(record);
        }
        Some(record) => tracing::warn!(
            events_target = %label,
            found = %record.deployment,
            ours = %deployment,
            "the events cursor belongs to another deployment's journal; this target starts \
             at the end of this one"
        ),
        None => tracing::info!(
            events_target = %label,
            "new events target: it receives the events decided from now on"
        ),
    }
    let lanes = source
        .lanes()
        .into_iter()
        .map(|lane| (lane, start_of_new_target(source, lane)))
        .collect();
    let record = CursorRecord::new(deployment, lanes);
    // Before anything is delivered: a restart before the first delivery must start here
    // too, not at a later end of the journal.
    store.save(key, &record)?;
    Ok(record)
}

/// Where a target without a cursor starts on `lane`. The single lane of a node's own
/// journal (RocksDB): at its end, the events decided from now on. A JetStream lane: at its
/// start (what the stream still keeps), because "no cursor" there also means a node that
/// took the partitions over and has no file of the old owner's: starting at the end would
/// skip what the old owner had not delivered yet, and the stream keeps exactly that (it is
/// purged only below every reader's floor of the owner). Repeats carry the same ids.
fn start_of_new_target(source: &dyn EventSource, lane: u32) -> u64 {
    if lane == SINGLE_LANE {
        source.last_seq(lane)
    } else {
        0
    }
}

fn set_seqs(target: &Mutex<BTreeMap<u32, u64>>, seqs: &BTreeMap<u32, u64>) {
    target
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone_from(seqs);
}

fn get_seqs(source: &Mutex<BTreeMap<u32, u64>>) -> BTreeMap<u32, u64> {
    source
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

impl EventsHandle {
    /// The sink's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn status(&self) -> EventsStatus {
        let shared = &self.shared;
        EventsStatus {
            delivered_seq: get_seqs(&shared.delivered_seq),
            saved_seq: get_seqs(&shared.saved_seq),
            lag_events: shared.lag_events.load(Ordering::Relaxed),
            lag_ms: shared.lag_ms.load(Ordering::Relaxed),
            lanes_behind: shared.lanes_behind.load(Ordering::Acquire),
            delivered_total: shared.delivered_total.load(Ordering::Relaxed),
            failures_total: shared.failures_total.load(Ordering::Relaxed),
            gaps_skipped_total: shared.gaps_skipped_total.load(Ordering::Relaxed),
        }
    }

    /// Stops after the chunk in flight (given at most `grace` to be acknowledged), saves
    /// the cursor, and returns. Undelivered events wait in the journal for the next start.
    pub async fn shutdown(self, grace: Duration) -> Result<(), EventsError> {
        // Ignored error: the task may have ended already; its result says how.
        let _ = self.stop.send(Some(Instant::now() + grace));
        match self.task.await {
            Ok(result) => result,
            Err(error) => Err(EventsError::Task {
                target: self.label,
                reason: error.to_string(),
            }),
        }
    }
}

/// A hole in a lane's sequence numbers right after `after_seq`, and since when it is there.
#[derive(Debug, Clone, Copy)]
struct Gap {
    after_seq: u64,
    since: Instant,
}

/// What [`LaneRead::take`] kept of a read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Taken {
    batches: u64,
    events: u64,
    gaps_skipped: u64,
}

/// One lane as a target reads it (the SQL flusher's lane, for a target instead of tables).
#[derive(Debug)]
struct LaneRead {
    id: u32,
    /// The target acknowledged the lane up to here.
    cursor: u64,
    /// The lane is in `pending` up to here.
    read_seq: u64,
    /// Batches read and not yet acknowledged, contiguous from `cursor + 1` to `read_seq`.
    pending: VecDeque<(u64, Vec<Event>)>,
    pending_events: usize,
    gap: Option<Gap>,
}

impl LaneRead {
    fn new(id: u32, cursor: u64) -> LaneRead {
        LaneRead {
            id,
            cursor,
            read_seq: cursor,
            pending: VecDeque::new(),
            pending_events: 0,
            gap: None,
        }
    }

    /// Keeps the batches of a read (in sequence order) that continue `read_seq` without a
    /// hole, and those after a hole older than `gap_wait`. Stops at a younger hole.
    fn take(&mut self, batches: Vec<(u64, Vec<Event>)>, now: Instant, gap_wait: Duration) -> Taken {
        let mut taken = Taken::default();
        for (seq, events) in batches {
            if seq <= self.read_seq {
                continue;
            }
            if seq != self.read_seq + 1 {
                if !self.hole_is_permanent(seq, now, gap_wait) {
                    break;
                }
                taken.gaps_skipped += 1;
            }
            self.gap = None;
            self.read_seq = seq;
            self.pending_events += events.len();
            taken.events += events.len() as u64;
            taken.batches += 1;
            self.pending.push_back((seq, events));
        }
        taken
    }

    /// Whether the hole before `seq` has lasted `gap_wait`; starts timing a new hole.
    fn hole_is_permanent(&mut self, seq: u64, now: Instant, gap_wait: Duration) -> bool {
        let gap = match self.gap {
            Some(gap) if gap.after_seq == self.read_seq => gap,
            _ => {
                let gap = Gap {
                    after_seq: self.read_seq,
                    since: now,
                };
                self.gap = Some(gap);
                gap
            }
        };
        if now.duration_since(gap.since) < gap_wait {
            return false;
        }
        tracing::error!(
            lane = self.id,
            after_seq = self.read_seq,
            next_seq = seq,
            "events: the journal has no batches between these sequence numbers; skipping \
             the hole"
        );
        true
    }

    /// How many pending batches the next chunk takes: whole batches up to `events_max`
    /// journal events, and at least one.
    fn chunk_len(&self, events_max: usize) -> usize {
        let mut events = 0;
        let mut batches = 0;
        for (_, batch) in &self.pending {
            if batches > 0 && events + batch.len() > events_max {
                break;
            }
            events += batch.len();
            batches += 1;
        }
        batches
    }

    /// The first `batches` pending batches (`events` journal events) are acknowledged, up
    /// to `cursor_to`.
    fn delivered(&mut self, batches: usize, events: usize, cursor_to: u64) {
        debug_assert!(cursor_to > self.cursor);
        self.pending.drain(..batches);
        self.pending_events -= events;
        self.cursor = cursor_to;
    }

    /// Events not delivered: exact for what is read, estimated at `events_per_batch` for
    /// the batches up to `last_seq` not read yet.
    fn lag_events(&self, last_seq: u64, events_per_batch: f64) -> u64 {
        let unread_batches = last_seq.saturating_sub(self.read_seq);
        self.pending_events as u64 + (unread_batches as f64 * events_per_batch).round() as u64
    }

    /// The age of the oldest event not delivered, in ms: of the oldest pending event, or
    /// of the hole being waited for when nothing is pending; 0 when delivered up to
    /// `last_seq`.
    fn lag_ms(&self, last_seq: u64, now_ms: i64) -> i64 {
        if self.cursor >= last_seq {
            return 0;
        }
        let oldest_ms = self
            .pending
            .iter()
            .flat_map(|(_, events)| events.iter())
            .find_map(decided_at_ms);
        match (oldest_ms, self.gap) {
            (Some(oldest_ms), _) => (now_ms - oldest_ms).max(0),
            (None, Some(gap)) => i64::try_from(gap.since.elapsed().as_millis()).unwrap_or(i64::MAX),
            (None, None) => 0,
        }
    }
}

/// A chunk being sent: whole batches of one lane, as CloudEvents.
struct InFlight {
    lane: u32,
    batches: usize,
    journal_events: usize,
    /// The lane's cursor once the target acknowledged every event.
    cursor_to: u64,
    out: Vec<OutEvent>,
    /// How many of `out` the target acknowledged (a prefix).
    sent: usize,
}

/// What one step (of a lane, or of a round) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Delivered a chunk; there may be more.
    Delivered,
    /// Nothing to deliver now.
    Idle,
    /// Failed; wait for the backoff.
    Failed,
    /// Stopping, and the target did not acknowledge the chunk in flight in time.
    Abandoned,
}

/// The answer to sending the rest of a chunk.
enum Attempt {
    Acknowledged,
    Failed(String),
    Abandoned,
}

/// The task of one target.
struct Deliverer {
    source: Arc<dyn EventSource>,
    sink: Box<dyn Sink>,
    store: Arc<dyn CursorStore>,
    key: String,
    label: String,
    maker: EventMaker,
    options: DeliverOptions,
    /// Where the target stands: the lanes it acknowledged and the derived state after
    /// them, plus the effect on that state of the chunk in flight, if any (which is why
    /// nothing is saved while a chunk is in flight).
    record: CursorRecord,
    /// The lanes as the cursor file has them: the journal's floors.
    saved_lanes: BTreeMap<u32, u64>,
    /// `record` moved since it was saved.
    dirty: bool,
    last_save: Instant,
    /// After a failed save, no new try before this (a full disk must not flood the log).
    save_retry_at: Option<Instant>,
    /// Every lane being read, by lane.
    lanes: BTreeMap<u32, LaneRead>,
    in_flight: Option<InFlight>,
    backoff: Duration,
    shared: Arc<Shared>,
    stop: watch::Receiver<Option<Instant>>,
    /// For the estimate of events in batches not read yet, over every lane.
    events_read_total: u64,
    batches_read_total: u64,
}

impl Deliverer {
    async fn run(mut self) -> Result<(), EventsError> {
        metrics::gauge!("seckill_events_up", "target" => self.label.clone()).set(1.0);
        loop {
            if self.stopping() {
                return self.finish().await;
            }
            let step = match self.round().await {
                Ok(step) => step,
                Err(error) => {
                    // Its floor stays where it is (nothing is trimmed past it), but nobody
                    // would notice the target falling behind: say so loudly, and show it.
                    tracing::error!(events_target = %self.label, %error, "events delivery stopped");
                    metrics::gauge!("seckill_events_up", "target" => self.label.clone()).set(0.0);
                    return Err(error);
                }
            };
            if step == Step::Idle {
                // Caught up (or waiting for a hole): the file covers everything delivered.
                self.save_if_due(true).await;
            }
            self.publish_lag();
            let pause = match step {
                Step::Delivered | Step::Abandoned => None,
                Step::Idle => Some(self.options.poll_interval),
                Step::Failed => Some(self.next_backoff()),
            };
            if let Some(pause) = pause {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    // A stop (or a dropped handle) ends the pause; the loop's top sees it.
                    _ = self.stop.changed() => {}
                }
            }
        }
    }

    /// A shutdown was asked for, or the handle is gone.
    fn stopping(&self) -> bool {
        self.stop.borrow().is_some() || self.stop.has_changed().is_err()
    }

    /// Saves what was delivered, unless a chunk was left unacknowledged.
    async fn finish(mut self) -> Result<(), EventsError> {
        self.publish_lag();
        if self.in_flight.is_some() {
            // The derived state counts the unacknowledged chunk and the cursor does not: they
            // would not match in one record. The file stands; the next start delivers again
            // what it does not cover.
            tracing::warn!(
                events_target = %self.label,
                "events: stopped with a chunk not acknowledged; it is delivered again at the \
                 next start"
            );
            return Ok(());
        }
        if self.dirty {
            self.save().await?;
        }
        Ok(())
    }

    fn next_backoff(&mut self) -> Duration {
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(self.options.backoff_max);
        pause
    }

    fn count_failure(&self, what: &str, reason: &str) {
        self.shared.failures_total.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("seckill_events_failures_total", "target" => self.label.clone())
            .increment(1);
        tracing::warn!(events_target = %self.label, %reason, "events: {what} failed; retrying");
    }

    /// One round: the chunk in flight first, then the lanes brought in line with the
    /// source's and one step of each, in the source's order.
    async fn round(&mut self) -> Result<Step, EventsError> {
        let mut delivered = false;
        if self.in_flight.is_some() {
            match self.send().await {
                Step::Delivered => delivered = true,
                other => return Ok(other),
            }
            self.save_if_due(false).await;
        }
        for id in self.sync_lanes() {
            if self.stopping() {
                // Shutting down: the chunk that was in flight is done; the rest waits.
                break;
            }
            match self.lane_step(id).await? {
                Step::Delivered => delivered = true,
                Step::Idle => {}
                other => return Ok(other),
            }
        }
        Ok(if delivered {
            Step::Delivered
        } else {
            Step::Idle
        })
    }

    /// Brings `lanes` in line with the source's lanes now: takes up those that appeared,
    /// drops those the source no longer has (their cursors stay in the record). Returns
    /// the lanes in reading order.
    fn sync_lanes(&mut self) -> Vec<u32> {
        let order = self.source.lanes();
        self.lanes.retain(|id, _| {
            let kept = order.contains(id);
            if !kept {
                tracing::info!(lane = *id, "events: the journal no longer has this lane");
            }
            kept
        });
        for &id in &order {
            if !self.lanes.contains_key(&id) {
                let cursor = self.take_up(id);
                self.lanes.insert(id, LaneRead::new(id, cursor));
            }
        }
        order
    }

    /// Where the target takes `lane` up: its cursor in the record (0 for a lane it never
    /// had), or, for lane 0 of a one-log journal, the log's end when the cursor is past it.
    /// Tells the journal this target's floor of the lane.
    fn take_up(&mut self, lane: u32) -> u64 {
        let last_seq = self.source.last_seq(lane);
        let mut cursor = *self.record.lanes.entry(lane).or_insert_with(|| {
            // A lane that appeared later (a partition taken over): all of it is new here.
            self.dirty = true;
            0
        });
        if cursor > last_seq && lane == SINGLE_LANE {
            // The log lost its tail (or is another log of the same id): new batches reuse
            // those numbers, so the cursor must come back or they would be skipped. The
            // figures counted events that are gone.
            tracing::warn!(
                events_target = %self.label,
                cursor,
                last_seq,
                "events: the cursor is ahead of the journal; rewinding it to the journal's end"
            );
            cursor = last_seq;
            self.record.lanes.insert(lane, last_seq);
            self.record.derived.forget_all();
            self.dirty = true;
            self.shared
                .delivered_seq
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(lane, last_seq);
        } else if cursor > last_seq {
            // A log whose numbers are never reused (a JetStream stream): another node's
            // delivery went further, or this node has not caught up with the stream yet.
            tracing::warn!(
                events_target = %self.label,
                lane,
                cursor,
                last_seq,
                "events: the cursor of this lane is ahead of the journal as this node sees it; \
                 waiting"
            );
        }
        let saved = self.saved_lanes.get(&lane).copied().unwrap_or(0);
        self.source.set_retain_floor(lane, saved.min(last_seq));
        cursor
    }

    /// One step of lane `id`: a read when nothing of it is pending, then the delivery of
    /// its next chunk.
    async fn lane_step(&mut self, id: u32) -> Result<Step, EventsError> {
        if let Err(reason) = self.fill(id).await {
            self.count_failure("reading the journal", &reason);
            return Ok(Step::Failed);
        }
        if !self.prepare(id)? {
            return Ok(Step::Idle);
        }
        let step = self.send().await;
        if step == Step::Delivered {
            self.save_if_due(false).await;
        }
        Ok(step)
    }

    /// Reads lane `id` after what is read of it, when nothing of it is pending.
    async fn fill(&mut self, id: u32) -> Result<(), String> {
        let Some(lane) = self.lanes.get(&id) else {
            return Ok(());
        };
        if !lane.pending.is_empty() || self.source.last_seq(id) <= lane.read_seq {
            // Nothing new: no read (a thread hop, and for some journals a round trip).
            return Ok(());
        }
        let source = Arc::clone(&self.source);
        let (after_seq, batches_max) = (lane.read_seq, self.options.read_batches_max);
        // The journal may be on disk or across the network: its reads must not hold up
        // the runtime's workers.
        let batches =
            tokio::task::spawn_blocking(move || source.read_batches(id, after_seq, batches_max))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        let Some(lane) = self.lanes.get_mut(&id) else {
            return Ok(());
        };
        let taken = lane.take(batches, Instant::now(), self.options.gap_wait);
        self.events_read_total += taken.events;
        self.batches_read_total += taken.batches;
        if taken.gaps_skipped > 0 {
            // The hole may have held orders of this lane's items: their figures are unknown.
            self.record.derived.forget_lane(id);
            self.dirty = true;
            self.shared
                .gaps_skipped_total
                .fetch_add(taken.gaps_skipped, Ordering::Relaxed);
            metrics::counter!("seckill_events_gaps_skipped_total", "target" => self.label.clone())
                .increment(taken.gaps_skipped);
        }
        Ok(())
    }

    /// Makes lane `id`'s next chunk the chunk in flight; false when nothing is pending.
    fn prepare(&mut self, id: u32) -> Result<bool, EventsError> {
        let Some(lane) = self.lanes.get(&id) else {
            return Ok(false);
        };
        if lane.pending.is_empty() {
            return Ok(false);
        }
        let batches = lane.chunk_len(self.options.chunk_events_max);
        let mut out = Vec::new();
        let mut journal_events = 0;
        for (_, events) in lane.pending.iter().take(batches) {
            journal_events += events.len();
            for event in events {
                self.maker
                    .convert(id, event, &mut self.record.derived, &mut out)
                    .map_err(|source| EventsError::Convert {
                        target: self.label.clone(),
                        source,
                    })?;
            }
        }
        let cursor_to = lane.pending[batches - 1].0;
        self.in_flight = Some(InFlight {
            lane: id,
            batches,
            journal_events,
            cursor_to,
            out,
            sent: 0,
        });
        Ok(true)
    }

    /// Sends what the target has not acknowledged of the chunk in flight; once it has it
    /// all, moves the lane's cursor.
    async fn send(&mut self) -> Step {
        let attempt = match self.in_flight.as_mut() {
            Some(flight) => {
                send_flight(
                    &mut self.sink,
                    flight,
                    &self.options,
                    &self.stop,
                    &self.shared,
                    &self.label,
                )
                .await
            }
            None => return Step::Idle,
        };
        match attempt {
            Attempt::Acknowledged => {
                if let Some(flight) = self.in_flight.take() {
                    self.delivered(flight);
                }
                self.backoff = self.options.backoff_min;
                Step::Delivered
            }
            Attempt::Failed(reason) => {
                self.count_failure("delivering", &reason);
                Step::Failed
            }
            Attempt::Abandoned => Step::Abandoned,
        }
    }

    /// The target acknowledged every event of `flight`.
    fn delivered(&mut self, flight: InFlight) {
        if let Some(lane) = self.lanes.get_mut(&flight.lane) {
            lane.delivered(flight.batches, flight.journal_events, flight.cursor_to);
        }
        self.record.lanes.insert(flight.lane, flight.cursor_to);
        self.dirty = true;
        self.shared
            .delivered_seq
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(flight.lane, flight.cursor_to);
    }

    /// Saves the record when it moved, nothing is in flight, and either `caught_up` or the
    /// save interval has passed. A failed save is counted and tried again after the longest
    /// backoff; meanwhile delivery goes on and the floors stay where the file is.
    async fn save_if_due(&mut self, caught_up: bool) {
        if !self.dirty || self.in_flight.is_some() {
            return;
        }
        if !caught_up && self.last_save.elapsed() < self.options.save_interval {
            return;
        }
        if self.save_retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        match self.save().await {
            Ok(()) => self.save_retry_at = None,
            Err(error) => {
                self.count_failure("saving the cursor", &error.to_string());
                self.save_retry_at = Some(Instant::now() + self.options.backoff_max);
            }
        }
    }

    /// Writes the record, then lets the journal trim up to it.
    async fn save(&mut self) -> Result<(), EventsError> {
        let record = self.record.clone();
        let store = Arc::clone(&self.store);
        let key = self.key.clone();
        // An fsync and a rename: off the runtime's workers.
        let saved = tokio::task::spawn_blocking(move || store.save(&key, &record).map(|()| record))
            .await
            .map_err(|e| EventsError::Task {
                target: self.label.clone(),
                reason: e.to_string(),
            })??;
        self.last_save = Instant::now();
        self.dirty = false;
        // Only now: the journal keeps everything the file does not cover.
        for (&lane, &seq) in &saved.lanes {
            if self.lanes.contains_key(&lane) {
                let last_seq = self.source.last_seq(lane);
                self.source.set_retain_floor(lane, seq.min(last_seq));
            }
        }
        set_seqs(&self.shared.saved_seq, &saved.lanes);
        self.saved_lanes = saved.lanes;
        Ok(())
    }

    /// Sets the status and the lag gauges, over every lane: events (exact for what is read,
    /// estimated for what is not), summed; seconds (the oldest event not delivered), the
    /// largest; and the lanes behind their log.
    fn publish_lag(&self) {
        let events_per_batch = if self.batches_read_total == 0 {
            1.0
        } else {
            self.events_read_total as f64 / self.batches_read_total as f64
        };
        // The wall clock: the lag is how long ago, for a person, the engine decided it.
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (mut lag_events, mut lag_ms, mut lanes_behind) = (0_u64, 0_i64, 0_u32);
        for lane in self.lanes.values() {
            let last_seq = self.source.last_seq(lane.id).max(lane.read_seq);
            lag_events = lag_events.saturating_add(lane.lag_events(last_seq, events_per_batch));
            lag_ms = lag_ms.max(lane.lag_ms(last_seq, now_ms));
            lanes_behind += u32::from(lane.cursor < last_seq);
        }
        let shared = &self.shared;
        shared.lag_events.store(lag_events, Ordering::Relaxed);
        shared.lag_ms.store(lag_ms, Ordering::Relaxed);
        shared.lanes_behind.store(lanes_behind, Ordering::Release);
        let target = self.label.clone();
        metrics::gauge!("seckill_events_lag_events", "target" => target.clone())
            .set(lag_events as f64);
        metrics::gauge!("seckill_events_lag_seconds", "target" => target)
            .set(lag_ms as f64 / 1000.0);
    }
}

/// Sends the unacknowledged rest of `flight`, `chunk_events_max` events per call, each
/// call bounded by the deliver timeout, and given up when a shutdown's deadline passes.
async fn send_flight(
    sink: &mut Box<dyn Sink>,
    flight: &mut InFlight,
    options: &DeliverOptions,
    stop: &watch::Receiver<Option<Instant>>,
    shared: &Shared,
    label: &str,
) -> Attempt {
    while flight.sent < flight.out.len() {
        let end = flight
            .sent
            .saturating_add(options.chunk_events_max)
            .min(flight.out.len());
        let call = tokio::time::timeout(
            options.deliver_timeout,
            sink.deliver(&flight.out[flight.sent..end]),
        );
        let answer = tokio::select! {
            answer = call => answer,
            () = deadline_passed(stop.clone()) => return Attempt::Abandoned,
        };
        match answer {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Attempt::Failed(error.to_string()),
            Err(_) => {
                return Attempt::Failed(format!(
                    "no answer within {} ms",
                    options.deliver_timeout.as_millis()
                ))
            }
        }
        let count = (end - flight.sent) as u64;
        flight.sent = end;
        shared.delivered_total.fetch_add(count, Ordering::Relaxed);
        metrics::counter!("seckill_events_delivered_total", "target" => label.to_owned())
            .increment(count);
    }
    Attempt::Acknowledged
}

/// Returns once a shutdown was asked for and its deadline passed; never while running (nor
/// after the handle was dropped without a shutdown: the call in flight finishes then).
async fn deadline_passed(mut stop: watch::Receiver<Option<Instant>>) {
    loop {
        let deadline = *stop.borrow_and_update();
        if let Some(deadline) = deadline {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(30);

    fn batches(seqs: &[u64]) -> Vec<(u64, Vec<Event>)> {
        seqs.iter()
            .map(|seq| {
                let event = Event::ItemArchived { item_key: *seq };
                (*seq, vec![event])
            })
            .collect()
    }

    fn pending_seqs(lane: &LaneRead) -> Vec<u64> {
        lane.pending.iter().map(|(seq, _)| *seq).collect()
    }

    #[test]
    fn a_young_hole_stops_the_read_and_an_old_one_is_skipped() {
        let start = Instant::now();
        let mut lane = LaneRead::new(2, 4);
        let taken = lane.take(batches(&[3, 5, 7, 8]), start, WAIT);
        assert_eq!(pending_seqs(&lane), [5], "4 is delivered, 6 may still come");
        assert_eq!(taken.gaps_skipped, 0);

        let taken = lane.take(batches(&[6, 7, 8]), start + WAIT / 2, WAIT);
        assert_eq!(
            pending_seqs(&lane),
            [5, 6, 7, 8],
            "6 came in time: nothing skipped"
        );
        assert_eq!(taken.gaps_skipped, 0);

        let taken = lane.take(batches(&[10]), start + WAIT, WAIT);
        assert_eq!(taken.gaps_skipped, 0, "the hole after 8 is new");
        let taken = lane.take(batches(&[10]), start + 2 * WAIT, WAIT);
        assert_eq!((taken.gaps_skipped, lane.read_seq), (1, 10));
    }

    #[test]
    fn a_chunk_is_whole_batches_and_at_least_one() {
        let mut lane = LaneRead::new(0, 0);
        let big: Vec<Event> = (0..10)
            .map(|key| Event::ItemArchived { item_key: key })
            .collect();
        lane.take(
            vec![(1, big), (2, vec![]), (3, vec![])],
            Instant::now(),
            WAIT,
        );
        assert_eq!(
            lane.chunk_len(4),
            1,
            "one batch over the bound still goes alone"
        );
        lane.delivered(1, 10, 1);
        assert_eq!((lane.cursor, lane.pending_events), (1, 0));
        assert_eq!(lane.chunk_len(4), 2);
    }

    #[test]
    fn the_lag_counts_what_is_pending_and_what_is_not_read() {
        let mut lane = LaneRead::new(0, 0);
        lane.take(batches(&[1, 2]), Instant::now(), WAIT);
        assert_eq!(lane.lag_events(5, 2.0), 2 + 6);
        assert_eq!(
            lane.lag_ms(2, 0),
            0,
            "archiving events carry no time, and no hole"
        );
        lane.delivered(2, 2, 2);
        assert_eq!(lane.lag_events(2, 2.0), 0);
        assert_eq!(lane.lag_ms(2, 1_000), 0, "caught up");
    }
}
