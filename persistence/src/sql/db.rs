//! The two databases the flusher writes to, behind one small interface: connect, migrate,
//! read a lane's cursor, write a chunk with its lane's cursor in one transaction, write the
//! stats.
//!
//! Every statement is written once (`queries`) and runs on either database through one
//! seam (`dialect`); only the orders upsert has a path per database (`orders`, which says
//! why). No `sqlx::Any`: each database keeps its own types (`TIMESTAMPTZ` on PostgreSQL,
//! RFC 3339 text on SQLite).

use std::str::FromStr;
use std::time::Duration;

use seckill_engine::{Order, PromotionStats};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, Row, Sqlite, Transaction};

use super::dialect::Statement;
use super::error::SqlError;
use super::orders::{postgres_orders, sqlite_orders};
use super::queries;
use super::rows::ChunkRows;
use super::source::SINGLE_LANE;

static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// Every migration file, named once more so that cargo rebuilds the crate (and so re-embeds
/// the migrations above) when one changes: `sqlx::migrate!` alone is not tracked on stable
/// Rust. A new migration gets a line here; a unit test checks that none is missing.
/// Only the test reads it: its point is the file dependency.
#[cfg_attr(not(test), allow(dead_code))]
const MIGRATION_FILES: [(&str, &str); 10] = [
    (
        "postgres/0001_orders.sql",
        include_str!("../../migrations/postgres/0001_orders.sql"),
    ),
    (
        "postgres/0002_deployment.sql",
        include_str!("../../migrations/postgres/0002_deployment.sql"),
    ),
    (
        "postgres/0003_tokens_outstanding.sql",
        include_str!("../../migrations/postgres/0003_tokens_outstanding.sql"),
    ),
    (
        "postgres/0004_flusher_lanes.sql",
        include_str!("../../migrations/postgres/0004_flusher_lanes.sql"),
    ),
    (
        "postgres/0005_sale_report.sql",
        include_str!("../../migrations/postgres/0005_sale_report.sql"),
    ),
    (
        "sqlite/0001_orders.sql",
        include_str!("../../migrations/sqlite/0001_orders.sql"),
    ),
    (
        "sqlite/0002_deployment.sql",
        include_str!("../../migrations/sqlite/0002_deployment.sql"),
    ),
    (
        "sqlite/0003_tokens_outstanding.sql",
        include_str!("../../migrations/sqlite/0003_tokens_outstanding.sql"),
    ),
    (
        "sqlite/0004_flusher_lanes.sql",
        include_str!("../../migrations/sqlite/0004_flusher_lanes.sql"),
    ),
    (
        "sqlite/0005_sale_report.sql",
        include_str!("../../migrations/sqlite/0005_sale_report.sql"),
    ),
];

