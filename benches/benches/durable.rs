//! Durable purchases per second through the public API on the RocksDB journal and on the
//! JetStream journal, in one criterion group (same run, same machine, same load), and how
//! long a restart takes to recover a log of 1,000,000 orders (RocksDB).
//!
//! Run (`.ci/nats-cluster start DIR` starts such a cluster and prints its URLs):
//!
//! ```text
//! SECKILL_TEST_NATS_URLS=nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224 \
//!     cargo bench -p seckill-benches --bench durable
//! ```
//!
//! Without `SECKILL_TEST_NATS_URLS` it prints "jetstream: skipped (...)" and measures RocksDB
//! alone. The group `durable_purchases` measures `rocksdb-sync` (fsync'd before the answer),
//! `jetstream-r3` (16 partitions, 3 replicas: a quorum of NATS servers has the batch before
//! the answer; the streams get a random prefix and are deleted afterwards) and
//! `rocksdb-async` (for comparison: not durable on power loss). The load is what group
//! commit needs: `SECKILL_BENCH_CALLERS` (default 8,192) purchases in flight at once, each
//! by a new shopper, over 256 items, so that a shard's batch holds hundreds of purchases per
//! append. After the group it prints, for each journal, the accepted purchases per second over
//! criterion's measured samples, the purchases per append, RocksDB's fsyncs, and the ratio
//! jetstream-r3 / rocksdb-sync; then the recovery time of a log of
//! `SECKILL_BENCH_RECOVERY_ORDERS` (default 1,000,000) orders, from the log alone and from a
//! snapshot. `SECKILL_BENCH_SECONDS` (default 5) is criterion's measurement time for each
//! journal; a whole run takes about a minute and a half.

// The seckill binary runs on mimalloc: glibc malloc's cross-thread frees (tokio worker ->
// shard) would be part of the figure otherwise.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hash::BuildHasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::ServerAddr;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use seckill_benches::{
    create_live, engine_recovered, env_u64, one_unit, runtime, scratch_dir, unique, LivePromotion,
};
use seckill_engine::{
    ArchivedItem, Engine, EngineImage, Error, Event, Journal, JournalError, JournalResult, Order,
    PendingAppend, Recovery,
};
use seckill_persistence::jetstream::{all_lanes, ClusterOptions, JetStreamJournal, Names};
use seckill_persistence::journal::{Durability, JournalOptions, RocksJournal};
use tokio::runtime::Runtime;

/// Purchases in flight at once (`SECKILL_BENCH_CALLERS`): a storm keeps every shard's
/// mailbox full, so one append (one fsync, one quorum write) is shared by hundreds of
/// purchases, as in a real flash sale.
const CALLERS_DEFAULT: u64 = 8_192;
/// Items of the measured promotions: many, so that every JetStream partition gets its share.
const PURCHASE_ITEMS: usize = 256;
/// Items of the promotion whose orders the recovery log holds.
const RECOVERY_ITEMS: usize = 64;
/// Callers that write the recovery log (its speed is not what is measured there).
const RECOVERY_CALLERS: u64 = 512;
/// Criterion's samples per journal: its minimum, to keep a run short.
const SAMPLES: usize = 10;
const WARM_UP_S: u64 = 2;
const JETSTREAM_NAME: &str = "jetstream-r3";
const JETSTREAM_PARTITIONS: u32 = 16;
const JETSTREAM_REPLICAS: usize = 3;
/// How long opening the JetStream journal waits for leases another node holds (none should:
/// the prefix is new).
const JETSTREAM_LEASE_WAIT_S: u64 = 30;
/// Bound on deleting the run's streams afterwards.
const JETSTREAM_CLEANUP_S: u64 = 30;
/// Tries of one purchase answered `Overloaded` (a full mailbox: nothing done) before it
/// counts as failed.
const OVERLOADED_TRIES_MAX: u32 = 1_000;

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

/// A journal that counts the appends and events going through it: how many purchases share
/// one append is what group commit is about, and the JetStream journal keeps no such
/// counters of its own. Everything else goes to the journal unchanged.
struct Counted {
    inner: Arc<dyn Journal>,
    appends: AtomicU64,
    events: AtomicU64,
}

