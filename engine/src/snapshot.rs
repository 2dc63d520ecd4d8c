//! Snapshots: a consistent image of the whole engine, handed to the journal, and when to take
//! the next one.
//!
//! The taker pauses every shard at a batch boundary, gathers their copies, and releases them.
//! It runs on the control thread, so no catalog change is half-way meanwhile. It never hangs
//! on a shard and never saves a partial image: a dead shard (its mailbox closed, or its reply
//! dropped) or a fenced one (its memory is ahead of its log) aborts the snapshot, the paused
//! shards are released, and the log is kept whole.
//!
//! A cluster engine takes none: it holds some partitions only, and a whole-engine image
//! without the others' items would make a restart install them fresh, selling their stock
//! again. Its snapshots are per partition (cluster plan, step 6).

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use crate::command::Command;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::event::EVENT_VERSION;
use crate::image::{EngineImage, GuardImage, PromotionImage};
use crate::item::ItemState;

/// Takes a consistent image of the engine and saves it through the journal. Blocks: call it
/// from the control thread.
pub(crate) fn take_and_save(core: &Core) -> Result<EngineImage> {
    if core.cluster.is_some() {
        return Err(Error::Unavailable(
            "a cluster node takes no whole-engine snapshot: it holds some partitions only".into(),
        ));
    }
    let image = take(core)?;
    let started = std::time::Instant::now();
    core.journal
        .save_snapshot(&image)
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    metrics::histogram!("seckill_snapshot_seconds").record(started.elapsed().as_secs_f64());
    Ok(image)
}

/// True when the log has grown enough since the last snapshot to take another.
///
/// A snapshot copies every order and token while the shards are paused, so its cost grows
/// with the state. Waiting for at least as many new events as the last snapshot held records
/// keeps that cost at a constant share of the work per event, and replay after a crash at
/// most about as long as loading the snapshot (Redis rewrites its AOF by the same rule, at
/// 100% growth).
pub(crate) fn is_due(core: &Core) -> bool {
    let every = core.config.snapshot_every_events;
    if every == 0 || core.cluster.is_some() {
        return false;
    }
    let due = every.max(
        core.counters
            .records_in_last_snapshot
            .load(Ordering::Relaxed),
    );
    core.counters.events_since_snapshot.load(Ordering::Relaxed) >= due
}

fn take(core: &Core) -> Result<EngineImage> {
    // Every paused shard waits on `resume` until this sender is dropped, which happens on
    // every way out of this function, the early error returns included.
    let (resume, resumed) = crossbeam_channel::bounded::<()>(0);
    let mut waits = Vec::with_capacity(core.shards.count());
    for shard in 0..core.shards.count() {
        let (image, copy) = oneshot::channel();
        let pause = Command::Pause {
            image,
            resume: resumed.clone(),
        };
        // Never wait for room while earlier shards are parked: a full mailbox aborts the
        // snapshot at once (they are released) and the next attempt comes later.
        core.shards.send(shard, pause)?;
        waits.push((shard, copy));
    }
    let mut items: Vec<ItemState> = Vec::new();
    for (shard, copy) in waits {
        match copy.blocking_recv() {
            Ok(Ok(part)) => items.extend(part),
            Ok(Err(fenced)) => return Err(fenced),
            Err(_) => return Err(Error::ShardDown(shard)),
        }
    }
    // Every shard is parked: nothing is being appended. The journal notes where its log
    // stands now (a log of several streams notes each one), before the shards resume.
    let through_seq = core.journal.snapshot_cut();
    let promotions = promotion_images(core);
    core.counters
        .events_since_snapshot
        .store(0, Ordering::Relaxed);
    drop(resume);
    let records: usize = items
        .iter()
        .map(|item| item.orders.len() + item.tokens.len())
        .sum();
    core.counters
        .records_in_last_snapshot
        .store(records as u64, Ordering::Relaxed);
    let (promotions, guards) = split_guards(promotions);
    Ok(EngineImage {
        version: EVENT_VERSION,
        through_seq,
        promotions,
        items,
        guards,
    })
}

/// Moves each promotion's guard out of its record into the image's `guards`, the form the
/// encoding keeps (a record's encoding leaves its guard out): an image equals its decoding.
fn split_guards(mut promotions: Vec<PromotionImage>) -> (Vec<PromotionImage>, Vec<GuardImage>) {
    let mut guards = Vec::new();
    for promotion in &mut promotions {
        let guard = std::mem::take(&mut promotion.record.guard);
        if !guard.is_open() {
            guards.push(GuardImage {
                promotion_id: promotion.record.id.clone(),
                guard,
            });
        }
    }
    (promotions, guards)
}

fn promotion_images(core: &Core) -> Vec<PromotionImage> {
    core.catalog
        .entries()
        .iter()
        .map(|entry| {
            let (starts_at_ms, ends_at_ms) = entry.window();
            PromotionImage {
                record: entry.record.clone(),
                starts_at_ms,
                ends_at_ms,
            }
        })
        .collect()
}
