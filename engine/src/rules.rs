//! The refusal rules that need no item state, in one place: the shard's decisions and the
//! gate's fast refusals both call them, so the two can never disagree on the order of the
//! checks (banned before the window, the window before stock).
//!
//! Pure: each takes the facts it needs, and the facts that cost a map lookup as closures,
//! so the sold-out storm pays only for the checks it reaches.

use crate::error::{Error, Result};
use crate::model::PromotionStatus;

/// The facts of the moment that a decision needs beyond the item itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecideContext {
    pub now_ms: i64,
    pub status: PromotionStatus,
    /// The user has [`crate::STRIKES_TO_BAN`] or more strikes in the promotion.
    pub banned: bool,
    /// The epoch of this engine start, part of every order id it makes.
    pub epoch: u64,
    /// The shopper's claims meet the promotion's eligibility rule. Only a new order needs
    /// it: a repeated request id gets its original order whatever changed since (a token
    /// re-issued without the claim included).
    pub eligible: bool,
}

/// Refuses a banned user, then a promotion that is not live.
pub fn refuse_closed(banned: bool, status: PromotionStatus) -> Result<()> {
    if banned {
        return Err(Error::Banned);
    }
    match status {
        PromotionStatus::Upcoming => Err(Error::NotStarted),
        PromotionStatus::Ended => Err(Error::Ended),
        PromotionStatus::Live => Ok(()),
    }
}

/// The token refusal the gate can give without the shard: the shard's own first checks
/// (`refuse_closed`, then sold out), on the gate's published view.
pub fn token_gate_refusal(
    status: PromotionStatus,
    sold_out: bool,
    banned: impl FnOnce() -> bool,
) -> Option<Error> {
    if let Err(refusal) = refuse_closed(banned(), status) {
        return Some(refusal);
    }
    sold_out.then_some(Error::SoldOut)
}

/// The purchase refusal the gate can give without the shard.
///
/// A user who holds an order on the item may be retrying a request id, and a retry must get
/// its original order whatever changed since: such users always go to the shard. The gate
/// knows a user holds no order when no order can exist yet (not started) or when the shard
/// has published the full set of buyers (`buyers_complete`: it does so once the item is
/// sold out or its promotion has ended). For everyone else it gives the shard's own refusal.
pub fn purchase_gate_refusal(
    status: PromotionStatus,
    sold_out: bool,
    buyers_complete: bool,
    holds_order: impl FnOnce() -> bool,
    banned: impl FnOnce() -> bool,
) -> Option<Error> {
    let refusable = match status {
        PromotionStatus::Upcoming => true,
        PromotionStatus::Live => sold_out && buyers_complete,
        PromotionStatus::Ended => buyers_complete,
    };
    if !refusable || (status != PromotionStatus::Upcoming && holds_order()) {
        return None;
    }
    token_gate_refusal(status, sold_out, banned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_checks_come_in_contract_order() {
        assert_eq!(
            refuse_closed(true, PromotionStatus::Upcoming),
            Err(Error::Banned)
        );
        assert_eq!(
            refuse_closed(false, PromotionStatus::Upcoming),
            Err(Error::NotStarted)
        );
        assert_eq!(
            refuse_closed(false, PromotionStatus::Ended),
            Err(Error::Ended)
        );
        assert_eq!(refuse_closed(false, PromotionStatus::Live), Ok(()));
    }

    #[test]
    fn the_purchase_gate_never_hides_an_order() {
        use PromotionStatus::{Ended, Live, Upcoming};
        // (status, sold out, buyers complete, holds an order, banned) -> the gate's answer.
        let cases = [
            // A buyer with an order goes to the shard, sold out or ended.
            ((Live, true, true, true, false), None),
            ((Ended, false, true, true, false), None),
            // Before the shard published its buyers, nobody is refused after the start.
            ((Ended, false, false, false, false), None),
            ((Live, true, false, false, false), None),
            // Known strangers are refused as the shard would.
            ((Ended, false, true, false, false), Some(Error::Ended)),
            ((Live, true, true, false, true), Some(Error::Banned)),
            ((Live, true, true, false, false), Some(Error::SoldOut)),
            ((Live, false, true, false, false), None),
            (
                (Upcoming, false, false, true, false),
                Some(Error::NotStarted),
            ),
        ];
        for ((status, sold_out, complete, holds, banned), expected) in cases {
            let answer = purchase_gate_refusal(status, sold_out, complete, || holds, || banned);
            assert_eq!(
                answer, expected,
                "{status:?} {sold_out} {complete} {holds} {banned}"
            );
        }
    }
}
