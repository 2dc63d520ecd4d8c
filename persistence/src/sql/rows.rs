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
///
/// Written by hand rather than by chrono's formatter: the flusher formats four of these per
/// order row, and chrono's general-purpose formatting was a visible share of the flusher's
/// CPU in a storm. Years outside 0..=9999 (which a clock near now cannot produce) go through
/// chrono, as do the tests that check both agree.
pub(crate) fn rfc3339_from_ms(at_ms: i64) -> String {
    // 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z in unix milliseconds.
    const FIXED_WIDTH_MS: std::ops::RangeInclusive<i64> = -62_167_219_200_000..=253_402_300_799_999;
    if !FIXED_WIDTH_MS.contains(&at_ms) {
        return utc_from_ms(at_ms).to_rfc3339_opts(SecondsFormat::Millis, true);
    }
    let days = at_ms.div_euclid(86_400_000);
    let ms_of_day = at_ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, milli) = (ms_of_day / 1_000 % 60, ms_of_day % 1_000);
    let mut text = [0u8; 24];
    let mut put = |at: usize, value: i64, width: usize| {
        let mut value = value;
        for i in (0..width).rev() {
            // `value` is non-negative and below 10^width here, so the digit fits a u8.
            text[at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, hour, 2);
    put(14, minute, 2);
    put(17, second, 2);
    put(20, milli, 3);
    for (at, separator) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        text[at] = separator;
    }
    text.iter().map(|&b| char::from(b)).collect()
}

/// Year, month (1..=12) and day (1..=31) of the proleptic Gregorian calendar for a count of
/// days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
                    Event::PromotionCreated { .. } | Event::PromotionGuarded { .. } => {
                        if let Some(promotion) = event.created_promotion() {
                            rows.promotions.push(PromotionChange::Created(promotion));
                        }
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
        Event::PromotionCreated { promotion } | Event::PromotionGuarded { promotion, .. } => {
            Some(promotion.created_at_ms)
        }
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

    proptest::proptest! {
        /// The hand-written formatter writes exactly what chrono writes, over years
        /// 0..=9999 and the edges where it hands over to chrono.
        #[test]
        fn rfc3339_matches_chrono(at_ms in -62_167_219_200_000i64..=253_402_300_799_999) {
            let expected = utc_from_ms(at_ms).to_rfc3339_opts(SecondsFormat::Millis, true);
            proptest::prop_assert_eq!(rfc3339_from_ms(at_ms), expected);
        }
    }

    #[test]
    fn rfc3339_edges_and_leap_days() {
        for at_ms in [
            0,
            -1,
            951_782_400_000,     // 2000-02-29T00:00:00.000Z
            4_107_542_399_999,   // 2100-02-28T23:59:59.999Z
            -62_167_219_200_000, // 0000-01-01
            -62_167_219_200_001, // one ms before year 0: chrono's path
            253_402_300_799_999, // 9999-12-31T23:59:59.999Z
            253_402_300_800_000, // year 10000: chrono's path
        ] {
            let expected = utc_from_ms(at_ms).to_rfc3339_opts(SecondsFormat::Millis, true);
            assert_eq!(rfc3339_from_ms(at_ms), expected, "{at_ms}");
        }
        assert_eq!(rfc3339_from_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

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
