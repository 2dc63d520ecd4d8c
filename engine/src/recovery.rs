//! Rebuilding the engine from what the journal hands back: the latest snapshot, then every
//! batch after it, applied (never re-decided) in sequence order.
//!
//! A one-node engine rebuilds everything at once ([`rebuild`]). A cluster engine starts from
//! the catalog alone ([`rebuild_catalog`]) and rebuilds each partition it takes from that
//! partition's lane ([`rebuild_partition`]); both share the item branch of the replay.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::catalog::{item_keys, Catalog, ItemGate, PromotionEntry, WindowChange};
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::event::{Event, EVENT_VERSION};
use crate::ids::{parse_order_id, partition_of};
use crate::image::EngineImage;
use crate::item::ItemState;
use crate::model::PromotionRecord;
use crate::partition::PartitionRecovery;
use crate::ports::{Journal, Recovery};
use crate::shard_state::{ShardState, Strike};
use crate::shards::Routing;

/// The state recovery builds, before any shard thread runs.
#[derive(Debug)]
pub(crate) struct Rebuilt {
    pub catalog: Catalog,
    pub states: Vec<ShardState>,
    pub epoch: u64,
    /// The last sequence the catalog holds (a cluster start's catalog log position; 0 for
    /// a whole engine's start, which has no catalog log).
    pub catalog_seq: u64,
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
        catalog_seq: 0,
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

/// Replays a cluster start's catalog: its promotions and their windows, and no item (each
/// partition's items come with its adopt). The shards' states count strikes in their items'
/// partitions among `partitions`.
///
/// Refuses a recovery that holds items (in its snapshot, or item events in its batches):
/// that is a whole engine's recovery, and leaving its items out would lose their orders.
pub(crate) fn rebuild_catalog(
    config: &EngineConfig,
    recovery: Recovery,
    partitions: u32,
) -> Result<Rebuilt> {
    let mut rebuilt = Rebuilt {
        catalog: Catalog::default(),
        states: (0..config.shards)
            .map(|_| ShardState::on_board(partitions))
            .collect(),
        epoch: recovery.epoch,
        catalog_seq: 0,
    };
    let through_seq = match recovery.image {
        Some(image) if !image.items.is_empty() => {
            return Err(Error::Unavailable(
                "a cluster start takes the catalog only, and this snapshot holds items".into(),
            ))
        }
        Some(image) => restore_image(&mut rebuilt, image)?,
        None => 0,
    };
    rebuilt.catalog_seq = through_seq;
    for batch in recovery.batches {
        let (seq, events) = batch.map_err(|e| Error::Unavailable(e.to_string()))?;
        if seq <= through_seq {
            continue;
        }
        // Empty entries (takeover records) move the position too: the first conditional
        // append then expects the log's real end.
        rebuilt.catalog_seq = rebuilt.catalog_seq.max(seq);
        for event in &events {
            if event.item_key().is_some() {
                return Err(Error::Unavailable(format!(
                    "a cluster start takes the catalog only, and batch {seq} holds an item event"
                )));
            }
            replay_catalog(&rebuilt.catalog, event, |_| {});
        }
    }
    Ok(rebuilt)
}

/// Rebuilds partition `recovery.partition` (among `partitions`) from its snapshot items and
/// its lane, against the catalog as it is now, into one state per shard. Touches nothing
/// shared: no gate is published, and the strikes are collected and returned, not put on the
/// board. See [`crate::Engine::build_partition`] for what it refuses.
///
/// # Panics
///
/// When the lane contradicts itself (the asserts of the items' `apply`): the caller
/// catches it, since nothing shared was touched.
pub(crate) fn rebuild_partition(
    catalog: &Catalog,
    config: &EngineConfig,
    partitions: u32,
    journal: &dyn Journal,
    recovery: PartitionRecovery,
) -> Result<(Vec<ShardState>, Vec<Strike>)> {
    let partition = recovery.partition;
    let routing = Routing::cluster(config.shards, partitions);
    let mut states: Vec<ShardState> = (0..config.shards)
        .map(|_| ShardState::collecting())
        .collect();
    let mut newest_epoch = 0;
    for item in recovery.items {
        let key = item.key;
        in_lane(key, partition, partitions)?;
        newest_epoch = newest_epoch.max(newest_order_epoch(&item));
        let (entry, gate) = known_item(catalog, key, &item.promotion_id)?;
        let state = &mut states[routing.shard(key)];
        if state.holds(key) {
            return Err(Error::Unavailable(format!(
                "partition {partition}'s snapshot holds item {key:016x} twice"
            )));
        }
        state.restore(item, &entry, &gate);
    }
    install_missing(
        catalog,
        &mut states,
        partition,
        partitions,
        config.token_ttl_ms(),
        Some(journal),
    )?;
    for batch in recovery.batches {
        let (seq, events) = batch.map_err(|e| Error::Unavailable(e.to_string()))?;
        if seq <= recovery.through_seq {
            // In the snapshot's items already.
            continue;
        }
        for event in &events {
            // The catalog's own events come from the catalog's log.
            let Some(key) = event.item_key() else {
                continue;
            };
            in_lane(key, partition, partitions)?;
            if matches!(event, Event::ItemArchived { .. }) {
                return Err(archived_in_cluster(key));
            }
            newest_epoch = newest_epoch.max(order_epoch(event));
            if !states[routing.shard(key)].holds(key) {
                // Every item of the catalog in this partition is held by now: the catalog
                // has not applied this item's promotion yet.
                return Err(catalog_behind(partition, key, seq));
            }
            replay_item(&mut states, routing, event);
        }
    }
    if newest_epoch >= recovery.epoch {
        // Same rule as a whole engine's start, per partition: new order ids could repeat
        // old ones, and a shop would pay one order with another's money.
        return Err(Error::Unavailable(format!(
            "partition {partition}'s epoch {} is not newer than epoch {newest_epoch} in its lane",
            recovery.epoch
        )));
    }
    let strikes = merge_strikes(&mut states);
    Ok((states, strikes))
}

/// Gives fresh items to every item of the catalog in `partition` that `states` (one per
/// shard) holds no state of: items created after the partition's snapshot, whose events the
/// lane replays next, or items that have none. With `archive`, an item that journal's
/// archive holds is refused instead (a cluster node keeps no archive, and a fresh item would
/// forget its orders).
pub(crate) fn install_missing(
    catalog: &Catalog,
    states: &mut [ShardState],
    partition: u32,
    partitions: u32,
    token_ttl_ms: i64,
    archive: Option<&dyn Journal>,
) -> Result<()> {
    let routing = Routing::cluster(states.len(), partitions);
    for entry in catalog.entries() {
        let mut missing = Vec::new();
        for gate in &entry.gates {
            if partition_of(gate.key, partitions) != partition {
                continue;
            }
            let state = &states[routing.shard(gate.key)];
            if state.holds(gate.key) || state.archived.contains_key(&gate.key) {
                continue;
            }
            if let Some(journal) = archive.filter(|journal| journal.keeps_archive()) {
                let archived = journal
                    .archived_item(gate.key)
                    .map_err(|e| Error::Unavailable(e.to_string()))?;
                if archived.is_some() {
                    return Err(archived_in_cluster(gate.key));
                }
            }
            missing.push(gate.key);
        }
        for (shard, keys) in routing.by_shard(missing.into_iter()) {
            states[shard].install_unpublished(&entry, &keys, token_ttl_ms);
        }
    }
    Ok(())
}

/// The promotion and gate of the item `key` that a partition's snapshot holds, or "catalog
/// behind" when the catalog does not know it yet.
fn known_item(
    catalog: &Catalog,
    key: u64,
    promotion_id: &str,
) -> Result<(Arc<PromotionEntry>, Arc<ItemGate>)> {
    let behind = || {
        Error::Unavailable(format!(
            "catalog behind: item {key:016x} of promotion {promotion_id} is not in it yet"
        ))
    };
    let entry = catalog.entry(promotion_id).map_err(|_| behind())?;
    let gate = catalog.gate_by_key(key).ok_or_else(behind)?;
    if !entry.gates.iter().any(|own| Arc::ptr_eq(own, &gate)) {
        return Err(Error::Unavailable(format!(
            "item {key:016x} is not an item of promotion {promotion_id}"
        )));
    }
    Ok((entry, gate))
}

/// Refuses an item of another partition in `partition`'s lane or snapshot.
fn in_lane(key: u64, partition: u32, partitions: u32) -> Result<()> {
    let found = partition_of(key, partitions);
    if found == partition {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "item {key:016x} of partition {found} in partition {partition}'s lane"
        )))
    }
}

