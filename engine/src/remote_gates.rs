//! The engine's side of the views between cluster nodes (see `remote_view.rs`): the
//! figures an owner publishes, the figures it hears, and the refusals a node gives for items
//! it does not own.

use std::collections::BTreeMap;

use crate::catalog::{ItemGate, PromotionEntry};
use crate::engine::Engine;
use crate::error::Error;
use crate::model::PublicPromotion;
use crate::partition::{ClusterState, Standing};
use crate::remote_view::{PartitionView, Seen};
use crate::rules::{purchase_gate_refusal, token_gate_refusal};

impl Engine {
    /// The figures of every partition this engine decides for now (installed here, its
    /// lease held), for the other nodes' views; empty for a one-node engine.
    pub fn owned_views(&self) -> Vec<PartitionView> {
        let Some(cluster) = &self.core().cluster else {
            return Vec::new();
        };
        let mut views: BTreeMap<u32, PartitionView> = BTreeMap::new();
        for partition in cluster.standings.owned() {
            let held = cluster
                .standings
                .holds_lease(partition, cluster.ownership.as_ref());
            if let (true, Some(epoch)) = (held, cluster.standings.epoch(partition)) {
                views.insert(
                    partition,
                    PartitionView {
                        partition,
                        epoch,
                        items: Vec::new(),
                        strikes: Vec::new(),
                    },
                );
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
    /// one-node engine. Strikes of promotions this node does not know yet are dropped: the
    /// owner sends them again with its next view.
    pub fn apply_view(&self, mut view: PartitionView) {
        let Some(cluster) = &self.core().cluster else {
            return;
        };
        let partition = view.partition;
        if cluster.check_partition(partition).is_err()
            || cluster.standings.get(partition) != Standing::NotInstalled
        {
            return;
        }
        let strikes = std::mem::take(&mut view.strikes);
        if !cluster.views.apply(view, self.now_ms()) {
            return;
        }
        for (promotion_id, user, count) in strikes {
            if let Ok(entry) = self.core().catalog.entry(&promotion_id) {
                entry.raise_strikes(partition, user, count);
            }
        }
    }

    /// What the view says of `gate`'s item for `user`, when this engine is a cluster node
    /// that heard of it.
    fn seen(&self, gate: &ItemGate, user: Option<&str>) -> Option<Seen> {
        let cluster: &ClusterState = self.core().cluster.as_ref()?;
        cluster
            .views
            .seen(cluster.partition(gate.key), gate.key, user, self.now_ms())
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
        let sold_out = self.seen(gate, None).is_some_and(|seen| seen.sold_out);
        token_gate_refusal(entry.status(self.now_ms()), sold_out, || {
            entry.is_banned(user_id)
        })
    }

    /// The refusal of a purchase for an item owned elsewhere that this node can give
    /// itself; `None`: hand it to the owner. A shopper the view does not know to hold no
    /// order (a possible retry) always goes to the owner.
    pub(crate) fn remote_purchase_refusal(
        &self,
        entry: &PromotionEntry,
        gate: &ItemGate,
        user_id: &str,
    ) -> Option<Error> {
        let seen = self.seen(gate, Some(user_id));
        purchase_gate_refusal(
            entry.status(self.now_ms()),
            seen.is_some_and(|seen| seen.sold_out),
            seen.is_some_and(|seen| seen.buyers_whole),
            || seen.is_none_or(|seen| seen.holds_order),
            || entry.is_banned(user_id),
        )
    }

    /// `view` with the figures other nodes published for the items not decided here: the
    /// last `remaining` heard, and `sold_out` only while that view is fresh.
    pub(crate) fn with_remote_figures(
        &self,
        entry: &PromotionEntry,
        mut view: PublicPromotion,
    ) -> PublicPromotion {
        let Some(cluster) = &self.core().cluster else {
            return view;
        };
        for (item, gate) in view.items.iter_mut().zip(&entry.gates) {
            if cluster.check(gate.key).is_ok() {
                continue;
            }
            if let Some(seen) = self.seen(gate, None) {
                item.remaining = seen.remaining;
                item.sold_out = seen.sold_out;
            }
        }
        view
    }
}
