//! The flusher task: each round, for every lane of the log in the source's order, read after
//! the lane's cursor, write a chunk and that lane's cursor in one transaction, and let the
//! lane trim; then refresh the stats and say how far behind it is.
//!
//! A source is one or more lanes, each a log with its own sequence numbers and its own
//! cursor in SQL ([`EventSource`]). A round takes up the lanes that appeared (from their
//! stored cursors), drops those the source no longer has, and writes one chunk of each lane,
//! in order: the catalog lane comes first, so the promotions that partitions' rows refer to
//! are in SQL before them. A failure ends the round, and the next one starts, after the
//! backoff, from the first lane again: a database that is down fails every lane alike and
//! should see one attempt per backoff, not one per lane; and a chunk that fails (a foreign
//! key, a timeout) is tried again, never skipped, before the lanes after it move on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seckill_engine::Engine;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::db::Database;
use super::deployment;
use super::error::SqlError;
use super::lane::Lane;
use super::report::SaleReport;
use super::rows::ChunkRows;
use super::source::{EventSource, LANE_MAX, SINGLE_LANE};

/// Default bound on batches read from the log at once.
pub const DEFAULT_READ_BATCHES_MAX: usize = 1_024;
/// Default bound on events per transaction (a chunk is whole batches, at least one).
pub const DEFAULT_TRANSACTION_EVENTS_MAX: usize = 20_000;
/// Default pause between two looks at the log when it has nothing new.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Default period of the `promotion_items` stats refresh.
pub const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(1);
/// The lane every node of a cluster flushes: the catalog's (the JetStream journal's lane
/// 1). A step of it written by another node first is no fault.
const SHARED_LANE: u32 = 1;

/// Default first and last pause of the retry backoff.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Default bound on one transaction; past it the attempt counts as failed and is retried.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on making a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait before a hole in a lane's sequence numbers is taken as permanent (an append
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
///
/// `cursor_seq` and `last_seq` are lane 0's: the whole log for a source of one lane
/// (RocksDB, the memory journal), as before lanes. A source of several lanes (the JetStream
/// journal, which has no lane 0) has no single position, and a sum of positions in
/// unrelated logs would mean nothing: both stay 0 there, and `lag_events`, `lag_ms` and
/// `lanes_behind` say how far behind the tables are, over every lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlusherStatus {
    /// Lane 0 is in SQL up to and including this sequence number.
    pub cursor_seq: u64,
    /// Lane 0's last sequence number when last looked at.
    pub last_seq: u64,
    /// Events not in SQL yet, summed over the lanes (estimated from the mean batch size for
    /// batches not read yet).
    pub lag_events: u64,
    /// The age of the oldest event not in SQL, over every lane.
    pub lag_ms: i64,
    /// Lanes whose cursor is below their log's last sequence number when last looked at: 0
    /// when the tables hold everything the log held then, whatever the source.
    pub lanes_behind: u32,
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
    lanes_behind: AtomicU32,
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
    /// deployment, takes up the source's lanes and starts the task. An unreachable database,
    /// a bad url, a schema newer than this build or tables of another deployment
    /// ([`SqlError::OtherDeployment`]) is an error here, so a server can refuse to start
    /// instead of running half-working.
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
        let mut lanes = BTreeMap::new();
        if let Err(error) = start_lanes(&database, source.as_ref(), &engine, &mut lanes).await {
            database.close().await;
            return Err(error);
        }
        let shared = Arc::new(Shared::default());
        let (stop, stop_rx) = watch::channel(None);
        let task = FlushLoop {
            backoff: options.backoff_min,
            copier: Copier {
                database: database.clone(),
                source,
                engine,
                options,
                shared: Arc::clone(&shared),
                events_read_total: 0,
                batches_read_total: 0,
            },
            lanes,
            stats_due: Instant::now(),
        };
        task.publish_lag();
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

/// Settles whose tables these are, then takes up every lane the source has now.
async fn start_lanes(
    database: &Database,
    source: &dyn EventSource,
    engine: &Engine,
    lanes: &mut BTreeMap<u32, Lane>,
) -> Result<(), SqlError> {
    if let Some(ours) = source.deployment_id() {
        deployment::claim(database, &ours, engine.now_ms()).await?;
    }
    sync_lanes(database, source, lanes, engine.now_ms()).await?;
    Ok(())
}