fn catalog_behind(partition: u32, key: u64, seq: u64) -> Error {
    Error::Unavailable(format!(
        "catalog behind: batch {seq} of partition {partition}'s lane is about item {key:016x}, which the catalog does not know yet"
    ))
}

fn archived_in_cluster(key: u64) -> Error {
    Error::Unavailable(format!(
        "item {key:016x} is archived, and a cluster node keeps no archive"
    ))
}

/// The strikes every state collected, summed per promotion and user (a promotion's items of
/// one partition may sit on several shards).
fn merge_strikes(states: &mut [ShardState]) -> Vec<Strike> {
    let mut merged: FxHashMap<(String, String), Strike> = FxHashMap::default();
    for state in states {
        for strike in state.take_strikes() {
            let id = (strike.entry.record.id.clone(), strike.user_id.clone());
            let count = strike.count;
            merged
                .entry(id)
                .and_modify(|total| total.count = total.count.saturating_add(count))
                .or_insert(strike);
        }
    }
    merged.into_values().collect()
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
    let routing = Routing::alone(rebuilt.states.len());
    for entry in rebuilt.catalog.entries() {
        for gate in &entry.gates {
            let state = &mut rebuilt.states[routing.shard(gate.key)];
            if state.holds(gate.key) {
                continue;
            }
            match journal.archived_item(gate.key) {
                Ok(Some(item)) => state.note_archived(&entry, gate, item.stats.remaining),
                Ok(None) => {
                    state.install(&entry, &[gate.key], config.token_ttl_ms(), now_ms);
                }
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
    let routing = Routing::alone(rebuilt.states.len());
    for item in items {
        let entry = rebuilt
            .catalog
            .entry(&item.promotion_id)
            .map_err(|_| Error::Unavailable("snapshot item without promotion".into()))?;
        let gate = rebuilt
            .catalog
            .gate_by_key(item.key)
            .ok_or_else(|| Error::Unavailable("snapshot item without gate".into()))?;
        rebuilt.states[routing.shard(item.key)].restore(item, &entry, &gate);
    }
    Ok(through_seq)
}

/// Applies one journaled event.
fn replay(rebuilt: &mut Rebuilt, event: &Event, config: &EngineConfig, now_ms: i64) {
    let routing = Routing::alone(rebuilt.states.len());
    if event.item_key().is_some() {
        replay_item(&mut rebuilt.states, routing, event);
        return;
    }
    let states = &mut rebuilt.states;
    replay_catalog(&rebuilt.catalog, event, |entry| {
        let keys = item_keys(&entry.record).into_iter();
        for (shard, keys) in routing.by_shard(keys) {
            states[shard].install(entry, &keys, config.token_ttl_ms(), now_ms);
        }
    });
}

/// Applies one journaled catalog event; `created` gets each promotion it adds.
pub(crate) fn replay_catalog(
    catalog: &Catalog,
    event: &Event,
    mut created: impl FnMut(&Arc<PromotionEntry>),
) {
    match event {
        Event::PromotionCreated { .. } | Event::PromotionGuarded { .. } => {
            let Some(promotion) = event.created_promotion() else {
                return;
            };
            if let Some(entry) = register(catalog, promotion) {
                created(&entry);
            }
        }
        Event::PromotionStarted { .. } | Event::PromotionStopped { .. } => {
            if let Some((change, promotion_id, at_ms)) = WindowChange::of(event) {
                if let Ok(entry) = catalog.entry(promotion_id) {
                    entry.apply_window(change, at_ms);
                }
            }
        }
        // Item events are replay_item's.
        _ => {}
    }
}

/// Applies one journaled item event to the state of the shard that owns its item (one
/// state per shard, in shard order, spread by `routing`).
fn replay_item(states: &mut [ShardState], routing: Routing, event: &Event) {
    let key = event.item_key().unwrap_or_default();
    states[routing.shard(key)].apply(event);
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

/// The newest epoch in the ids of an item's orders (0 for none, and for old ids).
fn newest_order_epoch(item: &ItemState) -> u64 {
    item.orders
        .iter()
        .map(|order| parse_order_id(&order.order_id).map_or(0, |parsed| parsed.epoch))
        .max()
        .unwrap_or(0)
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
