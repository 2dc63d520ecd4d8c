//! What every thread may read about promotions and items without asking a shard.
//!
//! Shards own the truth. The catalog holds what callers read on the hot path: each
//! promotion's window (moved only by start/stop, after they are journaled), and per item a
//! gate that its shard republishes after every batch: remaining stock, the sold-out flag, and
//! the users holding an order there. A sold-out storm is refused by one atomic load.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::{DashMap, DashSet};
use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::ids::item_key;
use crate::item::{ItemState, STRIKES_TO_BAN};
use crate::model::{
    ItemRecord, ItemStats, PromotionRecord, PromotionStats, PromotionStatus, PublicItem,
    PublicPromotion,
};
use crate::remote_view::ItemFigures;

/// An operator's change of a promotion's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowChange {
    /// Live from now (api.md: starting a live one changes nothing, an ended one cannot).
    Start,
    /// Ended from now (stopping an ended one changes nothing).
    Stop,
}

impl WindowChange {
    /// Whether the change does anything to a promotion in `status`; an error when it may not.
    pub fn needed(self, status: PromotionStatus) -> Result<bool> {
        match (self, status) {
            (WindowChange::Start, PromotionStatus::Ended) => Err(Error::Ended),
            (WindowChange::Start, PromotionStatus::Live)
            | (WindowChange::Stop, PromotionStatus::Ended) => Ok(false),
            _ => Ok(true),
        }
    }

    /// The event that journals this change at `at_ms`.
    pub fn event(self, promotion_id: &str, at_ms: i64) -> Event {
        let promotion_id = promotion_id.to_owned();
        match self {
            WindowChange::Start => Event::PromotionStarted {
                promotion_id,
                at_ms,
            },
            WindowChange::Stop => Event::PromotionStopped {
                promotion_id,
                at_ms,
            },
        }
    }

    /// The change an event journals, with its promotion and time.
    pub fn of(event: &Event) -> Option<(WindowChange, &str, i64)> {
        match event {
            Event::PromotionStarted {
                promotion_id,
                at_ms,
            } => Some((WindowChange::Start, promotion_id, *at_ms)),
            Event::PromotionStopped {
                promotion_id,
                at_ms,
            } => Some((WindowChange::Stop, promotion_id, *at_ms)),
            _ => None,
        }
    }
}

/// Every promotion and item gate, by id and by item key.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    promotions: DashMap<String, Arc<PromotionEntry>, FxBuildHasher>,
    gates: DashMap<u64, Arc<ItemGate>, FxBuildHasher>,
    /// Creates whose journal write has an unknown outcome (its shard died answering): they
    /// may be in the log, so their ids and SKUs stay taken until a restart reads it.
    uncertain: DashMap<String, PromotionRecord, FxBuildHasher>,
}

impl Catalog {
    pub fn entry(&self, promotion_id: &str) -> Result<Arc<PromotionEntry>> {
        self.promotions
            .get(promotion_id)
            .map(|e| Arc::clone(e.value()))
            .ok_or(Error::NotFound)
    }

    /// The promotion and the gate of one of its items.
    pub fn gate(
        &self,
        promotion_id: &str,
        sku: &str,
    ) -> Result<(Arc<PromotionEntry>, Arc<ItemGate>)> {
        let entry = self.entry(promotion_id)?;
        let gate = self
            .gates
            .get(&item_key(promotion_id, sku))
            .map(|g| Arc::clone(g.value()))
            .ok_or(Error::NotFound)?;
        debug_assert_eq!(gate.item.sku, sku);
        Ok((entry, gate))
    }

    pub fn gate_by_key(&self, key: u64) -> Option<Arc<ItemGate>> {
        self.gates.get(&key).map(|g| Arc::clone(g.value()))
    }

    /// Every promotion, in no particular order.
    pub fn entries(&self) -> Vec<Arc<PromotionEntry>> {
        self.promotions
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect()
    }

