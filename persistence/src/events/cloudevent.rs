//! From journal events to CloudEvents: the envelope, the stable ids, the `data` as api.md
//! shows orders and promotions, and the item events derived from stock. Pure: no I/O, no
//! clock (every time is the one the journal recorded).
//!
//! Envelope (CloudEvents 1.0, structured-mode JSON, built with `cloudevents-sdk`):
//! `specversion` "1.0", `id`, `source` `/seckill/<deployment>`, `type`, `time` (when the
//! engine decided it), `subject` (the order id, the promotion id, or `<promotion id>/<sku>`
//! for item events), `datacontenttype` "application/json", `data`.
//!
//! Ids say what happened, not where the journal put it: `<deployment>:<order id>:created`
//! (`:paid`, `:cancelled`, `:expired`), `<deployment>:<order id>:sold_out` (the placement that
//! took the last unit) and `<deployment>:<order id>:back_in_stock` (the close that gave the
//! first unit back), `<deployment>:promotion:<id>:created` (`:started`, `:ended`). Each fact
//! happens at most once (an order id is never given twice in a deployment, an order is
//! placed and closed once, a promotion is created, started and stopped at most once), so an
//! id is the same on every redelivery, after a restart and on whichever cluster node
//! delivers it, and two different facts never share one, even if a batch lands twice in the
//! log or a lane is read again from another position.
//!
//! Derived item events: per item the deliverer keeps what is free to buy (`remaining`),
//! initialised from the item's stock when it sees the promotion created; a placement takes
//! the quantity, a cancel or an expiry gives it back, a payment changes nothing.
//! `seckill.item.sold_out` is sent when `remaining` reaches 0 and
//! `seckill.item.back_in_stock` when it leaves 0 (not after the promotion ended: nobody
//! can buy then). An item whose creation the deliverer never saw (the target was added
//! after it), or whose orders may have been in a hole of the log it skipped, is unknown:
//! nothing is derived for it, rather than a wrong claim. An item created with no stock is
//! not announced sold out (it never reached 0). The state is saved with the cursor
//! ([`DerivedState`] in [`super::cursor::CursorRecord`]), so a restart goes on with the
//! figures that match its position.
//!
//! Promotion `data` is api.md's operator view without the stats: `id`, `name`, `status`
//! (as of the event: the window at creation time, `live` when started, `ended` when
//! stopped), `starts_at`, `ends_at`, `payment_timeout_s`, `require_token`,
//! `token_multiplier`, `created_at`, `human_check`, `eligibility` (when set) and `items`
//! (`sku`, `title`, `stock`, `price_cents`, `per_user_limit`). A start or stop of a promotion
//! whose creation the deliverer never saw carries only `id`, `status` and the time that
//! moved. `started` and `ended` follow the operator's start and stop; a window that opens
//! or closes on its own schedule is in `starts_at` and `ends_at` of `created`.
//!
//! Token grants and archiving produce no CloudEvent.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::{EventBuilder, EventBuilderV10};
use seckill_engine::{
    item_key, Eligibility, EligibilityRule, Event, Order, PromotionRecord, PromotionStatus,
};
use serde::{Deserialize, Serialize};

use super::sink::OutEvent;
use crate::sql::order_updated_at_ms;

pub const TYPE_ORDER_CREATED: &str = "seckill.order.created";
pub const TYPE_ORDER_PAID: &str = "seckill.order.paid";
pub const TYPE_ORDER_CANCELLED: &str = "seckill.order.cancelled";
pub const TYPE_ORDER_EXPIRED: &str = "seckill.order.expired";
pub const TYPE_PROMOTION_CREATED: &str = "seckill.promotion.created";
pub const TYPE_PROMOTION_STARTED: &str = "seckill.promotion.started";
pub const TYPE_PROMOTION_ENDED: &str = "seckill.promotion.ended";
pub const TYPE_ITEM_SOLD_OUT: &str = "seckill.item.sold_out";
pub const TYPE_ITEM_BACK_IN_STOCK: &str = "seckill.item.back_in_stock";

/// Every type this module makes (for sinks that declare their subjects or routing keys).
pub const EVENT_TYPES: [&str; 9] = [
    TYPE_ORDER_CREATED,
    TYPE_ORDER_PAID,
    TYPE_ORDER_CANCELLED,
    TYPE_ORDER_EXPIRED,
    TYPE_PROMOTION_CREATED,
    TYPE_PROMOTION_STARTED,
    TYPE_PROMOTION_ENDED,
    TYPE_ITEM_SOLD_OUT,
    TYPE_ITEM_BACK_IN_STOCK,
];

