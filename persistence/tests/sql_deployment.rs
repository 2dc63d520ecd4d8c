//! The tables belong to one deployment: a flusher records its journal's deployment id at
//! its first start, goes on after a restart of the same data directory, and refuses, at
//! start and without writing anything, tables that another data directory's server wrote
//! (api.md, "Order identifiers"). Runs on SQLite always and on PostgreSQL when
//! `SECKILL_TEST_DATABASE_URL` is set.

mod sql_common;

use std::sync::Arc;
use std::time::Duration;

use seckill_engine::{Engine, Event, ManualClock, MemoryJournal};
use seckill_persistence::sql::{EventSource, Flusher, FlusherHandle, SqlError};
use sql_common::*;

const GRACE: Duration = Duration::from_secs(120);

async fn flusher(db: &TestDb, source: Arc<dyn EventSource>, engine: &Engine) -> FlusherHandle {
    Flusher::start(options(db.flusher_url()), source, engine.clone())
        .await
        .expect("flusher starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_written_by_another_data_directory_is_refused() {
    for db in databases("a_database_written_by_another_data_directory_is_refused").await {
        let clock = ManualClock::new(START_MS);
        let first_dir = tempfile::tempdir().expect("temp dir");
        let (engine, journal) = start_on_rocks(first_dir.path(), clock.clone());
        let first_id = journal.deployment_id().to_owned();
        let running = flusher(&db, journal.clone(), &engine).await;
        create_promotion(&engine).await;
        let mut ids = sell(&engine, 0, 100).await;
        running.shutdown(GRACE).await.expect("drained");
        assert_eq!(
            db.deployment_id().await,
            Some(first_id.clone()),
            "{}",
            db.kind()
        );
        let rows_before = db.orders().await;
        let cursor_before = db.cursor().await;
        engine.shutdown().await.expect("engine stops");
        drop(engine);
        drop(journal);

        // Another data directory is another deployment: its order ids may be the ones
        // already in the tables.
        let other_dir = tempfile::tempdir().expect("temp dir");
        let (other, other_journal) = start_on_rocks(other_dir.path(), clock.clone());
        let refused = Flusher::start(
            options(db.flusher_url()),
            other_journal.clone(),
            other.clone(),
        )
        .await;
        match refused {
            Err(error @ SqlError::OtherDeployment { .. }) => {
                let message = error.to_string();
                assert!(!message.contains('\n'), "one line: {message}");
                assert!(message.contains(&first_id), "{message}");
                assert!(message.contains(other_journal.deployment_id()), "{message}");
                assert!(message.contains("--database-url"), "{message}");
            }
            unexpected => panic!(
                "{}: expected OtherDeployment, got {unexpected:?}",
                db.kind()
            ),
        }
        assert_eq!(
            db.orders().await,
            rows_before,
            "{}: nothing written",
            db.kind()
        );
        assert_eq!(db.cursor().await, cursor_before, "{}", db.kind());
        assert_eq!(db.deployment_id().await, Some(first_id.clone()));
        other.shutdown().await.expect("engine stops");
        drop(other);
        drop(other_journal);

        // The data directory that wrote them goes on where it stopped.
        let (engine, journal) = start_on_rocks(first_dir.path(), clock.clone());
        let running = flusher(&db, journal.clone(), &engine).await;
        ids.extend(sell(&engine, 100, 50).await);
        running.shutdown(GRACE).await.expect("drained");
        assert_tables_match(&db, &engine, &ids).await;
        assert_eq!(db.deployment_id().await, Some(first_id));
        engine.shutdown().await.expect("engine stops");
        db.cleanup().await;
    }
}

/// A memory journal that names a deployment, as a RocksDB journal does.
struct Deployed {
    journal: Arc<MemoryJournal>,
    id: &'static str,
}

impl Deployed {
    fn new(journal: &Arc<MemoryJournal>, id: &'static str) -> Arc<Deployed> {
        Arc::new(Deployed {
            journal: journal.clone(),
            id,
        })
    }
}

impl EventSource for Deployed {
    fn lanes(&self) -> Vec<u32> {
        EventSource::lanes(&*self.journal)
    }

    fn read_batches(
        &self,
        lane: u32,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        EventSource::read_batches(&*self.journal, lane, after_seq, batches_max)
    }

    fn last_seq(&self, lane: u32) -> u64 {
        EventSource::last_seq(&*self.journal, lane)
    }

    fn set_retain_floor(&self, _lane: u32, _seq: u64) {}

    fn deployment_id(&self) -> Option<String> {
        Some(self.id.to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_that_hold_nothing_yet_go_to_whoever_comes_next() {
    for db in databases("tables_that_hold_nothing_yet_go_to_whoever_comes_next").await {
        let idle = TestEngine::fresh();
        let running = flusher(&db, Deployed::new(&idle.journal, "one"), &idle.engine).await;
        running.shutdown(GRACE).await.expect("nothing to drain");
        assert_eq!(db.deployment_id().await.as_deref(), Some("one"));

        let busy = TestEngine::fresh();
        let running = flusher(&db, Deployed::new(&busy.journal, "two"), &busy.engine).await;
        create_promotion(&busy.engine).await;
        let ids = sell(&busy.engine, 0, 50).await;
        running.shutdown(GRACE).await.expect("drained");
        assert_eq!(db.deployment_id().await.as_deref(), Some("two"));
        assert_tables_match(&db, &busy.engine, &ids).await;

        // Now they hold something of "two": "one" may not write there any more.
        let refused = Flusher::start(
            options(db.flusher_url()),
            Deployed::new(&idle.journal, "one"),
            idle.engine.clone(),
        )
        .await;
        assert!(
            matches!(&refused, Err(SqlError::OtherDeployment { found, ours })
                if found == "two" && ours == "one"),
            "{}: {refused:?}",
            db.kind()
        );
        idle.engine.shutdown().await.expect("engine stops");
        busy.engine.shutdown().await.expect("engine stops");
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_from_before_deployments_were_recorded_are_kept() {
    for db in databases("tables_from_before_deployments_were_recorded_are_kept").await {
        let test = TestEngine::fresh();
        // A log without a deployment id records none.
        let running = test.flusher(&db).await.expect("flusher starts");
        create_promotion(&test.engine).await;
        let mut ids = sell(&test.engine, 0, 50).await;
        running.shutdown(GRACE).await.expect("drained");
        assert_eq!(db.deployment_id().await, None, "{}", db.kind());

        let running = flusher(&db, Deployed::new(&test.journal, "one"), &test.engine).await;
        ids.extend(sell(&test.engine, 50, 50).await);
        running.shutdown(GRACE).await.expect("drained");
        assert_eq!(db.deployment_id().await.as_deref(), Some("one"));
        assert_tables_match(&db, &test.engine, &ids).await;
        test.engine.shutdown().await.expect("engine stops");
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_flusher_stops_writing_once_another_deployment_took_the_tables() {
    let test = "a_running_flusher_stops_writing_once_another_deployment_took_the_tables";
    for db in databases(test).await {
        let clock = ManualClock::new(START_MS);
        let dir = tempfile::tempdir().expect("temp dir");
        let (engine, journal) = start_on_rocks(dir.path(), clock.clone());
        let running = flusher(&db, journal.clone(), &engine).await;
        create_promotion(&engine).await;
        let sold = sell(&engine, 0, 10).await;
        let mut rows_before = db.orders().await;
        for _ in 0..600 {
            // Every order in SQL and nothing of the log left to write: the tables are
            // settled before the takeover below.
            if rows_before.len() == sold.len() && running.status().lag_events == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            rows_before = db.orders().await;
        }
        assert_eq!(
            rows_before.len(),
            sold.len(),
            "{}: the first orders reach SQL",
            db.kind()
        );
        // Another deployment claims the tables behind the running flusher's back.
        db.execute("UPDATE seckill_deployment SET deployment_id = 'another'")
            .await;
        sell(&engine, 10, 20).await;
        wait_until(|| running.status().errors_total > 0).await;
        assert_eq!(
            db.orders().await,
            rows_before,
            "{}: nothing more written",
            db.kind()
        );
        let _ = running.shutdown(Duration::from_secs(1)).await;
        engine.shutdown().await.expect("engine stops");
    }
}

/// Polls `done` until it holds, for at most a generous bound (a hang check, not a timing).
async fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the flusher never got there");
}
