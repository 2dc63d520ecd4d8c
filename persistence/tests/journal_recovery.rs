//! A restart on a RocksJournal rebuilds the engine exactly: from the log alone, from a
//! snapshot plus the log after it, and after the log behind a snapshot was trimmed.

mod journal_common;

use std::collections::BTreeMap;
use std::sync::Arc;

use seckill_engine::{
    Engine, EngineImage, MemoryJournal, Order, OrderStatus, PromotionStats, PurchaseRequest,
    Recovery,
};
use seckill_persistence::journal::{Durability, RocksJournal};

use journal_common::{open, spec, start, PROMOTION_ID};

/// Buys `count` orders from distinct users over the three items, concurrently, then pays
/// every third and cancels every third. Returns every order as last acknowledged.
async fn trade(engine: &Engine, round: &str, count: usize) -> BTreeMap<String, Order> {
    let mut tasks = Vec::new();
    for n in 0..count {
        let engine = engine.clone();
        let round = round.to_owned();
        tasks.push(tokio::spawn(async move {
            let sku = ["a", "b", "c"][n % 3];
            let user = format!("user-{round}-{n}");
            let request = PurchaseRequest {
                request_id: format!("req-{n}"),
                quantity: 1 + (n % 2) as u32,
                token: None,
            };
            let bought = engine
                .purchase(PROMOTION_ID, sku, &user, request)
                .await
                .expect("purchase accepted");
            assert!(bought.created);
            let order = bought.order;
            match (n / 3) % 3 {
                0 => engine
                    .pay(&order.order_id, &format!("pay-{round}-{n}"), None)
                    .await
                    .expect("pay"),
                1 => engine
                    .cancel(&order.order_id, Some(&user))
                    .await
                    .expect("cancel"),
                _ => order,
            }
        }));
    }
    let mut orders = BTreeMap::new();
    for task in tasks {
        let order = task.await.expect("task");
        orders.insert(order.order_id.clone(), order);
    }
    orders
}

async fn check_orders(engine: &Engine, acknowledged: &BTreeMap<String, Order>) {
    for (order_id, order) in acknowledged {
        let found = engine
            .order(order_id, None)
            .await
            .unwrap_or_else(|e| panic!("acknowledged order {order_id} lost: {e}"));
        assert_eq!(&found, order);
    }
}

/// The engine's state without what differs between two equal engines (the order of items
/// and promotions in the image, and the journal's sequence numbers).
async fn state(engine: &Engine) -> (PromotionStats, EngineImage) {
    let stats = engine.promotion_stats(PROMOTION_ID).await.expect("stats");
    let mut image = engine.snapshot().await.expect("image");
    image.items.sort_by_key(|item| item.key);
    image
        .promotions
        .sort_by(|a, b| a.record.id.cmp(&b.record.id));
    image.through_seq = 0;
    (stats, image)
}

fn log_only(journal: &RocksJournal, epoch: u64) -> Recovery {
    let batches = journal
        .read_batches(0, usize::MAX)
        .expect("read the whole log");
    Recovery {
        image: None,
        batches: Box::new(batches.into_iter().map(Ok)),
        epoch,
    }
}