/// The `datacontenttype` of every event.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// A CloudEvent that could not be made. Every field it needs is set from values the engine
/// validated, so this is a bug, not a condition to retry.
#[derive(Debug, thiserror::Error)]
pub enum CloudEventError {
    #[error("cannot build the CloudEvent {id}: {reason}")]
    Build { id: String, reason: String },
    #[error("cannot encode the CloudEvent {id}: {reason}")]
    Encode { id: String, reason: String },
}

/// What the deliverer knows of one item's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemStock {
    pub promotion_id: String,
    pub sku: String,
    /// Free to buy now; `None` when unknown (see the module documentation).
    #[serde(default)]
    pub remaining: Option<u64>,
    /// The lane its orders were seen in: a hole skipped in that lane makes it unknown.
    #[serde(default)]
    pub lane: Option<u32>,
}

/// A promotion as its events need it again (for `started` and `ended`), with its window as
/// start and stop moved it. Kept until its last item is archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionState {
    pub name: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub payment_timeout_s: u32,
    pub require_token: bool,
    pub token_multiplier: u32,
    pub created_at_ms: i64,
    pub human_check: String,
    #[serde(default)]
    pub eligibility: Option<EligibilityData>,
    pub items: Vec<ItemData>,
}

/// One item of a promotion's `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemData {
    pub sku: String,
    pub title: String,
    pub stock: u64,
    pub price_cents: i64,
    pub per_user_limit: u32,
}

/// A promotion's eligibility rule as api.md shows it: a claim and one of `min`, `any_of`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EligibilityData {
    pub claim: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any_of: Option<Vec<String>>,
}

/// The per-item stock and the promotions that item and promotion events need, saved with
/// the cursor. Bounded like the engine's memory: an item leaves when the engine archives
/// it, a promotion with its last item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerivedState {
    /// By item key.
    #[serde(default)]
    pub items: BTreeMap<u64, ItemStock>,
    /// By promotion id.
    #[serde(default)]
    pub promotions: BTreeMap<String, PromotionState>,
}

/// Which window change an event journals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowChange {
    Started,
    Ended,
}

impl DerivedState {
    /// A hole in `lane` was skipped: the items whose orders live there, and those whose
    /// lane is not known yet, may have lost some; they become unknown.
    pub fn forget_lane(&mut self, lane: u32) {
        for item in self.items.values_mut() {
            if item.lane.is_none_or(|seen| seen == lane) {
                item.remaining = None;
            }
        }
    }

    /// The log went back (it lost its tail): every figure may count events that are gone.
    pub fn forget_all(&mut self) {
        for item in self.items.values_mut() {
            item.remaining = None;
        }
    }

    fn promotion_created(&mut self, record: &PromotionRecord) {
        for item in &record.items {
            // An item already here was seen first through an order (its creation was read
            // late, or twice): what is known of it stands.
            self.items
                .entry(item_key(&record.id, &item.sku))
                .or_insert_with(|| ItemStock {
                    promotion_id: record.id.clone(),
                    sku: item.sku.clone(),
                    remaining: Some(item.stock),
                    lane: None,
                });
        }
        self.promotions
            .entry(record.id.clone())
            .or_insert_with(|| PromotionState::of(record));
    }

    /// The item of `order`, made unknown if it was never seen.
    fn item_mut(&mut self, key: u64, order: &Order, lane: u32) -> &mut ItemStock {
        let item = self.items.entry(key).or_insert_with(|| ItemStock {
            promotion_id: order.promotion_id.clone(),
            sku: order.sku.clone(),
            remaining: None,
            lane: None,
        });
        item.lane = Some(lane);
        item
    }

    /// A placement took `order.quantity`: true when it took the last unit.
    fn take(&mut self, key: u64, order: &Order, lane: u32) -> bool {
        let item = self.item_mut(key, order, lane);
        let Some(before) = item.remaining else {
            return false;
        };
        // More taken than known to be there: the figure is wrong, stop deriving from it.
        item.remaining = before.checked_sub(u64::from(order.quantity));
        before > 0 && item.remaining == Some(0)
    }