    /// Adds a promotion made from `record`; refuses one whose id is taken (the caller
    /// decides whether that is a retry).
    pub fn insert(&self, record: PromotionRecord) -> Result<Arc<PromotionEntry>> {
        let keys = item_keys(&record);
        self.insert_entry(PromotionEntry::new(record, &keys))
    }

    /// [`Catalog::insert`] for an entry made already.
    pub fn insert_entry(&self, entry: Arc<PromotionEntry>) -> Result<Arc<PromotionEntry>> {
        match self.promotions.entry(entry.record.id.clone()) {
            dashmap::Entry::Occupied(_) => return Err(Error::AlreadyExists),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Arc::clone(&entry));
            }
        }
        for gate in &entry.gates {
            self.gates.insert(gate.key, Arc::clone(gate));
        }
        Ok(entry)
    }

    pub fn mark_uncertain(&self, record: PromotionRecord) {
        self.uncertain.insert(record.id.clone(), record);
    }

    pub fn is_uncertain(&self, promotion_id: &str) -> bool {
        self.uncertain.contains_key(promotion_id)
    }

    /// Why `record` may not join the catalog, if it may not: a SKU in another promotion
    /// whose window overlaps, or an item key that another item already has.
    pub fn conflict(&self, record: &PromotionRecord) -> Option<Error> {
        let skus: FxHashSet<&str> = record.items.iter().map(|item| item.sku.as_str()).collect();
        let live = self
            .promotions
            .iter()
            .map(|e| (e.window(), e.record.clone()));
        let uncertain = self.uncertain.iter().map(|e| {
            let record = e.value().clone();
            ((record.starts_at_ms, record.ends_at_ms), record)
        });
        for ((starts_at_ms, ends_at_ms), other) in live.chain(uncertain) {
            if record.starts_at_ms >= ends_at_ms || starts_at_ms >= record.ends_at_ms {
                continue;
            }
            if let Some(item) = other.items.iter().find(|i| skus.contains(i.sku.as_str())) {
                return Some(Error::SkuInOtherPromotion {
                    sku: item.sku.clone(),
                    other_promotion_id: other.id.clone(),
                });
            }
        }
        if item_keys(record)
            .iter()
            .any(|key| self.gates.contains_key(key))
        {
            // Two (promotion, sku) pairs with one 64-bit key: astronomically rare, and
            // refusing is the only way to keep order ids unique.
            return Some(Error::invalid(
                "id",
                "collides with another item key; choose another id",
            ));
        }
        None
    }
}

/// The item keys of a promotion's items, in the record's order.
pub(crate) fn item_keys(record: &PromotionRecord) -> Vec<u64> {
    record
        .items
        .iter()
        .map(|item| item_key(&record.id, &item.sku))
        .collect()
}

/// A promotion as every thread sees it.
#[derive(Debug)]
pub(crate) struct PromotionEntry {
    pub record: PromotionRecord,
    pub starts_at_ms: AtomicI64,
    pub ends_at_ms: AtomicI64,
    /// Cancelled + expired orders per user, over all items: the ban board. Counted per
    /// partition of the items that gave them, so that a cluster node can drop the strikes
    /// of a partition it no longer owns and take another's as its owner reports them; a
    /// one-node engine counts every strike in partition 0.
    strikes: DashMap<String, PartitionStrikes, FxBuildHasher>,
    /// One gate per item, in the record's order.
    pub gates: Vec<Arc<ItemGate>>,
}

impl PromotionEntry {
    pub fn new(record: PromotionRecord, item_keys: &[u64]) -> Arc<Self> {
        debug_assert_eq!(record.items.len(), item_keys.len());
        let gates = record
            .items
            .iter()
            .zip(item_keys)
            .map(|(item, key)| Arc::new(ItemGate::new(*key, item)))
            .collect();
        Arc::new(PromotionEntry {
            starts_at_ms: AtomicI64::new(record.starts_at_ms),
            ends_at_ms: AtomicI64::new(record.ends_at_ms),
            record,
            strikes: DashMap::with_hasher(FxBuildHasher),
            gates,
        })
    }