impl Counted {
    fn new(inner: Arc<dyn Journal>) -> Self {
        Counted {
            inner,
            appends: AtomicU64::new(0),
            events: AtomicU64::new(0),
        }
    }
}

impl Journal for Counted {
    fn append(&self, events: &[Event]) -> Result<u64, JournalError> {
        let seq = self.inner.append(events)?;
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(seq)
    }

    fn last_seq(&self) -> u64 {
        self.inner.last_seq()
    }

    fn pending_append(&self) -> PendingAppend {
        self.inner.pending_append()
    }

    fn save_snapshot(&self, image: &EngineImage) -> Result<(), JournalError> {
        self.inner.save_snapshot(image)
    }

    fn keeps_archive(&self) -> bool {
        self.inner.keeps_archive()
    }

    fn archive_item(&self, item: &ArchivedItem, orders: &[Order]) -> Result<(), JournalError> {
        self.inner.archive_item(item, orders)
    }

    fn archived_item(&self, key: u64) -> JournalResult<Option<ArchivedItem>> {
        self.inner.archived_item(key)
    }

    fn archived_order(&self, key: u64, order_seq: u64) -> JournalResult<Option<Order>> {
        self.inner.archived_order(key, order_seq)
    }

    fn archived_request(&self, key: u64, user: &str, request: &str) -> JournalResult<Option<u64>> {
        self.inner.archived_request(key, user, request)
    }
}

/// One purchase by a new shopper. `Overloaded` (a full mailbox: nothing was done) is tried
/// again, as a client backs off and retries; any other answer than a new order is a failure.
async fn buy(engine: &Engine, promotion_id: &str, sku: &str, user: &str) -> Result<(), String> {
    for _ in 0..OVERLOADED_TRIES_MAX {
        match engine
            .purchase(promotion_id, sku, user, one_unit("r"))
            .await
        {
            Ok(bought) if bought.created => return Ok(()),
            Ok(_) => return Err(format!("{user}'s first purchase found an existing order")),
            Err(Error::Overloaded) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(error) => return Err(error.to_string()),
        }
    }
    Err(format!("overloaded {OVERLOADED_TRIES_MAX} times in a row"))
}

/// `quota` purchases, one per ticket, each by a new shopper, spread over a promotion's items
/// by concurrent buyers that take tickets until none are left.
struct Round {
    engine: Engine,
    live: LivePromotion,
    /// Makes this round's shoppers differ from every other round's.
    run_tag: u64,
    quota: u64,
    tickets: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
    first_error: OnceLock<String>,
}

impl Round {
    fn new(engine: Engine, live: LivePromotion, quota: u64) -> Arc<Round> {
        Arc::new(Round {
            engine,
            live,
            run_tag: unique(),
            quota,
            tickets: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: OnceLock::new(),
        })
    }

    /// Runs the round with up to `callers` purchases in flight; the time it took.
    async fn run(self: Arc<Self>, callers: u64) -> Duration {
        let started = Instant::now();
        let buyers: Vec<_> = (0..callers.min(self.quota))
            .map(|_| tokio::spawn(Arc::clone(&self).buy_tickets()))
            .collect();
        for buyer in buyers {
            buyer.await.expect("buyer");
        }
        started.elapsed()
    }

    async fn buy_tickets(self: Arc<Self>) {
        loop {
            let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
            if ticket >= self.quota {
                return;
            }
            let user = format!("u{}-{ticket}", self.run_tag);
            let sku = &self.live.skus[(ticket % self.live.skus.len() as u64) as usize];
            match buy(&self.engine, &self.live.id, sku, &user).await {
                Ok(()) => {
                    self.accepted.fetch_add(1, Ordering::Relaxed);
                }
                Err(reason) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = self.first_error.set(reason);
                }
            }
        }
    }
}

/// Journal counters, read before and after a sample.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    appends: u64,
    events: u64,
    /// RocksDB's WAL fsyncs (0 for JetStream, whose servers sync on their own).
    fsyncs: u64,
    fsync_micros: u64,
}

impl Counters {
    fn since(self, before: Counters) -> Counters {
        Counters {
            appends: self.appends.saturating_sub(before.appends),
            events: self.events.saturating_sub(before.events),
            fsyncs: self.fsyncs.saturating_sub(before.fsyncs),
            fsync_micros: self.fsync_micros.saturating_sub(before.fsync_micros),
        }
    }

