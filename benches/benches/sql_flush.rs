//! Order rows per second that the SQL flusher writes into SQLite and PostgreSQL, and its lag
//! behind a sale that accepts 10,000 orders per second.
//!
//! The sale runs twice: on a log in memory (the flusher alone) and on the RocksDB journal in
//! sync mode (as a server runs).
//!
//! Run: `cargo bench -p seckill-benches --bench sql_flush`; the PostgreSQL half runs when
//! `SECKILL_TEST_DATABASE_URL` is set (e.g. `postgres://postgres@127.0.0.1:5432/test`), in a
//! schema of its own that it drops at the end. `SECKILL_BENCH_SQL_ROWS` (default 200,000)
//! sets the rows of the throughput runs, `SECKILL_BENCH_SECONDS` (default 10) the length of
//! the sale. Targets on the 2-core dev machine: 20,000 rows/s into PostgreSQL, 50,000 into
//! SQLite, lag under 5 s during the sale.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use seckill_benches::{
    create_live, engine, env_u64, one_unit, runtime, scratch_dir, scratch_path, unique,
};
use seckill_engine::{Event, Journal, JournalError, MemoryJournal, Order, OrderStatus};
use seckill_persistence::journal::{Durability, JournalOptions, RocksJournal};
use seckill_persistence::sql::{
    drop_postgres_schema, EventSource, Flusher, FlusherHandle, FlusherOptions, SqlError,
    SINGLE_LANE,
};
use tokio::task::JoinSet;

/// Events per journal batch in the throughput runs: about what a busy shard decides at once.
const EVENTS_PER_BATCH: usize = 512;
const SALE_ORDERS_PER_SECOND: u64 = 10_000;
const SALE_ITEMS: usize = 16;

const POISONED: &str = "tee log poisoned";

/// A journal in memory that is also the flusher's source, and forgets what the flusher has
/// committed (a `MemoryJournal` keeps and copies everything, which would measure itself).
/// Batches in log order.
type Batches = VecDeque<(u64, Vec<Event>)>;

#[derive(Debug, Default)]
struct TeeLog {
    batches: Mutex<Batches>,
    last_seq: AtomicU64,
}

impl TeeLog {
    /// The batches the flusher has not committed yet; None once a panic poisoned the lock.
    fn batches(&self) -> Option<MutexGuard<'_, Batches>> {
        self.batches.lock().ok()
    }

    /// Keeps `events` as the next batch and returns its sequence number (numbered under the
    /// lock, so the kept order is the sequence order).
    fn push(&self, events: &[Event]) -> Option<u64> {
        let mut batches = self.batches()?;
        let seq = self.last_seq.fetch_add(1, Ordering::SeqCst) + 1;
        batches.push_back((seq, events.to_vec()));
        Some(seq)
    }
}

impl Journal for TeeLog {
    fn append(&self, events: &[Event]) -> Result<u64, JournalError> {
        self.push(events)
            .ok_or_else(|| JournalError(POISONED.into()))
    }

    fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::SeqCst)
    }
}

/// One log, so one lane: lane 0.
impl EventSource for TeeLog {
    fn lanes(&self) -> Vec<u32> {
        vec![SINGLE_LANE]
    }

    fn read_batches(
        &self,
        lane: u32,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        if lane != SINGLE_LANE {
            return Ok(Vec::new());
        }
        let batches = self
            .batches()
            .ok_or_else(|| SqlError::Source(POISONED.into()))?;
        let from = batches.partition_point(|(seq, _)| *seq <= after_seq);
        Ok(batches.range(from..).take(batches_max).cloned().collect())
    }

    fn last_seq(&self, lane: u32) -> u64 {
        if lane == SINGLE_LANE {
            self.last_seq.load(Ordering::SeqCst)
        } else {
            0
        }
    }

    fn set_retain_floor(&self, lane: u32, seq: u64) {
        if lane != SINGLE_LANE {
            return;
        }
        if let Some(mut batches) = self.batches() {
            while batches.front().is_some_and(|(s, _)| *s <= seq) {
                batches.pop_front();
            }
        }
    }
}

