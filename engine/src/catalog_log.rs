//! The catalog log of a cluster: one ordered log of catalog changes (creates, starts, stops)
//! that every node appends to under a condition, and that every node applies in the same
//! order. The cluster plan's Q2 and step 4.
//!
//! Serialising the changes cluster-wide is the whole job of the condition: an append says
//! "only if the log still ends at the sequence my validation saw". Two operators creating
//! promotions that share a SKU on two nodes at the same moment both validate at sequence N
//! and append expecting N; the log keeps only one of them at N + 1, the other hears
//! [`CatalogAppendError::Behind`], applies N + 1, validates again and finds the conflict.

use std::fmt;

use crate::error::JournalError;
use crate::event::Event;

/// Why a conditional append did not land, or may not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogAppendError {
    /// The log has moved past the expected sequence: nothing of this append landed. The
    /// caller reads what it missed and decides again.
    #[error("the catalog log is at {last_seq}, past the expected sequence")]
    Behind { last_seq: u64 },
    /// The append may have landed or not (a timeout, a lost answer). Because it was
    /// conditional on `expected_seq`, the log's entry at `expected_seq + 1` tells for good,
    /// once the log holds anything there.
    #[error("the catalog append's outcome is unknown: {0}")]
    Unknown(JournalError),
    /// Refused before anything was written (no connection, no such stream): not landed.
    #[error("the catalog append failed: {0}")]
    Failed(JournalError),
}

/// The log every node appends catalog changes to (see the module docs).
///
/// Called from the engine's control thread, which blocks on it: implementations may block
/// (a network round trip), and must come back within their own bounded patience.
pub trait CatalogLog: Send + Sync + 'static {
    /// Appends `events` as one entry if the log still ends at `expected_seq` (0: empty), and
    /// returns the entry's sequence, always `expected_seq + 1`.
    fn append_if(&self, expected_seq: u64, events: &[Event]) -> Result<u64, CatalogAppendError>;

    /// Every entry after `after_seq` that the log holds now, in order and without gaps, as
    /// `(seq, events)`. An entry that holds no catalog event (a takeover record written by
    /// the one-owner journal, say) comes with no events, so the reader's position moves
    /// over it: the next `append_if` must expect the log's real last sequence.
    fn read_after(&self, after_seq: u64) -> Result<Vec<(u64, Vec<Event>)>, JournalError>;
}

impl fmt::Debug for dyn CatalogLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CatalogLog")
    }
}
