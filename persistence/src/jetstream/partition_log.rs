//! [`PartitionLog`]: appends to one partition's stream, each conditional on the last
//! sequence this writer knows, so that a writer that lost the partition cannot append.

use std::time::Duration;

use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, StorageType};
use bytes::Bytes;

use super::error::{is_wrong_last_sequence, AppendError};

/// How many times a publish whose answer did not come is sent again (same message id).
const PUBLISH_ATTEMPTS: usize = 3;

/// The header of a takeover record: `<node>/<epoch>` of the owner that appended it.
pub const TAKEOVER_HEADER: &str = "Seckill-Takeover";

/// How a partition's stream is made.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Copies of the stream (`--replicas`); an append is acknowledged once a quorum has it.
    pub replicas: usize,
    /// How long the server remembers message ids: a retried publish within it is answered
    /// as the duplicate it is.
    pub duplicate_window: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            replicas: 3,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// The writer of one partition's stream.
///
/// One append in flight at a time. Each expects the stream's last sequence as this writer
/// knows it, and a refused or unanswered one does not move it, so no later append of this
/// writer can ever match a stream that someone else appended to: after a new owner's
/// takeover record, a replaced writer's appends are refused for good.
///
/// Pipelining several appends, the k-th expecting `last_seq + k`, is not fenced that way:
/// once a takeover record landed where our refused k-th should have, our (k+1)-th finds the
/// stream at the sequence it expects and lands after it. Seen while building this: 49 of 50
/// late messages landed. Chaining the run by `Nats-Expected-Last-Msg-Id` stopped the
/// clustered 2.15.1 stream ("critical write error: last msgid mismatch" on every replica),
/// and a read-side epoch rule reviewed cold had holes (an owner's own run after a stale
/// tail, an older owner reopening after a newer takeover). So runs are left out until they
/// can be fenced whole (JetStream's atomic batch publish is the candidate). Measured
/// (`benches/examples/jetstream_append`, replicas 3, `sync_interval: always`): about 500
/// appends/s on one stream and about 1,200/s over 16; a pipelined run of 64 gave about 4,000
/// on one stream, which is what the journal will need.
///
/// Message ids are `e<epoch>-<seq>-<n>`: the owner's epoch, the position expected, and a
/// count of this writer's appends, so a retry of one append reuses its id (the duplicate
/// window makes it land once) while a different payload at the same position never passes
/// for the earlier one's duplicate.
#[derive(Debug)]
pub struct PartitionLog {
    js: Context,
    stream: String,
    subject: String,
    /// The stream's last sequence as this writer knows it: every append expects it.
    last_seq: u64,
    /// This ownership's epoch (the lease revision it was taken at).
    epoch: u64,
    /// Appends this writer has made (each with its retries): part of its message ids.
    appends: u64,
}

impl PartitionLog {
    /// Opens (creating it if absent: file storage, `settings.replicas` copies) the stream
    /// `stream` with the one subject `subject`, and reads its last sequence. `epoch` is this
    /// ownership's fencing epoch: higher than every earlier owner's.
    pub async fn open(
        js: Context,
        stream: &str,
        subject: &str,
        settings: &StreamSettings,
        epoch: u64,
    ) -> Result<PartitionLog, AppendError> {
        let config = Config {
            name: stream.to_owned(),
            subjects: vec![subject.to_owned()],
            storage: StorageType::File,
            num_replicas: settings.replicas,
            duplicate_window: settings.duplicate_window,
            allow_direct: true,
            ..Config::default()
        };
        let mut handle = js
            .get_or_create_stream(config)
            .await
            .map_err(|e| unknown(stream, e))?;
        let last_seq = handle
            .info()
            .await
            .map_err(|e| unknown(stream, e))?
            .state
            .last_sequence;
        Ok(PartitionLog {
            js,
            stream: stream.to_owned(),
            subject: subject.to_owned(),
            last_seq,
            epoch,
            appends: 0,
        })
    }

