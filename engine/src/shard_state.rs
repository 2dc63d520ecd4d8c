//! A shard's items without its thread: what recovery builds and the shard's loop then owns.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::catalog::{ItemGate, PromotionEntry};
use crate::event::Event;
use crate::item::ItemState;
use crate::model::{OrderStatus, PromotionStatus};

/// An item owned by this shard, with the shared views it republishes into.
#[derive(Debug)]
pub(crate) struct Slot {
    pub state: ItemState,
    pub entry: Arc<PromotionEntry>,
    pub gate: Arc<ItemGate>,
    /// How many of `state.orders` have their user in `gate.buyers`.
    pub buyers_published: usize,
    /// The gate was republished after the promotion ended (its buyers set is whole).
    pub end_published: bool,
    /// The journal has no archive: the item stays in memory.
    pub archive_refused: bool,
    /// The epoch of the ownership the item is decided under, when it is not the engine
    /// start's (`ShardSettings::epoch`): a cluster node draws one per partition it takes
    /// over. `None` for every item of a one-node engine.
    pub epoch: Option<u64>,
}

impl Slot {
    pub fn publish(&mut self, now_ms: i64) {
        let ended = self.entry.status(now_ms) == PromotionStatus::Ended;
        self.gate
            .publish(&self.state, &mut self.buyers_published, ended);
        self.end_published = ended;
    }
}

/// The items of one shard and the payment deadlines of their orders.
#[derive(Debug, Default)]
pub(crate) struct ShardState {
    pub items: FxHashMap<u64, Slot>,
    /// Items archived (see `archive.rs`): only their promotion stays, for its window and
    /// ban board.
    pub archived: FxHashMap<u64, Arc<PromotionEntry>>,
    /// (pay_before_ms, item key, order seq) of every order placed; stale entries (orders
    /// since paid or cancelled) are skipped when they come up.
    deadlines: BinaryHeap<Reverse<(i64, u64, u64)>>,
}

impl ShardState {
    /// Creates fresh items for the `keys` of `entry` (those routed here) and publishes their
    /// gates (fresh: nothing undurable to show).
    pub fn install(
        &mut self,
        entry: &Arc<PromotionEntry>,
        keys: &[u64],
        token_ttl_ms: i64,
        now_ms: i64,
    ) {
        for (gate, item) in entry.gates.iter().zip(&entry.record.items) {
            if !keys.contains(&gate.key) || self.items.contains_key(&gate.key) {
                // Installed already: an install repeated for the same promotion is a no-op,
                // never a second item.
                continue;
            }
            let state = ItemState::new(
                gate.key,
                &entry.record.id,
                item.clone(),
                entry.record.payment_timeout_s,
                entry.record.require_token,
                entry.record.token_multiplier,
                token_ttl_ms,
            );
            self.insert(state, entry, gate);
            if let Some(slot) = self.items.get_mut(&gate.key) {
                slot.publish(now_ms);
            }
        }
    }

    /// Takes an item back from a snapshot.
    pub fn restore(&mut self, state: ItemState, entry: &Arc<PromotionEntry>, gate: &Arc<ItemGate>) {
        for (user_id, buyer) in &state.buyers {
            if buyer.strikes > 0 {
                entry.add_strikes(user_id.clone(), buyer.strikes);
            }
        }
        for (index, order) in state.orders.iter().enumerate() {
            if order.status == OrderStatus::PendingPayment {
                self.deadlines
                    .push(Reverse((order.pay_before_ms, state.key, index as u64 + 1)));
            }
        }
        self.insert(state, entry, gate);
    }

    fn insert(&mut self, state: ItemState, entry: &Arc<PromotionEntry>, gate: &Arc<ItemGate>) {
        let slot = Slot {
            state,
            entry: Arc::clone(entry),
            gate: Arc::clone(gate),
            buyers_published: 0,
            end_published: false,
            archive_refused: false,
            epoch: None,
        };
        let previous = self.items.insert(slot.state.key, slot);
        assert!(previous.is_none(), "item installed twice");
    }

