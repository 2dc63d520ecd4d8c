//! The database goes away in the middle of a sale: purchases go on, the flusher retries, a
//! restart of seckill during the outage loses nothing, and once the database is back the
//! tables converge to the engine with no row missing and none doubled. SQLite's outage is
//! its write lock held by another connection; PostgreSQL's is a proxy that closes its port
//! and every connection (runs when `SECKILL_TEST_DATABASE_URL` is set).

mod sql_common;

use std::time::Duration;

use seckill_persistence::sql::{Flusher, FlusherHandle, SqlError};
use sql_common::*;

const GRACE: Duration = Duration::from_secs(120);

/// Waits until the flusher has seen the outage and shows the lag it leaves. The bound only
/// keeps a broken build from hanging the test run; it is not a speed requirement.
async fn wait_for_visible_outage(flusher: &FlusherHandle, db: &TestDb) {
    for _ in 0..12_000 {
        let status = flusher.status();
        if status.errors_total > 0 && status.lag_events > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{}: the outage never showed in the status: {:?}",
        db.kind(),
        flusher.status()
    );
}

async fn outage_mid_sale(mut db: TestDb) {
    let first = TestEngine::fresh();
    let flusher = first.flusher(&db).await.expect("flusher starts");
    create_promotion(&first.engine).await;
    let mut ids = sell(&first.engine, 0, 1_000).await;

    db.begin_outage().await;
    // The sale goes on: every purchase, payment and cancel is answered (sell expects it).
    ids.extend(sell(&first.engine, 1_000, 1_000).await);
    wait_for_visible_outage(&flusher, &db).await;
    expire_pending(&first).await;
    let log_end = first.journal.batches().last().map_or(0, |b| b.0);
    let status = flusher.status();
    assert!(
        status.cursor_seq < log_end,
        "{}: {status:?} {log_end}",
        db.kind()
    );

    // seckill restarts while the database is still away: the flusher cannot drain...
    match flusher.shutdown(Duration::from_millis(500)).await {
        Err(SqlError::NotDrained { .. }) => {}
        other => panic!(
            "{}: expected NotDrained during the outage, got {other:?}",
            db.kind()
        ),
    }
    first.engine.shutdown().await.expect("engine stops");
    // ...and the engine comes back from the log and sells on.
    let second = TestEngine::start(first.journal.clone(), first.clock.clone());
    ids.extend(sell(&second.engine, 2_000, 1_000).await);

    db.end_outage().await;
    let flusher = second
        .flusher(&db)
        .await
        .expect("flusher starts once the database is back");
    ids.extend(sell(&second.engine, 3_000, 500).await);
    flusher
        .shutdown(GRACE)
        .await
        .expect("caught up and drained");

    assert_tables_match(&db, &second.engine, &ids).await;
    assert_eq!(
        db.cursor().await,
        second.journal.batches().last().map_or(0, |b| b.0 as i64),
        "{}: the cursor is at the log's end",
        db.kind()
    );
    second.engine.shutdown().await.expect("engine stops");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outage_mid_sale_converges() {
    outage_mid_sale(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_mid_sale_converges() {
    let Some(url) = postgres_url("postgres_outage_mid_sale_converges") else {
        return;
    };
    outage_mid_sale(TestDb::postgres(&url).await).await;
}

/// While PostgreSQL is away, a starting flusher is an error (the server exits 2 rather
/// than start half-working); once it is back, the same start succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_away_at_start_is_an_error() {
    let Some(url) = postgres_url("postgres_away_at_start_is_an_error") else {
        return;
    };
    let mut db = TestDb::postgres(&url).await;
    let test = TestEngine::fresh();
    db.begin_outage().await;
    let mut away = options(db.flusher_url());
    away.connect_timeout = Duration::from_secs(1);
    let error = Flusher::start(away, test.journal.clone(), test.engine.clone())
        .await
        .expect_err("database away");
    assert!(matches!(error, SqlError::Connect(_)), "{error:?}");
    db.end_outage().await;
    let flusher = test.flusher(&db).await.expect("database back");
    flusher.shutdown(GRACE).await.expect("nothing to drain");
    test.engine.shutdown().await.expect("engine stops");
    db.cleanup().await;
}
