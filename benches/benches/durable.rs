//! Durable purchases per second through the public API on a RocksJournal, and how long a
//! restart takes to recover a log of 1,000,000 orders.
//!
//! Run: `cargo bench -p seckill-benches --bench durable`. Prints, for durability sync (and
//! async for comparison): accepted purchases per second, fsyncs per second, and the average
//! appends and requests (events) that shared one fsync; then the recovery time of a log of
//! `SECKILL_BENCH_RECOVERY_ORDERS` (default 1,000,000) orders, from the log alone and from a
//! snapshot. `SECKILL_BENCH_SECONDS` (default 5) sets the length of the purchase runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill_benches::{create_live, engine_recovered, env_u64, one_unit, runtime, scratch_dir};
use seckill_engine::{Engine, Recovery};
use seckill_persistence::journal::{Durability, JournalOptions, RocksJournal};

/// Concurrent callers: a storm keeps every shard's mailbox full, so batches (and fsyncs)
/// are shared by many requests, as in a real flash sale.
const CALLERS: u64 = 4_096;
const ITEMS: usize = 64;

/// A scratch directory under the system temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        Scratch(scratch_dir(name))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn open(dir: &Path, durability: Durability) -> (Arc<RocksJournal>, Recovery) {
    RocksJournal::open(&JournalOptions {
        data_dir: dir.to_path_buf(),
        durability,
        ..JournalOptions::default()
    })
    .expect("journal opens")
}

/// What the disk alone does: write 64 bytes and fdatasync, in a loop, for one second.
fn raw_fsyncs_per_second(dir: &Path) -> f64 {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("probe file");
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        file.write_all(&[7u8; 64]).expect("write");
        file.sync_data().expect("fdatasync");
        count += 1;
    }
    let _ = std::fs::remove_file(&path);
    count as f64 / started.elapsed().as_secs_f64()
}

/// Buys with `callers` tasks, each a stream of distinct users, until `stop` (or `quota`
/// purchases in all). Returns the accepted count.
async fn storm(engine: &Engine, callers: u64, quota: u64, run_for: Option<Duration>) -> u64 {
    let live = create_live(engine, ITEMS).await;
    let promotion_id = live.id;
    let skus = Arc::new(live.skus);
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(callers as usize);
    for caller in 0..callers {
        let engine = engine.clone();
        let promotion_id = promotion_id.clone();
        let skus = Arc::clone(&skus);
        let (stop, issued, accepted) = (stop.clone(), issued.clone(), accepted.clone());
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && issued.fetch_add(1, Ordering::Relaxed) < quota {
                let user = format!("u{caller}-{n}");
                let sku = &skus[(n as usize + caller as usize) % skus.len()];
                match engine
                    .purchase(&promotion_id, sku, &user, one_unit("r"))
                    .await
                {
                    Ok(bought) if bought.created => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    // Overloaded: a full mailbox; a real client backs off and retries.
                    Err(_) => tokio::task::yield_now().await,
                }
                n += 1;
            }
        }));
    }
    if let Some(run_for) = run_for {
        tokio::time::sleep(run_for).await;
        stop.store(true, Ordering::Relaxed);
    }
    for handle in handles {
        handle.await.expect("caller");
    }
    accepted.load(Ordering::Relaxed)
}

fn durable_purchases(rt: &tokio::runtime::Runtime, durability: Durability, seconds: u64) {
    let scratch = Scratch::new("purchases");
    let (journal, recovery) = open(&scratch.0, durability);
    let engine = engine_recovered(journal.clone(), recovery);
    let before = journal.stats();
    let started = Instant::now();
    let accepted = rt.block_on(storm(
        &engine,
        CALLERS,
        u64::MAX,
        Some(Duration::from_secs(seconds)),
    ));
    let elapsed_s = started.elapsed().as_secs_f64();
    let after = journal.stats();
    rt.block_on(engine.shutdown()).expect("shutdown");
    let fsyncs = after.fsyncs_total - before.fsyncs_total;
    let appends = after.appends_total - before.appends_total;
    let events = after.events_total - before.events_total;
    let per_fsync = |n: u64| {
        if fsyncs == 0 {
            0.0
        } else {
            n as f64 / fsyncs as f64
        }
    };
    let fsync_us = if fsyncs == 0 {
        0.0
    } else {
        (after.fsync_micros_total - before.fsync_micros_total) as f64 / fsyncs as f64
    };
    println!(
        "durable purchases ({durability}): {:.0} accepted/s ({accepted} in {elapsed_s:.2} s, {CALLERS} callers, {} shards)",
        accepted as f64 / elapsed_s,
        engine.config().shards,
    );
    println!(
        "  {fsyncs} fsyncs ({:.0}/s, {fsync_us:.0} us avg), {appends} appends, {events} events; per fsync: {:.1} appends, {:.1} requests (events)",
        fsyncs as f64 / elapsed_s,
        per_fsync(appends),
        per_fsync(events),
    );
}