    /// A close gave `order.quantity` back: the remaining stock when it was the first unit
    /// back, else `None`.
    fn give_back(&mut self, key: u64, order: &Order, lane: u32) -> Option<u64> {
        let item = self.item_mut(key, order, lane);
        let before = item.remaining?;
        item.remaining = before.checked_add(u64::from(order.quantity));
        let after = item.remaining?;
        (before == 0 && after > 0).then_some(after)
    }

    fn paid(&mut self, key: u64, order: &Order, lane: u32) {
        self.item_mut(key, order, lane);
    }

    /// Whether `promotion_id` has ended by `at_ms` as far as its events tell.
    fn ended_by(&self, promotion_id: &str, at_ms: i64) -> bool {
        self.promotions
            .get(promotion_id)
            .is_some_and(|promotion| at_ms >= promotion.ends_at_ms)
    }

    fn window_changed(&mut self, promotion_id: &str, change: WindowChange, at_ms: i64) {
        let Some(promotion) = self.promotions.get_mut(promotion_id) else {
            return;
        };
        match change {
            WindowChange::Started => promotion.starts_at_ms = at_ms,
            // As the engine's catalog: a stop before the start also moves the start.
            WindowChange::Ended => {
                promotion.starts_at_ms = promotion.starts_at_ms.min(at_ms);
                promotion.ends_at_ms = at_ms;
            }
        }
    }

    /// The engine archived the item: it has no more events. Its promotion goes with its
    /// last item.
    fn archived(&mut self, key: u64) {
        let Some(item) = self.items.remove(&key) else {
            return;
        };
        let Some(promotion) = self.promotions.get(&item.promotion_id) else {
            return;
        };
        let items_left = promotion.items.iter().any(|data| {
            self.items
                .contains_key(&item_key(&item.promotion_id, &data.sku))
        });
        if !items_left {
            self.promotions.remove(&item.promotion_id);
        }
    }
}

impl PromotionState {
    fn of(record: &PromotionRecord) -> PromotionState {
        PromotionState {
            name: record.name.clone(),
            starts_at_ms: record.starts_at_ms,
            ends_at_ms: record.ends_at_ms,
            payment_timeout_s: record.payment_timeout_s,
            require_token: record.require_token,
            token_multiplier: record.token_multiplier,
            created_at_ms: record.created_at_ms,
            human_check: record.guard.human_check.as_str().to_owned(),
            eligibility: record.guard.eligibility.as_ref().map(EligibilityData::of),
            items: record
                .items
                .iter()
                .map(|item| ItemData {
                    sku: item.sku.clone(),
                    title: item.title.clone(),
                    stock: item.stock,
                    price_cents: item.price_cents,
                    per_user_limit: item.per_user_limit,
                })
                .collect(),
        }
    }
}

impl EligibilityData {
    fn of(eligibility: &Eligibility) -> EligibilityData {
        let (min, any_of) = match &eligibility.rule {
            EligibilityRule::Min(min) => (Some(*min), None),
            EligibilityRule::AnyOf(values) => (None, Some(values.clone())),
        };
        EligibilityData {
            claim: eligibility.claim.clone(),
            min,
            any_of,
        }
    }
}

/// An order as api.md shows it.
#[derive(Serialize)]
struct OrderData<'a> {
    order_id: &'a str,
    promotion_id: &'a str,
    sku: &'a str,
    user_id: &'a str,
    quantity: u32,
    price_cents: i64,
    amount_cents: i64,
    status: &'static str,
    created_at: String,
    pay_before: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    paid_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_ref: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    closed_at: Option<String>,
}

impl<'a> OrderData<'a> {
    fn of(order: &'a Order) -> OrderData<'a> {
        OrderData {
            order_id: &order.order_id,
            promotion_id: &order.promotion_id,
            sku: &order.sku,
            user_id: &order.user_id,
            quantity: order.quantity,
            price_cents: order.price_cents,
            amount_cents: order.amount_cents,
            status: order.status.as_str(),
            created_at: rfc3339(order.created_at_ms),
            pay_before: rfc3339(order.pay_before_ms),
            paid_at: order.paid_at_ms.map(rfc3339),
            payment_ref: order.payment_ref.as_deref(),
            closed_at: order.closed_at_ms.map(rfc3339),
        }
    }
}

/// A promotion as api.md's operator view shows it, without the stats.
#[derive(Serialize)]
struct PromotionData<'a> {
    id: &'a str,
    name: &'a str,
    status: &'static str,
    starts_at: String,
    ends_at: String,
    payment_timeout_s: u32,
    require_token: bool,
    token_multiplier: u32,
    created_at: String,
    human_check: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    eligibility: Option<&'a EligibilityData>,
    items: &'a [ItemData],
}