    /// Reads the stream's last sequence again (before a takeover record, when someone
    /// appended since `open`: their batches are then replayed too).
    pub async fn refresh(&mut self) -> Result<u64, AppendError> {
        let mut handle = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| unknown(&self.stream, e))?;
        self.last_seq = handle
            .info()
            .await
            .map_err(|e| unknown(&self.stream, e))?
            .state
            .last_sequence;
        Ok(self.last_seq)
    }

    /// The stream's last sequence as this writer knows it.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends `payload` if the stream is still at [`PartitionLog::last_seq`]; returns its
    /// sequence. An append whose answer does not come is sent again with the same message
    /// id, so it lands once; if no attempt is answered the outcome is
    /// [`AppendError::Unknown`] (ask [`PartitionLog::resolve`]).
    pub async fn append(&mut self, payload: Bytes) -> Result<u64, AppendError> {
        let message_id = self.next_message_id();
        let mut last_error = None;
        for _ in 0..PUBLISH_ATTEMPTS {
            match self.publish(payload.clone(), &message_id, None).await {
                Ok(seq) => return Ok(seq),
                Err(error @ AppendError::Unknown { .. }) => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| AppendError::Unknown {
            stream: self.stream.clone(),
            reason: "no attempt made".into(),
        }))
    }

    /// The message id of this writer's next append, expected right after
    /// [`PartitionLog::last_seq`]. Every attempt of that append must use it.
    pub fn next_message_id(&mut self) -> String {
        self.appends += 1;
        message_id(self.epoch, self.last_seq + 1, self.appends)
    }

    /// One attempt at appending `payload` with `message_id` (from
    /// [`PartitionLog::next_message_id`]) after [`PartitionLog::last_seq`]; on success the
    /// writer knows the new last sequence. `takeover` marks a takeover record (its header
    /// names the new owner and its epoch).
    pub async fn publish(
        &mut self,
        payload: Bytes,
        message_id: &str,
        takeover: Option<&str>,
    ) -> Result<u64, AppendError> {
        let expected = self.last_seq;
        let seq = self
            .publish_once(payload, expected, message_id, takeover)
            .await?;
        if seq != expected + 1 {
            return Err(AppendError::Unknown {
                stream: self.stream.clone(),
                reason: format!("acknowledged at {seq}, expected {}", expected + 1),
            });
        }
        self.last_seq = seq;
        Ok(seq)
    }

    async fn publish_once(
        &self,
        payload: Bytes,
        expected: u64,
        message_id: &str,
        takeover: Option<&str>,
    ) -> Result<u64, AppendError> {
        let stream = (&self.js, self.stream.as_str(), self.subject.as_str());
        publish_conditional(stream, payload, expected, message_id, takeover).await
    }

    /// After an [`AppendError::Unknown`]: reads the stream's tail. `Ok(true)` when the one
    /// message after [`PartitionLog::last_seq`] is this writer's (its last append went in; the
    /// writer now knows its sequence); `Ok(false)` when the stream is still where the writer
    /// left it (it did not); [`AppendError::Fenced`] when anything else is there (someone
    /// else appended: a new owner, or, before this writer's first append, the previous one,
    /// whose messages must then be replayed). An error when the stream is behind what this
    /// writer knows (it was purged or recreated).
    pub async fn resolve(&mut self) -> Result<bool, AppendError> {
        let ours = message_id(self.epoch, self.last_seq + 1, self.appends);
        self.resolve_id(&ours).await
    }

    /// [`PartitionLog::resolve`] for the append whose message id is `ours`.
    pub async fn resolve_id(&mut self, ours: &str) -> Result<bool, AppendError> {
        let mut handle = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| unknown(&self.stream, e))?;
        let last = handle
            .info()
            .await
            .map_err(|e| unknown(&self.stream, e))?
            .state
            .last_sequence;
        if last < self.last_seq {
            return Err(AppendError::Refused {
                stream: self.stream.clone(),
                reason: format!("the stream ends at {last}, before {}", self.last_seq),
            });
        }
        if last == self.last_seq {
            return Ok(false);
        }
        let message = handle
            .get_raw_message(self.last_seq + 1)
            .await
            .map_err(|e| unknown(&self.stream, e))?;
        let id = message
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|value| value.as_str().to_owned());
        if last == self.last_seq + 1 && id.as_deref() == Some(ours) {
            self.last_seq = last;
            return Ok(true);
        }
        Err(AppendError::Fenced {
            stream: self.stream.clone(),
            expected: self.last_seq,
        })
    }

    /// This ownership's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A new ownership of the same writer (its lease was taken again): later message ids
    /// carry `epoch`.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.appends = 0;
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The payload stored at `seq` (for replay and tests).
    pub async fn read(&self, seq: u64) -> Result<Bytes, AppendError> {
        let handle = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| unknown(&self.stream, e))?;
        let message = handle
            .get_raw_message(seq)
            .await
            .map_err(|e| unknown(&self.stream, e))?;
        Ok(message.payload)
    }
}

/// One attempt at appending `payload` with `message_id` to a stream, given as its context,
/// name and subject, if the stream's last sequence is still `expected`; the sequence it
/// was stored at. `takeover` marks a takeover record (its header names the new owner and
/// its epoch). Every conditional append of the journal goes through here: the partitions'
/// ([`PartitionLog`]) and the catalog log's.
pub(super) async fn publish_conditional(
    (js, stream, subject): (&Context, &str, &str),
    payload: Bytes,
    expected: u64,
    message_id: &str,
    takeover: Option<&str>,
) -> Result<u64, AppendError> {
    let mut publish = PublishMessage::build()
        .payload(payload)
        .message_id(message_id)
        .expected_last_sequence(expected);
    if let Some(owner) = takeover {
        publish = publish.header(TAKEOVER_HEADER, owner);
    }
    // The ack future is always awaited: dropping one unread would leave its outcome
    // unknown to us while the server may have stored the message.
    let ack = js
        .send_publish(subject.to_owned(), publish)
        .await
        .map_err(|e| classify(stream, expected, &e))?
        .await
        .map_err(|e| classify(stream, expected, &e))?;
    Ok(ack.sequence)
}

fn classify(
    stream: &str,
    expected: u64,
    error: &async_nats::error::Error<PublishErrorKind>,
) -> AppendError {
    let stream = stream.to_owned();
    match error.kind() {
        PublishErrorKind::WrongLastSequence => AppendError::Fenced { stream, expected },
        // Not "no such stream": the client says so for "no responders", which is what a
        // stream between two leaders answers during an election. Retried as unknown.
        PublishErrorKind::MaxPayloadExceeded => AppendError::Refused {
            stream,
            reason: error.to_string(),
        },
        PublishErrorKind::Other if is_wrong_last_sequence(error) => {
            AppendError::Fenced { stream, expected }
        }
        _ => AppendError::Unknown {
            stream,
            reason: error.to_string(),
        },
    }
}

/// The id of this writer's `n`-th append, expected at `seq`.
fn message_id(epoch: u64, seq: u64, n: u64) -> String {
    format!("e{epoch}-{seq}-{n}")
}

fn unknown(stream: &str, error: impl std::fmt::Display) -> AppendError {
    AppendError::Unknown {
        stream: stream.to_owned(),
        reason: error.to_string(),
    }
}