/// How long SQLite waits for another writer's lock before the attempt fails (and is retried
/// with backoff by the flusher).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// SQLite page cache of the flusher's connection (a negative `cache_size` is KiB).
const SQLITE_CACHE_KIB: u64 = 64 * 1024;
/// How much of the SQLite file is read through mmap instead of pread.
const SQLITE_MMAP_BYTES: u64 = 256 * 1024 * 1024;

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
            Database::Sqlite(open_sqlite(url, connect_timeout).await?)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Database::Postgres(open_postgres(url, postgres_schema, connect_timeout).await?)
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

    /// A transaction on either database.
    pub async fn begin(&self) -> Result<Tx, SqlError> {
        Ok(match self {
            Database::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
            Database::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// The sequence number up to which the tables hold `lane`. A lane above 0 seen for the
    /// first time gets its row here, at 0, so that the moves of [`Database::write_chunk`]
    /// always find one.
    pub async fn read_cursor(&self, lane: u32, now_ms: i64) -> Result<u64, SqlError> {
        let mut tx = self.begin().await?;
        if lane != SINGLE_LANE {
            tx.execute(&queries::add_lane(lane, now_ms)).await?;
        }
        let seq = tx
            .fetch_i64(&queries::read_cursor(lane))
            .await?
            .ok_or_else(|| {
                SqlError::Database(format!("the flusher cursor row of lane {lane} is missing"))
            })?;
        tx.commit().await?;
        u64::try_from(seq)
            .map_err(|_| SqlError::Database(format!("negative cursor {seq} of lane {lane}")))
    }

    /// Writes the rows of a chunk of `lane` and moves that lane's cursor from `cursor_from`
    /// to `cursor_to`, in one transaction. If the cursor is not at `cursor_from` (another
    /// flusher on the same database moved it) nothing is written and the answer is
    /// [`SqlError::CursorMoved`].
    ///
    /// With `deployment`, the tables must still be that deployment's (checked in the same
    /// transaction, so a deployment that took them over since the flusher started is seen
    /// before anything of ours lands beside its rows): [`SqlError::OtherDeployment`].
    pub async fn write_chunk(
        &self,
        rows: &ChunkRows,
        lane: u32,
        cursors: (u64, u64),
        deployment: Option<&str>,
        now_ms: i64,
    ) -> Result<(), SqlError> {
        let (cursor_from, cursor_to) = cursors;
        let mut tx = self.begin().await?;
        // The cursor first: on SQLite it takes the write lock, and it checks ownership
        // before any row is written.
        let moved = tx
            .execute(&queries::move_cursor(lane, cursor_from, cursor_to, now_ms))
            .await?;
        if let Some(ours) = deployment {
            let found = tx
                .fetch_text(&queries::read_deployment())
                .await?
                .unwrap_or_default();
            if found != ours {
                return Err(SqlError::OtherDeployment {
                    found,
                    ours: ours.to_owned(),
                });
            }
        }
        if moved != 1 {
            return Err(SqlError::CursorMoved {
                lane,
                expected: cursor_from,
            });
        }
        for change in &rows.promotions {
            tx.execute_all(&queries::promotion_change(change, now_ms))
                .await?;
        }
        tx.upsert_orders(&rows.orders).await?;
        tx.commit().await
    }

    /// Sets `lane`'s cursor, whatever it was (start-up, when the log is behind the tables).
    pub async fn reset_cursor(&self, lane: u32, seq: u64, now_ms: i64) -> Result<(), SqlError> {
        let mut tx = self.begin().await?;
        tx.execute(&queries::set_cursor(lane, seq, now_ms)).await?;
        tx.commit().await
    }

    /// Copies the engine's promotions and per-item stats, in one transaction.
    pub async fn write_stats(&self, all: &[PromotionStats], now_ms: i64) -> Result<(), SqlError> {
        let mut tx = self.begin().await?;
        for stats in all {
            tx.execute_all(&queries::promotion_stats(stats, now_ms))
                .await?;
        }
        tx.commit().await
    }

    pub async fn close(&self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }
}

/// The embedded database: one file, WAL mode, a commit on disk before it returns.
async fn open_sqlite(url: &str, connect_timeout: Duration) -> Result<SqlitePool, SqlError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| SqlError::InvalidUrl(e.to_string()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a commit is on disk before the journal is allowed to trim below the cursor
        // it carries.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        // The orders table and its indexes outgrow SQLite's default 2 MiB page cache within
        // a few thousand orders; every miss was then a pread of a page the kernel already
        // had. A larger cache and reads through mmap keep index inserts in memory (both are
        // bounds, not allocations up front).
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
    SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(connect_timeout)
        .connect_with(options)
        .await
        .map_err(|e| SqlError::Connect(e.to_string()))
}

/// PostgreSQL, in `schema` (created if missing) when one is given.
async fn open_postgres(
    url: &str,
    schema: Option<&str>,
    connect_timeout: Duration,
) -> Result<PgPool, SqlError> {
    let mut options =
        PgConnectOptions::from_str(url).map_err(|e| SqlError::InvalidUrl(e.to_string()))?;
    if let Some(schema) = schema {
        check_schema_name(schema)?;
        options = options.options([("search_path", schema)]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(connect_timeout)
        .connect_with(options)
        .await
        .map_err(|e| SqlError::Connect(e.to_string()))?;
    if let Some(schema) = schema {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&pool)
            .await?;
    }
    Ok(pool)
}

/// A transaction on either database; dropped without [`Tx::commit`], it rolls back.
pub(crate) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    /// Runs `statement`; returns the number of rows it changed.
    pub async fn execute(&mut self, statement: &Statement) -> Result<u64, SqlError> {
        let changed = match self {
            Tx::Sqlite(tx) => {
                let done = statement.sqlite().execute(&mut **tx).await?;
                done.rows_affected()
            }
            Tx::Postgres(tx) => {
                let sql = statement.postgres_sql();
                let done = statement.postgres(&sql).execute(&mut **tx).await?;
                done.rows_affected()
            }
        };
        Ok(changed)
    }

    async fn execute_all(&mut self, statements: &[Statement]) -> Result<(), SqlError> {
        for statement in statements {
            self.execute(statement).await?;
        }
        Ok(())
    }

    /// The first column of the first row of `statement`, as an integer.
    pub async fn fetch_i64(&mut self, statement: &Statement) -> Result<Option<i64>, SqlError> {
        let value = match self {
            Tx::Sqlite(tx) => {
                let row = statement.sqlite().fetch_optional(&mut **tx).await?;
                row.map(|row| row.try_get::<i64, _>(0_usize)).transpose()?
            }
            Tx::Postgres(tx) => {
                let sql = statement.postgres_sql();
                let row = statement.postgres(&sql).fetch_optional(&mut **tx).await?;
                row.map(|row| row.try_get::<i64, _>(0_usize)).transpose()?
            }
        };
        Ok(value)
    }

    /// The first column of the first row of `statement`, as text.
    pub async fn fetch_text(&mut self, statement: &Statement) -> Result<Option<String>, SqlError> {
        let value = match self {
            Tx::Sqlite(tx) => {
                let row = statement.sqlite().fetch_optional(&mut **tx).await?;
                row.map(|row| row.try_get::<String, _>(0_usize))
                    .transpose()?
            }
            Tx::Postgres(tx) => {
                let sql = statement.postgres_sql();
                let row = statement.postgres(&sql).fetch_optional(&mut **tx).await?;
                row.map(|row| row.try_get::<String, _>(0_usize))
                    .transpose()?
            }
        };
        Ok(value)
    }

    /// The one statement with a path per database: see `orders`.
    async fn upsert_orders(&mut self, orders: &[Order]) -> Result<(), SqlError> {
        match self {
            Tx::Sqlite(tx) => sqlite_orders(tx, orders).await,
            Tx::Postgres(tx) => postgres_orders(tx, orders).await,
        }
    }

    pub async fn commit(self) -> Result<(), SqlError> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
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
}
