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

/// Why the journal on JetStream could not open.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClusterError {
    /// No NATS server answered within the connect timeout.
    #[error("NATS unreachable at {urls}: {reason}")]
    Unreachable { urls: String, reason: String },
    /// The cluster was created with another partition count; nothing was changed.
    #[error("the cluster was created with {stored} partitions; --partitions {given} is refused (the partition count is fixed when a cluster is first started)")]
    PartitionsMismatch { stored: u32, given: u32 },
    /// Another node holds a partition and did not let go within the wait.
    #[error("partition {partition} is held by node {holder}")]
    LeaseHeld { partition: String, holder: String },
    /// The cluster was written by a newer build; nothing was changed.
    #[error("the cluster was written with event version {found}, this build supports up to {supported}; upgrade seckill (nothing was changed)")]
    NewerVersion { found: u32, supported: u32 },
    /// JetStream refused or failed a request, or what it holds cannot be decoded.
    #[error("JetStream: {0}")]
    Nats(String),
}

impl From<LeaseError> for ClusterError {
    fn from(error: LeaseError) -> Self {
        match error {
            LeaseError::Held { key, holder } => ClusterError::LeaseHeld {
                partition: key,
                holder,
            },
            LeaseError::Unavailable { .. } => ClusterError::Nats(error.to_string()),
        }
    }
}

impl From<AppendError> for ClusterError {
    fn from(error: AppendError) -> Self {
        ClusterError::Nats(error.to_string())
    }
}

/// Any displayable failure as [`ClusterError::Nats`].
pub(crate) fn nats(what: &str, error: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(format!("{what}: {error}"))
}
