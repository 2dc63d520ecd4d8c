//! The flusher task: read the log after the cursor, write a chunk and its cursor in one
//! transaction, let the log trim, refresh the stats, and say how far behind it is.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seckill_engine::{Engine, Event};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::db::Database;
use super::deployment;
use super::error::SqlError;
use super::rows::{event_time_ms, ChunkRows};
use super::source::EventSource;

/// Default bound on batches read from the log at once.
pub const DEFAULT_READ_BATCHES_MAX: usize = 1_024;
/// Default bound on events per transaction (a chunk is whole batches, at least one).
pub const DEFAULT_TRANSACTION_EVENTS_MAX: usize = 20_000;
/// Default pause between two looks at the log when it has nothing new.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Default period of the `promotion_items` stats refresh.
pub const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Default first and last pause of the retry backoff.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Default bound on one transaction; past it the attempt counts as failed and is retried.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on making a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait before a hole in the log's sequence numbers is taken as permanent (an append
/// that failed after taking its number) rather than a batch still being written.
pub const DEFAULT_GAP_WAIT: Duration = Duration::from_secs(30);

/// How a flusher runs.
#[derive(Debug, Clone)]
pub struct FlusherOptions {
    /// `sqlite://PATH` (created if missing) or `postgres://...`.
    pub database_url: String,
    /// PostgreSQL only: the schema that holds seckill's tables, created if missing (the
    /// tables go where the connection's `search_path` says when `None`).
    pub postgres_schema: Option<String>,
    pub read_batches_max: usize,
    pub transaction_events_max: usize,
    pub poll_interval: Duration,
    pub stats_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub write_timeout: Duration,
    pub connect_timeout: Duration,
    pub gap_wait: Duration,
}

impl Default for FlusherOptions {
    fn default() -> Self {
        FlusherOptions {
            database_url: String::new(),
            postgres_schema: None,
            read_batches_max: DEFAULT_READ_BATCHES_MAX,
            transaction_events_max: DEFAULT_TRANSACTION_EVENTS_MAX,
            poll_interval: DEFAULT_POLL_INTERVAL,
            stats_interval: DEFAULT_STATS_INTERVAL,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            gap_wait: DEFAULT_GAP_WAIT,
        }
    }
}

/// Where a flusher stands (also exported as metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlusherStatus {
    /// The log is in SQL up to and including this sequence number.
    pub cursor_seq: u64,
    /// The log's last sequence number when last looked at.
    pub last_seq: u64,
    pub lag_events: u64,
    pub lag_ms: i64,
    pub rows_written_total: u64,
    pub errors_total: u64,
    pub gaps_skipped_total: u64,
}

/// What the task shares with its handle.
#[derive(Debug, Default)]
struct Shared {
    cursor_seq: AtomicU64,
    last_seq: AtomicU64,
    lag_events: AtomicU64,
    lag_ms: AtomicI64,
    rows_written_total: AtomicU64,
    errors_total: AtomicU64,
    gaps_skipped_total: AtomicU64,
}

/// Starts flushers.
#[derive(Debug)]
pub struct Flusher;

/// A running flusher. Dropping it stops the task at its next step without draining; call
/// [`FlusherHandle::shutdown`] to write what is pending first.
#[derive(Debug)]
pub struct FlusherHandle {
    shared: Arc<Shared>,
    /// `Some(deadline)`: drain until the deadline, then stop.
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<Result<(), SqlError>>,
    database: Database,
}

impl Flusher {
    /// Connects, runs the migrations, checks that the tables belong to the source's
    /// deployment and starts the task. An unreachable database, a bad url, a schema newer
    /// than this build or tables of another deployment ([`SqlError::OtherDeployment`]) is an
    /// error here, so a server can refuse to start instead of running half-working.
    pub async fn start(
        options: FlusherOptions,
        source: Arc<dyn EventSource>,
        engine: Engine,
    ) -> Result<FlusherHandle, SqlError> {
        check_options(&options);
        let database = Database::open(
            &options.database_url,
            options.postgres_schema.as_deref(),
            options.connect_timeout,
        )
        .await?;
        let cursor = match start_cursor(&database, source.as_ref(), &engine).await {
            Ok(cursor) => cursor,
            Err(error) => {
                database.close().await;
                return Err(error);
            }
        };
        let shared = Arc::new(Shared::default());
        shared.cursor_seq.store(cursor, Ordering::Release);
        shared.last_seq.store(source.last_seq(), Ordering::Release);
        let (stop, stop_rx) = watch::channel(None);
        let task = FlushLoop {
            database: database.clone(),
            source,
            engine,
            backoff: options.backoff_min,
            options,
            shared: Arc::clone(&shared),
            cursor,
            read_seq: cursor,
            pending: VecDeque::new(),
            pending_events: 0,
            gap: None,
            stats_due: Instant::now(),
            events_read_total: 0,
            batches_read_total: 0,
        };
        let task = tokio::spawn(task.run(stop_rx));
        Ok(FlusherHandle {
            shared,
            stop,
            task,
            database,
        })
    }
}

