//! [`JetStreamCatalogLog`]: the cluster's one catalog log (the engine's `CatalogLog`) on the
//! catalog stream. Every node appends to it, each append conditional on the stream's last
//! sequence (`Nats-Expected-Last-Sequence`), so catalog changes are serialised cluster-wide
//! by JetStream itself; the engine's `catalog_sync` does the rest. The cluster plan's Q2.
//!
//! Message ids are `c<epoch>.<nonce>-<seq>-<n>`: this node's start epoch (drawn from the
//! cluster's epoch counter, so no two nodes share one), a random number of this log's own
//! (so a log opened again under the same epoch never reuses an id whose duplicate the
//! stream still remembers: its ack would point at another change), the position expected,
//! and a count of this log's appends. A publish whose answer did not come is sent again
//! with the same id, so it lands at most once within the stream's duplicate window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::Context;
use bytes::Bytes;
use seckill_engine::{CatalogAppendError, CatalogLog, Event, JournalError, Recovery};
use tokio::runtime::Handle;

use super::error::{AppendError, ClusterError};
use super::names::{Names, CATALOG_LANE};
use super::partition_log::{publish_conditional, PartitionLog, StreamSettings};
use super::tail::read_range;
use crate::journal::layout::encode_batch;

/// How many times an append whose answer did not come is sent (same message id).
const PUBLISH_ATTEMPTS: usize = 3;
/// How long one attempt waits for its acknowledgement: the control thread blocks on it,
/// so the whole append is bounded by `PUBLISH_ATTEMPTS` of these.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a read of the log may take in all (its stream info and every entry), so that a
/// NATS outage holds the control thread this long at most.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// What one publish attempt came to.
enum Attempt {
    Stored(u64),
    /// The stream is past the expected sequence: not stored.
    WrongLastSequence,
    /// Refused for good (a message too large): not stored.
    Refused(String),
    /// No answer, or a passing failure: stored or not.
    Unanswered(String),
}

/// The catalog log on JetStream (see the module docs). Its calls block on `runtime`: call
/// them from a thread outside it (the engine's control thread does).
#[derive(Debug)]
pub struct JetStreamCatalogLog {
    js: Context,
    runtime: Handle,
    stream: String,
    subject: String,
    epoch: u64,
    /// Apart this log's message ids from those of any other log opened under `epoch`.
    nonce: u32,
    appends: AtomicU64,
}

impl JetStreamCatalogLog {
    /// The catalog stream of `names`, created if absent (`settings.replicas` copies).
    /// `epoch` is this node's start epoch, unique in the cluster.
    pub async fn open(
        js: Context,
        runtime: Handle,
        names: &Names,
        settings: &StreamSettings,
        epoch: u64,
    ) -> Result<JetStreamCatalogLog, ClusterError> {
        let stream = names.stream(CATALOG_LANE);
        let subject = names.subject(CATALOG_LANE);
        PartitionLog::open(js.clone(), &stream, &subject, settings, epoch).await?;
        // From here on every request of this log (stream info, reads) gives up in time:
        // the control thread waits on them. Not the stream's creation above, which a
        // cluster that just started may take longer to answer.
        let mut js = js;
        js.set_timeout(ATTEMPT_TIMEOUT);
        Ok(JetStreamCatalogLog {
            js,
            runtime,
            stream,
            subject,
            epoch,
            nonce: rand::random(),
            appends: AtomicU64::new(0),
        })
    }

