//! The SQL flusher after a sale: the tables equal the engine, a replay changes nothing, and
//! bad databases are refused at start. Runs on SQLite always and on PostgreSQL when
//! `SECKILL_TEST_DATABASE_URL` is set.

mod sql_common;

use std::sync::Arc;
use std::time::Duration;

use seckill_engine::MemoryJournal;
use seckill_persistence::sql::{EventSource, Flusher, SqlError};
use sql_common::*;

/// Enough time for any drain in a test; the tests assert outcomes, not speed.
const GRACE: Duration = Duration::from_secs(120);

/// A sale of 3,000 orders: paid, cancelled, expired, and pending ones bought after the
/// expiry freed stock.
async fn sale(test: &TestEngine) -> Vec<String> {
    create_promotion(&test.engine).await;
    let mut ids = sell(&test.engine, 0, 2_000).await;
    expire_pending(test).await;
    ids.extend(sell(&test.engine, 2_000, 1_000).await);
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sale_the_tables_equal_the_engine() {
    for db in databases("after_a_sale_the_tables_equal_the_engine").await {
        let test = TestEngine::fresh();
        let source: Arc<dyn EventSource> = test.journal.clone();
        let flusher = Flusher::start(options(db.flusher_url()), source, test.engine.clone())
            .await
            .expect("flusher starts");
        let ids = sale(&test).await;
        flusher.shutdown(GRACE).await.expect("drained");

        assert_tables_match(&db, &test.engine, &ids).await;
        let statuses: std::collections::BTreeSet<String> = db
            .orders()
            .await
            .into_iter()
            .map(|row| row.status)
            .collect();
        assert_eq!(
            statuses.into_iter().collect::<Vec<_>>(),
            ["cancelled", "expired", "paid", "pending_payment"],
            "{}: the sale left orders in every status",
            db.kind()
        );
        assert_eq!(
            db.cursor().await,
            test.journal.batches().last().map_or(0, |b| b.0 as i64)
        );
        test.engine.shutdown().await.expect("engine stops");
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_whole_log_changes_nothing() {
    for db in databases("replaying_the_whole_log_changes_nothing").await {
        let test = TestEngine::fresh();
        let flusher = test.flusher(&db).await.expect("flusher starts");
        let ids = sale(&test).await;
        flusher.shutdown(GRACE).await.expect("drained");
        let before = db.orders().await;

        // As if the cursor had been lost: every event is applied a second time, including
        // each order's pending_payment event after its paid/cancelled/expired one.
        db.execute("UPDATE flusher_cursor SET seq = 0 WHERE id = 1")
            .await;
        let flusher = test.flusher(&db).await.expect("flusher starts again");
        flusher.shutdown(GRACE).await.expect("drained again");

        assert_eq!(
            db.orders().await,
            before,
            "{}: replay changed rows",
            db.kind()
        );
        assert_tables_match(&db, &test.engine, &ids).await;
        test.engine.shutdown().await.expect("engine stops");
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_a_newer_schema_is_refused() {
    for db in databases("a_database_with_a_newer_schema_is_refused").await {
        let test = TestEngine::fresh();
        let flusher = test.flusher(&db).await.expect("flusher starts");
        flusher.shutdown(GRACE).await.expect("nothing to drain");
        // A migration that a later build applied.
        let checksum = match db.kind() {
            "sqlite" => "X'00'",
            _ => "'\\x00'::bytea",
        };
        db.execute(&format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (99990101000000, 'from a newer seckill', TRUE, {checksum}, 0)"
        ))
        .await;

        let refused = test.flusher(&db).await;
        match refused {
            Err(error @ SqlError::NewerSchema { found, .. }) => {
                assert_eq!(found, 99_990_101_000_000);
                assert!(error.to_string().contains("newer"), "{error}");
            }
            other => panic!("{}: expected NewerSchema, got {other:?}", db.kind()),
        }
        test.engine.shutdown().await.expect("engine stops");
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_bad_database_is_an_error_at_start() {
    let test = TestEngine::fresh();
    let journal: Arc<MemoryJournal> = test.journal.clone();
    let mut unreachable = options("postgres://postgres@127.0.0.1:1/test".into());
    unreachable.connect_timeout = Duration::from_secs(1);
    let error = Flusher::start(unreachable, journal.clone(), test.engine.clone())
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(error, SqlError::Connect(_)), "{error:?}");

    let error = Flusher::start(options("mysql://x/y".into()), journal, test.engine.clone())
        .await
        .expect_err("not a supported database");
    assert!(matches!(error, SqlError::InvalidUrl(_)), "{error:?}");
    test.engine.shutdown().await.expect("engine stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_file_is_created_in_wal_mode() {
    let db = TestDb::sqlite();
    let test = TestEngine::fresh();
    let flusher = test.flusher(&db).await.expect("flusher starts");
    flusher.shutdown(GRACE).await.expect("nothing to drain");
    let path = db.flusher_url().trim_start_matches("sqlite://").to_owned();
    assert!(std::path::Path::new(&path).exists(), "{path} created");
    let url = db.flusher_url();
    let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("open");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut connection)
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    test.engine.shutdown().await.expect("engine stops");
}