/// Options a flusher cannot run with are a bug of the caller.
fn check_options(options: &FlusherOptions) {
    assert!(
        options.read_batches_max > 0,
        "read_batches_max must be at least 1"
    );
    assert!(
        options.transaction_events_max > 0,
        "transaction_events_max must be at least 1"
    );
    assert!(
        options.backoff_min <= options.backoff_max,
        "backoff_min above backoff_max"
    );
}

/// Settles whose tables these are, then where the flusher takes up: the stored cursor, or
/// the log's end when the tables are ahead of it.
async fn start_cursor(
    database: &Database,
    source: &dyn EventSource,
    engine: &Engine,
) -> Result<u64, SqlError> {
    if let Some(ours) = source.deployment_id() {
        deployment::claim(database, &ours, engine.now_ms()).await?;
    }
    let cursor = database.read_cursor().await?;
    let last_seq = source.last_seq();
    if cursor <= last_seq {
        return Ok(cursor);
    }
    // The tables are ahead of the log: an async-mode log that lost its unsynced tail (or a
    // source without a deployment id, whose tables may be another log's). New batches reuse
    // those numbers, so the cursor must come back or they would be skipped.
    tracing::warn!(
        cursor,
        last_seq,
        "the SQL cursor is ahead of the log; rewinding it to the log's end"
    );
    database.reset_cursor(last_seq, engine.now_ms()).await?;
    Ok(last_seq)
}

impl FlusherHandle {
    pub fn status(&self) -> FlusherStatus {
        let shared = &self.shared;
        FlusherStatus {
            cursor_seq: shared.cursor_seq.load(Ordering::Acquire),
            last_seq: shared.last_seq.load(Ordering::Acquire),
            lag_events: shared.lag_events.load(Ordering::Relaxed),
            lag_ms: shared.lag_ms.load(Ordering::Relaxed),
            rows_written_total: shared.rows_written_total.load(Ordering::Relaxed),
            errors_total: shared.errors_total.load(Ordering::Relaxed),
            gaps_skipped_total: shared.gaps_skipped_total.load(Ordering::Relaxed),
        }
    }

    /// Writes what the log holds now (and the stats, if the engine still answers), for at
    /// most `grace`, then stops. `Err(NotDrained)` when the database did not let it finish:
    /// nothing is lost, the next start goes on from the cursor.
    pub async fn shutdown(self, grace: Duration) -> Result<(), SqlError> {
        // Ignored error: the task may have ended already; its result says how.
        let _ = self.stop.send(Some(Instant::now() + grace));
        let result = match self.task.await {
            Ok(result) => result,
            Err(error) => Err(SqlError::Task(error.to_string())),
        };
        self.database.close().await;
        result
    }
}

/// A hole in the sequence numbers right after `read_seq`, and since when it is there.
#[derive(Debug, Clone, Copy)]
struct Gap {
    after_seq: u64,
    since: Instant,
}

struct FlushLoop {
    database: Database,
    source: Arc<dyn EventSource>,
    engine: Engine,
    options: FlusherOptions,
    shared: Arc<Shared>,
    /// The log is in SQL up to here (the committed cursor).
    cursor: u64,
    /// The log is in `pending` up to here.
    read_seq: u64,
    /// Batches read and not yet committed, contiguous from `cursor + 1` to `read_seq`.
    pending: VecDeque<(u64, Vec<Event>)>,
    pending_events: usize,
    gap: Option<Gap>,
    backoff: Duration,
    stats_due: Instant,
    /// For the estimate of events in batches not read yet.
    events_read_total: u64,
    batches_read_total: u64,
}

/// What one step of the loop did.
enum Step {
    /// Wrote a chunk; there may be more.
    Wrote,
    /// Nothing to write now.
    Idle,
    /// Failed; wait for the backoff.
    Failed,
}

