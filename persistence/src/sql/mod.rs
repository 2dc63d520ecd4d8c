//! The SQL flusher: keeps the tables `orders`, `promotions` and `promotion_items` of api.md
//! ("Orders in SQL") in step with the journal, on SQLite (embedded, the default) or
//! PostgreSQL.
//!
//! Input, state, output: the flusher reads the journal's batches after its cursor, turns them
//! into rows, and writes rows and the new cursor in one transaction, so the tables hold
//! exactly the log up to the cursor (a batch is applied once, or not at all). Then it lets
//! the journal trim up to that cursor, never past it. Purchases never wait for it: it runs on
//! its own task and only reads the log. A database that is down or slow makes it retry the
//! same chunk with capped exponential backoff while the lag grows in the metrics; once the
//! database is back it catches up from its cursor.
//!
//! Layout:
//! - `rows`: events to rows, pure (dedup of an order within a chunk, times as UTC).
//! - `db`: the two databases: connect, embedded migrations, upserts, cursor.
//! - `flusher`: the task: read, write, retry, stats refresh, metrics, shutdown drain.
//!
//! Metrics: `seckill_flusher_lag_events`, `seckill_flusher_lag_seconds` (gauges),
//! `seckill_flusher_rows_written_total`, `seckill_flusher_errors_total`,
//! `seckill_flusher_gaps_skipped_total` (counters), `seckill_flusher_cursor_seq` (gauge).

mod db;
mod flusher;
mod rows;

use std::path::Path;

use seckill_engine::{Event, Journal, MemoryJournal};

pub use flusher::{
    Flusher, FlusherHandle, FlusherOptions, FlusherStatus, DEFAULT_BACKOFF_MAX,
    DEFAULT_BACKOFF_MIN, DEFAULT_CONNECT_TIMEOUT, DEFAULT_GAP_WAIT, DEFAULT_POLL_INTERVAL,
    DEFAULT_READ_BATCHES_MAX, DEFAULT_STATS_INTERVAL, DEFAULT_TRANSACTION_EVENTS_MAX,
    DEFAULT_WRITE_TIMEOUT,
};
pub use rows::{ms_from_rfc3339, order_updated_at_ms};

/// What can go wrong between the flusher and its database.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    #[error("cannot reach the database: {0}")]
    Connect(String),
    #[error(
        "the database schema is newer than this build knows (migration {found} applied, this \
         build knows up to {supported}): run a newer seckill or use another database"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("database migration failed: {0}")]
    Migrate(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("the database did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error(
        "the flusher cursor is no longer at {expected}: another flusher writes to this database"
    )]
    CursorMoved { expected: u64 },
    #[error("cannot read the journal: {0}")]
    Source(String),
    #[error("shut down with the SQL tables behind the log (cursor {cursor_seq}, log {last_seq}); the rest is written at the next start")]
    NotDrained { cursor_seq: u64, last_seq: u64 },
    #[error("the flusher task failed: {0}")]
    Task(String),
}

impl From<sqlx::Error> for SqlError {
    fn from(error: sqlx::Error) -> Self {
        SqlError::Database(error.to_string())
    }
}

/// Where the flusher reads events: the journal, seen from the flusher's side.
///
/// The sequence numbers are the journal's: increasing, one per batch. The flusher only ever
/// moves its cursor over a contiguous run of them (a batch appended late by one shard must
/// not be skipped because another shard's later batch is already readable).
pub trait EventSource: Send + Sync + 'static {
    /// Up to `batches_max` batches with a sequence number above `after_seq`, in order.
    fn read_batches(
        &self,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError>;

    /// The highest sequence number appended so far (for the lag).
    fn last_seq(&self) -> u64;

    /// Everything up to `seq` is in SQL: the log may trim it, and must keep what follows.
    fn set_retain_floor(&self, seq: u64);
}

/// The in-memory journal keeps every batch and trims nothing, so the floor is ignored.
impl EventSource for MemoryJournal {
    fn read_batches(
        &self,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        Ok(self
            .batches()
            .into_iter()
            .filter(|(seq, _)| *seq > after_seq)
            .take(batches_max)
            .collect())
    }

    fn last_seq(&self) -> u64 {
        Journal::last_seq(self)
    }

    fn set_retain_floor(&self, _seq: u64) {}
}

/// The RocksDB journal: reads only fsync'd batches, in sequence order without holes, and
/// trims nothing past the floor.
impl EventSource for crate::journal::RocksJournal {
    fn read_batches(
        &self,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        crate::journal::RocksJournal::read_batches(self, after_seq, batches_max)
            .map_err(|e| SqlError::Source(e.to_string()))
    }

    fn last_seq(&self) -> u64 {
        Journal::last_seq(self)
    }

    fn set_retain_floor(&self, seq: u64) {
        crate::journal::RocksJournal::set_retain_floor(self, seq);
    }
}

/// Drops a PostgreSQL schema that [`FlusherOptions::postgres_schema`] created, with every
/// table in it. For tearing down benches and test runs; a server never calls it.
pub async fn drop_postgres_schema(database_url: &str, schema: &str) -> Result<(), SqlError> {
    db::drop_postgres_schema(database_url, schema).await
}

/// The default database of a server: the embedded SQLite file `orders.db` in its data
/// directory.
pub fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("orders.db").display())
}
