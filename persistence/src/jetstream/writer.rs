//! The writer task of one lane (one stream) and the keeper of its lease.
//!
//! Appends to a lane go through its task, one at a time and in the order they were asked
//! for: a batch that JetStream does not answer (an election, an outage) is sent again with
//! the same message id until it lands or the lane is taken over, and the lane's later
//! batches wait behind it. So the stream never holds a later batch without an earlier one.
//!
//! Nothing is published while the lease is in doubt (past its local validity), and once the
//! lease is lost every append is refused as fenced: the node never again acknowledges a
//! write for the lane. The conditional appends make that hold even if this process was
//! paused at any point: see [`super::PartitionLog`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::error::{AppendError, LeaseError};
use super::lease::Lease;
use super::partition_journal::LaneEvent;
use super::partition_log::PartitionLog;

/// The first pause between two attempts of an unanswered append; it doubles up to
/// [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE_FIRST: Duration = Duration::from_millis(20);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// One append asked of a lane's task.
pub(crate) struct Job {
    pub payload: Bytes,
    pub done: oneshot::Sender<Result<u64, AppendError>>,
}

/// What the journal keeps of a running lane.
#[derive(Debug)]
pub(crate) struct LaneHandle {
    pub lane: u32,
    pub jobs: mpsc::UnboundedSender<Job>,
    /// The stream's last sequence as far as this node's acknowledged appends go.
    pub acked_seq: Arc<AtomicU64>,
    pub state: Arc<LeaseState>,
    /// Tells the writer to take no new job and stop once the queued ones are written (a
    /// clean hand-over of the lane): see [`LaneHandle::close`].
    close: Arc<Notify>,
}

impl LaneHandle {
    /// From now on the lane takes no job (a send fails, as to a stopped writer); the jobs
    /// queued before are written, then the writer task ends.
    pub fn close(&self) {
        self.close.notify_one();
    }
}

/// The lease as the writer sees it: lost for good, or valid until a deadline.
#[derive(Debug)]
pub(crate) struct LeaseState {
    lost: AtomicBool,
    /// Set once the keeper is done with the lease (released, or lost): a clean shutdown
    /// waits for it, so that the next owner need not wait for the TTL.
    settled: AtomicBool,
    valid_until: Mutex<Instant>,
    /// The epoch of a new ownership (the lease lapsed and was taken again): the writer
    /// appends a takeover record with it before its next write.
    retaken: Mutex<Option<u64>>,
    /// `<node>/` of the takeover records this node writes.
    owner: String,
}

impl LeaseState {
    pub fn new(node: &str, valid_until: Instant) -> Arc<LeaseState> {
        Arc::new(LeaseState {
            lost: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            valid_until: Mutex::new(valid_until),
            retaken: Mutex::new(None),
            owner: node.to_owned(),
        })
    }

    fn set_retaken(&self, epoch: u64) {
        *self.retaken.lock().unwrap_or_else(PoisonError::into_inner) = Some(epoch);
    }

