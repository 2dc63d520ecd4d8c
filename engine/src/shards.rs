//! The shard threads as the rest of the engine sees them: their mailboxes, which of them
//! died, and how to stop them.
//!
//! A shard that panics (a broken invariant, a bug) dies alone: its thread catches the
//! unwinding, marks the shard down, logs and counts it. Its mailbox closes with it, so every
//! later command for its items answers `ShardDown` at once, while the other shards keep
//! selling. Nobody ever waits on a dead shard: replies come through oneshots that close when
//! it dies, and snapshots release the shards they paused when one of them fails.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use crate::command::Command;
use crate::error::{Error, Result};
use crate::shard::Shard;

/// How long a control command (catalog change, snapshot, tick, shutdown) waits for room in
/// a full mailbox, a millisecond at a time, before the engine answers "overloaded".
const CONTROL_SEND_ATTEMPTS: u32 = 10_000;

/// The running shards.
#[derive(Debug)]
pub(crate) struct Shards {
    routing: Routing,
    mailboxes: Vec<Sender<Command>>,
    down: Arc<Vec<AtomicBool>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shards {
    /// Starts one named thread per shard, each with a mailbox of `mailbox_capacity`, the
    /// items spread over them by `routing` (which counts as many shards).
    pub fn spawn(shards: Vec<(Shard, Sender<Command>)>, routing: Routing) -> Result<Shards> {
        debug_assert_eq!(routing.shards(), shards.len());
        let down: Arc<Vec<AtomicBool>> =
            Arc::new((0..shards.len()).map(|_| AtomicBool::new(false)).collect());
        let mut mailboxes = Vec::with_capacity(shards.len());
        let mut threads = Vec::with_capacity(shards.len());
        for (index, (shard, mailbox)) in shards.into_iter().enumerate() {
            let down = Arc::clone(&down);
            let thread = std::thread::Builder::new()
                .name(format!("seckill-shard-{index}"))
                .spawn(move || run_contained(index, shard, &down))
                .map_err(|e| Error::Unavailable(format!("cannot start shard thread: {e}")))?;
            mailboxes.push(mailbox);
            threads.push(thread);
        }
        Ok(Shards {
            routing,
            mailboxes,
            down,
            threads: Mutex::new(threads),
        })
    }

    pub fn count(&self) -> usize {
        self.mailboxes.len()
    }

    /// The shard that owns the item with key `key`.
    pub fn of(&self, key: u64) -> usize {
        self.routing.shard(key)
    }

    /// Item keys grouped by owning shard (see [`Routing::by_shard`]).
    pub fn by_shard(
        &self,
        keys: impl Iterator<Item = u64>,
    ) -> std::collections::BTreeMap<usize, Vec<u64>> {
        self.routing.by_shard(keys)
    }

    /// Shards whose thread died.
    pub fn down(&self) -> Vec<usize> {
        (0..self.count()).filter(|&i| self.is_down(i)).collect()
    }

    pub fn is_down(&self, shard: usize) -> bool {
        self.down[shard].load(Ordering::Acquire)
    }

    /// Puts a command in a shard's mailbox without waiting: a full mailbox is "overloaded".
    pub fn send(&self, shard: usize, command: Command) -> Result<()> {
        match self.mailboxes[shard].try_send(command) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                metrics::counter!("seckill_shard_overloaded_total").increment(1);
                Err(Error::Overloaded)
            }
            Err(TrySendError::Disconnected(_)) => Err(Error::ShardDown(shard)),
        }
    }

    /// Control commands must not be lost to a full mailbox: they wait for room, for at most
    /// about 10 s, on a thread that may block (the control thread).
    pub fn send_blocking(&self, shard: usize, mut command: Command) -> Result<()> {
        for _ in 0..CONTROL_SEND_ATTEMPTS {
            match self.mailboxes[shard].try_send(command) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => command = back,
                Err(TrySendError::Disconnected(_)) => return Err(Error::ShardDown(shard)),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(Error::Overloaded)
    }

    /// Waits for room for as long as the shard lives: for the commands that must arrive
    /// (an install after its promotion was journaled, a shutdown).
    pub fn send_until_placed(&self, shard: usize, command: Command) -> Result<()> {
        place(&self.mailboxes[shard], command, None).map_err(|refused| refused.error(shard))
    }

    /// Waits for room until `deadline` at most; `Overloaded` past it (nothing was sent).
    pub fn send_by(&self, shard: usize, command: Command, deadline: Instant) -> Result<()> {
        place(&self.mailboxes[shard], command, Some(deadline))
            .map_err(|refused| refused.error(shard))
    }

    /// Places `command` without making the caller wait for room: at once when the mailbox
    /// has some, else from a thread of its own that waits for as long as the shard lives.
    /// `placed` runs once it is in, or the shard is gone. For a command that must arrive
    /// but that the control thread must not wait on: a drop, while the shard may be stuck
    /// inside a journal append with its mailbox full.
    pub fn place_soon(
        &self,
        shard: usize,
        command: Command,
        placed: impl FnOnce() + Send + 'static,
    ) {
        let command = match self.mailboxes[shard].try_send(command) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => return placed(),
            Err(TrySendError::Full(back)) => back,
        };
        let work = Arc::new(Mutex::new(Some((command, placed))));
        let mailbox = self.mailboxes[shard].clone();
        let on_thread = Arc::clone(&work);
        let spawned = std::thread::Builder::new()
            .name(format!("seckill-place-{shard}"))
            .spawn(move || {
                if let Some((command, placed)) = take(&on_thread) {
                    let _ = place(&mailbox, command, None);
                    placed();
                }
            });
        if let Err(error) = spawned {
            // No thread: the caller waits after all, rather than the command getting lost.
            tracing::warn!(shard, %error, "no thread to place a command; placing it here");
            if let Some((command, placed)) = take(&work) {
                let _ = place(&self.mailboxes[shard], command, None);
                placed();
            }
        }
    }

    /// A live shard, preferring `shard`.
    pub fn alive_from(&self, shard: usize) -> Option<usize> {
        let count = self.count();
        (0..count)
            .map(|offset| (shard + offset) % count)
            .find(|&candidate| !self.is_down(candidate))
    }

    /// Takes the thread handles, once, for the caller to join.
    pub fn take_threads(&self) -> Vec<JoinHandle<()>> {
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        threads.drain(..).collect()
    }
}