/// A database to bench against, and how to clean it up.
struct Target {
    name: &'static str,
    url: String,
    postgres_schema: Option<String>,
    scratch: Option<PathBuf>,
}

impl Target {
    fn options(&self) -> FlusherOptions {
        FlusherOptions {
            database_url: self.url.clone(),
            postgres_schema: self.postgres_schema.clone(),
            poll_interval: Duration::from_millis(10),
            ..FlusherOptions::default()
        }
    }

    async fn cleanup(&self) {
        if let Some(schema) = &self.postgres_schema {
            if let Err(error) = drop_postgres_schema(&self.url, schema).await {
                eprintln!("could not drop schema {schema}: {error}");
            }
        }
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn targets(label: &str) -> Vec<Target> {
    let dir = scratch_dir(&format!("sql-{label}"));
    let mut all = vec![Target {
        name: "sqlite",
        url: seckill_persistence::sql::default_database_url(&dir),
        postgres_schema: None,
        scratch: Some(dir),
    }];
    match std::env::var("SECKILL_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => all.push(Target {
            name: "postgres",
            url,
            postgres_schema: Some(format!(
                "seckill_bench_{label}_{}_{}",
                std::process::id(),
                unique()
            )),
            scratch: None,
        }),
        _ => println!("sql_flush {label} on PostgreSQL skipped: SECKILL_TEST_DATABASE_URL unset"),
    }
    all
}

fn order(run: u64, index: u64, status: OrderStatus) -> Order {
    let created_at_ms = 1_762_819_200_000 + index as i64;
    Order {
        order_id: format!("{run:016x}-{index}"),
        promotion_id: "bench".into(),
        sku: format!("sku-{}", index % 64),
        user_id: format!("user-{index}"),
        request_id: format!("r-{index}"),
        quantity: 1,
        price_cents: 1_999,
        amount_cents: 1_999,
        status,
        created_at_ms,
        pay_before_ms: created_at_ms + 900_000,
        paid_at_ms: (status == OrderStatus::Paid).then_some(created_at_ms + 1_000),
        payment_ref: (status == OrderStatus::Paid).then(|| format!("pay-{index}")),
        closed_at_ms: None,
    }
}

/// Appends `rows` events (placed or paid orders) in batches.
fn append_orders(log: &TeeLog, run: u64, rows: u64, status: OrderStatus) {
    let mut batch = Vec::with_capacity(EVENTS_PER_BATCH);
    for index in 0..rows {
        let order = order(run, index, status);
        batch.push(match status {
            OrderStatus::Paid => Event::OrderPaid {
                item_key: 1,
                order_seq: index,
                order,
            },
            _ => Event::OrderPlaced {
                item_key: 1,
                order_seq: index,
                order,
                token: None,
            },
        });
        if batch.len() == EVENTS_PER_BATCH {
            log.append(&batch).expect("append");
            batch.clear();
        }
    }
    if !batch.is_empty() {
        log.append(&batch).expect("append");
    }
}

