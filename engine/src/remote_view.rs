//! What a cluster node knows of the items it does not own (cluster plan, step 5 and Q3).
//!
//! api.md: every node answers the cheap refusals (sold out, not live, banned) "from its own
//! replicated view", and `remaining` may lag by up to one second on any node. The owner of a
//! partition publishes its items' figures ([`PartitionView`], built by
//! [`crate::Engine::owned_views`]) several times a second; every other node keeps the latest
//! figures it heard of each partition here, with the time it heard them.
//!
//! The rules that keep a view from giving an answer the owner would not:
//! - A view counts as **fresh** for [`VIEW_FRESH_MS`] after it was heard. Only a fresh view
//!   refuses as sold out; a stale one hands the call to the owner. So a node that stops
//!   hearing an owner (a lost message, a dead owner) refuses by it for at most 1 s, and no
//!   node claims sold out for more than 1 s after stock came back (the owner's next view,
//!   at most one publish interval later, says so).
//! - A purchase is refused only when the view carries the item's whole set of buyers (as
//!   fingerprints) and the shopper is not in it: a buyer may be retrying a request id, and
//!   must get the original order back from the owner.
//! - The figures of a later holding win over an earlier one's: a paused old owner's last
//!   word, arriving late, does not replace its successor's.
//! - Strikes travel with the view and are raised, never lowered, on the receiver's ban
//!   board (they only grow), so a ban from another partition is seen everywhere.

use std::sync::{PoisonError, RwLock};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// How long a heard view may refuse by: api.md's one second.
pub const VIEW_FRESH_MS: i64 = 1_000;
/// The most buyers a view carries for one item; past it, purchases of the item go to the
/// owner (tokens are still refused by the view). 4,096 fingerprints are 32 KiB.
pub const VIEW_BUYERS_MAX: usize = 4_096;

/// One item's figures as its owner's gate shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemFigures {
    pub key: u64,
    pub remaining: u64,
    pub sold_out: bool,
    /// The fingerprints ([`buyer_fingerprint`]) of every user with an order on the item,
    /// sorted, when the owner's set is whole (the item sold out, or its promotion ended)
    /// and at most [`VIEW_BUYERS_MAX`]; `None` otherwise.
    pub buyers: Option<Vec<u64>>,
}

/// One partition's figures, as its owner publishes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionView {
    pub partition: u32,
    /// The epoch of the owner's holding: a later holding's view replaces an earlier one's.
    pub epoch: u64,
    pub items: Vec<ItemFigures>,
    /// `(promotion_id, user_id, strikes counted in this partition)`.
    pub strikes: Vec<(String, String, u32)>,
}

impl PartitionView {
    /// The view without the buyers' fingerprints: what is sent when the whole one would not
    /// fit a message (purchases of its sold-out items then go to the owner).
    pub fn without_buyers(mut self) -> PartitionView {
        for item in &mut self.items {
            item.buyers = None;
        }
        self
    }
}

/// A user's fingerprint in a view's buyers set. Stable across processes and builds (xxh3,
/// like the item keys): two nodes must compute the same one.
pub fn buyer_fingerprint(user_id: &str) -> u64 {
    xxh3_64(user_id.as_bytes())
}

/// What a view says about one item, for a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub remaining: u64,
    /// Sold out by a fresh view; false when the view is stale.
    pub sold_out: bool,
    /// A fresh view carries the item's whole buyers set.
    pub buyers_whole: bool,
    /// The shopper asked about is in that set (true when there is no set: unknown).
    pub holds_order: bool,
}

#[derive(Debug)]
struct Heard {
    epoch: u64,
    heard_at_ms: i64,
    items: FxHashMap<u64, ItemFigures>,
}

/// The latest view heard of each partition this node does not own.
#[derive(Debug, Default)]
pub(crate) struct RemoteViews {
    parts: RwLock<FxHashMap<u32, Heard>>,
}