/// Runs a shard's loop; a panic marks it down instead of unwinding further.
fn run_contained(index: usize, shard: Shard, down: &[AtomicBool]) {
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(move || shard.run()));
    if outcome.is_err() {
        down[index].store(true, Ordering::Release);
        metrics::counter!("seckill_shard_panics_total").increment(1);
        let count = down.iter().filter(|d| d.load(Ordering::Acquire)).count();
        metrics::gauge!("seckill_shards_down").set(count as f64);
        tracing::error!(
            shard = index,
            "shard thread panicked: its items answer 503 until a restart; the other shards go on"
        );
    }
}

/// Which shard owns an item: `(key / stride) % shards`.
///
/// An engine that runs alone has a stride of 1 (`key % shards`). A cluster engine's stride
/// is the partition count: an item's partition is `key % partitions`, so with `key %
/// shards` and a shard count that divides the partition count every item of a partition
/// would land on one shard, and a node owning some partitions only would leave shards idle.
/// Dividing first spreads each partition's items over every shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Routing {
    shards: usize,
    stride: u64,
}

impl Routing {
    /// `shards` shards (at least 1) of an engine that runs alone.
    pub fn alone(shards: usize) -> Self {
        Routing::cluster(shards, 1)
    }

    /// `shards` shards (at least 1) of a cluster engine of `partitions` partitions.
    pub fn cluster(shards: usize, partitions: u32) -> Self {
        Routing {
            shards: shards.max(1),
            stride: u64::from(partitions.max(1)),
        }
    }

    pub fn shards(self) -> usize {
        self.shards
    }

    /// The shard that owns the item with key `key`.
    pub fn shard(self, key: u64) -> usize {
        // Below `shards`, which is a usize: the cast cannot truncate.
        ((key / self.stride) % self.shards as u64) as usize
    }

    /// Item keys grouped by owning shard, so that each shard gets one command for all of
    /// them, in shard order.
    pub fn by_shard(
        self,
        keys: impl Iterator<Item = u64>,
    ) -> std::collections::BTreeMap<usize, Vec<u64>> {
        let mut by_shard = std::collections::BTreeMap::<usize, Vec<u64>>::new();
        for key in keys {
            by_shard.entry(self.shard(key)).or_default().push(key);
        }
        by_shard
    }
}

/// Why a command was not placed.
enum Unplaced {
    /// The shard is gone.
    Gone,
    /// No room by the deadline: nothing was sent.
    Late,
}

impl Unplaced {
    fn error(self, shard: usize) -> Error {
        match self {
            Unplaced::Gone => Error::ShardDown(shard),
            Unplaced::Late => Error::Overloaded,
        }
    }
}

/// Waits for room in `mailbox` until `deadline`, or for as long as its shard lives without
/// one.
fn place(
    mailbox: &Sender<Command>,
    mut command: Command,
    deadline: Option<Instant>,
) -> std::result::Result<(), Unplaced> {
    loop {
        match mailbox.try_send(command) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(back)) => command = back,
            Err(TrySendError::Disconnected(_)) => return Err(Unplaced::Gone),
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(Unplaced::Late);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The work in `slot`, once: whoever takes it first runs it.
fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::partition_of;

    #[test]
    fn a_cluster_spreads_each_partitions_items_over_every_shard() {
        let (shards, partitions) = (4, 8);
        let cluster = Routing::cluster(shards, partitions);
        let alone = Routing::alone(shards);
        for partition in 0..partitions {
            let keys = (0..4_000u64).filter(|key| partition_of(*key, partitions) == partition);
            let by_cluster = cluster.by_shard(keys.clone());
            assert_eq!(
                by_cluster.len(),
                shards,
                "partition {partition}: {by_cluster:?}"
            );
            // What the stride mends: every item of a partition on one shard.
            assert_eq!(alone.by_shard(keys).len(), 1);
        }
        assert_eq!(alone.shard(7), 3, "alone: key % shards, as before");
        assert_eq!(Routing::cluster(0, 0).shard(u64::MAX), 0);
    }
}