async fn wait_caught_up(flusher: &FlusherHandle, log: &TeeLog) {
    let target = Journal::last_seq(log);
    while flusher.status().cursor_seq < target {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Rows per second for fresh inserts, then for updates (every order paid).
async fn throughput(target: &Target, rows: u64) {
    let log = Arc::new(TeeLog::default());
    let stats_engine = engine(MemoryJournal::discarding());
    let run = unique() ^ u64::from(std::process::id()) << 32;
    append_orders(&log, run, rows, OrderStatus::PendingPayment);
    let flusher = Flusher::start(target.options(), log.clone(), stats_engine.clone())
        .await
        .expect("flusher starts");
    let started = Instant::now();
    wait_caught_up(&flusher, &log).await;
    let insert_s = started.elapsed().as_secs_f64();

    append_orders(&log, run, rows, OrderStatus::Paid);
    let started = Instant::now();
    wait_caught_up(&flusher, &log).await;
    let update_s = started.elapsed().as_secs_f64();
    flusher
        .shutdown(Duration::from_secs(30))
        .await
        .expect("drained");
    stats_engine.shutdown().await.expect("engine stops");
    println!(
        "sql_flush {:<8} insert: {rows} rows in {insert_s:.2} s = {:.0} rows/s; \
         update to paid: {:.0} rows/s",
        target.name,
        rows as f64 / insert_s,
        rows as f64 / update_s,
    );
}

/// The log a sale runs on: in memory (the flusher alone), or the RocksDB journal with
/// fsync'd appends (what a server runs).
#[derive(Debug, Clone, Copy)]
enum SaleLog {
    Memory,
    Rocks,
}

/// A sale paced at 10,000 orders/s on a real engine; prints the flusher's worst lag.
async fn sale_lag(target: &Target, seconds: u64, kind: SaleLog) {
    let journal_dir = scratch_path("sql-journal");
    let (journal, source): (Arc<dyn Journal>, Arc<dyn EventSource>) = match kind {
        SaleLog::Memory => {
            let log = Arc::new(TeeLog::default());
            (log.clone(), log)
        }
        SaleLog::Rocks => {
            let options = JournalOptions {
                data_dir: journal_dir.clone(),
                durability: Durability::Sync,
                ..JournalOptions::default()
            };
            let (log, _recovery) = RocksJournal::open(&options).expect("journal opens");
            (log.clone(), log)
        }
    };
    let sale_engine = engine(journal);
    let live = create_live(&sale_engine, SALE_ITEMS).await;
    let flusher = Flusher::start(target.options(), source.clone(), sale_engine.clone())
        .await
        .expect("flusher starts");

    let tick = Duration::from_millis(10);
    let per_tick = SALE_ORDERS_PER_SECOND / 100;
    let mut ticker = tokio::time::interval(tick);
    let mut tasks = JoinSet::new();
    let mut accepted = 0_u64;
    let mut lag_ms_max = 0_i64;
    let mut lag_events_max = 0_u64;
    let started = Instant::now();
    let mut user = 0_u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        for _ in 0..per_tick {
            user += 1;
            let engine = sale_engine.clone();
            let promotion_id = live.id.clone();
            let sku = live.skus[(user % live.skus.len() as u64) as usize].clone();
            tasks.spawn(async move {
                engine
                    .purchase(
                        &promotion_id,
                        &sku,
                        &format!("u{user}"),
                        one_unit(format!("r{user}")),
                    )
                    .await
                    .is_ok()
            });
        }
        while let Some(done) = tasks.try_join_next() {
            accepted += u64::from(done.unwrap_or(false));
        }
        let status = flusher.status();
        lag_ms_max = lag_ms_max.max(status.lag_ms);
        lag_events_max = lag_events_max.max(status.lag_events);
    }
    while let Some(done) = tasks.join_next().await {
        accepted += u64::from(done.unwrap_or(false));
    }
    let sale_s = started.elapsed().as_secs_f64();
    let drain_started = Instant::now();
    let log_end = source.last_seq(SINGLE_LANE);
    while flusher.status().cursor_seq < log_end {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    let written = flusher.status().rows_written_total;
    flusher
        .shutdown(Duration::from_secs(30))
        .await
        .expect("drained");
    sale_engine.shutdown().await.expect("engine stops");
    drop(sale_engine);
    drop(source);
    let _ = std::fs::remove_dir_all(&journal_dir);
    println!(
        "sql_flush {:<8} sale on {kind:?} log: {accepted} orders in {sale_s:.1} s = {:.0} orders/s; \
         flusher lag max {:.2} s / {lag_events_max} events; caught up {drain_s:.2} s after \
         the sale; {written} rows written",
        target.name,
        accepted as f64 / sale_s,
        lag_ms_max as f64 / 1000.0,
    );
}

fn main() {
    let rows = env_u64("SECKILL_BENCH_SQL_ROWS", 200_000);
    let seconds = env_u64("SECKILL_BENCH_SECONDS", 10);
    let runtime = runtime();
    runtime.block_on(async {
        for target in targets("rows") {
            throughput(&target, rows).await;
            target.cleanup().await;
        }
        for kind in [SaleLog::Memory, SaleLog::Rocks] {
            for target in targets("sale") {
                sale_lag(&target, seconds, kind).await;
                target.cleanup().await;
            }
        }
    });
}
