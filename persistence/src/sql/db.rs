//! The two databases the flusher writes to, behind one small interface: connect, migrate,
//! read the cursor, write a chunk with its cursor in one transaction, write the stats.
//!
//! Two code paths rather than `sqlx::Any`: PostgreSQL gets `TIMESTAMPTZ` and one
//! `UNNEST`-of-arrays statement per chunk (one round trip, one plan), SQLite gets RFC 3339
//! text and multi-row `VALUES` (in-process, so statement count matters little).

use std::str::FromStr;
use std::time::Duration;

use seckill_engine::{Order, PromotionRecord, PromotionStats};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, QueryBuilder, Sqlite};

use super::rows::{
    order_updated_at_ms, rfc3339_from_ms, status_rank_sql, utc_from_ms, ChunkRows, PromotionChange,
};
use super::SqlError;

static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// Every migration file, named once more so that cargo rebuilds the crate (and so re-embeds
/// the migrations above) when one changes: `sqlx::migrate!` alone is not tracked on stable
/// Rust. A new migration gets a line here; a unit test checks that none is missing.
/// Only the test reads it: its point is the file dependency.
#[cfg_attr(not(test), allow(dead_code))]
const MIGRATION_FILES: [(&str, &str); 2] = [
    (
        "postgres/0001_orders.sql",
        include_str!("../../migrations/postgres/0001_orders.sql"),
    ),
    (
        "sqlite/0001_orders.sql",
        include_str!("../../migrations/sqlite/0001_orders.sql"),
    ),
];

/// Rows per multi-row `INSERT` on SQLite: 14 parameters each stays far below SQLite's
/// 32,766-variable limit.
const SQLITE_ORDER_ROWS_PER_STATEMENT_MAX: usize = 1_024;
/// Rows per `UNNEST` statement on PostgreSQL (arrays have no parameter limit; this bounds
/// one message's size).
const POSTGRES_ORDER_ROWS_PER_STATEMENT_MAX: usize = 10_000;
/// Item rows per multi-row statement when writing stats.
const ITEM_ROWS_PER_STATEMENT_MAX: usize = 1_000;

/// How long SQLite waits for another writer's lock before the attempt fails (and is retried
/// with backoff by the flusher).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// SQLite page cache of the flusher's connection (a negative `cache_size` is KiB).
const SQLITE_CACHE_KIB: u64 = 64 * 1024;
/// How much of the SQLite file is read through mmap instead of pread.
const SQLITE_MMAP_BYTES: u64 = 256 * 1024 * 1024;

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

/// Counts of at most 1e11 (stock times token multiplier) in `BIGINT`.
fn count_sql(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// A schema name goes into SQL text (it cannot be a bind parameter), so only plain
/// lower-case identifiers are taken.
pub(crate) fn check_schema_name(schema: &str) -> Result<(), SqlError> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && schema.len() <= 63 {
        Ok(())
    } else {
        Err(SqlError::InvalidUrl(format!(
            "schema {schema:?} must match [a-z_][a-z0-9_]{{0,62}}"
        )))
    }
}

/// Drops a PostgreSQL schema and everything in it (benches and tests clean up with it).
pub(crate) async fn drop_postgres_schema(url: &str, schema: &str) -> Result<(), SqlError> {
    check_schema_name(schema)?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .map_err(|e| SqlError::Connect(e.to_string()))?;
    let dropped = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&pool)
        .await;
    pool.close().await;
    dropped?;
    Ok(())
}

