//! Rebuilding the engine from what the journal hands back: the latest snapshot, then every
//! batch after it, applied (never re-decided) in sequence order.

use std::sync::Arc;

use crate::catalog::{item_keys, Catalog, PromotionEntry, WindowChange};
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::event::{Event, EVENT_VERSION};
use crate::ids::parse_order_id;
use crate::image::EngineImage;
use crate::model::PromotionRecord;
use crate::ports::{Journal, Recovery};
use crate::shard_state::ShardState;
use crate::shards::{keys_by_shard, shard_index};

/// The state recovery builds, before any shard thread runs.
#[derive(Debug)]
pub(crate) struct Rebuilt {
    pub catalog: Catalog,
    pub states: Vec<ShardState>,
    pub epoch: u64,
}

/// Replays `recovery` into a fresh catalog and one state per shard. `now_ms` is the time
/// the gates are published at.
pub(crate) fn rebuild(
    config: &EngineConfig,
    recovery: Recovery,
    journal: &dyn Journal,
    now_ms: i64,
) -> Result<Rebuilt> {
    let shards = config.shards;
    let mut rebuilt = Rebuilt {
        catalog: Catalog::default(),
        states: (0..shards).map(|_| ShardState::default()).collect(),
        epoch: recovery.epoch,
    };
    let through_seq = match recovery.image {
        Some(image) => restore_image(&mut rebuilt, image)?,
        None => 0,
    };
    let mut newest_epoch = 0;
    for batch in recovery.batches {
        let (seq, events) = batch.map_err(|e| Error::Unavailable(e.to_string()))?;
        if seq <= through_seq {
            continue;
        }
        for event in &events {
            newest_epoch = newest_epoch.max(order_epoch(event));
            replay(&mut rebuilt, event, config, now_ms);
        }
    }
    if newest_epoch >= rebuilt.epoch {
        // The journal handed out an epoch that the log has seen: new order ids could repeat
        // old ones, and a shop would pay one order with another's money.
        return Err(Error::Unavailable(format!(
            "the journal's epoch {} is not newer than epoch {newest_epoch} in its log",
            rebuilt.epoch
        )));
    }
    settle_missing_items(&mut rebuilt, journal, config, now_ms)?;
    for state in &mut rebuilt.states {
        state.publish_all(now_ms);
    }
    Ok(rebuilt)
}

/// Items of the catalog that no shard state holds were archived (only archiving removes an
/// item). One the archive does not hold either never got its items installed (a snapshot of
/// an older build taken mid-create): it gets fresh ones, since no event of it can exist.
fn settle_missing_items(
    rebuilt: &mut Rebuilt,
    journal: &dyn Journal,
    config: &EngineConfig,
    now_ms: i64,
) -> Result<()> {
    let shards = rebuilt.states.len();
    for entry in rebuilt.catalog.entries() {
        for gate in &entry.gates {
            let state = &mut rebuilt.states[shard_index(gate.key, shards)];
            if state.holds(gate.key) {
                continue;
            }
            match journal.archived_item(gate.key) {
                Ok(Some(item)) => state.note_archived(&entry, gate, item.stats.remaining),
                Ok(None) => state.install(&entry, &[gate.key], config.token_ttl_ms(), now_ms),
                Err(error) => return Err(Error::Unavailable(error.to_string())),
            }
        }
    }
    Ok(())
}

/// Loads a snapshot; returns the last sequence number it holds.
fn restore_image(rebuilt: &mut Rebuilt, image: EngineImage) -> Result<u64> {
    if image.version > EVENT_VERSION {
        return Err(Error::Unavailable(format!(
            "snapshot version {} is newer than this build's {}",
            image.version, EVENT_VERSION
        )));
    }
    let through_seq = image.through_seq;
    let (promotions, items) = image.promotions_with_guards();
    for promotion in promotions {
        let entry = rebuilt.catalog.insert(promotion.record)?;
        entry.set_window(promotion.starts_at_ms, promotion.ends_at_ms);
    }
    let shards = rebuilt.states.len();
    for item in items {
        let entry = rebuilt
            .catalog
            .entry(&item.promotion_id)
            .map_err(|_| Error::Unavailable("snapshot item without promotion".into()))?;
        let gate = rebuilt
            .catalog
            .gate_by_key(item.key)
            .ok_or_else(|| Error::Unavailable("snapshot item without gate".into()))?;
        rebuilt.states[shard_index(item.key, shards)].restore(item, &entry, &gate);
    }
    Ok(through_seq)
}

/// Applies one journaled event.
fn replay(rebuilt: &mut Rebuilt, event: &Event, config: &EngineConfig, now_ms: i64) {
    match event {
        Event::PromotionCreated { .. } | Event::PromotionGuarded { .. } => {
            let Some(promotion) = event.created_promotion() else {
                return;
            };
            if let Some(entry) = register(&rebuilt.catalog, promotion) {
                let keys = item_keys(&entry.record).into_iter();
                for (shard, keys) in keys_by_shard(keys, rebuilt.states.len()) {
                    rebuilt.states[shard].install(&entry, &keys, config.token_ttl_ms(), now_ms);
                }
            }
        }
        Event::PromotionStarted { .. } | Event::PromotionStopped { .. } => {
            if let Some((change, promotion_id, at_ms)) = WindowChange::of(event) {
                if let Ok(entry) = rebuilt.catalog.entry(promotion_id) {
                    entry.apply_window(change, at_ms);
                }
            }
        }
        item_event => {
            let key = item_event.item_key().unwrap_or_default();
            let shard = shard_index(key, rebuilt.states.len());
            rebuilt.states[shard].apply(item_event);
        }
    }
}

/// Adds a journaled promotion to the catalog. A second creation of one id (older builds could
/// journal one when a caller gave up half-way and retried) keeps the first and says so: the
/// log stays readable instead of refusing every restart.
fn register(catalog: &Catalog, record: PromotionRecord) -> Option<Arc<PromotionEntry>> {
    if let Ok(existing) = catalog.entry(&record.id) {
        let same = existing.record.same_body(&record);
        tracing::warn!(promotion = %record.id, same_body = same, "the log creates this promotion again; the first creation stands");
        return None;
    }
    catalog.insert(record).ok()
}

/// The epoch in the id of the order an event places (0 for other events and old ids).
fn order_epoch(event: &Event) -> u64 {
    match event {
        Event::OrderPlaced { order, .. } => {
            parse_order_id(&order.order_id).map_or(0, |parsed| parsed.epoch)
        }
        _ => 0,
    }
}