impl FlushLoop {
    async fn run(mut self, mut stop: watch::Receiver<Option<Instant>>) -> Result<(), SqlError> {
        loop {
            let deadline = *stop.borrow();
            if let Some(deadline) = deadline {
                return self.drain(deadline).await;
            }
            let pause = match self.step(None).await {
                // Caught up with what was read: let the next transaction gather a poll
                // interval's worth of orders instead of committing (and fsyncing SQLite) once
                // per journal batch, which under a storm cost the hot path CPU and disk.
                Step::Wrote if self.pending.is_empty() => Some(self.options.poll_interval),
                Step::Wrote => None,
                Step::Idle => Some(self.options.poll_interval),
                Step::Failed => Some(self.next_backoff()),
            };
            if self.stats_due <= Instant::now() {
                self.refresh_stats(None).await;
            }
            self.publish_lag();
            if let Some(pause) = pause {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    changed = stop.changed() => {
                        if changed.is_err() {
                            // The handle is gone without a shutdown: nobody waits for a
                            // drain, and the cursor keeps what was written.
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Writes up to the log's end as it is now, until `deadline`.
    async fn drain(&mut self, deadline: Instant) -> Result<(), SqlError> {
        let target = self.source.last_seq();
        while self.cursor < target {
            if Instant::now() >= deadline {
                self.publish_lag();
                return Err(SqlError::NotDrained {
                    cursor_seq: self.cursor,
                    last_seq: target,
                });
            }
            let pause = match self.step(Some(deadline)).await {
                Step::Wrote => None,
                Step::Idle => Some(self.options.poll_interval),
                Step::Failed => Some(self.next_backoff()),
            };
            if let Some(pause) = pause {
                tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
            }
        }
        self.refresh_stats(Some(deadline)).await;
        self.publish_lag();
        Ok(())
    }

    fn next_backoff(&mut self) -> Duration {
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(self.options.backoff_max);
        pause
    }

    fn count_error(&self, what: &str, error: &SqlError) {
        self.shared.errors_total.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("seckill_flusher_errors_total").increment(1);
        tracing::warn!(%error, cursor = self.cursor, "SQL flusher: {what} failed; retrying");
    }

    /// One read-and-write step.
    async fn step(&mut self, deadline: Option<Instant>) -> Step {
        if self.pending.is_empty() {
            if let Err(error) = self.fill().await {
                self.count_error("reading the log", &error);
                return Step::Failed;
            }
            // Before the write as well as after: the age of what is about to be written is
            // the lag a reader of the tables sees meanwhile.
            self.publish_lag();
        }
        if self.pending.is_empty() {
            return Step::Idle;
        }
        match self.write_chunk(deadline).await {
            Ok(()) => {
                self.backoff = self.options.backoff_min;
                Step::Wrote
            }
            Err(SqlError::CursorMoved { expected }) => {
                let error = SqlError::CursorMoved { expected };
                self.count_error("moving the cursor", &error);
                // Take up from wherever the other writer left the tables.
                if let Ok(cursor) = self.database.read_cursor().await {
                    self.cursor = cursor;
                    self.read_seq = cursor;
                    self.pending.clear();
                    self.pending_events = 0;
                    self.shared.cursor_seq.store(cursor, Ordering::Release);
                }
                Step::Failed
            }
            Err(error) => {
                self.count_error("writing a chunk", &error);
                Step::Failed
            }
        }
    }

    /// Reads the batches after `read_seq`, keeping only the run that continues it.
    async fn fill(&mut self) -> Result<(), SqlError> {
        let source = Arc::clone(&self.source);
        let after_seq = self.read_seq;
        let batches_max = self.options.read_batches_max;
        // The log may be on disk: its reads must not hold up the runtime's workers.
        let batches =
            tokio::task::spawn_blocking(move || source.read_batches(after_seq, batches_max))
                .await
                .map_err(|e| SqlError::Task(e.to_string()))??;
        for (seq, events) in batches {
            if seq <= self.read_seq {
                continue;
            }
            if seq != self.read_seq + 1 && !self.gap_is_permanent(seq) {
                break;
            }
            self.gap = None;
            self.read_seq = seq;
            self.pending_events += events.len();
            self.events_read_total += events.len() as u64;
            self.batches_read_total += 1;
            self.pending.push_back((seq, events));
        }
        Ok(())
    }

    /// Whether the hole before `seq` has lasted long enough to be skipped.
    fn gap_is_permanent(&mut self, seq: u64) -> bool {
        let now = Instant::now();
        let gap = match self.gap {
            Some(gap) if gap.after_seq == self.read_seq => gap,
            _ => {
                let gap = Gap {
                    after_seq: self.read_seq,
                    since: now,
                };
                self.gap = Some(gap);
                gap
            }
        };
        if now.duration_since(gap.since) < self.options.gap_wait {
            return false;
        }
        tracing::error!(
            after_seq = self.read_seq,
            next_seq = seq,
            "the log has no batches between these sequence numbers; skipping the hole"
        );
        self.shared
            .gaps_skipped_total
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("seckill_flusher_gaps_skipped_total").increment(1);
        true
    }

    /// How many pending batches the next transaction takes: whole batches up to the events
    /// bound, and at least one.
    fn chunk_len(&self) -> usize {
        let mut events = 0;
        let mut batches = 0;
        for (_, batch) in &self.pending {
            if batches > 0 && events + batch.len() > self.options.transaction_events_max {
                break;
            }
            events += batch.len();
            batches += 1;
        }
        batches
    }

    async fn write_chunk(&mut self, deadline: Option<Instant>) -> Result<(), SqlError> {
        let batches = self.chunk_len();
        debug_assert!(batches > 0);
        let rows = ChunkRows::from_batches(self.pending.iter().take(batches));
        let cursor_to = self.pending[batches - 1].0;
        debug_assert!(cursor_to > self.cursor);
        let mut timeout = self.options.write_timeout;
        if let Some(deadline) = deadline {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }
        let deployment = self.source.deployment_id();
        let write = self.database.write_chunk(
            &rows,
            (self.cursor, cursor_to),
            deployment.as_deref(),
            self.engine.now_ms(),
        );
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(SqlError::Timeout {
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
        self.pending.drain(..batches);
        self.pending_events -= rows.events;
        self.cursor = cursor_to;
        self.shared.cursor_seq.store(cursor_to, Ordering::Release);
        self.shared
            .rows_written_total
            .fetch_add(rows.orders.len() as u64, Ordering::Relaxed);
        metrics::counter!("seckill_flusher_rows_written_total").increment(rows.orders.len() as u64);
        metrics::gauge!("seckill_flusher_cursor_seq").set(cursor_to as f64);
        // Only after the commit: the log keeps everything the tables do not have.
        self.source.set_retain_floor(cursor_to);
        Ok(())
    }

    /// Copies the engine's stats into `promotions` and `promotion_items`. A busy engine or
    /// database skips a round; the next one catches up.
    async fn refresh_stats(&mut self, deadline: Option<Instant>) {
        self.stats_due = Instant::now() + self.options.stats_interval;
        let mut timeout = self.options.write_timeout;
        if let Some(deadline) = deadline {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }
        let engine = self.engine.clone();
        let database = self.database.clone();
        let refresh = async move {
            let stats = match engine.list_promotion_stats().await {
                Ok(stats) => stats,
                Err(error) => {
                    // A stopped or overloaded engine: nothing to copy this round.
                    tracing::debug!(%error, "no promotion stats this round");
                    return Ok(());
                }
            };
            database.write_stats(&stats, engine.now_ms()).await
        };
        match tokio::time::timeout(timeout, refresh).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.count_error("refreshing the stats", &error),
            Err(_) => self.count_error(
                "refreshing the stats",
                &SqlError::Timeout {
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                },
            ),
        }
    }

    /// Sets the lag gauges: events (exact for what is read, estimated from the mean batch
    /// size for what is not) and seconds (the age of the oldest event not in SQL).
    fn publish_lag(&self) {
        let last_seq = self.source.last_seq().max(self.read_seq);
        let unread_batches = last_seq - self.read_seq;
        let events_per_batch = if self.batches_read_total == 0 {
            1.0
        } else {
            self.events_read_total as f64 / self.batches_read_total as f64
        };
        let lag_events =
            self.pending_events as u64 + (unread_batches as f64 * events_per_batch).round() as u64;
        let lag_ms = if self.cursor >= last_seq {
            0
        } else {
            let oldest_ms = self
                .pending
                .iter()
                .flat_map(|(_, events)| events.iter())
                .find_map(event_time_ms);
            match (oldest_ms, self.gap) {
                (Some(oldest_ms), _) => (self.engine.now_ms() - oldest_ms).max(0),
                (None, Some(gap)) => {
                    i64::try_from(gap.since.elapsed().as_millis()).unwrap_or(i64::MAX)
                }
                (None, None) => 0,
            }
        };
        self.shared.last_seq.store(last_seq, Ordering::Release);
        self.shared.lag_events.store(lag_events, Ordering::Relaxed);
        self.shared.lag_ms.store(lag_ms, Ordering::Relaxed);
        metrics::gauge!("seckill_flusher_lag_events").set(lag_events as f64);
        metrics::gauge!("seckill_flusher_lag_seconds").set(lag_ms as f64 / 1000.0);
    }
}