/// Brings `lanes` in line with the source's lanes now: takes up those that appeared, from
/// their stored cursors, and drops those the source no longer has (another node writes them
/// now, and what was read of them is its to write). Returns the lanes in reading order.
async fn sync_lanes(
    database: &Database,
    source: &dyn EventSource,
    lanes: &mut BTreeMap<u32, Lane>,
    now_ms: i64,
) -> Result<Vec<u32>, SqlError> {
    let order = source.lanes();
    lanes.retain(|id, _| {
        let kept = order.contains(id);
        if !kept {
            tracing::info!(lane = *id, "SQL flusher: the log no longer has this lane");
        }
        kept
    });
    for &id in &order {
        if lanes.contains_key(&id) {
            continue;
        }
        let cursor = take_up(database, source, id, now_ms).await?;
        tracing::debug!(lane = id, cursor, "SQL flusher: lane taken up");
        lanes.insert(id, Lane::new(id, cursor));
    }
    Ok(order)
}

/// Where the flusher takes `lane` up: its stored cursor (a lane above 0 gets its row, at 0,
/// the first time), or, for lane 0, the log's end when the tables are ahead of it.
async fn take_up(
    database: &Database,
    source: &dyn EventSource,
    lane: u32,
    now_ms: i64,
) -> Result<u64, SqlError> {
    if lane > LANE_MAX {
        return Err(SqlError::Source(format!(
            "lane {lane} is above {LANE_MAX}, the largest lane the tables hold"
        )));
    }
    let cursor = database.read_cursor(lane, now_ms).await?;
    let last_seq = source.last_seq(lane);
    if cursor <= last_seq {
        return Ok(cursor);
    }
    if lane != SINGLE_LANE {
        // A lane above 0 is a log whose numbers are never reused (a JetStream stream): a
        // cursor past what this node has seen of it is another node's flusher further on,
        // not a lost tail, and it is not this node's to move back. The lane waits.
        tracing::warn!(
            lane,
            cursor,
            last_seq,
            "the SQL cursor of this lane is ahead of the log as this node sees it; waiting"
        );
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
    database.reset_cursor(lane, last_seq, now_ms).await?;
    Ok(last_seq)
}

/// What readers of the SQL side (the operator console) may share with a running flusher:
/// its lag and the sale report from its database. Cheap to clone; once the flusher has shut
/// down its reports fail (the pool is closed).
#[derive(Debug, Clone)]
pub struct FlusherReader {
    shared: Arc<Shared>,
    database: Database,
}

impl FlusherReader {
    /// The age of the oldest event not in SQL yet, over every lane.
    pub fn lag_ms(&self) -> i64 {
        self.shared.lag_ms.load(Ordering::Relaxed)
    }

    /// `promotion_id`'s sale report from the tables the flusher writes (the views of
    /// migration 0005): it trails the engine by [`FlusherReader::lag_ms`].
    pub async fn report(&self, promotion_id: &str) -> Result<SaleReport, SqlError> {
        super::report::read(&self.database, promotion_id).await
    }
}

impl FlusherHandle {
    /// A reader of the flusher's lag and of the sale report, for the operator routes.
    pub fn reader(&self) -> FlusherReader {
        FlusherReader {
            shared: Arc::clone(&self.shared),
            database: self.database.clone(),
        }
    }

    pub fn status(&self) -> FlusherStatus {
        let shared = &self.shared;
        FlusherStatus {
            cursor_seq: shared.cursor_seq.load(Ordering::Acquire),
            last_seq: shared.last_seq.load(Ordering::Acquire),
            lag_events: shared.lag_events.load(Ordering::Relaxed),
            lag_ms: shared.lag_ms.load(Ordering::Relaxed),
            lanes_behind: shared.lanes_behind.load(Ordering::Acquire),
            rows_written_total: shared.rows_written_total.load(Ordering::Relaxed),
            errors_total: shared.errors_total.load(Ordering::Relaxed),
            gaps_skipped_total: shared.gaps_skipped_total.load(Ordering::Relaxed),
        }
    }

    /// Writes what every lane of the log holds now (and the stats, if the engine still
    /// answers), for at most `grace`, then stops. `Err(NotDrained)` when the database did not
    /// let it finish: nothing is lost, the next start goes on from the cursors.
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

/// What a lane's read and write use: the database, the log, the engine, the options and the
/// counters. Apart from the lanes, so that a lane can be lent to it.
struct Copier {
    database: Database,
    source: Arc<dyn EventSource>,
    engine: Engine,
    options: FlusherOptions,
    shared: Arc<Shared>,
    /// For the estimate of events in batches not read yet, over every lane.
    events_read_total: u64,
    batches_read_total: u64,
}

struct FlushLoop {
    copier: Copier,
    /// Every lane being copied, by lane.
    lanes: BTreeMap<u32, Lane>,
    backoff: Duration,
    stats_due: Instant,
}

/// What one step (of a lane, or of a round over every lane) did.
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
            let pause = match self.round(None).await {
                // Caught up with what was read: let the next transaction gather a poll
                // interval's worth of orders instead of committing (and fsyncing SQLite) once
                // per journal batch, which under a storm cost the hot path CPU and disk.
                Step::Wrote if self.nothing_pending() => Some(self.copier.options.poll_interval),
                Step::Wrote => None,
                Step::Idle => Some(self.copier.options.poll_interval),
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
                            // drain, and the cursors keep what was written.
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Writes every lane up to its log's end as it is now, until `deadline`.
    async fn drain(&mut self, deadline: Instant) -> Result<(), SqlError> {
        let targets = self.drain_targets();
        while let Some((lane, cursor_seq, last_seq)) = self.first_behind(&targets) {
            if Instant::now() >= deadline {
                self.publish_lag();
                return Err(SqlError::NotDrained {
                    lane,
                    cursor_seq,
                    last_seq,
                });
            }
            let pause = match self.round(Some(deadline)).await {
                Step::Wrote => None,
                Step::Idle => Some(self.copier.options.poll_interval),
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

    /// Every lane the source has now, with its log's last sequence number now.
    fn drain_targets(&self) -> Vec<(u32, u64)> {
        let source = &self.copier.source;
        source
            .lanes()
            .into_iter()
            .map(|lane| (lane, source.last_seq(lane)))
            .collect()
    }

    /// The first of `targets` whose cursor is below its target, as (lane, cursor, target). A
    /// lane not taken up yet counts from 0 (its stored cursor is read when it is); a lane the
    /// source no longer has is another node's to write.
    fn first_behind(&self, targets: &[(u32, u64)]) -> Option<(u32, u64, u64)> {
        let current = self.copier.source.lanes();
        targets.iter().find_map(|&(id, target)| {
            let cursor = match self.lanes.get(&id) {
                Some(lane) => lane.cursor,
                None if !current.contains(&id) => return None,
                None => 0,
            };
            (cursor < target).then_some((id, cursor, target))
        })
    }

    fn nothing_pending(&self) -> bool {
        self.lanes.values().all(|lane| lane.pending.is_empty())
    }

    fn next_backoff(&mut self) -> Duration {
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(self.copier.options.backoff_max);
        pause
    }

    fn count_error(&self, what: &str, lane: Option<u32>, error: &SqlError) {
        self.copier
            .shared
            .errors_total
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("seckill_flusher_errors_total").increment(1);
        let cursor = lane
            .and_then(|id| self.lanes.get(&id))
            .map(|lane| lane.cursor);
        tracing::warn!(%error, ?lane, ?cursor, "SQL flusher: {what} failed; retrying");
    }

    /// One round: the lanes brought in line with the source's, then one step of each, in
    /// the source's order. A failure ends the round (see the module documentation).
    async fn round(&mut self, deadline: Option<Instant>) -> Step {
        let now_ms = self.copier.engine.now_ms();
        let synced = sync_lanes(
            &self.copier.database,
            self.copier.source.as_ref(),
            &mut self.lanes,
            now_ms,
        )
        .await;
        let order = match synced {
            Ok(order) => order,
            Err(error) => {
                self.count_error("taking up a lane", None, &error);
                return Step::Failed;
            }
        };
        let mut wrote = false;
        for id in order {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                // Shutting down and out of time: the drain says how far it got.
                break;
            }
            match self.lane_step(id, deadline).await {
                Step::Wrote => wrote = true,
                Step::Idle => {}
                Step::Failed => return Step::Failed,
            }
        }
        if !wrote {
            return Step::Idle;
        }
        self.backoff = self.copier.options.backoff_min;
        Step::Wrote
    }

    /// One read-and-write step of lane `id`: a read when nothing of it is pending, then the
    /// write of its next chunk.
    async fn lane_step(&mut self, id: u32, deadline: Option<Instant>) -> Step {
        if let Err(error) = self.fill(id).await {
            self.count_error("reading the log", Some(id), &error);
            return Step::Failed;
        }
        let Some(lane) = self.lanes.get_mut(&id) else {
            return Step::Idle;
        };
        if lane.pending.is_empty() {
            return Step::Idle;
        }
        match self.copier.write_chunk(lane, deadline).await {
            Ok(()) => Step::Wrote,
            Err(error @ SqlError::CursorMoved { .. }) if id == SHARED_LANE => {
                // Every node of a cluster flushes the catalog lane, and one of them wins
                // each step: no fault, no pause. Take up from where the winner left it.
                tracing::debug!(%error, "another node wrote the catalog lane's step");
                self.take_up_again(id).await;
                Step::Idle
            }
            Err(error @ SqlError::CursorMoved { .. }) => {
                self.count_error("moving the cursor", Some(id), &error);
                // Take up from wherever the other writer left the tables.
                self.take_up_again(id).await;
                Step::Failed
            }
            Err(error) => {
                self.count_error("writing a chunk", Some(id), &error);
                Step::Failed
            }
        }
    }

    /// Reads lane `id` after what is read of it, when nothing of it is pending.
    async fn fill(&mut self, id: u32) -> Result<(), SqlError> {
        let Some(lane) = self.lanes.get_mut(&id) else {
            return Ok(());
        };
        if !lane.pending.is_empty() {
            return Ok(());
        }
        self.copier.fill(lane).await?;
        // Before the write as well as after: the age of what is about to be written is the
        // lag a reader of the tables sees meanwhile.
        self.publish_lag();
        Ok(())
    }

    /// Takes lane `id` up again at its cursor as the tables have it. An error leaves it as
    /// it is: its next write fails the same way and tries again.
    async fn take_up_again(&mut self, id: u32) {
        let now_ms = self.copier.engine.now_ms();
        if let Ok(cursor) = self.copier.database.read_cursor(id, now_ms).await {
            if let Some(lane) = self.lanes.get_mut(&id) {
                lane.restart_at(cursor);
            }
        }
    }

    /// Copies the engine's stats into `promotions` and `promotion_items`. A busy engine or
    /// database skips a round; the next one catches up.
    async fn refresh_stats(&mut self, deadline: Option<Instant>) {
        self.stats_due = Instant::now() + self.copier.options.stats_interval;
        let mut timeout = self.copier.options.write_timeout;
        if let Some(deadline) = deadline {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }
        let engine = self.copier.engine.clone();
        let database = self.copier.database.clone();
        let refresh = async move {
            // Each item's row is written by the node that owns it (every item, alone).
            let stats = match engine.list_promotion_stats_owned().await {
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
            Ok(Err(error)) => self.count_error("refreshing the stats", None, &error),
            Err(_) => self.count_error(
                "refreshing the stats",
                None,
                &SqlError::Timeout {
                    timeout_ms: timeout_ms(timeout),
                },
            ),
        }
    }

    /// Sets the status and the lag gauges, over every lane: events (exact for what is read,
    /// estimated from the mean batch size for what is not), summed; seconds (the age of the
    /// oldest event not in SQL), the largest; and the lanes behind their log.
    fn publish_lag(&self) {
        let source = &self.copier.source;
        let events_per_batch = self.copier.events_per_batch();
        let now_ms = self.copier.engine.now_ms();
        let (mut lag_events, mut lag_ms, mut lanes_behind) = (0_u64, 0_i64, 0_u32);
        let (mut cursor_seq, mut last_seq) = (0_u64, 0_u64);
        for lane in self.lanes.values() {
            let lane_last_seq = source.last_seq(lane.id).max(lane.read_seq);
            let lane_lag_events = lane.lag_events(lane_last_seq, events_per_batch);
            lag_events = lag_events.saturating_add(lane_lag_events);
            lag_ms = lag_ms.max(lane.lag_ms(lane_last_seq, now_ms));
            lanes_behind += u32::from(lane.cursor < lane_last_seq);
            if lane.id == SINGLE_LANE {
                (cursor_seq, last_seq) = (lane.cursor, lane_last_seq);
            }
        }
        let shared = &self.copier.shared;
        shared.cursor_seq.store(cursor_seq, Ordering::Release);
        shared.last_seq.store(last_seq, Ordering::Release);
        shared.lag_events.store(lag_events, Ordering::Relaxed);
        shared.lag_ms.store(lag_ms, Ordering::Relaxed);
        // Release, and last: a reader that sees the lanes caught up sees the lag and the
        // counters that go with it.
        shared.lanes_behind.store(lanes_behind, Ordering::Release);
        metrics::gauge!("seckill_flusher_lag_events").set(lag_events as f64);
        metrics::gauge!("seckill_flusher_lag_seconds").set(lag_ms as f64 / 1000.0);
        metrics::gauge!("seckill_flusher_lanes_behind").set(f64::from(lanes_behind));
    }
}

impl Copier {
    /// Reads `lane` after what is read of it, keeping only the run that continues it.
    async fn fill(&mut self, lane: &mut Lane) -> Result<(), SqlError> {
        if self.source.last_seq(lane.id) <= lane.read_seq {
            // Nothing new: no read (a thread hop, and for some logs a round trip to a broker,
            // once per lane and poll).
            return Ok(());
        }
        let source = Arc::clone(&self.source);
        let (id, after_seq) = (lane.id, lane.read_seq);
        let batches_max = self.options.read_batches_max;
        // The log may be on disk or across the network: its reads must not hold up the
        // runtime's workers.
        let batches =
            tokio::task::spawn_blocking(move || source.read_batches(id, after_seq, batches_max))
                .await
                .map_err(|e| SqlError::Task(e.to_string()))??;
        let taken = lane.take(batches, Instant::now(), self.options.gap_wait);
        self.events_read_total += taken.events;
        self.batches_read_total += taken.batches;
        if taken.gaps_skipped > 0 {
            self.shared
                .gaps_skipped_total
                .fetch_add(taken.gaps_skipped, Ordering::Relaxed);
            metrics::counter!("seckill_flusher_gaps_skipped_total").increment(taken.gaps_skipped);
        }
        Ok(())
    }

    /// Writes `lane`'s next chunk and moves its cursor, in one transaction; then lets the
    /// lane's log trim up to there.
    async fn write_chunk(
        &mut self,
        lane: &mut Lane,
        deadline: Option<Instant>,
    ) -> Result<(), SqlError> {
        let batches = lane.chunk_len(self.options.transaction_events_max);
        debug_assert!(batches > 0);
        let rows = ChunkRows::from_batches(lane.pending.iter().take(batches));
        let cursor_to = lane.pending[batches - 1].0;
        let mut timeout = self.options.write_timeout;
        if let Some(deadline) = deadline {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }
        let deployment = self.source.deployment_id();
        let write = self.database.write_chunk(
            &rows,
            lane.id,
            (lane.cursor, cursor_to),
            deployment.as_deref(),
            self.engine.now_ms(),
        );
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(SqlError::Timeout {
                    timeout_ms: timeout_ms(timeout),
                })
            }
        }
        lane.committed(batches, rows.events, cursor_to);
        if lane.id == SINGLE_LANE {
            // Before the floor moves: the status never shows a cursor below what the log
            // may have trimmed.
            self.shared.cursor_seq.store(cursor_to, Ordering::Release);
        }
        let orders = rows.orders.len() as u64;
        self.shared
            .rows_written_total
            .fetch_add(orders, Ordering::Relaxed);
        metrics::counter!("seckill_flusher_rows_written_total").increment(orders);
        metrics::gauge!("seckill_flusher_cursor_seq", "lane" => lane.id.to_string())
            .set(cursor_to as f64);
        // Only after the commit: the log keeps everything the tables do not have.
        self.source.set_retain_floor(lane.id, cursor_to);
        Ok(())
    }

    fn events_per_batch(&self) -> f64 {
        if self.batches_read_total == 0 {
            1.0
        } else {
            self.events_read_total as f64 / self.batches_read_total as f64
        }
    }
}

/// A timeout in whole ms, for [`SqlError::Timeout`].
fn timeout_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
}