    fn plus(self, other: Counters) -> Counters {
        Counters {
            appends: self.appends + other.appends,
            events: self.events + other.events,
            fsyncs: self.fsyncs + other.fsyncs,
            fsync_micros: self.fsync_micros + other.fsync_micros,
        }
    }
}

/// What one criterion sample did (or several, added up).
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    accepted: u64,
    failed: u64,
    elapsed: Duration,
    counters: Counters,
}

impl Sample {
    fn plus(self, other: Sample) -> Sample {
        Sample {
            accepted: self.accepted + other.accepted,
            failed: self.failed + other.failed,
            elapsed: self.elapsed + other.elapsed,
            counters: self.counters.plus(other.counters),
        }
    }

    fn accepted_per_s(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// A journal in the group, open, with an engine and a live promotion on it.
struct Subject {
    name: String,
    engine: Engine,
    counted: Arc<Counted>,
    /// The RocksDB journal, for its fsync counters, when it is one.
    rocks: Option<Arc<RocksJournal>>,
    live: LivePromotion,
    samples: Vec<Sample>,
    first_error: Option<String>,
}

impl Subject {
    fn start(
        rt: &Runtime,
        name: String,
        journal: Arc<dyn Journal>,
        recovery: Recovery,
        rocks: Option<Arc<RocksJournal>>,
    ) -> Subject {
        let counted = Arc::new(Counted::new(journal));
        let engine = engine_recovered(counted.clone(), recovery);
        let live = rt.block_on(create_live(&engine, PURCHASE_ITEMS));
        Subject {
            name,
            engine,
            counted,
            rocks,
            live,
            samples: Vec::new(),
            first_error: None,
        }
    }

    fn counters(&self) -> Counters {
        let stats = self.rocks.as_ref().map(|rocks| rocks.stats());
        Counters {
            appends: self.counted.appends.load(Ordering::Relaxed),
            events: self.counted.events.load(Ordering::Relaxed),
            fsyncs: stats.map_or(0, |s| s.fsyncs_total),
            fsync_micros: stats.map_or(0, |s| s.fsync_micros_total),
        }
    }

    /// One criterion sample: `iters` purchases with up to `callers` in flight; their time.
    fn sample(&mut self, rt: &Runtime, callers: u64, iters: u64) -> Duration {
        let before = self.counters();
        let round = Round::new(self.engine.clone(), self.live.clone(), iters);
        let elapsed = rt.block_on(Arc::clone(&round).run(callers));
        if self.first_error.is_none() {
            self.first_error = round.first_error.get().cloned();
        }
        self.samples.push(Sample {
            accepted: round.accepted.load(Ordering::Relaxed),
            failed: round.failed.load(Ordering::Relaxed),
            elapsed,
            counters: self.counters().since(before),
        });
        elapsed
    }

    /// Stops the engine; what criterion's measured samples (its last `SAMPLES` calls; the
    /// warm-up's come first) add up to.
    fn finish(self, rt: &Runtime, notes: Vec<String>) -> Report {
        rt.block_on(self.engine.shutdown()).expect("shutdown");
        let measured_from = self.samples.len().saturating_sub(SAMPLES);
        Report::Measured(Measured {
            name: self.name,
            shards: self.engine.config().shards,
            total: self.samples[measured_from..]
                .iter()
                .copied()
                .reduce(Sample::plus),
            first_error: self.first_error,
            notes,
        })
    }
}

/// What the group found for one journal.
enum Report {
    /// Not measured; the line says why.
    Skipped(String),
    Measured(Measured),
}

struct Measured {
    name: String,
    shards: usize,
    /// `None` when criterion ran no sample (filtered out on its command line).
    total: Option<Sample>,
    first_error: Option<String>,
    notes: Vec<String>,
}

fn bench(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    subject: &mut Subject,
    callers: u64,
) {
    let name = subject.name.clone();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| subject.sample(rt, callers, iters))
    });
}