/// A connected database of either kind.
#[derive(Debug, Clone)]
pub(crate) enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Database {
    /// Connects (one connection is made at once, so an unreachable database is an error
    /// here) and runs the embedded migrations.
    pub async fn open(
        url: &str,
        postgres_schema: Option<&str>,
        connect_timeout: Duration,
    ) -> Result<Database, SqlError> {
        let database = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| SqlError::InvalidUrl(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit is on disk before the journal is allowed to trim below the
                // cursor it carries.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                // The orders table and its indexes outgrow SQLite's default 2 MiB page cache
                // within a few thousand orders; every miss was then a pread of a page the
                // kernel already had. A larger cache and reads through mmap keep index
                // inserts in memory (both are bounds, not allocations up front).
                .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"))
                .pragma("mmap_size", SQLITE_MMAP_BYTES.to_string());
            if let Some(parent) = options.get_filename().parent() {
                if !parent.as_os_str().is_empty() && !parent.exists() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        SqlError::Connect(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
            }
            // One connection: the flusher is a single writer, and SQLite takes one at a time.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(connect_timeout)
                .connect_with(options)
                .await
                .map_err(|e| SqlError::Connect(e.to_string()))?;
            Database::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let mut options =
                PgConnectOptions::from_str(url).map_err(|e| SqlError::InvalidUrl(e.to_string()))?;
            if let Some(schema) = postgres_schema {
                check_schema_name(schema)?;
                options = options.options([("search_path", schema)]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(connect_timeout)
                .connect_with(options)
                .await
                .map_err(|e| SqlError::Connect(e.to_string()))?;
            if let Some(schema) = postgres_schema {
                sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                    .execute(&pool)
                    .await?;
            }
            Database::Postgres(pool)
        } else {
            return Err(SqlError::InvalidUrl(
                "the database url must start with sqlite:// or postgres://".into(),
            ));
        };
        database.migrate().await?;
        Ok(database)
    }

    async fn migrate(&self) -> Result<(), SqlError> {
        let (result, migrator) = match self {
            Database::Sqlite(pool) => (SQLITE_MIGRATOR.run(pool).await, &SQLITE_MIGRATOR),
            Database::Postgres(pool) => (POSTGRES_MIGRATOR.run(pool).await, &POSTGRES_MIGRATOR),
        };
        result.map_err(|error| match error {
            MigrateError::VersionMissing(found) => SqlError::NewerSchema {
                found,
                supported: migrator.iter().map(|m| m.version).max().unwrap_or(0),
            },
            other => SqlError::Migrate(other.to_string()),
        })
    }

    /// The sequence number up to which the tables hold the log.
    pub async fn read_cursor(&self) -> Result<u64, SqlError> {
        let seq: i64 = match self {
            Database::Sqlite(pool) => {
                sqlx::query_scalar("SELECT seq FROM flusher_cursor WHERE id = 1")
                    .fetch_one(pool)
                    .await?
            }
            Database::Postgres(pool) => {
                sqlx::query_scalar("SELECT seq FROM flusher_cursor WHERE id = 1")
                    .fetch_one(pool)
                    .await?
            }
        };
        u64::try_from(seq).map_err(|_| SqlError::Database(format!("negative cursor {seq}")))
    }

    /// Writes the rows of a chunk and moves the cursor from `cursor_from` to `cursor_to`, in
    /// one transaction. If the cursor is not at `cursor_from` (another flusher on the same
    /// database moved it) nothing is written and the answer is [`SqlError::CursorMoved`].
    pub async fn write_chunk(
        &self,
        rows: &ChunkRows,
        cursor_from: u64,
        cursor_to: u64,
        now_ms: i64,
    ) -> Result<(), SqlError> {
        let from = count_sql(cursor_from);
        let to = count_sql(cursor_to);
        match self {
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                // The cursor first: it takes SQLite's write lock and checks ownership
                // before any row is written.
                let moved = sqlx::query(
                    "UPDATE flusher_cursor SET seq = ?, updated_at = ? WHERE id = 1 AND seq = ?",
                )
                .bind(to)
                .bind(rfc3339_from_ms(now_ms))
                .bind(from)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if moved != 1 {
                    return Err(SqlError::CursorMoved {
                        expected: cursor_from,
                    });
                }
                for change in &rows.promotions {
                    sqlite_promotion_change(&mut tx, change, now_ms).await?;
                }
                sqlite_orders(&mut tx, &rows.orders).await?;
                tx.commit().await?;
            }
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let moved = sqlx::query(
                    "UPDATE flusher_cursor SET seq = $1, updated_at = $2 WHERE id = 1 AND seq = $3",
                )
                .bind(to)
                .bind(utc_from_ms(now_ms))
                .bind(from)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if moved != 1 {
                    return Err(SqlError::CursorMoved {
                        expected: cursor_from,
                    });
                }
                for change in &rows.promotions {
                    postgres_promotion_change(&mut tx, change, now_ms).await?;
                }
                postgres_orders(&mut tx, &rows.orders).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Sets the cursor, whatever it was (start-up, when the log is behind the tables).
    pub async fn reset_cursor(&self, seq: u64, now_ms: i64) -> Result<(), SqlError> {
        let seq = count_sql(seq);
        match self {
            Database::Sqlite(pool) => {
                sqlx::query("UPDATE flusher_cursor SET seq = ?, updated_at = ? WHERE id = 1")
                    .bind(seq)
                    .bind(rfc3339_from_ms(now_ms))
                    .execute(pool)
                    .await?;
            }
            Database::Postgres(pool) => {
                sqlx::query("UPDATE flusher_cursor SET seq = $1, updated_at = $2 WHERE id = 1")
                    .bind(seq)
                    .bind(utc_from_ms(now_ms))
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Copies the engine's promotions and per-item stats, in one transaction.
    pub async fn write_stats(&self, all: &[PromotionStats], now_ms: i64) -> Result<(), SqlError> {
        match self {
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for stats in all {
                    sqlite_stats(&mut tx, stats, now_ms).await?;
                }
                tx.commit().await?;
            }
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for stats in all {
                    postgres_stats(&mut tx, stats, now_ms).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }
}

type SqliteTx<'a> = sqlx::Transaction<'a, Sqlite>;
type PostgresTx<'a> = sqlx::Transaction<'a, Postgres>;

/// The largest statement size to use for `remaining` rows: full statements, then powers of
/// two, so that only a dozen distinct statements ever reach SQLite's statement cache.
fn sqlite_statement_rows(remaining: usize) -> usize {
    if remaining >= SQLITE_ORDER_ROWS_PER_STATEMENT_MAX {
        SQLITE_ORDER_ROWS_PER_STATEMENT_MAX
    } else {
        1 << (usize::BITS - 1 - remaining.leading_zeros())
    }
}

async fn sqlite_orders(tx: &mut SqliteTx<'_>, orders: &[Order]) -> Result<(), SqlError> {
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

async fn postgres_orders(tx: &mut PostgresTx<'_>, orders: &[Order]) -> Result<(), SqlError> {
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

/// A promotion's row and its items as they are at creation (no stats yet). An existing row
/// is left alone: the stats refresh or a later start/stop may have moved it on.
async fn sqlite_promotion_created(
    tx: &mut SqliteTx<'_>,
    record: &PromotionRecord,
    now_ms: i64,
) -> Result<(), SqlError> {
    sqlx::query(
        "INSERT INTO promotions (id, name, starts_at, ends_at, payment_timeout_s, \
         require_token, token_multiplier, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&record.id)
    .bind(&record.name)
    .bind(rfc3339_from_ms(record.starts_at_ms))
    .bind(rfc3339_from_ms(record.ends_at_ms))
    .bind(i64::from(record.payment_timeout_s))
    .bind(record.require_token)
    .bind(i64::from(record.token_multiplier))
    .bind(rfc3339_from_ms(record.created_at_ms))
    .bind(rfc3339_from_ms(now_ms))
    .execute(&mut **tx)
    .await?;
    for part in record.items.chunks(ITEM_ROWS_PER_STATEMENT_MAX) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO promotion_items (promotion_id, sku, title, price_cents, \
             per_user_limit, stock, remaining, reserved, sold, tokens_issued, updated_at) ",
        );
        builder.push_values(part, |mut row, item| {
            row.push_bind(record.id.as_str())
                .push_bind(item.sku.as_str())
                .push_bind(item.title.as_str())
                .push_bind(item.price_cents)
                .push_bind(i64::from(item.per_user_limit))
                .push_bind(count_sql(item.stock))
                .push_bind(count_sql(item.stock))
                .push_bind(0_i64)
                .push_bind(0_i64)
                .push_bind(0_i64)
                .push_bind(rfc3339_from_ms(now_ms));
        });
        builder.push(" ON CONFLICT (promotion_id, sku) DO NOTHING");
        builder.build().execute(&mut **tx).await?;
    }
    Ok(())
}

async fn sqlite_promotion_change(
    tx: &mut SqliteTx<'_>,
    change: &PromotionChange,
    now_ms: i64,
) -> Result<(), SqlError> {
    match change {
        PromotionChange::Created(record) => sqlite_promotion_created(tx, record, now_ms).await?,
        PromotionChange::Started {
            promotion_id,
            at_ms,
        } => {
            sqlx::query("UPDATE promotions SET starts_at = ?, updated_at = ? WHERE id = ?")
                .bind(rfc3339_from_ms(*at_ms))
                .bind(rfc3339_from_ms(now_ms))
                .bind(promotion_id)
                .execute(&mut **tx)
                .await?;
        }
        PromotionChange::Stopped {
            promotion_id,
            at_ms,
        } => {
            // As the engine does: the end moves to the stop, and a start after it with it.
            let at = rfc3339_from_ms(*at_ms);
            sqlx::query(
                "UPDATE promotions SET starts_at = MIN(starts_at, ?), ends_at = ?, \
                 updated_at = ? WHERE id = ?",
            )
            .bind(&at)
            .bind(&at)
            .bind(rfc3339_from_ms(now_ms))
            .bind(promotion_id)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

async fn postgres_promotion_created(
    tx: &mut PostgresTx<'_>,
    record: &PromotionRecord,
    now_ms: i64,
) -> Result<(), SqlError> {
    sqlx::query(
        "INSERT INTO promotions (id, name, starts_at, ends_at, payment_timeout_s, \
         require_token, token_multiplier, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&record.id)
    .bind(&record.name)
    .bind(utc_from_ms(record.starts_at_ms))
    .bind(utc_from_ms(record.ends_at_ms))
    .bind(i32::try_from(record.payment_timeout_s).unwrap_or(i32::MAX))
    .bind(record.require_token)
    .bind(i32::try_from(record.token_multiplier).unwrap_or(i32::MAX))
    .bind(utc_from_ms(record.created_at_ms))
    .bind(utc_from_ms(now_ms))
    .execute(&mut **tx)
    .await?;
    for part in record.items.chunks(ITEM_ROWS_PER_STATEMENT_MAX) {
        let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO promotion_items (promotion_id, sku, title, price_cents, \
             per_user_limit, stock, remaining, reserved, sold, tokens_issued, updated_at) ",
        );
        builder.push_values(part, |mut row, item| {
            row.push_bind(record.id.as_str())
                .push_bind(item.sku.as_str())
                .push_bind(item.title.as_str())
                .push_bind(item.price_cents)
                .push_bind(i64::from(item.per_user_limit))
                .push_bind(count_sql(item.stock))
                .push_bind(count_sql(item.stock))
                .push_bind(0_i64)
                .push_bind(0_i64)
                .push_bind(0_i64)
                .push_bind(utc_from_ms(now_ms));
        });
        builder.push(" ON CONFLICT (promotion_id, sku) DO NOTHING");
        builder.build().execute(&mut **tx).await?;
    }
    Ok(())
}

async fn postgres_promotion_change(
    tx: &mut PostgresTx<'_>,
    change: &PromotionChange,
    now_ms: i64,
) -> Result<(), SqlError> {
    match change {
        PromotionChange::Created(record) => {
            postgres_promotion_created(tx, record, now_ms).await?;
        }
        PromotionChange::Started {
            promotion_id,
            at_ms,
        } => {
            sqlx::query("UPDATE promotions SET starts_at = $1, updated_at = $2 WHERE id = $3")
                .bind(utc_from_ms(*at_ms))
                .bind(utc_from_ms(now_ms))
                .bind(promotion_id)
                .execute(&mut **tx)
                .await?;
        }
        PromotionChange::Stopped {
            promotion_id,
            at_ms,
        } => {
            sqlx::query(
                "UPDATE promotions SET starts_at = LEAST(starts_at, $1), ends_at = $1, \
                 updated_at = $2 WHERE id = $3",
            )
            .bind(utc_from_ms(*at_ms))
            .bind(utc_from_ms(now_ms))
            .bind(promotion_id)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

async fn sqlite_stats(
    tx: &mut SqliteTx<'_>,
    stats: &PromotionStats,
    now_ms: i64,
) -> Result<(), SqlError> {
    sqlx::query(
        "INSERT INTO promotions (id, name, starts_at, ends_at, payment_timeout_s, \
         require_token, token_multiplier, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET \
         starts_at = excluded.starts_at, ends_at = excluded.ends_at, \
         updated_at = excluded.updated_at",
    )
    .bind(&stats.id)
    .bind(&stats.name)
    .bind(rfc3339_from_ms(stats.starts_at_ms))
    .bind(rfc3339_from_ms(stats.ends_at_ms))
    .bind(i64::from(stats.payment_timeout_s))
    .bind(stats.require_token)
    .bind(i64::from(stats.token_multiplier))
    .bind(rfc3339_from_ms(stats.created_at_ms))
    .bind(rfc3339_from_ms(now_ms))
    .execute(&mut **tx)
    .await?;
    for part in stats.items.chunks(ITEM_ROWS_PER_STATEMENT_MAX) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO promotion_items (promotion_id, sku, title, price_cents, \
             per_user_limit, stock, remaining, reserved, sold, tokens_issued, updated_at) ",
        );
        builder.push_values(part, |mut row, item| {
            row.push_bind(stats.id.as_str())
                .push_bind(item.sku.as_str())
                .push_bind(item.title.as_str())
                .push_bind(item.price_cents)
                .push_bind(i64::from(item.per_user_limit))
                .push_bind(count_sql(item.stock))
                .push_bind(count_sql(item.remaining))
                .push_bind(count_sql(item.reserved))
                .push_bind(count_sql(item.sold))
                .push_bind(count_sql(item.tokens_issued))
                .push_bind(rfc3339_from_ms(now_ms));
        });
        builder.push(
            " ON CONFLICT (promotion_id, sku) DO UPDATE SET remaining = excluded.remaining, \
             reserved = excluded.reserved, sold = excluded.sold, \
             tokens_issued = excluded.tokens_issued, updated_at = excluded.updated_at",
        );
        builder.build().execute(&mut **tx).await?;
    }
    Ok(())
}

async fn postgres_stats(
    tx: &mut PostgresTx<'_>,
    stats: &PromotionStats,
    now_ms: i64,
) -> Result<(), SqlError> {
    sqlx::query(
        "INSERT INTO promotions (id, name, starts_at, ends_at, payment_timeout_s, \
         require_token, token_multiplier, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO UPDATE SET \
         starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at, \
         updated_at = EXCLUDED.updated_at",
    )
    .bind(&stats.id)
    .bind(&stats.name)
    .bind(utc_from_ms(stats.starts_at_ms))
    .bind(utc_from_ms(stats.ends_at_ms))
    .bind(i32::try_from(stats.payment_timeout_s).unwrap_or(i32::MAX))
    .bind(stats.require_token)
    .bind(i32::try_from(stats.token_multiplier).unwrap_or(i32::MAX))
    .bind(utc_from_ms(stats.created_at_ms))
    .bind(utc_from_ms(now_ms))
    .execute(&mut **tx)
    .await?;
    for part in stats.items.chunks(ITEM_ROWS_PER_STATEMENT_MAX) {
        let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO promotion_items (promotion_id, sku, title, price_cents, \
             per_user_limit, stock, remaining, reserved, sold, tokens_issued, updated_at) ",
        );
        builder.push_values(part, |mut row, item| {
            row.push_bind(stats.id.as_str())
                .push_bind(item.sku.as_str())
                .push_bind(item.title.as_str())
                .push_bind(item.price_cents)
                .push_bind(i64::from(item.per_user_limit))
                .push_bind(count_sql(item.stock))
                .push_bind(count_sql(item.remaining))
                .push_bind(count_sql(item.reserved))
                .push_bind(count_sql(item.sold))
                .push_bind(count_sql(item.tokens_issued))
                .push_bind(utc_from_ms(now_ms));
        });
        builder.push(
            " ON CONFLICT (promotion_id, sku) DO UPDATE SET remaining = EXCLUDED.remaining, \
             reserved = EXCLUDED.reserved, sold = EXCLUDED.sold, \
             tokens_issued = EXCLUDED.tokens_issued, updated_at = EXCLUDED.updated_at",
        );
        builder.build().execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_migration_is_tracked() {
        let tracked = |dir: &str| {
            MIGRATION_FILES
                .iter()
                .filter(|(p, _)| p.starts_with(dir))
                .count()
        };
        assert_eq!(POSTGRES_MIGRATOR.iter().count(), tracked("postgres/"));
        assert_eq!(SQLITE_MIGRATOR.iter().count(), tracked("sqlite/"));
        for migration in POSTGRES_MIGRATOR.iter().chain(SQLITE_MIGRATOR.iter()) {
            assert!(
                MIGRATION_FILES
                    .iter()
                    .any(|(_, sql)| *sql == &*migration.sql),
                "migration {} is embedded but not in MIGRATION_FILES",
                migration.version
            );
        }
    }

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
