//! A shard's items without its thread: what recovery builds and the shard's loop then owns.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::catalog::{ItemGate, PromotionEntry};
use crate::event::Event;
use crate::ids::partition_of;
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

/// A user's strikes in one promotion that the items of one partition gave, collected while
/// the partition is built off the shards (see [`StrikeTarget::Collect`]).
#[derive(Debug)]
pub(crate) struct Strike {
    pub entry: Arc<PromotionEntry>,
    pub user_id: String,
    pub count: u32,
}

/// Where the strikes go that cancelled and expired orders give their users.
#[derive(Debug)]
pub(crate) enum StrikeTarget {
    /// Onto the promotion's ban board, counted in the item's partition among `partitions`
    /// (0 or 1: every strike in partition 0, a one-node engine's board).
    Board { partitions: u32 },
    /// Into this map, by (promotion id, user id): a partition being built off the shards,
    /// which must ban nobody before it is adopted.
    Collect(FxHashMap<(String, String), Strike>),
}

impl Default for StrikeTarget {
    fn default() -> Self {
        StrikeTarget::Board { partitions: 0 }
    }
}

impl StrikeTarget {
    /// Counts `count` strikes for `user_id`, given by the item `key` of `entry`.
    fn strike(&mut self, entry: &Arc<PromotionEntry>, key: u64, user_id: String, count: u32) {
        match self {
            StrikeTarget::Board { partitions } => {
                entry.add_strikes_in(partition_of(key, *partitions), user_id, count);
            }
            StrikeTarget::Collect(strikes) => {
                let strike = strikes
                    .entry((entry.record.id.clone(), user_id.clone()))
                    .or_insert_with(|| Strike {
                        entry: Arc::clone(entry),
                        user_id,
                        count: 0,
                    });
                strike.count = strike.count.saturating_add(count);
            }
        }
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
    strikes: StrikeTarget,
}

impl ShardState {
    /// A shard's state in a cluster engine: strikes go onto the board in their items'
    /// partitions among `partitions`.
    pub fn on_board(partitions: u32) -> Self {
        ShardState {
            strikes: StrikeTarget::Board { partitions },
            ..ShardState::default()
        }
    }

    /// The state of a partition being built off the shards: strikes are collected, never
    /// put on the board (see [`ShardState::take_strikes`]).
    pub fn collecting() -> Self {
        ShardState {
            strikes: StrikeTarget::Collect(FxHashMap::default()),
            ..ShardState::default()
        }
    }

    /// Creates fresh items for the `keys` of `entry` (those routed here) and publishes their
    /// gates (fresh: nothing undurable to show). Returns the keys it installed.
    pub fn install(
        &mut self,
        entry: &Arc<PromotionEntry>,
        keys: &[u64],
        token_ttl_ms: i64,
        now_ms: i64,
    ) -> Vec<u64> {
        let installed = self.install_unpublished(entry, keys, token_ttl_ms);
        for key in &installed {
            if let Some(slot) = self.items.get_mut(key) {
                slot.publish(now_ms);
            }
        }
        installed
    }