    pub fn window(&self) -> (i64, i64) {
        (
            self.starts_at_ms.load(Ordering::Acquire),
            self.ends_at_ms.load(Ordering::Acquire),
        )
    }

    pub fn status(&self, now_ms: i64) -> PromotionStatus {
        let (starts_at_ms, ends_at_ms) = self.window();
        PromotionStatus::at(starts_at_ms, ends_at_ms, now_ms)
    }

    /// Sets the window as a snapshot recorded it.
    pub fn set_window(&self, starts_at_ms: i64, ends_at_ms: i64) {
        self.starts_at_ms.store(starts_at_ms, Ordering::Release);
        self.ends_at_ms.store(ends_at_ms, Ordering::Release);
    }

    /// The operator view of this promotion with its items as they were created (all stock
    /// remaining); the engine replaces each item's figures by the shard's exact ones.
    pub fn fresh_stats(&self, now_ms: i64) -> PromotionStats {
        let (starts_at_ms, ends_at_ms) = self.window();
        let record = &self.record;
        PromotionStats {
            id: record.id.clone(),
            name: record.name.clone(),
            status: PromotionStatus::at(starts_at_ms, ends_at_ms, now_ms),
            starts_at_ms,
            ends_at_ms,
            payment_timeout_s: record.payment_timeout_s,
            require_token: record.require_token,
            token_multiplier: record.token_multiplier,
            created_at_ms: record.created_at_ms,
            guard: record.guard.clone(),
            items: record
                .items
                .iter()
                .map(|item| ItemStats {
                    sku: item.sku.clone(),
                    title: item.title.clone(),
                    price_cents: item.price_cents,
                    per_user_limit: item.per_user_limit,
                    stock: item.stock,
                    remaining: item.stock,
                    reserved: 0,
                    sold: 0,
                    tokens_issued: 0,
                    tokens_outstanding: 0,
                })
                .collect(),
        }
    }

    /// Applies a journaled window change.
    pub fn apply_window(&self, change: WindowChange, at_ms: i64) {
        match change {
            WindowChange::Start => self.apply_start(at_ms),
            WindowChange::Stop => self.apply_stop(at_ms),
        }
    }

    /// Forces the promotion live from `at_ms` (the event was journaled).
    pub fn apply_start(&self, at_ms: i64) {
        self.starts_at_ms.store(at_ms, Ordering::Release);
    }

    /// Ends the promotion at `at_ms` (the event was journaled).
    pub fn apply_stop(&self, at_ms: i64) {
        let starts_at_ms = self.starts_at_ms.load(Ordering::Acquire);
        if starts_at_ms > at_ms {
            self.starts_at_ms.store(at_ms, Ordering::Release);
        }
        self.ends_at_ms.store(at_ms, Ordering::Release);
    }

    /// True when the user's strikes, summed over every partition, reach the ban.
    pub fn is_banned(&self, user_id: &str) -> bool {
        self.strikes
            .get(user_id)
            .is_some_and(|strikes| strikes.total() >= STRIKES_TO_BAN)
    }