async fn restart_keeps_every_acknowledged_order(durability: Durability) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, recovery) = open(dir.path(), durability);
    assert!(recovery.image.is_none());
    let engine = start(journal.clone(), recovery);
    engine
        .create_promotion(spec(engine.now_ms(), 10_000))
        .await
        .expect("create");
    let acknowledged = trade(&engine, "one", 300).await;
    let stats_before = engine.promotion_stats(PROMOTION_ID).await.expect("stats");
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    drop(journal);

    let (journal, recovery) = open(dir.path(), durability);
    let engine = start(journal.clone(), recovery);
    check_orders(&engine, &acknowledged).await;
    assert_eq!(
        engine.promotion_stats(PROMOTION_ID).await.expect("stats"),
        stats_before
    );
    let item = &stats_before.items[0];
    assert!(item.sold > 0 && item.reserved > 0 && item.remaining < item.stock);

    // And it goes on selling, with order ids that continue where the log left off.
    let more = trade(&engine, "two", 30).await;
    for order_id in more.keys() {
        assert!(
            !acknowledged.contains_key(order_id),
            "order id {order_id} reused"
        );
    }
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_acknowledged_order_in_sync_mode() {
    restart_keeps_every_acknowledged_order(Durability::Sync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_acknowledged_order_in_async_mode() {
    restart_keeps_every_acknowledged_order(Durability::Async).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_plus_the_log_after_it_rebuild_the_same_state_as_the_log_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, recovery) = open(dir.path(), Durability::Sync);
    // The rebuilt engines below each start in a later epoch, as a restart would (a
    // recovery in an epoch its log has seen is refused).
    let epoch = recovery.epoch + 1;
    let engine = start(journal.clone(), recovery);
    engine
        .create_promotion(spec(engine.now_ms(), 10_000))
        .await
        .expect("create");
    trade(&engine, "before", 200).await;
    let snapshot = engine.snapshot().await.expect("snapshot");
    trade(&engine, "after", 200).await;
    let (stats_before, image_before) = state(&engine).await;
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    drop(journal);

    let (journal, recovery) = open(dir.path(), Durability::Sync);
    // The latest snapshot is the one `state` just took; recovery from it would replay no
    // batch. Rebuild from the earlier one instead by replaying the batches after it.
    let latest = recovery.image.clone().expect("a snapshot is stored");
    assert!(latest.through_seq > snapshot.through_seq);
    drop(recovery);
    let after_first = journal
        .read_batches(snapshot.through_seq, usize::MAX)
        .expect("read the log after the first snapshot");
    assert!(!after_first.is_empty());
    let from_snapshot = start(
        MemoryJournal::new(),
        Recovery {
            image: Some(snapshot),
            batches: Box::new(after_first.into_iter().map(Ok)),
            epoch,
        },
    );
    let from_log = start(MemoryJournal::new(), log_only(&journal, epoch));
    let from_latest = start(
        MemoryJournal::new(),
        Recovery {
            image: Some(latest),
            batches: Box::new(std::iter::empty()),
            epoch,
        },
    );

    for engine in [&from_snapshot, &from_log, &from_latest] {
        let (stats, image) = state(engine).await;
        assert_eq!(stats, stats_before);
        assert_eq!(image, image_before);
        engine.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_what_recovery_and_the_flusher_still_need() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, recovery) = open(dir.path(), Durability::Sync);
    let engine = start(journal.clone(), recovery);
    engine
        .create_promotion(spec(engine.now_ms(), 10_000))
        .await
        .expect("create");
    trade(&engine, "one", 100).await;

    // Nothing is trimmed before the flusher has reported its cursor.
    engine.snapshot().await.expect("snapshot");
    assert_eq!(journal.trimmed_through(), 0);

    // The flusher's cursor holds the log back even behind a snapshot.
    journal.set_retain_floor(5);
    trade(&engine, "two", 100).await;
    let first = engine.snapshot().await.expect("snapshot");
    assert!(first.through_seq > 5);
    assert_eq!(journal.trimmed_through(), 5);
    assert!(
        journal.read_batches(4, 10).is_err(),
        "trimmed batches are gone"
    );
    let next = journal.read_batches(5, 1).expect("read after the cursor");
    assert_eq!(next[0].0, 6);

    // With the cursor past it, the snapshot is the limit.
    journal.set_retain_floor(u64::MAX);
    trade(&engine, "three", 100).await;
    let second = engine.snapshot().await.expect("snapshot");
    assert_eq!(journal.trimmed_through(), second.through_seq);
    trade(&engine, "four", 50).await;
    let (stats_before, image_before) = state(&engine).await;
    let last_seq = journal.stats().last_seq;
    engine.shutdown().await.expect("shutdown");
    drop(engine);
    drop(journal);

    let (journal, recovery) = open(dir.path(), Durability::Sync);
    assert!(recovery.image.is_some());
    let engine = start(journal.clone(), recovery);
    let (stats, image) = state(&engine).await;
    assert_eq!(stats, stats_before);
    assert_eq!(image, image_before);
    // Sequence numbers continue after the log, trimmed or not.
    assert_eq!(journal.stats().last_seq, last_seq);
    trade(&engine, "five", 10).await;
    assert!(journal.stats().last_seq > last_seq);
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_append_is_covered_by_an_fsync_in_sync_mode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, recovery) = open(dir.path(), Durability::Sync);
    let engine = start(journal.clone(), recovery);
    engine
        .create_promotion(spec(engine.now_ms(), 10_000))
        .await
        .expect("create");
    let orders = trade(&engine, "one", 300).await;
    let stats = journal.stats();
    assert_eq!(stats.durable_seq, stats.last_seq);
    assert_eq!(stats.appends_synced_total, stats.appends_total);
    assert_eq!(stats.events_synced_total, stats.events_total);
    assert!(stats.fsyncs_total >= 1 && stats.fsyncs_total <= stats.appends_total);
    // Batches read back for the flusher carry every order's latest state.
    let mut latest: BTreeMap<String, Order> = BTreeMap::new();
    for (_, events) in journal.read_batches(0, usize::MAX).expect("read") {
        for event in &events {
            if let Some(order) = event.order() {
                latest.insert(order.order_id.clone(), order.clone());
            }
        }
    }
    assert_eq!(latest, orders);
    assert!(latest.values().any(|o| o.status == OrderStatus::Paid));
    engine.shutdown().await.expect("shutdown");
    let _: Arc<RocksJournal> = journal;
}

/// A crash tore the last record of the WAL: recovery keeps everything before it and
/// nothing after. (The writer is a child process killed with SIGKILL, so that no clean
/// shutdown moves the WAL into a table file first.)
#[test]
fn a_torn_last_write_loses_only_that_write() {
    use std::io::BufRead;

    use seckill_engine::{Event, Journal};
    use seckill_persistence::journal::JOURNAL_DIR_NAME;

    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_journal-crash-child"))
        .arg("append")
        .arg(dir.path())
        .arg("100")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the writer");
    assert_eq!(line.trim(), "APPENDED 100");
    child.kill().expect("SIGKILL the writer");
    child.wait().expect("reap the writer");

    let wal = std::fs::read_dir(dir.path().join(JOURNAL_DIR_NAME))
        .expect("journal dir")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .max_by_key(|path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
        .expect("a WAL file");
    let length = std::fs::metadata(&wal).expect("WAL size").len();
    assert!(length > 100, "the batches are in the WAL ({length} bytes)");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open WAL");
    file.set_len(length - 10).expect("tear the last record");
    drop(file);

    let (journal, recovery) = open(dir.path(), Durability::Sync);
    let seqs: Vec<u64> = recovery
        .batches
        .map(|batch| batch.expect("what is left decodes").0)
        .collect();
    assert_eq!(seqs, (1..=99).collect::<Vec<u64>>());
    // The next append takes the torn batch's number: it was never acknowledged.
    let event = Event::PromotionStopped {
        promotion_id: PROMOTION_ID.into(),
        at_ms: 1_000,
    };
    assert_eq!(journal.append(&[event]).expect("append"), 100);
}