    /// [`ShardState::install`] without touching the gates: for a partition built off the
    /// shards, whose gates are published only when a shard adopts it.
    pub fn install_unpublished(
        &mut self,
        entry: &Arc<PromotionEntry>,
        keys: &[u64],
        token_ttl_ms: i64,
    ) -> Vec<u64> {
        let mut installed = Vec::new();
        for (gate, item) in entry.gates.iter().zip(&entry.record.items) {
            if !keys.contains(&gate.key)
                || self.items.contains_key(&gate.key)
                || self.archived.contains_key(&gate.key)
            {
                // Installed already, or archived (ended, its orders in the journal's
                // archive): an install repeated for the same promotion is a no-op, never a
                // second item over the first one's orders.
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
            installed.push(gate.key);
        }
        installed
    }

    /// Takes an item back from a snapshot.
    pub fn restore(&mut self, state: ItemState, entry: &Arc<PromotionEntry>, gate: &Arc<ItemGate>) {
        for (user_id, buyer) in &state.buyers {
            if buyer.strikes > 0 {
                self.strikes
                    .strike(entry, state.key, user_id.clone(), buyer.strikes);
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
            self.strikes.strike(&slot.entry, key, user_id, 1);
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

    /// Drops every item (held or archived) whose key `lost` picks, and their deadlines,
    /// with nothing journaled: items of a partition whose lane this node lost or handed
    /// over. Returns how many items left.
    pub fn drop_items(&mut self, lost: impl Fn(u64) -> bool) -> usize {
        let before = self.item_count();
        self.items.retain(|key, _| !lost(*key));
        self.archived.retain(|key, _| !lost(*key));
        self.deadlines.retain(|Reverse((_, key, _))| !lost(*key));
        before - self.item_count()
    }

    /// Items held or archived.
    pub fn item_count(&self) -> usize {
        self.items.len() + self.archived.len()
    }

    /// Whether recovery holds a state for the item `key`.
    pub fn holds(&self, key: u64) -> bool {
        self.items.contains_key(&key)
    }

    /// Whether some item of `part` is held or archived here already.
    pub fn holds_any_of(&self, part: &ShardState) -> bool {
        part.items
            .keys()
            .chain(part.archived.keys())
            .any(|key| self.items.contains_key(key) || self.archived.contains_key(key))
    }

    /// Takes over the items of `part`, a partition built off the shard: from now on they
    /// are decided here, under `epoch`. Their deadlines come along. Returns their keys.
    ///
    /// # Panics
    ///
    /// When one of them is here already: two states of one item would both decide, and
    /// sell its stock twice. The shard checks [`ShardState::holds_any_of`] first.
    pub fn absorb(&mut self, part: ShardState, epoch: u64) -> Vec<u64> {
        let ShardState {
            items,
            archived,
            deadlines,
            strikes: _,
        } = part;
        let mut keys = Vec::with_capacity(items.len());
        for (key, mut slot) in items {
            assert!(
                !self.items.contains_key(&key) && !self.archived.contains_key(&key),
                "an adopted item is held already: two copies would decide"
            );
            slot.epoch = Some(epoch);
            self.items.insert(key, slot);
            keys.push(key);
        }
        for (key, entry) in archived {
            assert!(
                !self.items.contains_key(&key) && !self.archived.contains_key(&key),
                "an adopted item is held already: two copies would decide"
            );
            self.archived.insert(key, entry);
        }
        self.deadlines.extend(deadlines);
        keys
    }

    /// The strikes a collecting state gathered (none for a state on the board), leaving it
    /// empty.
    pub fn take_strikes(&mut self) -> Vec<Strike> {
        match &mut self.strikes {
            StrikeTarget::Collect(strikes) => strikes.drain().map(|(_, strike)| strike).collect(),
            StrikeTarget::Board { .. } => Vec::new(),
        }
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

    /// Decides and applies the expiry of every order whose deadline has passed, of the items
    /// `may_decide` allows; the deadlines of the others
    /// are kept for later.
    pub fn expire_due_where(
        &mut self,
        now_ms: i64,
        may_decide: impl Fn(u64) -> bool,
        events: &mut Vec<Event>,
        touched: &mut Vec<u64>,
    ) {
        let mut kept = Vec::new();
        while let Some(Reverse((deadline_ms, key, seq))) = self.deadlines.peek().copied() {
            if deadline_ms > now_ms {
                break;
            }
            self.deadlines.pop();
            if !may_decide(key) {
                kept.push(Reverse((deadline_ms, key, seq)));
                continue;
            }
            let Some(slot) = self.items.get(&key) else {
                continue;
            };
            if let Some(event) = slot.state.decide_expiry(now_ms, seq) {
                self.apply(&event);
                events.push(event);
                touched.push(key);
            }
        }
        self.deadlines.extend(kept);
    }
}