    /// The stream's last sequence now.
    pub async fn last_seq(&self) -> Result<u64, ClusterError> {
        let mut handle = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| super::error::nats(&format!("opening stream {}", self.stream), e))?;
        let info = handle
            .info()
            .await
            .map_err(|e| super::error::nats(&format!("reading stream {}", self.stream), e))?;
        Ok(info.state.last_sequence)
    }

    async fn append_async(
        &self,
        expected_seq: u64,
        payload: Bytes,
    ) -> Result<u64, CatalogAppendError> {
        let n = self.appends.fetch_add(1, Ordering::Relaxed) + 1;
        let message_id = format!(
            "c{}.{:08x}-{}-{n}",
            self.epoch,
            self.nonce,
            expected_seq + 1
        );
        let mut unanswered: Option<String> = None;
        for _ in 0..PUBLISH_ATTEMPTS {
            let attempt = self.publish_once(payload.clone(), expected_seq, &message_id);
            let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
                .await
                .unwrap_or_else(|_| Attempt::Unanswered("no acknowledgement in time".into()));
            match (attempt, &unanswered) {
                (Attempt::Stored(seq), _) if seq == expected_seq + 1 => return Ok(seq),
                (Attempt::Stored(seq), _) => {
                    return Err(unknown(format!(
                        "acknowledged at {seq}, expected {}",
                        expected_seq + 1
                    )))
                }
                (Attempt::WrongLastSequence, None) => {
                    let last_seq = self.last_seq().await.unwrap_or(expected_seq + 1);
                    return Err(CatalogAppendError::Behind { last_seq });
                }
                // After an unanswered attempt a refusal may be our own first attempt's
                // doing: only the entry at the position tells.
                (Attempt::WrongLastSequence, Some(earlier)) => {
                    return Err(unknown(format!(
                        "refused after an unanswered attempt ({earlier})"
                    )))
                }
                (Attempt::Refused(reason), None) => {
                    return Err(CatalogAppendError::Failed(JournalError(reason)))
                }
                (Attempt::Refused(reason), Some(earlier)) => {
                    return Err(unknown(format!("{reason}, after {earlier}")))
                }
                (Attempt::Unanswered(reason), _) => unanswered = Some(reason),
            }
        }
        Err(unknown(unanswered.unwrap_or_default()))
    }

    async fn publish_once(&self, payload: Bytes, expected_seq: u64, message_id: &str) -> Attempt {
        let stream = (&self.js, self.stream.as_str(), self.subject.as_str());
        match publish_conditional(stream, payload, expected_seq, message_id, None).await {
            Ok(seq) => Attempt::Stored(seq),
            Err(AppendError::Fenced { .. }) => Attempt::WrongLastSequence,
            Err(AppendError::Refused { reason, .. }) => Attempt::Refused(reason),
            // "No responders" included: a stream between two leaders answers so.
            Err(AppendError::Unknown { reason, .. }) => Attempt::Unanswered(reason),
        }
    }

    /// What a cluster node's engine starts from (`Engine::start_cluster`): the whole
    /// catalog log as batches, and `epoch`, this node's start epoch. Every entry comes,
    /// takeover records as empty ones, so the engine's catalog starts at the log's end.
    /// The catalog snapshot of the plan's step 6 will let this start later in the log.
    pub async fn recovery(&self, epoch: u64) -> Result<Recovery, ClusterError> {
        // Refused when the stream's beginning was purged (no catalog snapshot exists yet).
        let entries = self.read_entries_after(0).await?;
        Ok(Recovery {
            image: None,
            batches: Box::new(entries.into_iter().map(Ok)),
            epoch,
        })
    }

    /// Every entry after `after_seq` (see `CatalogLog::read_after`), read on the caller's
    /// runtime: the catalog tail reads this way, off the engine's control thread.
    pub async fn read_entries_after(
        &self,
        after_seq: u64,
    ) -> Result<Vec<(u64, Vec<Event>)>, ClusterError> {
        let last_seq = self.last_seq().await?;
        if last_seq < after_seq {
            // Deleted and made again, or purged whole: what this node applied is not in it.
            return Err(ClusterError::Nats(format!(
                "the catalog stream {} ends at {last_seq}, before {after_seq} that this node applied",
                self.stream
            )));
        }
        let entries = read_range(&self.js, &self.stream, after_seq + 1, last_seq).await?;
        // A purged start would leave a gap the engine cannot fill from the log.
        match entries.first() {
            Some((seq, _)) if *seq != after_seq + 1 => Err(ClusterError::Nats(format!(
                "the catalog stream holds no entry {} (it starts at {seq}): a catalog snapshot is needed",
                after_seq + 1
            ))),
            // Purged past the position altogether: nothing readable, though the log is ahead.
            None if last_seq > after_seq => Err(ClusterError::Nats(format!(
                "the catalog stream ends at {last_seq} and holds no entry {}: a catalog snapshot is needed",
                after_seq + 1
            ))),
            _ => Ok(entries),
        }
    }
}

fn unknown(reason: String) -> CatalogAppendError {
    CatalogAppendError::Unknown(JournalError(reason))
}

impl CatalogLog for JetStreamCatalogLog {
    fn append_if(&self, expected_seq: u64, events: &[Event]) -> Result<u64, CatalogAppendError> {
        let payload = encode_batch(events)
            .map_err(|e| CatalogAppendError::Failed(JournalError(e.to_string())))?;
        self.runtime
            .block_on(self.append_async(expected_seq, Bytes::from(payload)))
    }

    fn read_after(&self, after_seq: u64) -> Result<Vec<(u64, Vec<Event>)>, JournalError> {
        let read = async {
            // Made on the runtime: a timer needs its clock.
            tokio::time::timeout(READ_TIMEOUT, self.read_entries_after(after_seq)).await
        };
        match self.runtime.block_on(read) {
            Ok(read) => read.map_err(|e| JournalError(e.to_string())),
            Err(_) => Err(JournalError(format!(
                "reading the catalog stream {} took over {READ_TIMEOUT:?}",
                self.stream
            ))),
        }
    }
}
