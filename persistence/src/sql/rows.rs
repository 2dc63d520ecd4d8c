//! From journal events to table rows: pure functions, no database.
//!
//! A chunk of batches becomes one [`ChunkRows`]: the last state of each order the chunk
//! touches (one row per `order_id`, because PostgreSQL refuses an upsert that hits the same
//! row twice in one statement), and the promotion-level changes in log order.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use seckill_engine::{Event, Order, OrderStatus, PromotionRecord};

/// Every order status, for the SQL that ranks statuses (see [`status_rank_sql`]).
pub(crate) const ORDER_STATUSES: [OrderStatus; 4] = [
    OrderStatus::PendingPayment,
    OrderStatus::Paid,
    OrderStatus::Cancelled,
    OrderStatus::Expired,
];

/// A unix-millisecond time as a UTC timestamp.
pub(crate) fn utc_from_ms(at_ms: i64) -> DateTime<Utc> {
    // The engine's times come from a clock within years of now, far inside chrono's range;
    // the epoch is only a floor for a value that cannot occur, so one odd row cannot stall
    // the flusher for good.
    DateTime::from_timestamp_millis(at_ms).unwrap_or_default()
}

/// A unix-millisecond time as the RFC 3339 text stored on SQLite: UTC, milliseconds, `Z`.
/// Fixed width, so the text sorts like the time.
pub(crate) fn rfc3339_from_ms(at_ms: i64) -> String {
    utc_from_ms(at_ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses what [`rfc3339_from_ms`] wrote back into unix milliseconds.
pub fn ms_from_rfc3339(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// When the engine last changed the order: the latest of its own times. Derived from the
/// order alone so that replaying an event writes the very same row.
pub fn order_updated_at_ms(order: &Order) -> i64 {
    order
        .created_at_ms
        .max(order.paid_at_ms.unwrap_or(i64::MIN))
        .max(order.closed_at_ms.unwrap_or(i64::MIN))
}

/// SQL that maps the status column `column` to [`OrderStatus::rank`], written out from the
/// engine's own ranks so the table can never disagree with them.
pub(crate) fn status_rank_sql(column: &str) -> String {
    let mut sql = format!("(CASE {column}");
    for status in ORDER_STATUSES {
        sql.push_str(&format!(
            " WHEN '{}' THEN {}",
            status.as_str(),
            status.rank()
        ));
    }
    sql.push_str(" ELSE 0 END)");
    sql
}

/// A promotion-level change, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PromotionChange {
    Created(PromotionRecord),
    Started { promotion_id: String, at_ms: i64 },
    Stopped { promotion_id: String, at_ms: i64 },
}

/// What one chunk of the log writes.
#[derive(Debug, Default)]
pub(crate) struct ChunkRows {
    /// The last state of each order touched, one per order id, in first-touched order.
    pub orders: Vec<Order>,
    pub promotions: Vec<PromotionChange>,
    /// The events the chunk holds (all kinds), for the metrics.
    pub events: usize,
}

impl ChunkRows {
    /// Collects the rows of `batches`, which are in log order.
    pub fn from_batches<'a>(batches: impl IntoIterator<Item = &'a (u64, Vec<Event>)>) -> Self {
        let mut rows = ChunkRows::default();
        let mut index_by_id: HashMap<&str, usize> = HashMap::new();
        let mut orders: Vec<&Order> = Vec::new();
        for (_, events) in batches {
            rows.events += events.len();
            for event in events {
                match event {
                    Event::PromotionCreated { promotion } => {
                        rows.promotions
                            .push(PromotionChange::Created(promotion.clone()));
                    }
                    Event::PromotionStarted {
                        promotion_id,
                        at_ms,
                    } => rows.promotions.push(PromotionChange::Started {
                        promotion_id: promotion_id.clone(),
                        at_ms: *at_ms,
                    }),
                    Event::PromotionStopped {
                        promotion_id,
                        at_ms,
                    } => rows.promotions.push(PromotionChange::Stopped {
                        promotion_id: promotion_id.clone(),
                        at_ms: *at_ms,
                    }),
                    other => {
                        let Some(order) = other.order() else { continue };
                        match index_by_id.get(order.order_id.as_str()) {
                            // A later event of the same order is at least as far along its
                            // life; the rank check keeps that true even for a log that
                            // somehow says otherwise.
                            Some(&index) => {
                                if order.status.rank() >= orders[index].status.rank() {
                                    orders[index] = order;
                                }
                            }
                            None => {
                                index_by_id.insert(order.order_id.as_str(), orders.len());
                                orders.push(order);
                            }
                        }
                    }
                }
            }
        }
        rows.orders = orders.into_iter().cloned().collect();
        rows
    }
}

/// The time an event was decided, where the event tells it; for the lag in seconds.
pub(crate) fn event_time_ms(event: &Event) -> Option<i64> {
    match event {
        Event::PromotionCreated { promotion } => Some(promotion.created_at_ms),
        Event::PromotionStarted { at_ms, .. } | Event::PromotionStopped { at_ms, .. } => {
            Some(*at_ms)
        }
        Event::TokenIssued { .. } => None,
        other => other.order().map(order_updated_at_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, status: OrderStatus) -> Order {
        Order {
            order_id: id.into(),
            promotion_id: "p".into(),
            sku: "s".into(),
            user_id: "u".into(),
            request_id: "r".into(),
            quantity: 1,
            price_cents: 100,
            amount_cents: 100,
            status,
            created_at_ms: 1_000,
            pay_before_ms: 901_000,
            paid_at_ms: (status == OrderStatus::Paid).then_some(2_000),
            payment_ref: (status == OrderStatus::Paid).then(|| "pay".into()),
            closed_at_ms: matches!(status, OrderStatus::Cancelled | OrderStatus::Expired)
                .then_some(3_000),
        }
    }

    fn placed(o: Order) -> Event {
        Event::OrderPlaced {
            item_key: 1,
            order_seq: 1,
            order: o,
            token: None,
        }
    }

    #[test]
    fn one_row_per_order_with_its_last_state() {
        let batches = vec![
            (1, vec![placed(order("a-1", OrderStatus::PendingPayment))]),
            (
                2,
                vec![
                    placed(order("b-1", OrderStatus::PendingPayment)),
                    Event::OrderPaid {
                        item_key: 1,
                        order_seq: 1,
                        order: order("a-1", OrderStatus::Paid),
                    },
                ],
            ),
        ];
        let rows = ChunkRows::from_batches(&batches);
        assert_eq!(rows.events, 3);
        assert_eq!(rows.orders.len(), 2);
        assert_eq!(rows.orders[0].order_id, "a-1");
        assert_eq!(rows.orders[0].status, OrderStatus::Paid);
        assert_eq!(rows.orders[1].status, OrderStatus::PendingPayment);
    }

    #[test]
    fn a_pending_state_never_replaces_a_final_one() {
        let batches = vec![(
            1,
            vec![
                Event::OrderExpired {
                    item_key: 1,
                    order_seq: 1,
                    order: order("a-1", OrderStatus::Expired),
                },
                placed(order("a-1", OrderStatus::PendingPayment)),
            ],
        )];
        let rows = ChunkRows::from_batches(&batches);
        assert_eq!(rows.orders.len(), 1);
        assert_eq!(rows.orders[0].status, OrderStatus::Expired);
    }

    #[test]
    fn timestamps_are_fixed_width_utc_text() {
        assert_eq!(rfc3339_from_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_from_ms(1_762_819_200_123),
            "2025-11-11T00:00:00.123Z"
        );
        assert_eq!(
            ms_from_rfc3339("2025-11-11T00:00:00.123Z"),
            Some(1_762_819_200_123)
        );
    }

    #[test]
    fn updated_at_is_the_latest_change() {
        assert_eq!(
            order_updated_at_ms(&order("a", OrderStatus::PendingPayment)),
            1_000
        );
        assert_eq!(order_updated_at_ms(&order("a", OrderStatus::Paid)), 2_000);
        assert_eq!(
            order_updated_at_ms(&order("a", OrderStatus::Expired)),
            3_000
        );
    }

    #[test]
    fn rank_sql_follows_the_engine() {
        let sql = status_rank_sql("orders.status");
        assert!(sql.contains("WHEN 'pending_payment' THEN 0"));
        assert!(sql.contains("WHEN 'paid' THEN 1"));
    }
}
