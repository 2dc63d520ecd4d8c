//! A data directory's identity: its deployment id is made at the first open and kept, and
//! every open counts one more start (the epoch), durably, among the metadata that neither
//! snapshots nor trimming touch.

mod journal_common;

use seckill_engine::{Event, Journal};
use seckill_persistence::journal::{Durability, PersistenceError, RocksJournal, JOURNAL_DIR_NAME};

use journal_common::{open, options, spec, start};

fn stop_event(at_ms: i64) -> Event {
    Event::PromotionStopped {
        promotion_id: "p1".into(),
        at_ms,
    }
}

#[test]
fn the_epoch_grows_at_every_open_and_the_deployment_id_stays() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut epochs = Vec::new();
    let mut ids = Vec::new();
    let modes = [
        Durability::Sync,
        Durability::Async,
        Durability::Async,
        Durability::Sync,
    ];
    for (at_ms, durability) in (1..).zip(modes) {
        let (journal, recovery) = open(dir.path(), durability);
        assert_eq!(journal.epoch(), recovery.epoch);
        epochs.push(recovery.epoch);
        ids.push(journal.deployment_id().to_owned());
        drop(recovery);
        journal.append(&[stop_event(at_ms)]).expect("append");
        drop(journal);
    }
    assert_eq!(epochs, [1, 2, 3, 4]);
    let first = &ids[0];
    assert!(ids.iter().all(|id| id == first), "{ids:?}");
    assert_eq!(first.len(), 32, "{first}");
    assert!(
        first
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{first}"
    );
}

#[test]
fn two_data_directories_are_two_deployments() {
    let one = tempfile::tempdir().expect("temp dir");
    let other = tempfile::tempdir().expect("temp dir");
    let (first, first_recovery) = open(one.path(), Durability::Sync);
    let (second, second_recovery) = open(other.path(), Durability::Sync);
    assert_ne!(first.deployment_id(), second.deployment_id());
    assert_eq!((first_recovery.epoch, second_recovery.epoch), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_trimming_keep_the_identity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, recovery) = open(dir.path(), Durability::Sync);
    let first_epoch = recovery.epoch;
    let id = journal.deployment_id().to_owned();
    // Nothing holds the log back: the snapshot below lets all of it go.
    journal.set_retain_floor(u64::MAX);
    let engine = start(journal.clone(), recovery);
    engine
        .create_promotion(spec(engine.now_ms(), 10))
        .await
        .expect("create");
    let image = engine.snapshot().await.expect("snapshot");
    assert!(image.through_seq >= 1);
    assert_eq!(journal.trimmed_through(), image.through_seq);
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    drop(journal);

    let (journal, recovery) = open(dir.path(), Durability::Sync);
    assert!(recovery.image.is_some());
    assert_eq!(recovery.epoch, first_epoch + 1);
    assert_eq!(journal.deployment_id(), id);
}

#[test]
fn a_corrupt_deployment_id_is_an_error_not_a_new_identity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, recovery) = open(dir.path(), Durability::Sync);
    drop(recovery);
    drop(journal);
    {
        let db = rocksdb::DB::open_default(dir.path().join(JOURNAL_DIR_NAME)).expect("raw open");
        db.put(b"m:deployment", b"not hex").expect("corrupt the id");
    }
    let error = RocksJournal::open(&options(dir.path(), Durability::Sync))
        .expect_err("a corrupt id must be refused");
    match error {
        PersistenceError::Io(message) => {
            assert!(message.contains("corrupt deployment id"), "{message}");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}
