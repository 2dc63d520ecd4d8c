//! What a cluster node knows of the items it does not own (cluster plan, step 5 and Q3).
//!
//! api.md: every node answers the cheap refusals (sold out, not live, banned) "from its own
//! replicated view", and `remaining` may lag by up to one second on any node. The owner of a
//! partition publishes its items' figures ([`PartitionView`], built by
//! [`crate::Engine::owned_views`]) several times a second; every other node keeps the latest
//! figures it heard of each partition here.
//!
//! The rules that keep a view from giving an answer the owner would not:
//! - A view counts as **fresh** for [`VIEW_FRESH_MS`] after it was built (by the owner's
//!   clock) and after it was heard (by ours), whichever ends first: a view held up on the
//!   way, or a node that stops hearing an owner, refuses by it for at most 1 s, and no node
//!   refuses as sold out for more than 1 s after stock came back. The public view shows
//!   the last figures heard, stale or not (api.md: `sold_out` never claims stock that is
//!   not there).
//! - Only a fresh view refuses a token as sold out. A purchase of a live item is never
//!   refused by a view: a shopper who bought a unit that came back since the view was built
//!   may be retrying, and must get the original order from the owner (a view cannot know
//!   of an order placed after it). Purchases are refused by the catalog (not started) and
//!   the ban board only.
//! - The figures of a later holding win over an earlier one's: a paused old owner's last
//!   word, arriving late, does not replace its successor's.
//! - Strikes travel with the view. Within one holding they are raised, never lowered (they
//!   only grow); a later holding's strikes replace the partition's whole (a strike decided
//!   in a batch that never became durable is gone from the new owner's replay, and must go
//!   from every board too).

use std::sync::{PoisonError, RwLock};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// How long a view may refuse by: api.md's one second.
pub const VIEW_FRESH_MS: i64 = 1_000;

/// One item's figures as its owner's gate shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemFigures {
    pub key: u64,
    /// Sold out when 0 (one figure, so the two can never disagree).
    pub remaining: u64,
}

/// One partition's figures, as its owner publishes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionView {
    pub partition: u32,
    /// The epoch of the owner's holding: a later holding's view replaces an earlier one's.
    pub epoch: u64,
    /// When the owner read these figures, by its clock.
    pub built_at_ms: i64,
    pub items: Vec<ItemFigures>,
    /// `(promotion_id, user_id, strikes counted in this partition)`.
    pub strikes: Vec<(String, String, u32)>,
    /// `strikes` is every strike of the partition (false: they were left out to fit a
    /// message, and the receiver keeps the strikes it has).
    pub strikes_whole: bool,
}

impl PartitionView {
    /// The view without its strikes: what is sent when the whole one would not fit a
    /// message (bans from this partition then wait for the owner's own answer).
    pub fn without_strikes(mut self) -> PartitionView {
        self.strikes = Vec::new();
        self.strikes_whole = false;
        self
    }
}

/// What a view says about one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub remaining: u64,
    /// Sold out by a fresh view; false when the view is stale.
    pub sold_out: bool,
}

/// How a view stands to the one held before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holding {
    /// The same holding as the view held (or a later view of it).
    Same,
    /// A holding later than any heard of the partition (or the first view heard).
    New,
}

#[derive(Debug)]
struct Heard {
    epoch: u64,
    /// A view of this holding with its whole strikes was applied: the partition's strikes
    /// on the board are this holding's.
    strikes_applied: bool,
    built_at_ms: i64,
    heard_at_ms: i64,
    items: FxHashMap<u64, u64>,
}

/// The latest view heard of each partition this node does not own.
#[derive(Debug, Default)]
pub(crate) struct RemoteViews {
    parts: RwLock<FxHashMap<u32, Heard>>,
}

impl RemoteViews {
    /// Keeps `view`, heard at `now_ms`, unless a later holding's view was heard already or
    /// `still_remote` (asked under the lock, so that [`RemoteViews::forget`] cannot pass it)
    /// says the partition is installed here. `with_strikes` runs under the same lock with how
    /// the view's holding stands; `false` when the view was dropped.
    pub fn apply(
        &self,
        view: &PartitionView,
        now_ms: i64,
        still_remote: impl FnOnce() -> bool,
        with_strikes: impl FnOnce(Holding),
    ) -> bool {
        // A view built a second ago or more refuses nothing, and its strikes may be older
        // than what is on the board: dropped whole (a paused owner's buffered frames).
        if now_ms.saturating_sub(view.built_at_ms) >= VIEW_FRESH_MS {
            return false;
        }
        let items = view
            .items
            .iter()
            .map(|item| (item.key, item.remaining))
            .collect();
        let mut parts = self.parts.write().unwrap_or_else(PoisonError::into_inner);
        let held = parts
            .get(&view.partition)
            .map(|held| (held.epoch, held.strikes_applied));
        if held.is_some_and(|(epoch, _)| epoch > view.epoch) || !still_remote() {
            return false;
        }
        // New until a view of the holding brought its whole strikes (the first may have
        // left them out to fit a message).
        let same = held == Some((view.epoch, true));
        let holding = if same { Holding::Same } else { Holding::New };
        let replaced = parts.insert(
            view.partition,
            Heard {
                epoch: view.epoch,
                strikes_applied: same || view.strikes_whole,
                built_at_ms: view.built_at_ms,
                heard_at_ms: now_ms,
                items,
            },
        );
        with_strikes(holding);
        drop(parts);
        // The old map is freed outside the lock.
        drop(replaced);
        true
    }