fn recovery(rt: &tokio::runtime::Runtime, orders: u64) {
    let scratch = Scratch::new("recovery");
    // Writing the log is not what is measured: async durability fills it fastest.
    let (journal, recovery) = open(&scratch.0, Durability::Async);
    let engine = engine_recovered(journal.clone(), recovery);
    let started = Instant::now();
    let accepted = rt.block_on(storm(&engine, 512, orders, None));
    let batches = journal.stats().last_seq;
    rt.block_on(engine.shutdown()).expect("shutdown");
    drop(engine);
    drop(journal);
    println!(
        "recovery: wrote {accepted} orders in {batches} batches in {:.1} s; journal {:.0} MiB",
        started.elapsed().as_secs_f64(),
        dir_bytes(&scratch.0) as f64 / (1 << 20) as f64
    );

    // The journal's share of a restart: open, read and decode every batch, apply nothing.
    let started = Instant::now();
    let (journal, recovery) = open(&scratch.0, Durability::Sync);
    let events: usize = recovery
        .batches
        .map(|batch| batch.expect("batch decodes").1.len())
        .sum();
    println!(
        "recovery, journal only: {:.2} s to read and decode {events} events",
        started.elapsed().as_secs_f64()
    );
    drop(journal);

    let started = Instant::now();
    let (journal, recovery) = open(&scratch.0, Durability::Sync);
    let opened_s = started.elapsed().as_secs_f64();
    let engine = engine_recovered(journal.clone(), recovery);
    let total_s = started.elapsed().as_secs_f64();
    let reserved = count_reserved(rt, &engine);
    assert_eq!(reserved, accepted, "recovery lost orders");
    println!(
        "recovery from the log alone: {total_s:.2} s for {reserved} orders (open {opened_s:.2} s, replay {:.2} s)",
        total_s - opened_s
    );

    let started = Instant::now();
    let snapshot = rt.block_on(engine.snapshot());
    let snapshot_s = started.elapsed().as_secs_f64();
    rt.block_on(engine.shutdown()).expect("shutdown");
    drop(engine);
    drop(journal);
    if let Err(error) = snapshot {
        // The figures above stand on their own; say why the last one is missing.
        println!("snapshot of {reserved} orders failed: {error}");
        return;
    }
    println!("snapshot of {reserved} orders: {snapshot_s:.2} s");

    let started = Instant::now();
    let (journal, recovery) = open(&scratch.0, Durability::Sync);
    let opened_s = started.elapsed().as_secs_f64();
    let engine = engine_recovered(journal.clone(), recovery);
    let total_s = started.elapsed().as_secs_f64();
    assert_eq!(
        count_reserved(rt, &engine),
        accepted,
        "snapshot lost orders"
    );
    println!(
        "recovery from a snapshot: {total_s:.2} s for {accepted} orders (open and read {opened_s:.2} s, rebuild {:.2} s)",
        total_s - opened_s
    );
    rt.block_on(engine.shutdown()).expect("shutdown");
}

fn count_reserved(rt: &tokio::runtime::Runtime, engine: &Engine) -> u64 {
    rt.block_on(engine.list_promotion_stats())
        .expect("stats")
        .iter()
        .flat_map(|p| p.items.iter())
        .map(|i| i.reserved)
        .sum()
}

fn main() {
    let seconds = env_u64("SECKILL_BENCH_SECONDS", 5);
    let orders = env_u64("SECKILL_BENCH_RECOVERY_ORDERS", 1_000_000);
    let rt = runtime();
    let scratch = Scratch::new("fsync");
    println!(
        "disk: {:.0} fsyncs/s (64-byte write + fdatasync, one at a time)",
        raw_fsyncs_per_second(&scratch.0)
    );
    durable_purchases(&rt, Durability::Sync, seconds);
    durable_purchases(&rt, Durability::Async, seconds);
    recovery(&rt, orders);
}