impl RemoteViews {
    /// Keeps `view`, heard at `now_ms`, unless a later holding's view was heard already.
    /// True when it was kept.
    pub fn apply(&self, view: PartitionView, now_ms: i64) -> bool {
        let mut parts = self.parts.write().unwrap_or_else(PoisonError::into_inner);
        if parts
            .get(&view.partition)
            .is_some_and(|held| held.epoch > view.epoch)
        {
            return false;
        }
        let items = view
            .items
            .into_iter()
            .map(|item| (item.key, item))
            .collect();
        parts.insert(
            view.partition,
            Heard {
                epoch: view.epoch,
                heard_at_ms: now_ms,
                items,
            },
        );
        true
    }

    /// What the view of `partition` says about the item `key` for `user` (no user: a
    /// token or a public read, which need no buyers set); `None` when nothing was heard.
    pub fn seen(&self, partition: u32, key: u64, user: Option<&str>, now_ms: i64) -> Option<Seen> {
        let parts = self.parts.read().unwrap_or_else(PoisonError::into_inner);
        let heard = parts.get(&partition)?;
        let item = heard.items.get(&key)?;
        let fresh = now_ms.saturating_sub(heard.heard_at_ms) < VIEW_FRESH_MS;
        let holds_order = match (&item.buyers, user) {
            (Some(buyers), Some(user)) => buyers.binary_search(&buyer_fingerprint(user)).is_ok(),
            _ => true,
        };
        Some(Seen {
            remaining: item.remaining,
            sold_out: fresh && item.sold_out,
            buyers_whole: fresh && item.buyers.is_some(),
            holds_order,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(epoch: u64, remaining: u64, buyers: Option<Vec<&str>>) -> PartitionView {
        PartitionView {
            partition: 2,
            epoch,
            items: vec![ItemFigures {
                key: 7,
                remaining,
                sold_out: remaining == 0,
                buyers: buyers.map(|users| {
                    let mut prints: Vec<u64> = users.into_iter().map(buyer_fingerprint).collect();
                    prints.sort_unstable();
                    prints
                }),
            }],
            strikes: Vec::new(),
        }
    }

    #[test]
    fn a_view_refuses_for_one_second_after_it_was_heard_and_no_longer() {
        let views = RemoteViews::default();
        assert_eq!(
            views.seen(2, 7, None, 0),
            None,
            "nothing heard: ask the owner"
        );
        assert!(views.apply(view(5, 0, Some(vec!["bob"])), 1_000));
        let seen = views.seen(2, 7, Some("alice"), 1_999).expect("heard");
        assert!(seen.sold_out && seen.buyers_whole && !seen.holds_order);
        let stale = views.seen(2, 7, Some("alice"), 2_000).expect("heard");
        assert!(
            !stale.sold_out && !stale.buyers_whole,
            "stale at 1 s: {stale:?}"
        );
        assert_eq!(stale.remaining, 0, "the last figure heard is still shown");
    }

    #[test]
    fn a_buyer_in_the_set_or_a_set_not_sent_is_handed_to_the_owner() {
        let views = RemoteViews::default();
        views.apply(view(5, 0, Some(vec!["bob"])), 0);
        assert!(
            views
                .seen(2, 7, Some("bob"), 10)
                .expect("heard")
                .holds_order
        );
        views.apply(view(5, 0, None), 20);
        let seen = views.seen(2, 7, Some("alice"), 30).expect("heard");
        assert!(seen.holds_order && !seen.buyers_whole, "{seen:?}");
    }

    #[test]
    fn an_earlier_holding_never_replaces_a_later_one() {
        let views = RemoteViews::default();
        assert!(views.apply(view(9, 3, None), 0));
        assert!(
            !views.apply(view(8, 0, None), 10),
            "the old owner's late word"
        );
        let seen = views.seen(2, 7, None, 20).expect("heard");
        assert_eq!((seen.remaining, seen.sold_out), (3, false));
        assert!(
            views.apply(view(9, 0, None), 30),
            "the same holding moves on"
        );
        assert!(views.seen(2, 7, None, 40).expect("heard").sold_out);
    }
}