    /// Adds `count` strikes in partition 0: a one-node engine's board. The shards count
    /// through [`PromotionEntry::add_strikes_in`] (partition 0 when alone); the tests call
    /// this.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn add_strikes(&self, user_id: String, count: u32) {
        self.add_strikes_in(0, user_id, count);
    }

    /// Adds `count` strikes that items of `partition` gave the user.
    pub fn add_strikes_in(&self, partition: u32, user_id: String, count: u32) {
        self.strikes
            .entry(user_id)
            .or_default()
            .add(partition, count);
    }

    /// Sets the user's strikes in `partition` to `count` (the figure its owner reports:
    /// absolute, so hearing it twice changes nothing). Used by an adopt, for the strikes
    /// its partition's replay collected, and by the cluster's view of other nodes'
    /// partitions (plan step 5).
    pub fn set_strikes(&self, partition: u32, user_id: String, count: u32) {
        if count == 0 {
            let emptied = self.strikes.get_mut(&user_id).is_some_and(|mut strikes| {
                strikes.clear(partition);
                strikes.is_empty()
            });
            if emptied {
                self.strikes
                    .remove_if(&user_id, |_, strikes| strikes.is_empty());
            }
            return;
        }
        self.strikes
            .entry(user_id)
            .or_default()
            .set(partition, count);
    }

    /// Raises the user's strikes in `partition` to `count` if they are below it. Strikes
    /// only grow, so the highest figure heard of a partition's owner is the closest to the
    /// truth: a late message of an older holding can never lower a count (and let a banned
    /// user back in). Used by a cluster node for the partitions other nodes own.
    /// The figure is heard ten times a second and rarely changes: a user already at it
    /// costs a read, no allocation and no write.
    pub fn raise_strikes(&self, partition: u32, user_id: &str, count: u32) {
        if count == 0
            || self
                .strikes
                .get(user_id)
                .is_some_and(|strikes| strikes.count(partition) >= count)
        {
            return;
        }
        let mut strikes = self.strikes.entry(user_id.to_owned()).or_default();
        if strikes.count(partition) < count {
            strikes.set(partition, count);
        }
    }

    /// Makes `partition`'s strikes exactly `counts` (`user -> count`): each listed user's
    /// set in one step, the others' cleared. A later holding's view: no moment in between
    /// shows a listed user without the strikes.
    pub fn replace_partition_strikes(&self, partition: u32, counts: &FxHashMap<&str, u32>) {
        self.strikes.retain(|user, strikes| {
            if !counts.contains_key(user.as_str()) {
                strikes.clear(partition);
            }
            !strikes.is_empty()
        });
        for (user, count) in counts {
            self.set_strikes(partition, (*user).to_owned(), *count);
        }
    }

    /// Every strike counted in a partition `wanted` accepts: `(partition, user, count)`.
    pub fn strikes_in(&self, wanted: impl Fn(u32) -> bool) -> Vec<(u32, String, u32)> {
        let mut found = Vec::new();
        for user in self.strikes.iter() {
            for &(partition, count) in &user.value().counts {
                if wanted(partition) {
                    found.push((partition, user.key().clone(), count));
                }
            }
        }
        found
    }

    /// Forgets every strike of `partition` (a partition this node no longer owns: its
    /// owner's figures replace them). Used when a partition is dropped.
    pub fn clear_partition(&self, partition: u32) {
        self.strikes.retain(|_, strikes| {
            strikes.clear(partition);
            !strikes.is_empty()
        });
    }

    pub fn public_view(&self, now_ms: i64) -> PublicPromotion {
        let (starts_at_ms, ends_at_ms) = self.window();
        PublicPromotion {
            id: self.record.id.clone(),
            name: self.record.name.clone(),
            status: PromotionStatus::at(starts_at_ms, ends_at_ms, now_ms),
            starts_at_ms,
            ends_at_ms,
            server_time_ms: now_ms,
            require_token: self.record.require_token,
            items: self.gates.iter().map(|gate| gate.public_view()).collect(),
            guard: self.record.guard.clone(),
        }
    }
}

/// One user's strikes in one promotion, per partition: `(partition, count)`, ascending by
/// partition, no zero counts. A user rarely has strikes in more than a partition or two, so
/// a short list beats a map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PartitionStrikes {
    counts: Vec<(u32, u32)>,
}

impl PartitionStrikes {
    /// Every partition's strikes together (saturating: a ban is a ban).
    pub fn total(&self) -> u32 {
        self.counts
            .iter()
            .fold(0u32, |sum, (_, count)| sum.saturating_add(*count))
    }

    pub fn add(&mut self, partition: u32, count: u32) {
        if count == 0 {
            return;
        }
        match self.counts.binary_search_by_key(&partition, |(p, _)| *p) {
            Ok(at) => self.counts[at].1 = self.counts[at].1.saturating_add(count),
            Err(at) => self.counts.insert(at, (partition, count)),
        }
    }