    /// Forgets what was heard of `partition` (this node is adopting it under holding
    /// `epoch`: its own figures are the truth from now on, and after a release its own last
    /// figures are newer than anything heard before), and runs `clear` under the lock. The
    /// epoch stays as a floor: a late view of an earlier holding is never taken after.
    pub fn forget(&self, partition: u32, epoch: u64, clear: impl FnOnce()) {
        let mut parts = self.parts.write().unwrap_or_else(PoisonError::into_inner);
        let floor = parts
            .get(&partition)
            .map_or(epoch, |held| held.epoch.max(epoch));
        let forgotten = parts.insert(
            partition,
            Heard {
                epoch: floor,
                strikes_applied: false,
                built_at_ms: i64::MIN,
                heard_at_ms: i64::MIN,
                items: FxHashMap::default(),
            },
        );
        clear();
        drop(parts);
        drop(forgotten);
    }

    /// What the view of `partition` says about the item `key`; `None` when nothing was
    /// heard.
    pub fn seen(&self, partition: u32, key: u64, now_ms: i64) -> Option<Seen> {
        let parts = self.parts.read().unwrap_or_else(PoisonError::into_inner);
        let heard = parts.get(&partition)?;
        let remaining = *heard.items.get(&key)?;
        let fresh = now_ms.saturating_sub(heard.heard_at_ms) < VIEW_FRESH_MS
            && now_ms.saturating_sub(heard.built_at_ms) < VIEW_FRESH_MS;
        Some(Seen {
            remaining,
            sold_out: fresh && remaining == 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(epoch: u64, built_at_ms: i64, remaining: u64) -> PartitionView {
        PartitionView {
            partition: 2,
            epoch,
            built_at_ms,
            items: vec![ItemFigures { key: 7, remaining }],
            strikes: Vec::new(),
            strikes_whole: true,
        }
    }

    fn apply(views: &RemoteViews, view: PartitionView, now_ms: i64) -> Option<Holding> {
        let mut holding = None;
        views
            .apply(&view, now_ms, || true, |h| holding = Some(h))
            .then_some(holding)
            .flatten()
    }

    #[test]
    fn a_view_refuses_for_one_second_after_it_was_built_and_heard_and_no_longer() {
        let views = RemoteViews::default();
        assert_eq!(views.seen(2, 7, 0), None, "nothing heard: ask the owner");
        assert_eq!(apply(&views, view(5, 1_000, 0), 1_000), Some(Holding::New));
        assert!(views.seen(2, 7, 1_999).expect("heard").sold_out);
        let stale = views.seen(2, 7, 2_000).expect("heard");
        assert_eq!(
            stale,
            Seen {
                remaining: 0,
                sold_out: false
            },
            "stale at 1 s"
        );
        // Built long before it arrived (held up on the way): only its rest of the second.
        apply(&views, view(5, 1_500, 0), 2_400);
        assert!(views.seen(2, 7, 2_499).expect("heard").sold_out);
        assert!(!views.seen(2, 7, 2_500).expect("heard").sold_out);
        assert_eq!(
            apply(&views, view(5, 1_500, 3), 2_500),
            None,
            "a second old: dropped"
        );
    }

    #[test]
    fn an_earlier_holding_never_replaces_a_later_one() {
        let views = RemoteViews::default();
        assert_eq!(apply(&views, view(9, 0, 3), 0), Some(Holding::New));
        assert_eq!(
            apply(&views, view(8, 10, 0), 10),
            None,
            "the old owner's late word"
        );
        assert_eq!(
            views.seen(2, 7, 20),
            Some(Seen {
                remaining: 3,
                sold_out: false
            })
        );
        assert_eq!(apply(&views, view(9, 30, 0), 30), Some(Holding::Same));
        assert!(views.seen(2, 7, 40).expect("heard").sold_out);
        assert_eq!(apply(&views, view(12, 50, 0), 50), Some(Holding::New));
    }

    #[test]
    fn a_partition_installed_here_or_forgotten_keeps_no_view() {
        let views = RemoteViews::default();
        assert!(!views.apply(&view(1, 0, 0), 0, || false, |_| panic!("dropped")));
        assert_eq!(views.seen(2, 7, 0), None);
        apply(&views, view(1, 0, 0), 0);
        let mut cleared = false;
        views.forget(2, 4, || cleared = true);
        assert!(cleared);
        assert_eq!(views.seen(2, 7, 10), None);
        assert_eq!(
            apply(&views, view(3, 10, 0), 10),
            None,
            "older than the adopted holding"
        );
        assert_eq!(apply(&views, view(5, 20, 0), 20), Some(Holding::New));
    }
}