impl<'a> PromotionData<'a> {
    fn of(id: &'a str, promotion: &'a PromotionState, status: PromotionStatus) -> Self {
        PromotionData {
            id,
            name: &promotion.name,
            status: status.as_str(),
            starts_at: rfc3339(promotion.starts_at_ms),
            ends_at: rfc3339(promotion.ends_at_ms),
            payment_timeout_s: promotion.payment_timeout_s,
            require_token: promotion.require_token,
            token_multiplier: promotion.token_multiplier,
            created_at: rfc3339(promotion.created_at_ms),
            human_check: &promotion.human_check,
            eligibility: promotion.eligibility.as_ref(),
            items: &promotion.items,
        }
    }
}

/// An item event's `data`.
#[derive(Serialize)]
struct ItemEventData<'a> {
    promotion_id: &'a str,
    sku: &'a str,
    remaining: u64,
}

/// Makes the CloudEvents of one deployment's journal.
#[derive(Debug, Clone)]
pub struct EventMaker {
    deployment: String,
    source: String,
}

impl EventMaker {
    /// `deployment`: the log's deployment id (the CloudEvents `source` and the ids' prefix).
    pub fn new(deployment: &str) -> EventMaker {
        EventMaker {
            deployment: deployment.to_owned(),
            source: format!("/seckill/{deployment}"),
        }
    }

    /// The `source` of every event.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Appends to `out` the CloudEvents of `event`, read from `lane`, and moves `state` by
    /// it. The same event on the same state always gives the same CloudEvents, byte for
    /// byte.
    pub fn convert(
        &self,
        lane: u32,
        event: &Event,
        state: &mut DerivedState,
        out: &mut Vec<OutEvent>,
    ) -> Result<(), CloudEventError> {
        match event {
            Event::PromotionCreated { .. } | Event::PromotionGuarded { .. } => {
                match event.created_promotion() {
                    Some(record) => self.promotion_created(&record, state, out),
                    None => Ok(()),
                }
            }
            Event::PromotionStarted {
                promotion_id,
                at_ms,
            } => self.window_changed(promotion_id, WindowChange::Started, *at_ms, state, out),
            Event::PromotionStopped {
                promotion_id,
                at_ms,
            } => self.window_changed(promotion_id, WindowChange::Ended, *at_ms, state, out),
            Event::OrderPlaced {
                item_key, order, ..
            } => self.order_placed(lane, *item_key, order, state, out),
            Event::OrderPaid {
                item_key, order, ..
            } => {
                state.paid(*item_key, order, lane);
                let at_ms = order
                    .paid_at_ms
                    .unwrap_or_else(|| order_updated_at_ms(order));
                out.push(self.order_event(TYPE_ORDER_PAID, "paid", order, at_ms)?);
                Ok(())
            }
            Event::OrderCancelled {
                item_key, order, ..
            } => self.order_closed(lane, *item_key, order, TYPE_ORDER_CANCELLED, state, out),
            Event::OrderExpired {
                item_key, order, ..
            } => self.order_closed(lane, *item_key, order, TYPE_ORDER_EXPIRED, state, out),
            Event::ItemArchived { item_key } => {
                state.archived(*item_key);
                Ok(())
            }
            Event::TokenIssued { .. } => Ok(()),
        }
    }

    fn promotion_created(
        &self,
        record: &PromotionRecord,
        state: &mut DerivedState,
        out: &mut Vec<OutEvent>,
    ) -> Result<(), CloudEventError> {
        state.promotion_created(record);
        // The record as it was created (a state kept from an earlier creation may have a
        // moved window).
        let promotion = PromotionState::of(record);
        let status =
            PromotionStatus::at(record.starts_at_ms, record.ends_at_ms, record.created_at_ms);
        let data = to_json(&self.promotion_id(&record.id, "created"), || {
            serde_json::to_value(PromotionData::of(&record.id, &promotion, status))
        })?;
        out.push(self.envelope(
            self.promotion_id(&record.id, "created"),
            TYPE_PROMOTION_CREATED,
            record.id.clone(),
            record.created_at_ms,
            data,
        )?);
        Ok(())
    }

