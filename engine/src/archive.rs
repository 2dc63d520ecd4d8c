//! Items of ended promotions, out of memory.
//!
//! `--retain-ended-s` after a promotion ends, once none of an item's orders awaits payment,
//! its shard writes the item's final stats and its orders to the journal's archive, journals
//! [`crate::Event::ItemArchived`], and drops the item: buyers, tokens, orders and its gate's
//! buyers set. From then on the item costs no memory; its orders stay readable by id, a
//! retried request id still finds its order, payments and cancels of its (all closed) orders
//! answer as before, and its stats stay in the operator views. Those rare calls read the
//! archive on the shard thread.
//!
//! A journal without an archive (the trait's default) keeps every item in memory.

use crate::error::{Error, Result};
use crate::item::{cancel_decision, pay_decision, Decision, Payment};
use crate::model::{ArchivedItem, Order, PromotionStatus};
use crate::ports::Journal;
use crate::rules::refuse_closed;

/// Reads the archive for the item `key`, if it was archived.
pub(crate) fn item(journal: &dyn Journal, key: u64) -> Result<Option<ArchivedItem>> {
    journal.archived_item(key).map_err(unavailable)
}

/// Order `order_seq` of an archived item, if it is `order_id` and `user_id` may see it.
pub(crate) fn order(
    journal: &dyn Journal,
    key: u64,
    order_id: &str,
    order_seq: u64,
    user_id: Option<&str>,
) -> Result<Order> {
    let order = journal
        .archived_order(key, order_seq)
        .map_err(unavailable)?
        .ok_or(Error::NotFound)?;
    if order.order_id != order_id || user_id.is_some_and(|user| user != order.user_id) {
        return Err(Error::NotFound);
    }
    Ok(order)
}

/// A purchase on an archived item: a retried request id gets its order, anyone else the
/// refusal of an ended promotion.
pub(crate) fn purchase(
    journal: &dyn Journal,
    key: u64,
    user_id: &str,
    request_id: &str,
    banned: bool,
) -> Result<Order> {
    match journal
        .archived_request(key, user_id, request_id)
        .map_err(unavailable)?
    {
        Some(order_seq) => journal
            .archived_order(key, order_seq)
            .map_err(unavailable)?
            .ok_or(Error::NotFound),
        None => Err(refuse_closed(banned, PromotionStatus::Ended)
            .err()
            .unwrap_or(Error::Ended)),
    }
}

/// The cancel of an archived order. Every archived order is closed, so the answer is the
/// order as it is or a refusal, never a change.
pub(crate) fn cancel(order: &Order, key: u64, order_seq: u64, now_ms: i64) -> Result<Order> {
    settled(cancel_decision(order, key, order_seq, now_ms)?)
}

/// The payment of an archived order, likewise.
pub(crate) fn pay(
    order: &Order,
    key: u64,
    order_seq: u64,
    payment: &Payment<'_>,
    now_ms: i64,
) -> Result<Order> {
    settled(pay_decision(order, key, order_seq, payment, now_ms)?)
}

fn settled(decision: Decision<Order>) -> Result<Order> {
    match decision {
        Decision::Existing(order) => Ok(order),
        // An order is archived only once closed; a change now would be lost with no event.
        Decision::New { .. } => Err(Error::NotPayable),
    }
}

fn unavailable(error: crate::error::JournalError) -> Error {
    Error::Unavailable(error.to_string())
}