    pub fn set(&mut self, partition: u32, count: u32) {
        match self.counts.binary_search_by_key(&partition, |(p, _)| *p) {
            Ok(at) if count == 0 => {
                self.counts.remove(at);
            }
            Ok(at) => self.counts[at].1 = count,
            Err(_) if count == 0 => {}
            Err(at) => self.counts.insert(at, (partition, count)),
        }
    }

    pub fn clear(&mut self, partition: u32) {
        self.set(partition, 0);
    }

    /// The strikes counted in `partition` (0 when none).
    pub fn count(&self, partition: u32) -> u32 {
        self.counts
            .binary_search_by_key(&partition, |(p, _)| *p)
            .map_or(0, |at| self.counts[at].1)
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// What callers read about one item without a round trip to its shard.
#[derive(Debug)]
pub(crate) struct ItemGate {
    pub key: u64,
    pub item: ItemRecord,
    /// Republished by the shard after each batch; may lag it by that batch.
    pub remaining: AtomicU64,
    /// `remaining == 0` as of the shard's last batch.
    pub sold_out: AtomicBool,
    /// Users with an order on this item, filled only while the item is sold out (by the
    /// shard, before it raises `sold_out`) or its promotion has ended: such a user may be
    /// retrying a request id whose original order they must get back, so the fast refusals
    /// skip them. Filling it lazily keeps a set insert off every accepted purchase.
    pub buyers: DashSet<String, FxBuildHasher>,
    /// `buyers` holds every user with an order here (set, with Release, after filling it).
    pub buyers_complete: AtomicBool,
}

impl ItemGate {
    fn new(key: u64, item: &ItemRecord) -> Self {
        ItemGate {
            key,
            item: item.clone(),
            remaining: AtomicU64::new(item.stock),
            sold_out: AtomicBool::new(item.stock == 0),
            buyers: DashSet::with_hasher(FxBuildHasher),
            buyers_complete: AtomicBool::new(item.stock == 0),
        }
    }

    /// Republishes the item's figures; called by the owning shard only. `buyers_published`
    /// counts the orders whose users are already in `buyers`; `ended` says the promotion
    /// has ended, which makes the shard keep the buyers set whole from then on too.
    pub fn publish(&self, state: &ItemState, buyers_published: &mut usize, ended: bool) {
        let complete = state.remaining == 0 || ended;
        if complete {
            // The set must hold every buyer before a flag says so (Release below).
            for order in state.orders.iter().skip(*buyers_published) {
                self.buyers.insert(order.user_id.clone());
            }
            *buyers_published = state.orders.len();
        }
        self.remaining.store(state.remaining, Ordering::Release);
        self.buyers_complete.store(complete, Ordering::Release);
        self.sold_out.store(state.remaining == 0, Ordering::Release);
    }

    /// Empties the buyers set of an archived item (its buyers are in the archive now).
    pub fn forget_buyers(&self) {
        self.buyers_complete.store(false, Ordering::Release);
        self.buyers.clear();
        self.buyers.shrink_to_fit();
    }

    /// Adds a user with a new order while the set is whole (a superset is safe: it only
    /// sends that user to the shard).
    pub fn note_buyer(&self, user_id: &str) {
        if self.buyers_complete() {
            self.buyers.insert(user_id.to_owned());
        }
    }

    /// Shows `remaining` (an archived item's final figure, whose state no shard holds).
    pub fn show_remaining(&self, remaining: u64) {
        self.remaining.store(remaining, Ordering::Release);
        self.sold_out.store(remaining == 0, Ordering::Release);
    }

    /// True when `user_id` is known to hold no order on the item: the shard has published
    /// every buyer and the user is not one. The flag is read again after a miss: an item
    /// being archived empties its set after clearing the flag.
    pub fn holds_no_order(&self, user_id: &str) -> bool {
        self.buyers_complete() && !self.buyers.contains(user_id) && self.buyers_complete()
    }

    pub fn buyers_complete(&self) -> bool {
        self.buyers_complete.load(Ordering::Acquire)
    }

    pub fn is_sold_out(&self) -> bool {
        self.sold_out.load(Ordering::Acquire)
    }

    /// The item's figures for the other nodes of a cluster (read by the owner's view
    /// publisher).
    pub fn figures(&self) -> ItemFigures {
        ItemFigures {
            key: self.key,
            remaining: self.remaining.load(Ordering::Acquire),
        }
    }

    pub fn public_view(&self) -> PublicItem {
        let remaining = self.remaining.load(Ordering::Acquire);
        PublicItem {
            sku: self.item.sku.clone(),
            title: self.item.title.clone(),
            price_cents: self.item.price_cents,
            per_user_limit: self.item.per_user_limit,
            remaining,
            sold_out: remaining == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Arc<PromotionEntry> {
        let record = PromotionRecord {
            id: "double11".into(),
            name: "Double 11".into(),
            starts_at_ms: 0,
            ends_at_ms: 3_600_000,
            payment_timeout_s: 900,
            require_token: false,
            token_multiplier: 5,
            created_at_ms: 0,
            items: Vec::new(),
            guard: Default::default(),
        };
        PromotionEntry::new(record, &[])
    }

    #[test]
    fn the_ban_counts_strikes_over_every_partition() {
        let entry = entry();
        entry.add_strikes_in(0, "u".into(), 1);
        entry.add_strikes_in(5, "u".into(), 1);
        assert!(!entry.is_banned("u"), "two strikes are no ban");
        entry.add_strikes_in(9, "u".into(), 1);
        assert!(entry.is_banned("u"), "three, in three partitions, are");
        assert!(!entry.is_banned("someone else"));
        // Absolute figures: hearing the same count twice changes nothing.
        entry.set_strikes(9, "v".into(), 2);
        entry.set_strikes(9, "v".into(), 2);
        assert!(!entry.is_banned("v"));
        entry.add_strikes_in(2, "v".into(), 1);
        assert!(entry.is_banned("v"));
        entry.set_strikes(9, "v".into(), 0);
        assert!(
            !entry.is_banned("v"),
            "the owner's figure went down to nothing"
        );
    }

    #[test]
    fn clearing_a_partition_forgets_its_strikes_only() {
        let entry = entry();
        entry.add_strikes_in(1, "u".into(), 2);
        entry.add_strikes_in(4, "u".into(), 1);
        entry.add_strikes_in(1, "w".into(), 3);
        entry.add_strikes_in(4, "x".into(), 3);
        assert!(entry.is_banned("u") && entry.is_banned("w") && entry.is_banned("x"));
        entry.clear_partition(1);
        assert!(!entry.is_banned("u"), "one strike of partition 4 is left");
        assert!(
            !entry.is_banned("w"),
            "all of w's strikes were in partition 1"
        );
        assert!(entry.is_banned("x"), "partition 4 is untouched");
        assert!(
            entry.strikes.get("w").is_none(),
            "a user with no strikes leaves the board"
        );
        entry.add_strikes_in(1, "u".into(), 2);
        assert!(
            entry.is_banned("u"),
            "the partition counts again once re-taken"
        );
    }

    #[test]
    fn a_one_node_board_bans_at_the_threshold_in_partition_zero() {
        let entry = entry();
        for strike in 1..=STRIKES_TO_BAN {
            assert!(!entry.is_banned("u"), "banned after {} strikes", strike - 1);
            entry.add_strikes("u".into(), 1);
        }
        assert!(entry.is_banned("u"));
        entry.clear_partition(1);
        assert!(
            entry.is_banned("u"),
            "another partition's clearing keeps partition 0"
        );
        entry.clear_partition(0);
        assert!(!entry.is_banned("u"));
    }

    #[test]
    fn strike_counts_saturate() {
        let entry = entry();
        entry.add_strikes_in(0, "u".into(), u32::MAX);
        entry.add_strikes_in(0, "u".into(), 1);
        entry.add_strikes_in(1, "u".into(), u32::MAX);
        assert!(entry.is_banned("u"), "no overflow wraps a ban away");
        assert_eq!(entry.strikes.get("u").map(|s| s.total()), Some(u32::MAX));
    }
}
