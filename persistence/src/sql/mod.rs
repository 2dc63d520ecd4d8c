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
//! A journal may be several independent logs, its lanes (the JetStream journal: the catalog
//! stream, then one per partition), each with its own sequence numbers and its own cursor,
//! read one after the other each round, the catalog first; RocksDB and the memory journal
//! are one lane, lane 0. `FlusherStatus` says what its position fields mean then.
//!
//! Layout (each module imports only modules above it in this list):
//! - `error`: [`SqlError`].
//! - `source`: [`EventSource`], the journal as the flusher reads it, in lanes.
//! - `rows`: events to rows, pure (dedup of an order within a chunk, times as UTC).
//! - `lane`: one lane's state in the flusher, pure: its cursor, the batches read ahead of it,
//!   a hole in its sequence numbers being waited for.
//! - `dialect`: the one seam between SQLite and PostgreSQL: a statement written once, with
//!   dialect-free values, run on either.
//! - `queries`: every statement but the orders upsert, each written once.
//! - `orders`: the orders upsert, once per database (`UNNEST` on PostgreSQL, multi-row
//!   `VALUES` on SQLite).
//! - `db`: the two databases: connect, embedded migrations, transactions, the cursors (lane
//!   0 in `flusher_cursor`, every other lane in `flusher_lane_cursor`).
//! - `deployment`: whose tables these are: the flusher records its log's deployment id and
//!   refuses, at start, tables that another deployment wrote.
//! - `report`: the sale report, read from the views of migration 0005.
//! - `flusher`: the task: rounds over the lanes (read, write, retry), stats refresh, metrics,
//!   shutdown drain.
//!
//! Metrics: `seckill_flusher_lag_events` (summed over the lanes), `seckill_flusher_lag_seconds`
//! (the oldest event not in SQL, over every lane), `seckill_flusher_lanes_behind` (gauges),
//! `seckill_flusher_rows_written_total`, `seckill_flusher_errors_total`,
//! `seckill_flusher_gaps_skipped_total` (counters), `seckill_flusher_cursor_seq` (a gauge per
//! lane, label `lane`).

mod db;
mod deployment;
mod dialect;
mod error;
mod flusher;
mod lane;
mod orders;
mod queries;
mod report;
mod rows;
mod source;

use std::path::Path;

pub use error::SqlError;
pub use flusher::{
    Flusher, FlusherHandle, FlusherOptions, FlusherReader, FlusherStatus, DEFAULT_BACKOFF_MAX,
    DEFAULT_BACKOFF_MIN, DEFAULT_CONNECT_TIMEOUT, DEFAULT_GAP_WAIT, DEFAULT_POLL_INTERVAL,
    DEFAULT_READ_BATCHES_MAX, DEFAULT_STATS_INTERVAL, DEFAULT_TRANSACTION_EVENTS_MAX,
    DEFAULT_WRITE_TIMEOUT,
};
pub use report::{MinuteTotals, SaleReport, StatusTotals, ORDER_STATUSES};
pub use rows::{ms_from_rfc3339, order_updated_at_ms};
pub use source::{EventSource, SINGLE_LANE};

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
