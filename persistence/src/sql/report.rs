//! The sale report, read from the views of migration 0005 (`promotion_report`,
//! `promotion_funnel`, `promotion_orders_per_minute`): the same definitions the back office
//! queries, so the console and the back office cannot disagree. It trails the engine by the
//! flusher's lag.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::db::Database;
use super::error::SqlError;
use super::rows::ms_from_rfc3339;

/// The four order statuses, in the order the report lists them.
pub const ORDER_STATUSES: [&str; 4] = ["pending_payment", "paid", "cancelled", "expired"];

/// One order status's share of a promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusTotals {
    pub status: &'static str,
    pub orders: u64,
    pub units: u64,
    pub revenue_cents: i64,
}

/// Orders made in one minute of the sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteTotals {
    /// The minute's start, unix milliseconds (UTC).
    pub minute_ms: i64,
    pub orders: u64,
    pub units: u64,
}

/// A promotion's sale report as SQL holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleReport {
    /// Always the four statuses of [`ORDER_STATUSES`], in that order (zeros where none).
    pub by_status: Vec<StatusTotals>,
    pub tokens_issued: u64,
    pub orders: u64,
    pub paid_orders: u64,
    /// Oldest minute first.
    pub orders_per_minute: Vec<MinuteTotals>,
}

const BY_STATUS_SQL: &str =
    "SELECT status, orders, units, revenue_cents FROM promotion_report WHERE promotion_id = ";
const FUNNEL_SQL: &str =
    "SELECT tokens_issued, orders, paid_orders FROM promotion_funnel WHERE promotion_id = ";
const PER_MINUTE_SQL: &str =
    "SELECT minute, orders, units FROM promotion_orders_per_minute WHERE promotion_id = ";

/// Counts are never negative in these views; a negative one (a hand-edited row) reads as 0
/// rather than failing the whole report.
fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The three queries on one database: `$pool` a pool, `$param` its placeholder, `$minute`
/// the type the minute column reads as and `$to_ms` its conversion to unix milliseconds. A
/// macro rather than a generic function: sqlx's per-database row and decode bounds would be
/// longer than the queries.
macro_rules! read_views {
    ($pool:expr, $param:literal, $promotion_id:expr, $minute:ty, $to_ms:expr) => {{
        let statuses = sqlx::query(&format!("{BY_STATUS_SQL}{}", $param))
            .bind($promotion_id)
            .fetch_all($pool)
            .await?
            .iter()
            .map(|row| {
                let (orders, units, revenue) = (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
                status_row(row.try_get(0)?, orders, units, revenue)
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let funnel = sqlx::query(&format!("{FUNNEL_SQL}{}", $param))
            .bind($promotion_id)
            .fetch_optional($pool)
            .await?
            .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .transpose()?;
        let minutes = sqlx::query(&format!("{PER_MINUTE_SQL}{} ORDER BY minute", $param))
            .bind($promotion_id)
            .fetch_all($pool)
            .await?
            .iter()
            .map(|row| {
                let minute: $minute = row.try_get(0)?;
                Ok(MinuteTotals {
                    minute_ms: $to_ms(minute),
                    orders: count(row.try_get(1)?),
                    units: count(row.try_get(2)?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        (statuses, funnel, minutes)
    }};
}

/// SQLite's minute: RFC 3339 text (an unreadable one, impossible from the view, reads as 0).
fn sqlite_minute_ms(minute: String) -> i64 {
    ms_from_rfc3339(&minute).unwrap_or(0)
}

fn postgres_minute_ms(minute: DateTime<Utc>) -> i64 {
    minute.timestamp_millis()
}

/// Reads `promotion_id`'s report. A promotion the flusher has not written yet reads as zeros.
pub(crate) async fn read(database: &Database, promotion_id: &str) -> Result<SaleReport, SqlError> {
    let (statuses, funnel, minutes) = match database {
        Database::Sqlite(pool) => read_views!(pool, "?", promotion_id, String, sqlite_minute_ms),
        Database::Postgres(pool) => {
            read_views!(pool, "$1", promotion_id, DateTime<Utc>, postgres_minute_ms)
        }
    };
    Ok(assemble(statuses, funnel, minutes))
}

/// One `promotion_report` row; an unknown status (the table's CHECK forbids one) is dropped.
fn status_row(
    status: String,
    orders: i64,
    units: i64,
    revenue_cents: i64,
) -> Result<Option<StatusTotals>, sqlx::Error> {
    Ok(ORDER_STATUSES
        .iter()
        .find(|known| **known == status)
        .map(|known| StatusTotals {
            status: known,
            orders: count(orders),
            units: count(units),
            revenue_cents,
        }))
}

/// The report from the three views' rows: every status present, in order.
fn assemble(
    rows: Vec<Option<StatusTotals>>,
    funnel: Option<(i64, i64, i64)>,
    orders_per_minute: Vec<MinuteTotals>,
) -> SaleReport {
    let by_status = ORDER_STATUSES
        .iter()
        .map(|status| {
            rows.iter()
                .flatten()
                .find(|row| row.status == *status)
                .cloned()
                .unwrap_or(StatusTotals {
                    status,
                    orders: 0,
                    units: 0,
                    revenue_cents: 0,
                })
        })
        .collect();
    let (tokens_issued, orders, paid_orders) = funnel.unwrap_or((0, 0, 0));
    SaleReport {
        by_status,
        tokens_issued: count(tokens_issued),
        orders: count(orders),
        paid_orders: count(paid_orders),
        orders_per_minute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_listed_in_order_with_zeros_where_none() {
        let paid = StatusTotals {
            status: "paid",
            orders: 2,
            units: 3,
            revenue_cents: 300,
        };
        let report = assemble(vec![Some(paid.clone()), None], Some((9, 2, 2)), Vec::new());
        let statuses: Vec<_> = report.by_status.iter().map(|s| s.status).collect();
        assert_eq!(statuses, ORDER_STATUSES);
        assert_eq!(report.by_status[1], paid);
        assert_eq!(report.by_status[0].orders, 0);
        assert_eq!(
            (report.tokens_issued, report.orders, report.paid_orders),
            (9, 2, 2)
        );
    }

    #[test]
    fn a_promotion_not_in_sql_yet_reads_as_zeros() {
        let report = assemble(Vec::new(), None, Vec::new());
        assert!(report
            .by_status
            .iter()
            .all(|s| s.orders == 0 && s.revenue_cents == 0));
        assert_eq!(report.tokens_issued, 0);
    }
}
