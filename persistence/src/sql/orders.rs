//! The orders upsert, written once per database for a reason: PostgreSQL gets one
//! `UNNEST`-of-arrays statement per chunk (one round trip, one plan), SQLite gets multi-row
//! `VALUES` in a dozen statement sizes (in-process, so the statement count matters little).
//! Both replace a row only by a state further along the order's life.

use seckill_engine::Order;
use sqlx::{Postgres, QueryBuilder, Sqlite, Transaction};

use super::error::SqlError;
use super::rows::{order_updated_at_ms, rfc3339_from_ms, status_rank_sql, utc_from_ms};

/// Rows per multi-row `INSERT` on SQLite: 14 parameters each stays far below SQLite's
/// 32,766-variable limit.
const SQLITE_ORDER_ROWS_PER_STATEMENT_MAX: usize = 1_024;
/// Rows per `UNNEST` statement on PostgreSQL (arrays have no parameter limit; this bounds
/// one message's size).
const POSTGRES_ORDER_ROWS_PER_STATEMENT_MAX: usize = 10_000;

/// The columns of `orders`, in the order both upserts give them.
const ORDER_COLUMNS: &str = "order_id, promotion_id, sku, user_id, quantity, price_cents, \
     amount_cents, status, created_at, pay_before, paid_at, payment_ref, closed_at, updated_at";

/// The `ON CONFLICT` tail of the orders upsert: a row is replaced only by a state further
/// along the order's life, so a pending order never overwrites a paid, cancelled or expired
/// one, and a replay of the same state changes nothing.
fn orders_conflict_sql(excluded: &str) -> String {
    let columns = [
        "promotion_id",
        "sku",
        "user_id",
        "quantity",
        "price_cents",
        "amount_cents",
        "status",
        "created_at",
        "pay_before",
        "paid_at",
        "payment_ref",
        "closed_at",
        "updated_at",
    ];
    let set: Vec<String> = columns
        .iter()
        .map(|c| format!("{c} = {excluded}.{c}"))
        .collect();
    format!(
        " ON CONFLICT (order_id) DO UPDATE SET {} WHERE {} < {}",
        set.join(", "),
        status_rank_sql("orders.status"),
        status_rank_sql(&format!("{excluded}.status")),
    )
}

/// Quantities are at most the item's stock (<= 1e9, api.md), so they fit `INTEGER`; the
/// saturation only keeps one impossible row from stalling the flusher.
fn quantity_sql(order: &Order) -> i32 {
    i32::try_from(order.quantity).unwrap_or(i32::MAX)
}

type SqliteTx<'a> = Transaction<'a, Sqlite>;
type PostgresTx<'a> = Transaction<'a, Postgres>;

/// The largest statement size to use for `remaining` rows: full statements, then powers of
/// two, so that only a dozen distinct statements ever reach SQLite's statement cache.
fn sqlite_statement_rows(remaining: usize) -> usize {
    if remaining >= SQLITE_ORDER_ROWS_PER_STATEMENT_MAX {
        SQLITE_ORDER_ROWS_PER_STATEMENT_MAX
    } else {
        1 << (usize::BITS - 1 - remaining.leading_zeros())
    }
}

/// Upserts `orders` (one row per order id) on SQLite.
pub(crate) async fn sqlite_orders(tx: &mut SqliteTx<'_>, orders: &[Order]) -> Result<(), SqlError> {
    let conflict = orders_conflict_sql("excluded");
    let mut rest = orders;
    while !rest.is_empty() {
        let (part, tail) = rest.split_at(sqlite_statement_rows(rest.len()));
        rest = tail;
        let mut builder: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("INSERT INTO orders ({ORDER_COLUMNS}) "));
        builder.push_values(part, |mut row, order| {
            row.push_bind(order.order_id.as_str())
                .push_bind(order.promotion_id.as_str())
                .push_bind(order.sku.as_str())
                .push_bind(order.user_id.as_str())
                .push_bind(quantity_sql(order))
                .push_bind(order.price_cents)
                .push_bind(order.amount_cents)
                .push_bind(order.status.as_str())
                .push_bind(rfc3339_from_ms(order.created_at_ms))
                .push_bind(rfc3339_from_ms(order.pay_before_ms))
                .push_bind(order.paid_at_ms.map(rfc3339_from_ms))
                .push_bind(order.payment_ref.as_deref())
                .push_bind(order.closed_at_ms.map(rfc3339_from_ms))
                .push_bind(rfc3339_from_ms(order_updated_at_ms(order)));
        });
        builder.push(&conflict);
        builder.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Upserts `orders` (one row per order id) on PostgreSQL.
pub(crate) async fn postgres_orders(
    tx: &mut PostgresTx<'_>,
    orders: &[Order],
) -> Result<(), SqlError> {
    let sql = format!(
        "INSERT INTO orders ({ORDER_COLUMNS}) SELECT * FROM UNNEST(\
         $1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int8[], $7::int8[], \
         $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::text[], \
         $13::timestamptz[], $14::timestamptz[]){}",
        orders_conflict_sql("EXCLUDED")
    );
    for part in orders.chunks(POSTGRES_ORDER_ROWS_PER_STATEMENT_MAX) {
        let column = |f: &dyn Fn(&Order) -> String| part.iter().map(f).collect::<Vec<_>>();
        let times =
            |f: &dyn Fn(&Order) -> i64| part.iter().map(|o| utc_from_ms(f(o))).collect::<Vec<_>>();
        let maybe_times = |f: &dyn Fn(&Order) -> Option<i64>| {
            part.iter()
                .map(|o| f(o).map(utc_from_ms))
                .collect::<Vec<_>>()
        };
        sqlx::query(&sql)
            .bind(column(&|o| o.order_id.clone()))
            .bind(column(&|o| o.promotion_id.clone()))
            .bind(column(&|o| o.sku.clone()))
            .bind(column(&|o| o.user_id.clone()))
            .bind(part.iter().map(quantity_sql).collect::<Vec<_>>())
            .bind(part.iter().map(|o| o.price_cents).collect::<Vec<_>>())
            .bind(part.iter().map(|o| o.amount_cents).collect::<Vec<_>>())
            .bind(column(&|o| o.status.as_str().to_owned()))
            .bind(times(&|o| o.created_at_ms))
            .bind(times(&|o| o.pay_before_ms))
            .bind(maybe_times(&|o| o.paid_at_ms))
            .bind(
                part.iter()
                    .map(|o| o.payment_ref.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(maybe_times(&|o| o.closed_at_ms))
            .bind(times(&order_updated_at_ms))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_statements_come_in_few_sizes() {
        assert_eq!(
            sqlite_statement_rows(5_000),
            SQLITE_ORDER_ROWS_PER_STATEMENT_MAX
        );
        assert_eq!(sqlite_statement_rows(1_023), 512);
        assert_eq!(sqlite_statement_rows(3), 2);
        assert_eq!(sqlite_statement_rows(1), 1);
    }
}