fn bench_rocks(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    durability: Durability,
    callers: u64,
) -> Report {
    let scratch = Scratch::new("purchases");
    let (journal, recovery) = open(&scratch.0, durability);
    let name = format!("rocksdb-{durability}");
    let rocks = Some(Arc::clone(&journal));
    let mut subject = Subject::start(rt, name, journal, recovery, rocks);
    bench(group, rt, &mut subject, callers);
    let notes = match durability {
        Durability::Sync => Vec::new(),
        Durability::Async => vec!["not durable on power loss: for comparison only".to_owned()],
    };
    subject.finish(rt, notes)
}

/// A random number without the rand crate (not a dependency of the benches): std's hasher
/// keys are random per process.
fn random_u64() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((nanos, std::process::id()))
}

/// The JetStream journal's options when `SECKILL_TEST_NATS_URLS` names servers: a prefix of
/// its own per run, so that runs and tests sharing the cluster never meet.
fn jetstream_options() -> Option<ClusterOptions> {
    let urls: Vec<String> = std::env::var("SECKILL_TEST_NATS_URLS")
        .ok()?
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return None;
    }
    Some(ClusterOptions {
        urls,
        node_id: "bench".into(),
        partitions: Some(JETSTREAM_PARTITIONS),
        replicas: JETSTREAM_REPLICAS,
        prefix: format!("B{:016X}", random_u64()),
        lease_wait: Some(Duration::from_secs(JETSTREAM_LEASE_WAIT_S)),
        ..ClusterOptions::default()
    })
}

fn bench_jetstream(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, callers: u64) -> Report {
    let Some(options) = jetstream_options() else {
        return Report::Skipped("jetstream: skipped (SECKILL_TEST_NATS_URLS not set)".into());
    };
    // Blocking, with a runtime of its own: called on this plain thread, outside `rt`.
    let (journal, recovery) = match JetStreamJournal::open(&options) {
        Ok(opened) => opened,
        Err(error) => return Report::Skipped(format!("jetstream: skipped (open failed: {error})")),
    };
    let partitions = journal.partitions();
    let notes = vec![format!(
        "{partitions} partitions, {} replicas, stream prefix {} (deleted after the run)",
        options.replicas, options.prefix
    )];
    let mut subject = Subject::start(rt, JETSTREAM_NAME.into(), journal.clone(), recovery, None);
    bench(group, rt, &mut subject, callers);
    let report = subject.finish(rt, notes);
    journal.shutdown();
    let cleanup_bound = Duration::from_secs(JETSTREAM_CLEANUP_S);
    // The timer is made inside the runtime: tokio's timers panic outside one.
    let cleaned = rt.block_on(async {
        let cleanup = delete_streams(&options.urls, &options.prefix, partitions);
        tokio::time::timeout(cleanup_bound, cleanup).await
    });
    if cleaned.is_err() {
        println!(
            "jetstream: the streams of prefix {} may be left on the cluster",
            options.prefix
        );
    }
    report
}

/// Deletes what the run created in NATS (its lanes' streams, and the streams behind its lease
/// and meta buckets and its snapshot store), so that runs do not pile up on the test
/// cluster's disks. Best effort: whatever is left behind only costs space.
async fn delete_streams(urls: &[String], prefix: &str, partitions: u32) {
    let servers: Vec<ServerAddr> = urls.iter().filter_map(|url| url.parse().ok()).collect();
    let Ok(client) = async_nats::connect(servers).await else {
        println!("jetstream: NATS unreachable; the streams of prefix {prefix} are left");
        return;
    };
    let js = async_nats::jetstream::new(client);
    let names = Names::new(prefix);
    // JetStream keeps a KV bucket in stream KV_<bucket>, an object store in OBJ_<bucket>.
    let streams = all_lanes(partitions)
        .into_iter()
        .map(|lane| names.stream(lane))
        .chain([
            format!("KV_{}", names.lease_bucket()),
            format!("KV_{}", names.meta_bucket()),
            format!("OBJ_{}", names.snapshot_bucket()),
        ]);
    for stream in streams {
        let _ = js.delete_stream(&stream).await;
    }
}

