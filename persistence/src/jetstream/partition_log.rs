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
/// Fencing has two halves. On the write side every append expects the stream's last
/// sequence as this writer knows it. That alone fences single appends, but not a pipelined
/// run: once a new owner's takeover record landed where our refused k-th append should
/// have, our (k+1)-th finds the stream at the sequence it expects and lands after the
/// takeover (seen in `tests/jetstream_fencing.rs`; chaining the run by
/// `Nats-Expected-Last-Msg-Id` instead stopped the clustered stream on 2.15.1 with
/// "critical write error: last msgid mismatch"). So on the read side every message id
/// carries its writer's epoch (`e<epoch>-<seq>`), and a message of a lower epoch than one
/// before it in the stream is stale: readers skip it ([`PartitionLog::read_fenced`]), and the
/// new owner steps over it ([`PartitionLog::catch_up`]). Its writer never acknowledged it:
/// a run's acks are read in order and the first refusal ends the run.
///
/// Measured here (`benches/examples/jetstream_append`, replicas 3, `sync_interval:
/// always`): one append at a time about 600/s on one stream and about 1,150/s over 16
/// streams (each stream fsyncs each append on each replica); a pipelined run of 64 on one
/// stream about 6,700/s (the server syncs a run together).
#[derive(Debug)]
pub struct PartitionLog {
    js: Context,
    stream: String,
    subject: String,
    /// The stream's last sequence as this writer knows it: every append expects it.
    last_seq: u64,
    /// This ownership's epoch (the lease revision it was taken at): its message ids are
    /// `e<epoch>-<seq>`.
    epoch: u64,
    /// Whether this writer has appended yet (its takeover record, first): only messages
    /// after that one can be stale.
    appended: bool,
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
            appended: false,
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
        let message_id = message_id(self.epoch, expected + 1);
        let mut last_error = None;
        for _ in 0..PUBLISH_ATTEMPTS {
            match self
                .publish_once(payload.clone(), expected, &message_id)
                .await
            {
                Ok(seq) => {
                    self.last_seq = seq;
                    self.appended = true;
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
            // This writer's ids name the sequence it expected them at.
            if id != Some(message_id(self.epoch, seq)) {
                return Err(AppendError::Fenced {
                    stream: self.stream.clone(),
                    expected: self.last_seq,
                });
            }
        }
        self.last_seq = last;
        Ok(true)
    }

    /// Appends `payloads` in order with all of them in flight at once (the k-th expecting
    /// the stream at `last_seq + k`); returns their sequences. Every ack is read, in order;
    /// the first refusal or unknown outcome ends the run with that error, and the writer
    /// then knows the stream up to the last one acknowledged in order. Later messages of a
    /// failed run that landed anyway are stale for every reader (see the type's docs).
    pub async fn append_pipelined(
        &mut self,
        payloads: Vec<Bytes>,
    ) -> Result<Vec<u64>, AppendError> {
        let base = self.last_seq;
        let mut acks = Vec::with_capacity(payloads.len());
        for (offset, payload) in payloads.into_iter().enumerate() {
            let expected = base + offset as u64;
            let publish = PublishMessage::build()
                .payload(payload)
                .message_id(message_id(self.epoch, expected + 1))
                .expected_last_sequence(expected);
            match self.js.send_publish(self.subject.clone(), publish).await {
                Ok(ack) => acks.push((expected, ack)),
                Err(error) => {
                    let error = self.classify(expected, &error);
                    drain(acks).await;
                    return Err(error);
                }
            }
        }
        let mut seqs = Vec::with_capacity(acks.len());
        let mut acks = acks.into_iter();
        for (expected, ack) in acks.by_ref() {
            match ack.await {
                Ok(ack) if ack.sequence == expected + 1 => {
                    self.last_seq = ack.sequence;
                    self.appended = true;
                    seqs.push(ack.sequence);
                }
                Ok(ack) => {
                    drain(acks.collect()).await;
                    return Err(AppendError::Unknown {
                        stream: self.stream.clone(),
                        reason: format!("acknowledged at {} for {}", ack.sequence, expected + 1),
                    });
                }
                Err(error) => {
                    let error = self.classify(expected, &error);
                    drain(acks.collect()).await;
                    return Err(error);
                }
            }
        }
        Ok(seqs)
    }

    /// After a refusal: steps over the messages after [`PartitionLog::last_seq`] when every
    /// one of them is stale (a lower epoch than ours, after our own first append: an earlier
    /// owner's run that landed after our takeover, which its writer never acknowledged).
    /// [`AppendError::Fenced`] when one is of our epoch or a higher one: a newer owner took
    /// the partition. [`AppendError::Behind`] when we have not appended yet: what an earlier
    /// owner wrote before our takeover counts (its writer may have acknowledged it) and must
    /// be replayed, never stepped over.
    pub async fn catch_up(&mut self) -> Result<(), AppendError> {
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
        if last > self.last_seq && !self.appended {
            return Err(AppendError::Behind {
                stream: self.stream.clone(),
                after: self.last_seq,
            });
        }
        for seq in self.last_seq + 1..=last {
            let message = handle
                .get_raw_message(seq)
                .await
                .map_err(|e| unknown(&self.stream, e))?;
            if id_epoch(&message.headers).is_none_or(|epoch| epoch >= self.epoch) {
                return Err(AppendError::Fenced {
                    stream: self.stream.clone(),
                    expected: self.last_seq,
                });
            }
        }
        self.last_seq = last;
        Ok(())
    }

    /// The payloads of `from..=to` that count: a message of a lower epoch than one before it
    /// in the stream is stale and skipped (see the type's docs).
    pub async fn read_fenced(&self, from: u64, to: u64) -> Result<Vec<(u64, Bytes)>, AppendError> {
        let handle = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| unknown(&self.stream, e))?;
        let mut newest_epoch = 0;
        let mut kept = Vec::new();
        for seq in from..=to {
            let message = handle
                .get_raw_message(seq)
                .await
                .map_err(|e| unknown(&self.stream, e))?;
            let epoch = id_epoch(&message.headers).unwrap_or(0);
            if epoch < newest_epoch {
                continue;
            }
            newest_epoch = epoch;
            kept.push((seq, message.payload));
        }
        Ok(kept)
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

/// The id of the message this epoch appends at `seq`.
fn message_id(epoch: u64, seq: u64) -> String {
    format!("e{epoch}-{seq}")
}

/// The writer epoch in a message's id, if it has one of ours.
fn id_epoch(headers: &async_nats::HeaderMap) -> Option<u64> {
    let id = headers.get(async_nats::header::NATS_MESSAGE_ID)?.as_str();
    let (epoch, _) = id.strip_prefix('e')?.split_once('-')?;
    epoch.parse().ok()
}

/// Reads every ack still in flight, so none is dropped unread.
async fn drain(acks: Vec<(u64, async_nats::jetstream::context::PublishAckFuture)>) {
    for (_, ack) in acks {
        let _ = ack.await;
    }
}

fn unknown(stream: &str, error: impl std::fmt::Display) -> AppendError {
    AppendError::Unknown {
        stream: stream.to_owned(),
        reason: error.to_string(),
    }
}
