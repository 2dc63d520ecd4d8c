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
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

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

/// A catalog log in memory, shared by every engine given a clone of it (the engines of one
/// test cluster). Test hooks make a race certain ([`MemoryCatalogLog::rendezvous`]) and an
/// answer lost ([`MemoryCatalogLog::lose_next_answer`]).
#[derive(Debug, Clone, Default)]
pub struct MemoryCatalogLog {
    inner: Arc<MemoryCatalogInner>,
}

#[derive(Debug, Default)]
struct MemoryCatalogInner {
    state: Mutex<MemoryCatalogState>,
    arrivals: Condvar,
}

#[derive(Debug, Default)]
struct MemoryCatalogState {
    /// Entry `i` is at sequence `i + 1`.
    entries: Vec<Vec<Event>>,
    /// Appends still to meet at the rendezvous before any of them looks at the log.
    rendezvous_size: usize,
    rendezvous_arrived: usize,
    /// Moves on each time a rendezvous lets its appends go.
    rendezvous_round: u64,
    /// The next appends' lost answers, in order: `true` when the append lands all the same.
    lost_answers: std::collections::VecDeque<bool>,
}

/// How long appends wait at a rendezvous for the others before they go on alone (a test
/// that armed more than it sends must not hang).
const RENDEZVOUS_WAIT: Duration = Duration::from_secs(5);

impl MemoryCatalogLog {
    pub fn new() -> Self {
        MemoryCatalogLog::default()
    }

    fn state(&self) -> MutexGuard<'_, MemoryCatalogState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The log's last sequence (0: empty).
    pub fn last_seq(&self) -> u64 {
        self.state().entries.len() as u64
    }

    /// Every entry, as `(seq, events)`.
    pub fn entries(&self) -> Vec<(u64, Vec<Event>)> {
        numbered(&self.state().entries, 0)
    }

    /// Appends without a condition, as another writer of the log would (empty `events`: a
    /// takeover record); returns its sequence.
    pub fn push(&self, events: Vec<Event>) -> u64 {
        let mut state = self.state();
        state.entries.push(events);
        state.entries.len() as u64
    }

    /// The next `appends` calls of [`CatalogLog::append_if`] wait for each other before any
    /// of them looks at the log, so that all of them were decided against one log: a race,
    /// made certain.
    pub fn rendezvous(&self, appends: usize) {
        let mut state = self.state();
        state.rendezvous_size = appends;
        state.rendezvous_arrived = 0;
    }

    /// The next [`CatalogLog::append_if`] answers [`CatalogAppendError::Unknown`]; `lands`
    /// says whether it was written all the same (when its condition held).
    pub fn lose_next_answer(&self, lands: bool) {
        self.state().lost_answers.push_back(lands);
    }

    /// Waits at the rendezvous, when one is armed.
    fn meet<'a>(
        &'a self,
        mut state: MutexGuard<'a, MemoryCatalogState>,
    ) -> MutexGuard<'a, MemoryCatalogState> {
        if state.rendezvous_size == 0 {
            return state;
        }
        state.rendezvous_arrived += 1;
        if state.rendezvous_arrived >= state.rendezvous_size {
            state.rendezvous_size = 0;
            state.rendezvous_round += 1;
            self.inner.arrivals.notify_all();
            return state;
        }
        let round = state.rendezvous_round;
        let (mut state, waited) = self
            .inner
            .arrivals
            .wait_timeout_while(state, RENDEZVOUS_WAIT, |s| s.rendezvous_round == round)
            .unwrap_or_else(PoisonError::into_inner);
        if waited.timed_out() {
            state.rendezvous_size = 0;
            state.rendezvous_round += 1;
            self.inner.arrivals.notify_all();
        }
        state
    }
}

fn numbered(entries: &[Vec<Event>], after_seq: u64) -> Vec<(u64, Vec<Event>)> {
    let skip = usize::try_from(after_seq).unwrap_or(usize::MAX);
    entries
        .iter()
        .enumerate()
        .skip(skip)
        .map(|(index, events)| (index as u64 + 1, events.clone()))
        .collect()
}

impl CatalogLog for MemoryCatalogLog {
    fn append_if(&self, expected_seq: u64, events: &[Event]) -> Result<u64, CatalogAppendError> {
        let mut state = self.meet(self.state());
        let lost = state.lost_answers.pop_front();
        let last_seq = state.entries.len() as u64;
        if last_seq != expected_seq {
            return Err(match lost {
                Some(_) => CatalogAppendError::Unknown(JournalError("the answer was lost".into())),
                None => CatalogAppendError::Behind { last_seq },
            });
        }
        match lost {
            Some(false) => Err(CatalogAppendError::Unknown(JournalError(
                "the append timed out before it was written".into(),
            ))),
            Some(true) => {
                state.entries.push(events.to_vec());
                Err(CatalogAppendError::Unknown(JournalError(
                    "the answer was lost after the append was written".into(),
                )))
            }
            None => {
                state.entries.push(events.to_vec());
                Ok(last_seq + 1)
            }
        }
    }

    fn read_after(&self, after_seq: u64) -> Result<Vec<(u64, Vec<Event>)>, JournalError> {
        Ok(numbered(&self.state().entries, after_seq))
    }
}