    /// Applies one item event (live or replayed) to its item and the shared boards.
    pub fn apply(&mut self, event: &Event) {
        let Some(key) = event.item_key() else { return };
        if let Event::ItemArchived { item_key } = event {
            self.drop_archived(*item_key);
            return;
        }
        let Some(slot) = self.items.get_mut(&key) else {
            panic!("event for an item this shard does not own: {key:016x}");
        };
        if let Some(user_id) = slot.state.apply(event) {
            slot.entry.add_strikes(user_id, 1);
        }
        if let Event::OrderPlaced {
            order_seq, order, ..
        } = event
        {
            self.deadlines
                .push(Reverse((order.pay_before_ms, key, *order_seq)));
        }
    }

    /// Drops an item whose stats and orders are in the journal's archive.
    fn drop_archived(&mut self, key: u64) {
        let Some(slot) = self.items.remove(&key) else {
            return;
        };
        // The gate no longer knows the buyers: purchases go to the shard, which finds a
        // retried request id in the archive.
        slot.gate.forget_buyers();
        slot.gate.show_remaining(slot.state.remaining);
        self.archived.insert(key, slot.entry);
    }

    /// Drops every item (held or archived) whose key `lost` picks, with nothing journaled:
    /// items of a partition whose lane this node lost. Their deadlines are skipped when
    /// they come up. Returns how many items left.
    pub fn drop_items(&mut self, lost: impl Fn(u64) -> bool) -> usize {
        let before = self.items.len() + self.archived.len();
        self.items.retain(|key, _| !lost(*key));
        self.archived.retain(|key, _| !lost(*key));
        before - (self.items.len() + self.archived.len())
    }

    /// Whether recovery holds a state for the item `key`.
    pub fn holds(&self, key: u64) -> bool {
        self.items.contains_key(&key)
    }

    /// Marks an item archived when recovery found its promotion but no state for it and the
    /// journal's archive holds it: its gate shows the archived figures, with no buyers.
    pub fn note_archived(&mut self, entry: &Arc<PromotionEntry>, gate: &ItemGate, remaining: u64) {
        gate.forget_buyers();
        gate.show_remaining(remaining);
        self.archived.insert(gate.key, Arc::clone(entry));
    }

    /// Items whose promotion ended `retain_ended_ms` ago or more and that no pending order
    /// holds: the ones to archive now.
    pub fn archivable(&self, now_ms: i64, retain_ended_ms: i64) -> Vec<u64> {
        self.items
            .values()
            .filter(|slot| {
                let (_, ends_at_ms) = slot.entry.window();
                slot.state.reserved == 0
                    && !slot.archive_refused
                    && now_ms >= ends_at_ms.saturating_add(retain_ended_ms)
            })
            .map(|slot| slot.state.key)
            .collect()
    }

    /// Republishes every gate (after recovery and install).
    pub fn publish_all(&mut self, now_ms: i64) {
        for slot in self.items.values_mut() {
            slot.publish(now_ms);
        }
    }

    /// The periodic upkeep that changes no decision: forget expired tokens, and publish the
    /// full buyers set of items whose promotion has ended (so the gate refuses strangers
    /// there without a round trip).
    pub fn housekeep(&mut self, now_ms: i64) {
        for slot in self.items.values_mut() {
            slot.state.forget_expired_tokens(now_ms);
            if !slot.end_published && slot.entry.status(now_ms) == PromotionStatus::Ended {
                slot.publish(now_ms);
            }
        }
    }

    /// Decides and applies the expiry of every order whose deadline has passed.
    pub fn expire_due(&mut self, now_ms: i64, events: &mut Vec<Event>, touched: &mut Vec<u64>) {
        while let Some(Reverse((deadline_ms, key, seq))) = self.deadlines.peek().copied() {
            if deadline_ms > now_ms {
                break;
            }
            self.deadlines.pop();
            let Some(slot) = self.items.get(&key) else {
                continue;
            };
            if let Some(event) = slot.state.decide_expiry(now_ms, seq) {
                self.apply(&event);
                events.push(event);
                touched.push(key);
            }
        }
    }
}
