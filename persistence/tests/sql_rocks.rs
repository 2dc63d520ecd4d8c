//! The flusher on the real journal: a sale on a RocksDB-journaled engine lands in SQLite
//! whole, the log is never trimmed past the flusher's cursor, and after a restart of both
//! (journal reopened, engine recovered) the flusher goes on from its cursor.

mod sql_common;

use std::time::Duration;

use seckill_engine::ManualClock;
use seckill_persistence::sql::Flusher;
use sql_common::*;

const GRACE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_on_the_rocks_journal_lands_in_sql_and_survives_a_restart() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb::sqlite();
    let clock = ManualClock::new(START_MS);

    let (engine, journal) = start_on_rocks(data_dir.path(), clock.clone());
    let flusher = Flusher::start(options(db.flusher_url()), journal.clone(), engine.clone())
        .await
        .expect("flusher starts");
    create_promotion(&engine).await;
    let mut ids = sell(&engine, 0, 1_000).await;
    clock.advance_ms(i64::from(PAYMENT_TIMEOUT_S) * 1_000 + 1);
    engine.tick().await.expect("expiries");
    ids.extend(sell(&engine, 1_000, 1_000).await);
    flusher.shutdown(GRACE).await.expect("drained");
    engine.shutdown().await.expect("engine stops");
    drop(engine);
    drop(journal);

    let (engine, journal) = start_on_rocks(data_dir.path(), clock.clone());
    ids.extend(sell(&engine, 2_000, 500).await);
    let flusher = Flusher::start(options(db.flusher_url()), journal.clone(), engine.clone())
        .await
        .expect("flusher starts again");
    ids.extend(sell(&engine, 2_500, 500).await);
    flusher.shutdown(GRACE).await.expect("drained");
    assert_tables_match(&db, &engine, &ids).await;
    assert_eq!(
        db.cursor().await as u64,
        seckill_engine::Journal::last_seq(&*journal)
    );
    engine.shutdown().await.expect("engine stops");
}

/// Snapshots let the journal trim its log, but never past what SQL holds: the flusher's
/// cursor is the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_never_trims_past_the_flusher_cursor() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut db = TestDb::sqlite();
    let clock = ManualClock::new(START_MS);
    let (engine, journal) = start_on_rocks(data_dir.path(), clock.clone());
    let flusher = Flusher::start(options(db.flusher_url()), journal.clone(), engine.clone())
        .await
        .expect("flusher starts");
    create_promotion(&engine).await;
    let mut ids = sell(&engine, 0, 1_000).await;
    engine.snapshot().await.expect("snapshot");

    // SQL stops taking rows: the snapshot below must not let the log lose them.
    db.begin_outage().await;
    ids.extend(sell(&engine, 1_000, 1_000).await);
    engine.snapshot().await.expect("snapshot");
    let cursor = flusher.status().cursor_seq;
    assert!(
        journal.trimmed_through() <= cursor,
        "trimmed through {} past the cursor {cursor}",
        journal.trimmed_through()
    );
    db.end_outage().await;
    flusher.shutdown(GRACE).await.expect("drained");
    assert_tables_match(&db, &engine, &ids).await;
    engine.shutdown().await.expect("engine stops");
}
