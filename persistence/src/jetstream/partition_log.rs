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

    /// The stream's last sequence as this writer knows it.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends `payload` if the stream is still at [`PartitionLog::last_seq`]; returns its
    /// sequence. An append whose answer does not come is sent again with the same message
    /// id, so it lands once; if no attempt is answered the outcome is
    /// [`AppendError::Unknown`] (ask [`PartitionLog::resolve`]).
    pub async fn append(&mut self, payload: Bytes) -> Result<u64, AppendError> {
        let expected = self.last_seq;
        self.appends += 1;
        let message_id = message_id(self.epoch, expected + 1, self.appends);
        let mut last_error = None;
        for _ in 0..PUBLISH_ATTEMPTS {
            match self
                .publish_once(payload.clone(), expected, &message_id)
                .await
            {
                Ok(seq) if seq == expected + 1 => {
                    self.last_seq = seq;
                    return Ok(seq);
                }
                Ok(seq) => {
                    return Err(AppendError::Unknown {
                        stream: self.stream.clone(),
                        reason: format!("acknowledged at {seq}, expected {}", expected + 1),
                    })
                }
                Err(error @ AppendError::Unknown { .. }) => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| AppendError::Unknown {
            stream: self.stream.clone(),
            reason: "no attempt made".into(),
        }))
    }

    async fn publish_once(
        &self,
        payload: Bytes,
        expected: u64,
        message_id: &str,
    ) -> Result<u64, AppendError> {
        let publish = PublishMessage::build()
            .payload(payload)
            .message_id(message_id)
            .expected_last_sequence(expected);
        // The ack future is always awaited: dropping one unread would leave its outcome
        // unknown to us while the server may have stored the message.
        let ack = self
            .js
            .send_publish(self.subject.clone(), publish)
            .await
            .map_err(|e| self.classify(expected, &e))?
            .await
            .map_err(|e| self.classify(expected, &e))?;
        Ok(ack.sequence)
    }

    /// After an [`AppendError::Unknown`]: reads the stream's tail. `Ok(true)` when the one
    /// message after [`PartitionLog::last_seq`] is this writer's (its last append went in; the
    /// writer now knows its sequence); `Ok(false)` when the stream is still where the writer
    /// left it (it did not); [`AppendError::Fenced`] when anything else is there (someone
    /// else appended: a new owner, or, before this writer's first append, the previous one,
    /// whose messages must then be replayed). An error when the stream is behind what this
    /// writer knows (it was purged or recreated).
    pub async fn resolve(&mut self) -> Result<bool, AppendError> {
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
        let ours = message_id(self.epoch, self.last_seq + 1, self.appends);
        if last == self.last_seq + 1 && id.as_deref() == Some(ours.as_str()) {
            self.last_seq = last;
            return Ok(true);
        }
        Err(AppendError::Fenced {
            stream: self.stream.clone(),
            expected: self.last_seq,
        })
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

    fn classify(
        &self,
        expected: u64,
        error: &async_nats::error::Error<PublishErrorKind>,
    ) -> AppendError {
        let stream = self.stream.clone();
        match error.kind() {
            PublishErrorKind::WrongLastSequence => AppendError::Fenced { stream, expected },
            PublishErrorKind::StreamNotFound | PublishErrorKind::MaxPayloadExceeded => {
                AppendError::Refused {
                    stream,
                    reason: error.to_string(),
                }
            }
            PublishErrorKind::Other if is_wrong_last_sequence(error) => {
                AppendError::Fenced { stream, expected }
            }
            _ => AppendError::Unknown {
                stream,
                reason: error.to_string(),
            },
        }
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