fn print_measured(measured: &Measured) {
    let Some(total) = measured.total else {
        println!("{}: not run", measured.name);
        return;
    };
    let Counters {
        appends,
        events,
        fsyncs,
        fsync_micros,
    } = total.counters;
    let per = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    let elapsed_s = total.elapsed.as_secs_f64();
    println!(
        "{}: {:.0} accepted/s ({} in {elapsed_s:.2} s, {} shards); {appends} appends, {:.1} purchases (events) per append; {} failed",
        measured.name,
        total.accepted_per_s(),
        total.accepted,
        measured.shards,
        per(events, appends),
        total.failed,
    );
    if fsyncs > 0 {
        println!(
            "  {fsyncs} fsyncs ({:.0}/s, {:.0} us avg); per fsync: {:.1} appends, {:.1} purchases (events)",
            fsyncs as f64 / elapsed_s.max(f64::MIN_POSITIVE),
            per(fsync_micros, fsyncs),
            per(appends, fsyncs),
            per(events, fsyncs),
        );
    }
    if let Some(error) = &measured.first_error {
        println!("  first failure: {error}");
    }
    for note in &measured.notes {
        println!("  {note}");
    }
}

fn print_summary(reports: &[Report], callers: u64) {
    println!();
    println!(
        "durable purchases, {callers} in flight over {PURCHASE_ITEMS} items, each by a new shopper; over criterion's {SAMPLES} measured samples of each journal:"
    );
    for report in reports {
        match report {
            Report::Skipped(line) => println!("{line}"),
            Report::Measured(measured) => print_measured(measured),
        }
    }
    let rate_of = |name: &str| {
        reports.iter().find_map(|report| match report {
            Report::Measured(m) if m.name == name => m.total.map(|t| t.accepted_per_s()),
            _ => None,
        })
    };
    match (rate_of(JETSTREAM_NAME), rate_of("rocksdb-sync")) {
        (Some(jetstream), Some(rocks)) if rocks > 0.0 => {
            println!("{JETSTREAM_NAME} / rocksdb-sync: {:.2}", jetstream / rocks);
        }
        _ => println!("{JETSTREAM_NAME} / rocksdb-sync: n/a (not both measured)"),
    }
}

fn recovery(rt: &Runtime, orders: u64) {
    let scratch = Scratch::new("recovery");
    // Writing the log is not what is measured: async durability fills it fastest.
    let (journal, recovery) = open(&scratch.0, Durability::Async);
    let engine = engine_recovered(journal.clone(), recovery);
    let started = Instant::now();
    let live = rt.block_on(create_live(&engine, RECOVERY_ITEMS));
    let round = Round::new(engine.clone(), live, orders);
    rt.block_on(Arc::clone(&round).run(RECOVERY_CALLERS));
    let accepted = round.accepted.load(Ordering::Relaxed);
    drop(round);
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

fn count_reserved(rt: &Runtime, engine: &Engine) -> u64 {
    rt.block_on(engine.list_promotion_stats())
        .expect("stats")
        .iter()
        .flat_map(|p| p.items.iter())
        .map(|i| i.reserved)
        .sum()
}

fn durable(c: &mut Criterion) {
    let seconds = env_u64("SECKILL_BENCH_SECONDS", 5).max(1);
    let callers = env_u64("SECKILL_BENCH_CALLERS", CALLERS_DEFAULT).max(1);
    let orders = env_u64("SECKILL_BENCH_RECOVERY_ORDERS", 1_000_000);
    let rt = runtime();
    let scratch = Scratch::new("fsync");
    println!(
        "disk: {:.0} fsyncs/s (64-byte write + fdatasync, one at a time)",
        raw_fsyncs_per_second(&scratch.0)
    );
    drop(scratch);

    let mut group = c.benchmark_group("durable_purchases");
    // Flat: every sample is the same number of purchases, each long enough (about
    // seconds / SAMPLES) that the start and the drain of a round weigh little.
    group
        .throughput(Throughput::Elements(1))
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(WARM_UP_S))
        .measurement_time(Duration::from_secs(seconds))
        .sampling_mode(SamplingMode::Flat);
    let reports = vec![
        bench_rocks(&mut group, &rt, Durability::Sync, callers),
        bench_jetstream(&mut group, &rt, callers),
        bench_rocks(&mut group, &rt, Durability::Async, callers),
    ];
    group.finish();
    print_summary(&reports, callers);

    recovery(&rt, orders);
}

criterion_group!(benches, durable);
criterion_main!(benches);