    fn window_changed(
        &self,
        promotion_id: &str,
        change: WindowChange,
        at_ms: i64,
        state: &mut DerivedState,
        out: &mut Vec<OutEvent>,
    ) -> Result<(), CloudEventError> {
        state.window_changed(promotion_id, change, at_ms);
        let (kind, suffix, status) = match change {
            WindowChange::Started => (TYPE_PROMOTION_STARTED, "started", PromotionStatus::Live),
            WindowChange::Ended => (TYPE_PROMOTION_ENDED, "ended", PromotionStatus::Ended),
        };
        let id = self.promotion_id(promotion_id, suffix);
        let data = match state.promotions.get(promotion_id) {
            Some(promotion) => to_json(&id, || {
                serde_json::to_value(PromotionData::of(promotion_id, promotion, status))
            })?,
            None => {
                let moved = match change {
                    WindowChange::Started => "starts_at",
                    WindowChange::Ended => "ends_at",
                };
                serde_json::json!({
                    "id": promotion_id,
                    "status": status.as_str(),
                    moved: rfc3339(at_ms),
                })
            }
        };
        out.push(self.envelope(id, kind, promotion_id.to_owned(), at_ms, data)?);
        Ok(())
    }

    fn order_placed(
        &self,
        lane: u32,
        key: u64,
        order: &Order,
        state: &mut DerivedState,
        out: &mut Vec<OutEvent>,
    ) -> Result<(), CloudEventError> {
        let at_ms = order.created_at_ms;
        out.push(self.order_event(TYPE_ORDER_CREATED, "created", order, at_ms)?);
        if state.take(key, order, lane) {
            out.push(self.item_event(TYPE_ITEM_SOLD_OUT, "sold_out", order, 0, at_ms)?);
        }
        Ok(())
    }

    fn order_closed(
        &self,
        lane: u32,
        key: u64,
        order: &Order,
        kind: &'static str,
        state: &mut DerivedState,
        out: &mut Vec<OutEvent>,
    ) -> Result<(), CloudEventError> {
        let suffix = if kind == TYPE_ORDER_CANCELLED {
            "cancelled"
        } else {
            "expired"
        };
        let at_ms = order
            .closed_at_ms
            .unwrap_or_else(|| order_updated_at_ms(order));
        out.push(self.order_event(kind, suffix, order, at_ms)?);
        let back = state.give_back(key, order, lane);
        if let Some(remaining) = back.filter(|_| !state.ended_by(&order.promotion_id, at_ms)) {
            out.push(self.item_event(
                TYPE_ITEM_BACK_IN_STOCK,
                "back_in_stock",
                order,
                remaining,
                at_ms,
            )?);
        }
        Ok(())
    }

    fn order_event(
        &self,
        kind: &'static str,
        suffix: &str,
        order: &Order,
        at_ms: i64,
    ) -> Result<OutEvent, CloudEventError> {
        let id = self.order_id(&order.order_id, suffix);
        let data = to_json(&id, || serde_json::to_value(OrderData::of(order)))?;
        self.envelope(id, kind, order.order_id.clone(), at_ms, data)
    }

    /// An item event caused by `order` (whose id makes the event's id unique).
    fn item_event(
        &self,
        kind: &'static str,
        suffix: &str,
        order: &Order,
        remaining: u64,
        at_ms: i64,
    ) -> Result<OutEvent, CloudEventError> {
        let id = self.order_id(&order.order_id, suffix);
        let data = to_json(&id, || {
            serde_json::to_value(ItemEventData {
                promotion_id: &order.promotion_id,
                sku: &order.sku,
                remaining,
            })
        })?;
        let subject = format!("{}/{}", order.promotion_id, order.sku);
        self.envelope(id, kind, subject, at_ms, data)
    }

    fn order_id(&self, order_id: &str, suffix: &str) -> String {
        format!("{}:{order_id}:{suffix}", self.deployment)
    }

    fn promotion_id(&self, promotion_id: &str, suffix: &str) -> String {
        format!("{}:promotion:{promotion_id}:{suffix}", self.deployment)
    }

