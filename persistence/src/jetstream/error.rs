//! What can go wrong appending to a partition or holding its lease.

use thiserror::Error;

/// JetStream's "wrong last sequence" (`JSStreamWrongLastSequenceErrF`).
pub const WRONG_LAST_SEQUENCE: u64 = 10071;
/// The same refusal as a constant message (`JSStreamWrongLastSequenceConstantErr`), from
/// newer servers.
pub const WRONG_LAST_SEQUENCE_CONSTANT: u64 = 10164;

/// Why an append did not go through.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AppendError {
    /// Someone appended after the last sequence this writer knows: another owner took the
    /// partition over. The writer must drop its state for the partition and stop writing.
    #[error("partition {stream} was taken over (the stream is past sequence {expected})")]
    Fenced { stream: String, expected: u64 },
    /// No answer or a passing failure (a leader election, NATS unreachable): the append may
    /// or may not be in the stream; [`crate::jetstream::PartitionLog::resolve`] tells.
    #[error("append to {stream} did not complete: {reason}")]
    Unknown { stream: String, reason: String },
    /// Refused for a reason that no retry changes (a message too large, no such stream).
    #[error("append to {stream} refused: {reason}")]
    Refused { stream: String, reason: String },
}

/// Why a lease could not be taken, renewed or released.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LeaseError {
    /// Another node holds it (or took it since our last renewal).
    #[error("partition lease {key} is held by {holder}")]
    Held { key: String, holder: String },
    /// NATS did not answer, or the bucket could not be read or written.
    #[error("partition lease {key}: {reason}")]
    Unavailable { key: String, reason: String },
}

/// True when the server's error under `error` is one of the two "wrong last sequence" codes.
pub(crate) fn is_wrong_last_sequence(error: &(dyn std::error::Error + 'static)) -> bool {
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
