//! [`PartitionLog`]: appends to one partition's stream, each conditional on the last
//! sequence this writer knows, so that a writer that lost the partition cannot append.

use std::time::Duration;

use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, StorageType};
use bytes::Bytes;

use super::error::{AppendError, WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_CONSTANT};

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
/// One append in flight at a time, on purpose. Pipelining several, the k-th expecting the
/// stream at `last_seq + k`, is not fenced: once a new owner's takeover record landed where
/// our refused k-th should have, our (k+1)-th finds the stream at the sequence it expects
/// and lands after the takeover (seen in `tests/jetstream_fencing.rs` while building this).
/// Adding `Nats-Expected-Last-Msg-Id` to chain the run closes that in principle, but on a
/// clustered stream the 2.15.1 server then stopped the stream with "critical write error:
/// last msgid mismatch" on every replica. Measured here (`benches/examples/jetstream_append`,
/// replicas 3, `sync_interval: always`): one append at a time gives about 600 appends/s on
/// one stream and only about 1,150/s over 16 streams (every stream fsyncs every append on
/// every replica), while a pipelined run of 64 on one stream gave about 6,700/s (the server
/// syncs a run together). The way to pipeline safely is a fence on the read side: message
/// ids carry the owner's epoch, and a reader (the new owner included) ignores messages of a
/// lower epoch after a takeover record; the old writer never acknowledges them, since it
/// reads its acks in order and stops at the first refusal. That is the next step.
#[derive(Debug)]
pub struct PartitionLog {
    js: Context,
    stream: String,
    subject: String,
    /// The stream's last sequence as this writer knows it: every append expects it.
    last_seq: u64,
    /// Unique to this writer's ownership of the partition: the prefix of its message ids.
    writer: String,
}

impl PartitionLog {
    /// Opens (creating it if absent: file storage, `settings.replicas` copies) the stream
    /// `stream` with the one subject `subject`, and reads its last sequence. `writer` names
    /// this ownership (node and lease revision): message ids are `<writer>-<seq>`.
    pub async fn open(
        js: Context,
        stream: &str,
        subject: &str,
        settings: &StreamSettings,
        writer: &str,
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
            writer: writer.to_owned(),
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
        let message_id = format!("{}-{}", self.writer, expected + 1);
        let mut last_error = None;
        for _ in 0..PUBLISH_ATTEMPTS {
            match self
                .publish_once(payload.clone(), expected, &message_id)
                .await
            {
                Ok(seq) => {
                    self.last_seq = seq;
                    return Ok(seq);
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

    /// After an [`AppendError::Unknown`]: reads the stream's tail. `Ok(true)` when every
    /// message after [`PartitionLog::last_seq`] is one this writer sent (they went in, in
    /// order, and the writer now knows the stream up to them); `Ok(false)` when the stream
    /// is still where the writer left it; [`AppendError::Fenced`] when someone else
    /// appended.
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
        if last == self.last_seq {
            return Ok(false);
        }
        for seq in self.last_seq + 1..=last {
            let message = handle
                .get_raw_message(seq)
                .await
                .map_err(|e| unknown(&self.stream, e))?;
            let id = message
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|value| value.as_str().to_owned());
            // This writer's ids are `<writer>-<seq>`: the sequence it expected them at.
            if id != Some(format!("{}-{seq}", self.writer)) {
                return Err(AppendError::Fenced {
                    stream: self.stream.clone(),
                    expected: self.last_seq,
                });
            }
        }
        self.last_seq = last;
        Ok(true)
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

/// True when the server's error under `error` is one of the two "wrong last sequence" codes.
fn is_wrong_last_sequence(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(server) = cause.downcast_ref::<async_nats::jetstream::Error>() {
            let code = server.error_code().0;
            return code == WRONG_LAST_SEQUENCE || code == WRONG_LAST_SEQUENCE_CONSTANT;
        }
        source = cause.source();
    }
    false
}

fn unknown(stream: &str, error: impl std::fmt::Display) -> AppendError {
    AppendError::Unknown {
        stream: stream.to_owned(),
        reason: error.to_string(),
    }
}