    /// The whole CloudEvent, in structured-mode JSON.
    fn envelope(
        &self,
        id: String,
        kind: &'static str,
        subject: String,
        time_ms: i64,
        data: serde_json::Value,
    ) -> Result<OutEvent, CloudEventError> {
        let event = EventBuilderV10::new()
            .id(id.clone())
            .source(self.source.clone())
            .ty(kind)
            .subject(subject.clone())
            .time(utc(time_ms))
            .data(DATA_CONTENT_TYPE, data)
            .build()
            .map_err(|e| CloudEventError::Build {
                id: id.clone(),
                reason: e.to_string(),
            })?;
        let body = serde_json::to_vec(&event).map_err(|e| CloudEventError::Encode {
            id: id.clone(),
            reason: e.to_string(),
        })?;
        Ok(OutEvent {
            id,
            kind,
            subject,
            body,
            time_ms,
        })
    }
}

/// `make()`'s JSON, or the error naming event `id`.
fn to_json(
    id: &str,
    make: impl FnOnce() -> serde_json::Result<serde_json::Value>,
) -> Result<serde_json::Value, CloudEventError> {
    make().map_err(|e| CloudEventError::Encode {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

/// When the engine decided `event`, where the event tells it: for the lag in seconds.
pub(crate) fn decided_at_ms(event: &Event) -> Option<i64> {
    match event {
        Event::PromotionCreated { promotion } | Event::PromotionGuarded { promotion, .. } => {
            Some(promotion.created_at_ms)
        }
        Event::PromotionStarted { at_ms, .. } | Event::PromotionStopped { at_ms, .. } => {
            Some(*at_ms)
        }
        Event::TokenIssued { .. } | Event::ItemArchived { .. } => None,
        other => other.order().map(order_updated_at_ms),
    }
}

/// Unix milliseconds as a UTC time (the epoch for a time chrono cannot hold, which a clock
/// near now never makes).
fn utc(at_ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at_ms).unwrap_or_default()
}

/// Unix milliseconds as RFC 3339 in UTC, spelled as the HTTP API spells it: no fraction for
/// a whole second, else the milliseconds without trailing zeros (`…:00Z`, `…:00.12Z`).
pub(crate) fn rfc3339(at_ms: i64) -> String {
    let text = utc(at_ms).to_rfc3339_opts(SecondsFormat::Millis, true);
    // `…:SS.mmmZ`: the digits after the point go first, then the point if none is left.
    let without_zone = text.trim_end_matches('Z');
    let trimmed = without_zone.trim_end_matches('0').trim_end_matches('.');
    format!("{trimmed}Z")
}

#[cfg(test)]
mod tests {
    use seckill_engine::{ItemRecord, OrderStatus, PromotionGuard};

    use super::*;

    const AT_MS: i64 = 1_794_355_200_000; // 2026-11-11T00:00:00Z
    const LANE: u32 = 0;

    fn record(stocks: &[(&str, u64)]) -> PromotionRecord {
        PromotionRecord {
            id: "double11".into(),
            name: "Double 11".into(),
            starts_at_ms: AT_MS,
            ends_at_ms: AT_MS + 3_600_000,
            payment_timeout_s: 900,
            require_token: false,
            token_multiplier: 5,
            created_at_ms: AT_MS - 1_000,
            items: stocks
                .iter()
                .map(|(sku, stock)| ItemRecord {
                    sku: (*sku).into(),
                    title: format!("The {sku}"),
                    stock: *stock,
                    price_cents: 1_999,
                    per_user_limit: 2,
                })
                .collect(),
            guard: PromotionGuard::default(),
        }
    }

    fn order(seq: u64, sku: &str, quantity: u32, status: OrderStatus) -> Order {
        Order {
            order_id: format!("{:016x}-1-{seq}", item_key("double11", sku)),
            promotion_id: "double11".into(),
            sku: sku.into(),
            user_id: format!("user-{seq}"),
            request_id: format!("r-{seq}"),
            quantity,
            price_cents: 1_999,
            amount_cents: 1_999 * i64::from(quantity),
            status,
            created_at_ms: AT_MS + 100,
            pay_before_ms: AT_MS + 900_100,
            paid_at_ms: (status == OrderStatus::Paid).then_some(AT_MS + 5_000),
            payment_ref: (status == OrderStatus::Paid).then(|| "pay-1".into()),
            closed_at_ms: matches!(status, OrderStatus::Cancelled | OrderStatus::Expired)
                .then_some(AT_MS + 7_000),
        }
    }

    fn placed(seq: u64, sku: &str, quantity: u32) -> Event {
        Event::OrderPlaced {
            item_key: item_key("double11", sku),
            order_seq: seq,
            order: order(seq, sku, quantity, OrderStatus::PendingPayment),
            token: None,
        }
    }

    fn cancelled(seq: u64, sku: &str, quantity: u32) -> Event {
        Event::OrderCancelled {
            item_key: item_key("double11", sku),
            order_seq: seq,
            order: order(seq, sku, quantity, OrderStatus::Cancelled),
        }
    }

    fn convert_all(events: &[Event], state: &mut DerivedState) -> Vec<OutEvent> {
        let maker = EventMaker::new("dep1");
        let mut out = Vec::new();
        for event in events {
            maker
                .convert(LANE, event, state, &mut out)
                .expect("converts");
        }
        out
    }

    fn json(event: &OutEvent) -> serde_json::Value {
        serde_json::from_slice(&event.body).expect("JSON body")
    }

    #[test]
    fn an_order_event_is_a_structured_cloudevent_with_the_api_order() {
        let mut state = DerivedState::default();
        let out = convert_all(&[placed(1, "phone", 1)], &mut state);
        assert_eq!(out.len(), 1);
        let body = json(&out[0]);
        let order_id = format!("{:016x}-1-1", item_key("double11", "phone"));
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["id"], format!("dep1:{order_id}:created"));
        assert_eq!(body["source"], "/seckill/dep1");
        assert_eq!(body["type"], TYPE_ORDER_CREATED);
        assert_eq!(body["subject"], order_id.as_str());
        assert_eq!(body["datacontenttype"], "application/json");
        assert_eq!(body["time"], "2026-11-11T00:00:00.100Z");
        let data = &body["data"];
        assert_eq!(data["order_id"], order_id.as_str());
        assert_eq!(data["status"], "pending_payment");
        assert_eq!(data["created_at"], "2026-11-11T00:00:00.1Z");
        assert_eq!(data["pay_before"], "2026-11-11T00:15:00.1Z");
        assert!(data.get("paid_at").is_none() && data.get("request_id").is_none());
        assert_eq!(out[0].id, body["id"]);
        assert_eq!(out[0].time_ms, AT_MS + 100);
    }

    #[test]
    fn the_same_event_on_the_same_state_gives_the_same_bytes() {
        let events = [
            Event::promotion_created(record(&[("phone", 1)])),
            placed(1, "phone", 1),
        ];
        let first = convert_all(&events, &mut DerivedState::default());
        let again = convert_all(&events, &mut DerivedState::default());
        let bytes = |out: &[OutEvent]| out.iter().map(|e| e.body.clone()).collect::<Vec<_>>();
        assert_eq!(bytes(&first[..]), bytes(&again[..]));
        let ids: Vec<&str> = first.iter().map(|e| e.id.as_str()).collect();
        let order_id = format!("{:016x}-1-1", item_key("double11", "phone"));
        assert_eq!(
            ids,
            [
                "dep1:promotion:double11:created".to_owned(),
                format!("dep1:{order_id}:created"),
                format!("dep1:{order_id}:sold_out"),
            ]
        );
    }

    #[test]
    fn sold_out_when_the_last_unit_goes_and_back_in_stock_when_one_returns() {
        let mut state = DerivedState::default();
        let events = [
            Event::promotion_created(record(&[("phone", 3), ("case", 100)])),
            placed(1, "phone", 2),
            placed(2, "case", 1),
            placed(3, "phone", 1),
            cancelled(1, "phone", 2),
            cancelled(2, "case", 1),
        ];
        let out = convert_all(&events, &mut state);
        let items: Vec<(&str, serde_json::Value)> = out
            .iter()
            .filter(|e| e.kind.starts_with("seckill.item."))
            .map(|e| (e.kind, json(e)["data"]["remaining"].clone()))
            .collect();
        assert_eq!(
            items,
            [
                (TYPE_ITEM_SOLD_OUT, serde_json::json!(0)),
                (TYPE_ITEM_BACK_IN_STOCK, serde_json::json!(2)),
            ]
        );
        let sold_out = out
            .iter()
            .find(|e| e.kind == TYPE_ITEM_SOLD_OUT)
            .expect("sold out");
        assert_eq!(sold_out.subject, "double11/phone");
        let phone = &state.items[&item_key("double11", "phone")];
        assert_eq!(phone.remaining, Some(2));
    }

    #[test]
    fn an_item_whose_creation_was_not_seen_derives_nothing() {
        let mut state = DerivedState::default();
        let out = convert_all(
            &[placed(1, "phone", 1), cancelled(1, "phone", 1)],
            &mut state,
        );
        assert_eq!(out.len(), 2, "the two order events only");
        // A creation read after the order does not make the figure look known.
        let out = convert_all(
            &[
                Event::promotion_created(record(&[("phone", 1)])),
                placed(2, "phone", 1),
            ],
            &mut state,
        );
        assert!(out.iter().all(|e| !e.kind.starts_with("seckill.item.")));
    }

    #[test]
    fn a_skipped_hole_makes_the_lanes_items_unknown() {
        let mut state = DerivedState::default();
        convert_all(
            &[Event::promotion_created(record(&[("phone", 1)]))],
            &mut state,
        );
        state.forget_lane(LANE);
        let out = convert_all(&[placed(1, "phone", 1)], &mut state);
        assert!(out.iter().all(|e| e.kind != TYPE_ITEM_SOLD_OUT));
    }

    #[test]
    fn no_back_in_stock_after_the_promotion_ended() {
        let mut state = DerivedState::default();
        let events = [
            Event::promotion_created(record(&[("phone", 1)])),
            placed(1, "phone", 1),
            Event::PromotionStopped {
                promotion_id: "double11".into(),
                at_ms: AT_MS + 6_000,
            },
            cancelled(1, "phone", 1),
        ];
        let out = convert_all(&events, &mut state);
        let kinds: Vec<&str> = out.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                TYPE_PROMOTION_CREATED,
                TYPE_ORDER_CREATED,
                TYPE_ITEM_SOLD_OUT,
                TYPE_PROMOTION_ENDED,
                TYPE_ORDER_CANCELLED,
            ]
        );
        let ended = json(&out[3]);
        assert_eq!(ended["data"]["status"], "ended");
        assert_eq!(ended["data"]["ends_at"], "2026-11-11T00:00:06Z");
        assert_eq!(ended["data"]["items"][0]["title"], "The phone");
    }

    #[test]
    fn a_promotion_shows_as_the_operator_view_without_stats() {
        let out = convert_all(
            &[Event::promotion_created(record(&[("phone", 5)]))],
            &mut DerivedState::default(),
        );
        let data = json(&out[0])["data"].clone();
        assert_eq!(data["id"], "double11");
        assert_eq!(
            data["status"], "upcoming",
            "created a second before its start"
        );
        assert_eq!(data["starts_at"], "2026-11-11T00:00:00Z");
        assert_eq!(data["human_check"], "none");
        assert!(data.get("eligibility").is_none());
        assert_eq!(
            data["items"],
            serde_json::json!([{"sku": "phone", "title": "The phone", "stock": 5,
                                "price_cents": 1999, "per_user_limit": 2}])
        );
        assert!(data["items"][0].get("remaining").is_none());
    }

    #[test]
    fn tokens_and_archiving_send_nothing_and_archiving_frees_the_state() {
        let mut state = DerivedState::default();
        let key = item_key("double11", "phone");
        let events = [
            Event::promotion_created(record(&[("phone", 5)])),
            Event::TokenIssued {
                item_key: key,
                user_id: "u".into(),
                token: "t".into(),
                expires_at_ms: AT_MS,
            },
            Event::ItemArchived { item_key: key },
        ];
        let out = convert_all(&events, &mut state);
        assert_eq!(out.len(), 1, "the promotion only");
        assert!(state.items.is_empty() && state.promotions.is_empty());
    }

    #[test]
    fn times_are_spelled_as_the_http_api_spells_them() {
        assert_eq!(rfc3339(AT_MS), "2026-11-11T00:00:00Z");
        assert_eq!(rfc3339(AT_MS + 120), "2026-11-11T00:00:00.12Z");
        assert_eq!(rfc3339(AT_MS + 7), "2026-11-11T00:00:00.007Z");
        assert_eq!(rfc3339(AT_MS + 10_000), "2026-11-11T00:00:10Z");
    }
}