    fn take_retaken(&self) -> Option<u64> {
        self.retaken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    pub fn lose(&self) {
        self.lost.store(true, Ordering::Release);
    }

    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Not lost, renewed recently enough that no other node can hold it yet, and not
    /// taken again without the takeover record that must follow (until then this node's
    /// memory may be behind the stream).
    pub fn is_held(&self) -> bool {
        !self.is_lost()
            && self.is_current()
            && self
                .retaken
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none()
    }

    pub fn is_current(&self) -> bool {
        Instant::now()
            < *self
                .valid_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
    }

    fn renewed(&self, valid_until: Instant) {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = valid_until;
    }
}

/// Starts the lane's writer task on `runtime`; the task ends once the lane is closed and
/// its queue written (or every sender is gone).
pub(crate) fn spawn_writer(
    runtime: &tokio::runtime::Handle,
    lane: u32,
    log: PartitionLog,
    state: Arc<LeaseState>,
) -> (LaneHandle, JoinHandle<()>) {
    let (jobs, queue) = mpsc::unbounded_channel();
    let acked_seq = Arc::new(AtomicU64::new(log.last_seq()));
    let close = Arc::new(Notify::new());
    let task = runtime.spawn(write_loop(
        log,
        queue,
        Arc::clone(&acked_seq),
        Arc::clone(&state),
        Arc::clone(&close),
    ));
    let handle = LaneHandle {
        lane,
        jobs,
        acked_seq,
        state,
        close,
    };
    (handle, task)
}

async fn write_loop(
    mut log: PartitionLog,
    mut queue: mpsc::UnboundedReceiver<Job>,
    acked_seq: Arc<AtomicU64>,
    state: Arc<LeaseState>,
    close: Arc<Notify>,
) {
    let mut closing = false;
    loop {
        let job = tokio::select! {
            biased;
            // Closed: later sends fail, what is queued is still received (and written).
            () = close.notified(), if !closing => {
                closing = true;
                queue.close();
                continue;
            }
            job = queue.recv() => job,
        };
        let Some(job) = job else { break };
        let outcome = append_until_known(&mut log, job.payload, &state).await;
        match &outcome {
            Ok(seq) => acked_seq.store(*seq, Ordering::Release),
            // A refused part of a batch must not be followed by its later parts (the
            // stream would hold a history with a hole): the lane takes nothing more.
            Err(AppendError::Refused { .. }) => state.lose(),
            Err(_) => {}
        }
        // A caller that stopped waiting is no error; the outcome is in `acked_seq` anyway.
        let _ = job.done.send(outcome);
    }
}

/// Appends `payload` once: retried with one message id until the stream holds it
/// (`Ok(seq)`) or holds someone else's append in its place (`Fenced`, and the lane is lost).
async fn append_until_known(
    log: &mut PartitionLog,
    payload: Bytes,
    state: &LeaseState,
) -> Result<u64, AppendError> {
    let message_id = log.next_message_id();
    let mut pause = RETRY_PAUSE_FIRST;
    loop {
        if state.is_lost() {
            return Err(fenced(log));
        }
        if !state.is_current() {
            // A renewal is overdue: another node may own the lane by now. Wait for the
            // keeper to renew it or to find it lost.
            tracing::debug!(stream = log.stream(), "lease in doubt; the append waits");
            tokio::time::sleep(pause).await;
            continue;
        }
        if let Some(epoch) = state.take_retaken() {
            // An earlier attempt of this append may have landed unanswered: that is ours
            // (the takeover then follows it, with the next append).
            match log.resolve_id(&message_id).await {
                Ok(true) => {
                    state.set_retaken(epoch);
                    return Ok(log.last_seq());
                }
                Ok(false) => {
                    take_over_again(log, state, epoch).await?;
                    // The takeover moved the stream: this append's id must name the new
                    // position.
                    return Box::pin(append_until_known(log, payload, state)).await;
                }
                Err(AppendError::Fenced { .. }) => {
                    // Someone else wrote after our tail: the lane is theirs.
                    state.lose();
                    return Err(fenced(log));
                }
                Err(error @ AppendError::Refused { .. }) => return Err(error),
                Err(error) => {
                    state.set_retaken(epoch);
                    tracing::warn!(%error, "reading the lane's tail failed; retrying");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
        }
        tracing::debug!(stream = log.stream(), %message_id, "publishing");
        match log.publish(payload.clone(), &message_id, None).await {
            Ok(seq) => return Ok(seq),
            // The stream moved: either our own earlier attempt landed (its answer was lost),
            // or another owner appended. The tail tells which.
            Err(AppendError::Fenced { .. }) => match log.resolve_id(&message_id).await {
                Ok(true) => return Ok(log.last_seq()),
                Ok(false) => {}
                Err(AppendError::Fenced { .. }) => {
                    state.lose();
                    tracing::error!(
                        stream = log.stream(),
                        "another owner appended to this lane: it is fenced"
                    );
                    return Err(fenced(log));
                }
                Err(error @ AppendError::Refused { .. }) => return Err(error),
                Err(error) => tracing::warn!(%error, "reading the lane's tail failed; retrying"),
            },
            Err(AppendError::Unknown { reason, .. }) => {
                tracing::warn!(stream = log.stream(), %reason, "append not answered; retrying with the same message id");
            }
            Err(error @ AppendError::Refused { .. }) => return Err(error),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_PAUSE_MAX);
    }
}

/// After the lease was taken again: appends the new ownership's takeover record,
/// conditional on the tail this writer knows. Refused means someone else wrote: lost.
async fn take_over_again(
    log: &mut PartitionLog,
    state: &LeaseState,
    epoch: u64,
) -> Result<(), AppendError> {
    log.set_epoch(epoch);
    let owner = format!("{}/{epoch}", state.owner);
    let payload = Bytes::new();
    let message_id = log.next_message_id();
    let mut pause = RETRY_PAUSE_FIRST;
    loop {
        if state.is_lost() {
            return Err(fenced(log));
        }
        if !state.is_current() {
            tokio::time::sleep(pause).await;
            continue;
        }
        match log
            .publish(payload.clone(), &message_id, Some(&owner))
            .await
        {
            Ok(_) => return Ok(()),
            Err(AppendError::Fenced { .. }) => match log.resolve_id(&message_id).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(AppendError::Fenced { .. }) => {
                    state.lose();
                    return Err(fenced(log));
                }
                Err(error @ AppendError::Refused { .. }) => {
                    state.lose();
                    return Err(error);
                }
                Err(error) => tracing::warn!(%error, "reading the lane's tail failed; retrying"),
            },
            Err(AppendError::Unknown { .. }) => {}
            Err(error @ AppendError::Refused { .. }) => {
                state.lose();
                return Err(error);
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_PAUSE_MAX);
    }
}

fn fenced(log: &PartitionLog) -> AppendError {
    AppendError::Fenced {
        stream: log.stream().to_owned(),
        expected: log.last_seq(),
    }
}

/// What the loss of one lane's lease means to the others.
pub(crate) enum LeaseMode {
    /// One node owns every lane: once it loses one it gives up all of them (through this
    /// sender), so a standby waiting for the whole set can take over instead of both
    /// waiting forever. A lease that lapsed and that nobody took is taken again.
    AllOrNothing(Arc<watch::Sender<bool>>),
    /// A cluster node's partition: lost alone, and reported. Never taken again by the
    /// keeper: a new holding is a new take (replay, takeover record), under a new epoch.
    PerLane(PerLane),
}

/// Where a [`LeaseMode::PerLane`] keeper reports the loss of its holding.
pub(crate) struct PerLane {
    pub partition: u32,
    /// The holding's epoch, as the engine knows it (0 until drawn, just after the take).
    pub epoch: Arc<AtomicU64>,
    pub events: broadcast::Sender<LaneEvent>,
    /// A test hook: while set, the keeper skips its renewals (a node paused, as by SIGSTOP,
    /// as far as this lease goes).
    pub paused: Arc<AtomicBool>,
}

impl LeaseMode {
    /// The lane is lost (another node holds its lease, or its stream took someone else's
    /// append).
    fn lost(&self) {
        match self {
            LeaseMode::AllOrNothing(give_up) => {
                give_up.send_replace(true);
            }
            LeaseMode::PerLane(lane) => {
                // Nobody listening is no error: the engine checks the lease on every call.
                let _ = lane.events.send(LaneEvent::Lost {
                    partition: lane.partition,
                    epoch: lane.epoch.load(Ordering::Acquire),
                });
            }
        }
    }

    fn paused(&self) -> bool {
        matches!(self, LeaseMode::PerLane(lane) if lane.paused.load(Ordering::Acquire))
    }
}

/// Renews `lease` every third of its TTL until `stop` says so (then releases it, a clean
/// hand-over) or until another node holds it (then the lane is lost for good, and `mode`
/// says what that means to the node's other lanes).
pub(crate) async fn keep_lease(
    mut lease: Lease,
    state: Arc<LeaseState>,
    mut stop: watch::Receiver<bool>,
    mode: LeaseMode,
) {
    let every = lease.renew_every();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        if state.is_lost() {
            // Lost by its writer (the stream held someone else's append).
            mode.lost();
            break;
        }
        if mode.paused() {
            continue;
        }
        match lease.renew().await {
            Ok(()) => {
                tracing::debug!(lease = lease.partition_key(), "lease renewed");
                state.renewed(lease.valid_until());
            }
            Err(LeaseError::Held { key, holder }) if matches!(mode, LeaseMode::PerLane(_)) => {
                tracing::warn!(lease = %key, %holder, "lease lost; this node no longer writes the partition");
                state.lose();
                state.settled.store(true, Ordering::Release);
                mode.lost();
                return;
            }
            Err(LeaseError::Held { key, holder }) => match lease.reacquire().await {
                // It had lapsed (an outage longer than the TTL) and nobody took it.
                Ok(again) => {
                    tracing::warn!(lease = %key, epoch = again.epoch(), "lease lapsed and was taken again; the lane appends a new takeover record");
                    state.set_retaken(again.epoch());
                    state.renewed(again.valid_until());
                    lease = again;
                }
                Err(LeaseError::Unavailable { .. }) => {}
                Err(LeaseError::Held { .. }) => {
                    tracing::error!(lease = %key, %holder, "lease lost to another node; this node gives up every lane (restart it to serve again)");
                    state.lose();
                    state.settled.store(true, Ordering::Release);
                    mode.lost();
                    return;
                }
            },
            Err(error @ LeaseError::Unavailable { .. }) => {
                tracing::warn!(%error, "lease renewal failed; retrying");
            }
        }
    }
    if !state.is_lost() {
        // Writes stop before the lease goes, so nothing is appended once another node may
        // hold it.
        state.lose();
        if let Err(error) = lease.release().await {
            tracing::warn!(%error, "releasing a lease failed; it lapses by itself");
        }
    }
    state.settled.store(true, Ordering::Release);
}
