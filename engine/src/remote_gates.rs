//! The engine's side of the views between cluster nodes (see `remote_view.rs`): the
//! figures an owner publishes, the figures it hears, and the refusals a node gives for items
//! it does not own.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::catalog::{Catalog, ItemGate, PromotionEntry};
use crate::engine::Engine;
use crate::error::Error;
use crate::model::PublicPromotion;
use crate::partition::{ClusterState, Standing};
use crate::remote_view::{Holding, PartitionView, Seen};
use crate::rules::{purchase_gate_refusal, token_gate_refusal};

impl Engine {
    /// The figures of every partition this engine decides for now (installed here, its
    /// lease held), for the other nodes' views; empty for a one-node engine.
    pub fn owned_views(&self) -> Vec<PartitionView> {
        let Some(cluster) = &self.core().cluster else {
            return Vec::new();
        };
        let built_at_ms = self.now_ms();
        let mut views: BTreeMap<u32, PartitionView> = BTreeMap::new();
        for partition in cluster.standings.owned() {
            let held = cluster
                .standings
                .holds_lease(partition, cluster.ownership.as_ref());
            if let (true, Some(epoch)) = (held, cluster.standings.epoch(partition)) {
                let view = PartitionView {
                    partition,
                    epoch,
                    built_at_ms,
                    items: Vec::new(),
                    strikes: Vec::new(),
                    strikes_whole: true,
                };
                views.insert(partition, view);
            }
        }
        for entry in self.core().catalog.entries() {
            for gate in &entry.gates {
                if let Some(view) = views.get_mut(&cluster.partition(gate.key)) {
                    view.items.push(gate.figures());
                }
            }
            for (partition, user, count) in entry.strikes_in(|p| views.contains_key(&p)) {
                if let Some(view) = views.get_mut(&partition) {
                    view.strikes.push((entry.record.id.clone(), user, count));
                }
            }
        }
        views.into_values().collect()
    }

    /// Takes an owner's figures for one of its partitions. Ignored for a partition that is
    /// installed here in any standing (its own shards' gates are the truth there), and by a
    /// one-node engine. The strikes of a later holding replace the partition's; those of the
    /// same holding are raised. Strikes of promotions this node does not know yet are
    /// dropped: the owner sends them again with its next view.
    pub fn apply_view(&self, view: PartitionView) {
        let Some(cluster) = &self.core().cluster else {
            return;
        };
        let partition = view.partition;
        if cluster.check_partition(partition).is_err() {
            return;
        }
        let catalog = &self.core().catalog;
        let still_remote = || cluster.standings.get(partition) == Standing::NotInstalled;
        let with_strikes = |holding| {
            if !view.strikes_whole {
                // Left out to fit a message: the board keeps what it has.
                return;
            }
            if holding == Holding::New {
                replace_strikes(catalog, partition, &view.strikes);
                return;
            }
            for (promotion_id, user, count) in &view.strikes {
                if let Ok(entry) = catalog.entry(promotion_id) {
                    entry.raise_strikes(partition, user, *count);
                }
            }
        };
        cluster
            .views
            .apply(&view, self.now_ms(), still_remote, with_strikes);
    }

    /// What the view says of `gate`'s item, when this engine is a cluster node that heard
    /// of it.
    fn seen(&self, gate: &ItemGate) -> Option<Seen> {
        let cluster: &ClusterState = self.core().cluster.as_ref()?;
        cluster
            .views
            .seen(cluster.partition(gate.key), gate.key, self.now_ms())
    }

    /// The refusal of a token for an item owned elsewhere that this node can give itself
    /// (the catalog's, the ban board's, a fresh view's sold out), in the order the owner
    /// would; `None`: hand the call to the owner.
    pub(crate) fn remote_token_refusal(
        &self,
        entry: &PromotionEntry,
        gate: &ItemGate,
        user_id: &str,
    ) -> Option<Error> {
        let sold_out = self.seen(gate).is_some_and(|seen| seen.sold_out);
        token_gate_refusal(entry.status(self.now_ms()), sold_out, || {
            entry.is_banned(user_id)
        })
    }

    /// The refusal of a purchase for an item owned elsewhere that this node can give
    /// itself: only those of a promotion not started (no order can exist to retry); `None`:
    /// hand it to the owner. A live item's sold out is the owner's to say, since a view
    /// cannot know of an order placed after it was built (see `remote_view.rs`).
    pub(crate) fn remote_purchase_refusal(
        &self,
        entry: &PromotionEntry,
        user_id: &str,
    ) -> Option<Error> {
        purchase_gate_refusal(
            entry.status(self.now_ms()),
            false,
            false,
            || true,
            || entry.is_banned(user_id),
        )
    }

    /// `view` with the figures other nodes published for the items not decided here: the
    /// last heard, stale or not. api.md: `sold_out` "never claims stock that is not there"
    /// for longer than a second, and stock comes back only through an owner, whose next
    /// view says so; a node that hears nothing for a while shows the last figure it had.
    pub(crate) fn with_remote_figures(
        &self,
        entry: &PromotionEntry,
        mut view: PublicPromotion,
    ) -> PublicPromotion {
        let Some(cluster) = &self.core().cluster else {
            return view;
        };
        for (item, gate) in view.items.iter_mut().zip(&entry.gates) {
            // Installed here in any standing: its own gate is newer than any view heard.
            if cluster.standings.get(cluster.partition(gate.key)) != Standing::NotInstalled {
                continue;
            }
            if let Some(seen) = self.seen(gate) {
                item.remaining = seen.remaining;
                item.sold_out = seen.remaining == 0;
            }
        }
        view
    }
}

/// Makes every promotion's strikes in `partition` exactly `strikes` (a later holding's).
fn replace_strikes(catalog: &Catalog, partition: u32, strikes: &[(String, String, u32)]) {
    let mut by_promotion: FxHashMap<&str, FxHashMap<&str, u32>> = FxHashMap::default();
    for (promotion_id, user, count) in strikes {
        by_promotion
            .entry(promotion_id.as_str())
            .or_default()
            .insert(user.as_str(), *count);
    }
    let none = FxHashMap::default();
    for entry in catalog.entries() {
        let counts = by_promotion.get(entry.record.id.as_str()).unwrap_or(&none);
        entry.replace_partition_strikes(partition, counts);
    }
}
