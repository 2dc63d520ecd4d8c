//! A journal for the cluster tests: a [`MemoryJournal`] that counts and keeps what it was
//! offered and can hold an append's outcome back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use seckill_engine::{
    AppendOutcome, ArchivedItem, EngineImage, Event, Journal, JournalError, JournalResult,
    MemoryJournal, Order, PendingAppend,
};

/// A test engine's journal: a partitioned [`MemoryJournal`], watched. It counts the appends
/// that began (so a test knows the shard is inside one), keeps every batch it was offered,
/// lost parts included, and can hold one append's outcome back, as a replicated log that
/// goes on writing a batch in the background does.
#[derive(Debug)]
pub struct Watched {
    pub log: Arc<MemoryJournal>,
    appends_started: AtomicU64,
    offered: Mutex<Vec<Vec<Event>>>,
    /// The next append answers a failure, and its outcome waits in `pending_append`.
    /// The next append answers a failure, and its outcome waits in `pending_append`.
    pub hold_next: AtomicBool,
    held: Mutex<Held>,
}

#[derive(Debug)]
pub enum Held {
    Nothing,
    Waiting(AppendOutcome),
    Released(AppendOutcome),
}

impl Watched {
    pub fn new(log: &Arc<MemoryJournal>) -> Arc<Self> {
        Arc::new(Watched {
            log: Arc::clone(log),
            appends_started: AtomicU64::new(0),
            offered: Mutex::new(Vec::new()),
            hold_next: AtomicBool::new(false),
            held: Mutex::new(Held::Nothing),
        })
    }

    pub fn appends_started(&self) -> u64 {
        self.appends_started.load(Ordering::SeqCst)
    }

    /// Lets the held append's outcome be told.
    pub fn release(&self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Held::Waiting(outcome) = std::mem::replace(&mut *held, Held::Nothing) {
            *held = Held::Released(outcome);
        }
    }

    pub fn offered(&self) -> Vec<Vec<Event>> {
        self.offered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Journal for Watched {
    fn append(&self, events: &[Event]) -> Result<u64, JournalError> {
        self.log.append(events)
    }

    fn append_partitioned(&self, events: &[Event]) -> AppendOutcome {
        // Read at entry: an append already inside the log when a test asks to hold "the
        // next" one is not that one.
        let hold = self.hold_next.swap(false, Ordering::SeqCst);
        self.offered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(events.to_vec());
        self.appends_started.fetch_add(1, Ordering::SeqCst);
        let outcome = self.log.append_partitioned(events);
        if !hold {
            return outcome;
        }
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Held::Waiting(outcome);
        AppendOutcome::Failed(JournalError("held back by the test".into()))
    }

    fn last_seq(&self) -> u64 {
        self.log.last_seq()
    }

    fn pending_append(&self) -> PendingAppend {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match std::mem::replace(&mut *held, Held::Nothing) {
            Held::Nothing => PendingAppend::Final,
            Held::Waiting(outcome) => {
                *held = Held::Waiting(outcome);
                PendingAppend::Waiting
            }
            Held::Released(AppendOutcome::Durable(seq)) => PendingAppend::Landed(seq),
            Held::Released(AppendOutcome::Failed(error)) => PendingAppend::Failed(error),
            Held::Released(AppendOutcome::PartlyLost {
                seq,
                lost,
                partitions,
                ..
            }) => PendingAppend::PartlyLost {
                seq,
                lost,
                partitions,
            },
        }
    }

    fn save_snapshot(&self, image: &EngineImage) -> Result<(), JournalError> {
        self.log.save_snapshot(image)
    }

    fn keeps_archive(&self) -> bool {
        self.log.keeps_archive()
    }

    fn archive_item(&self, item: &ArchivedItem, orders: &[Order]) -> Result<(), JournalError> {
        self.log.archive_item(item, orders)
    }

    fn archived_item(&self, key: u64) -> JournalResult<Option<ArchivedItem>> {
        self.log.archived_item(key)
    }

    fn archived_order(&self, key: u64, order_seq: u64) -> JournalResult<Option<Order>> {
        self.log.archived_order(key, order_seq)
    }

    fn archived_request(&self, key: u64, user: &str, request: &str) -> JournalResult<Option<u64>> {
        self.log.archived_request(key, user, request)
    }
}
