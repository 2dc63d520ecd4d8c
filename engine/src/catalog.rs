//! What every thread may read about promotions and items without asking a shard.
//!
//! Shards own the truth. The catalog holds what callers read on the hot path: each
//! promotion's window (moved only by start/stop, after they are journaled), and per item a
//! gate that its shard republishes after every batch: remaining stock, the sold-out flag, and
//! the users holding an order there. A sold-out storm is refused by one atomic load.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::{DashMap, DashSet};
use rustc_hash::FxBuildHasher;

use crate::item::{ItemState, STRIKES_TO_BAN};
use crate::model::{ItemRecord, PromotionRecord, PromotionStatus, PublicItem, PublicPromotion};

/// A promotion as every thread sees it.
#[derive(Debug)]
pub(crate) struct PromotionEntry {
    pub record: PromotionRecord,
    pub starts_at_ms: AtomicI64,
    pub ends_at_ms: AtomicI64,
    /// Cancelled + expired orders per user, over all items: the ban board.
    pub strikes: DashMap<String, u32, FxBuildHasher>,
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

    pub fn is_banned(&self, user_id: &str) -> bool {
        self.strikes
            .get(user_id)
            .is_some_and(|count| *count >= STRIKES_TO_BAN)
    }

    pub fn add_strikes(&self, user_id: String, count: u32) {
        *self.strikes.entry(user_id).or_insert(0) += count;
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
        }
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
    /// shard, before it raises `sold_out`): such a user may be retrying a request id whose
    /// original order they must get back, so the sold-out fast refusal skips them. Filling
    /// it lazily keeps a set insert off every accepted purchase.
    pub buyers: DashSet<String, FxBuildHasher>,
}

impl ItemGate {
    fn new(key: u64, item: &ItemRecord) -> Self {
        ItemGate {
            key,
            item: item.clone(),
            remaining: AtomicU64::new(item.stock),
            sold_out: AtomicBool::new(item.stock == 0),
            buyers: DashSet::with_hasher(FxBuildHasher),
        }
    }

    /// Republishes the item's figures; called by the owning shard only. `buyers_published`
    /// counts the orders whose users are already in `buyers`.
    pub fn publish(&self, state: &ItemState, buyers_published: &mut usize) {
        if state.remaining == 0 {
            // The set must hold every buyer before the flag says "sold out" (Release below).
            for order in state.orders.iter().skip(*buyers_published) {
                self.buyers.insert(order.user_id.clone());
            }
            *buyers_published = state.orders.len();
        }
        self.remaining.store(state.remaining, Ordering::Release);
        self.sold_out.store(state.remaining == 0, Ordering::Release);
    }

    pub fn is_sold_out(&self) -> bool {
        self.sold_out.load(Ordering::Acquire)
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
