//! The journal refuses what would corrupt a data directory: a second writer, a directory
//! from a newer build, a directory it cannot write.

mod journal_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use seckill_engine::{Event, Journal, EVENT_VERSION};
use seckill_persistence::journal::{Durability, PersistenceError, RocksJournal, JOURNAL_DIR_NAME};

use journal_common::options;

fn stop_event(at_ms: i64) -> Event {
    Event::PromotionStopped {
        promotion_id: "p1".into(),
        at_ms,
    }
}

#[test]
fn a_locked_directory_is_refused_with_its_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, recovery) =
        RocksJournal::open(&options(dir.path(), Durability::Sync)).expect("first open");
    drop(recovery);

    let second = RocksJournal::open(&options(dir.path(), Durability::Sync));
    let error = second.expect_err("a second writer must be refused");
    assert_eq!(
        error,
        PersistenceError::Locked {
            path: dir.path().to_path_buf()
        }
    );
    assert!(error.to_string().contains("locked"), "{error}");

    // Once the holder is gone the directory opens again.
    drop(journal);
    let (reopened, _) =
        RocksJournal::open(&options(dir.path(), Durability::Sync)).expect("reopen after close");
    drop(reopened);
}

/// Every file under `root` with its bytes.
fn contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read file");
                files.insert(path, bytes);
            }
        }
    }
    files
}

#[test]
fn a_directory_from_a_newer_version_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, recovery) =
        RocksJournal::open(&options(dir.path(), Durability::Sync)).expect("open");
    drop(recovery);
    journal.append(&[stop_event(1)]).expect("append");
    drop(journal);

    // A newer build stamps its version (the key and encoding are the format's own).
    let newer = EVENT_VERSION + 1;
    {
        let db = rocksdb::DB::open_default(dir.path().join(JOURNAL_DIR_NAME)).expect("raw open");
        db.put(b"m:version", newer.to_be_bytes())
            .expect("stamp version");
    }
    let before = contents(dir.path());

    let error = RocksJournal::open(&options(dir.path(), Durability::Sync))
        .expect_err("a newer directory must be refused");
    assert_eq!(
        error,
        PersistenceError::NewerVersion {
            found: newer,
            supported: EVENT_VERSION
        }
    );
    assert!(error.to_string().contains("nothing was changed"), "{error}");
    assert_eq!(
        before,
        contents(dir.path()),
        "refusing a newer directory must not write to it"
    );
}

#[test]
fn a_data_directory_that_cannot_be_created_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write file");
    let data_dir = file.join("data");
    let error = RocksJournal::open(&options(&data_dir, Durability::Sync))
        .expect_err("a path under a file cannot be a data directory");
    match &error {
        PersistenceError::Io(message) => {
            assert!(
                message.contains("cannot create data directory"),
                "{message}"
            );
            assert!(
                message.contains(&data_dir.display().to_string()),
                "{message}"
            );
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn a_corrupt_log_entry_stops_recovery_with_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let (journal, recovery) =
            RocksJournal::open(&options(dir.path(), Durability::Sync)).expect("open");
        drop(recovery);
        for at_ms in 1..=3 {
            journal.append(&[stop_event(at_ms)]).expect("append");
        }
    }
    {
        let db = rocksdb::DB::open_default(dir.path().join(JOURNAL_DIR_NAME)).expect("raw open");
        let mut key = vec![b'l'];
        key.extend_from_slice(&2u64.to_be_bytes());
        db.put(key, [1u8, 0xff, 0xff, 0xff])
            .expect("corrupt entry 2");
    }
    let (_journal, recovery) =
        RocksJournal::open(&options(dir.path(), Durability::Sync)).expect("open");
    let results: Vec<_> = recovery.batches.collect();
    assert_eq!(
        results.len(),
        1,
        "the stream ends at the first error: {results:?}"
    );
    let error = results[0].as_ref().expect_err("entry 2 is corrupt");
    assert!(error.0.contains("corrupt log entry 2"), "{error}");
}

#[test]
fn async_mode_hands_the_flusher_only_what_an_fsync_covered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, recovery) =
        RocksJournal::open(&options(dir.path(), Durability::Async)).expect("open");
    drop(recovery);
    for at_ms in 1..=50 {
        let seq = journal.append(&[stop_event(at_ms)]).expect("append");
        assert_eq!(seq, at_ms as u64);
    }
    let before = journal.stats();
    assert_eq!(before.last_seq, 50);
    let visible = journal.read_batches(0, usize::MAX).expect("read");
    assert_eq!(visible.len() as u64, before.durable_seq.min(50));

    journal.flush();
    let after = journal.stats();
    assert_eq!(after.durable_seq, 50);
    let all = journal.read_batches(0, usize::MAX).expect("read");
    let seqs: Vec<u64> = all.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<u64>>());
    assert_eq!(all[9].1, vec![stop_event(10)]);
    assert_eq!(journal.read_batches(45, 3).expect("read").len(), 3);
}
