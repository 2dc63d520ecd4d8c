//! Where the engine's log and the orders go, and who reads the log: the module that runs
//! the persistence crate (`config` only borrows its `--events` parser), so the rest of the
//! edge builds whatever state that crate is in.
//!
//! Three backends:
//! - durable (feature `persistence`, the default): the RocksDB journal in the data directory
//!   and the SQL flusher keeping `orders` in step.
//! - cluster (`--cluster`, feature `persistence`): the journal on NATS JetStream (an append
//!   is acknowledged once a quorum of the NATS servers has it) and the same SQL flusher
//!   reading it. Nothing durable goes to the data directory then, except the order events'
//!   cursors.
//! - memory (`--unsafe-memory-journal`, development only): nothing survives a restart, and
//!   the server says so loudly. Without the `persistence` feature it is the only backend,
//!   and the server refuses to start unless it is asked for by name: it never claims a
//!   durability it does not have. It has no order events (`config` refuses `--events`): its
//!   log keeps no batches to read them from.
//!
//! The two durable journals have the same readers (`readers`): the SQL flusher and one
//! order-events deliverer per `--events` target, each on its own view of the journal, which
//! is trimmed only below the lowest of their floors.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use seckill_engine::{Engine, Journal, MemoryJournal, NullSink, OrderSink, Recovery};

use crate::config::Config;
use crate::start_error::StartError;

/// The opened log, the recovery it handed back, and (once started) its readers.
pub struct Storage {
    journal: Arc<dyn Journal>,
    recovery: Option<Recovery>,
    backend: Backend,
    /// The SQL flusher and the events deliverers, once started.
    #[cfg(feature = "persistence")]
    readers: Option<readers::Readers>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("durable", &self.is_durable())
            .finish_non_exhaustive()
    }
}

enum Backend {
    Memory,
    #[cfg(feature = "persistence")]
    Durable(durable::Durable),
    #[cfg(feature = "persistence")]
    Cluster(cluster::Cluster),
}

/// Checks that `dir` exists (creating it) and that files can be written in it.
pub fn check_data_dir(dir: &Path) -> Result<(), StartError> {
    let unwritable = |reason: String| StartError::DataDirUnwritable {
        path: dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| unwritable(e.to_string()))?;
    let probe = dir.join(".seckill-write-probe");
    std::fs::write(&probe, b"probe").map_err(|e| unwritable(e.to_string()))?;
    std::fs::remove_file(&probe).map_err(|e| unwritable(e.to_string()))?;
    Ok(())
}

impl Storage {
    /// Opens the log (taking the data directory's lock, or with `--cluster` the partitions'
    /// leases) and reads what recovery needs. Blocking: with `--cluster` it waits, as a
    /// standby, for as long as another node holds the partitions.
    pub fn open(config: &Config) -> Result<Storage, StartError> {
        // Checked with --cluster too: other files (a generated user secret) live there.
        check_data_dir(&config.data_dir)?;
        if config.unsafe_memory_journal {
            return Ok(Storage {
                // Discarding: a memory log that kept every event would grow without bound,
                // and nothing reads it back anyway.
                journal: MemoryJournal::discarding(),
                recovery: Some(Recovery::empty()),
                backend: Backend::Memory,
                #[cfg(feature = "persistence")]
                readers: None,
            });
        }
        #[cfg(feature = "persistence")]
        {
            // Before the journal is opened (a lock, or with --cluster the partitions' leases
            // and takeover records): a target whose sink cannot be made or whose cursor file
            // is damaged stops the start with nothing taken.
            readers::check(config)?;
            if let Some(cluster_config) = &config.cluster {
                let (cluster, journal, recovery) = cluster::Cluster::open(cluster_config)?;
                return Ok(Storage {
                    journal,
                    recovery: Some(recovery),
                    backend: Backend::Cluster(cluster),
                    readers: None,
                });
            }
            let (durable, journal, recovery) = durable::Durable::open(config)?;
            Ok(Storage {
                journal,
                recovery: Some(recovery),
                backend: Backend::Durable(durable),
                readers: None,
            })
        }
        #[cfg(not(feature = "persistence"))]
        {
            Err(StartError::NoDurableJournal)
        }
    }

    pub fn is_durable(&self) -> bool {
        !matches!(self.backend, Backend::Memory)
    }

    pub fn journal(&self) -> Arc<dyn Journal> {
        Arc::clone(&self.journal)
    }

    /// How long acknowledged writes may wait for their fsync in `--durability async` mode:
    /// the window of loss on power failure. `None` for the memory log (everything is lost);
    /// 0 for the cluster, where every acknowledgement waits for a quorum of NATS servers.
    pub fn async_loss_window_ms(&self) -> Option<u64> {
        match self.backend {
            Backend::Memory => None,
            #[cfg(feature = "persistence")]
            Backend::Durable(_) => {
                Some(seckill_persistence::journal::DEFAULT_ASYNC_SYNC_INTERVAL_MS)
            }
            #[cfg(feature = "persistence")]
            Backend::Cluster(_) => Some(0),
        }
    }

    /// The order sink the engine publishes to (the flusher reads the journal instead).
    pub fn sink(&self) -> Arc<dyn OrderSink> {
        Arc::new(NullSink)
    }

    /// What the log holds, for `Engine::start`; empty on a second call.
    pub fn take_recovery(&mut self) -> Recovery {
        self.recovery.take().unwrap_or_else(Recovery::empty)
    }

    /// Starts the journal's readers: the SQL flusher and a deliverer per `--events` target.
    /// An unreachable database, a sink that cannot be made or a cursor file that cannot be
    /// read is an error here, so the server exits instead of running half-working; an
    /// unreachable events target is not (its events wait in the journal).
    pub async fn start_flusher(
        &mut self,
        config: &Config,
        engine: &Engine,
    ) -> Result<(), StartError> {
        #[cfg(feature = "persistence")]
        {
            let source = match &self.backend {
                Backend::Memory => return Ok(()),
                Backend::Durable(durable) => durable.event_source(),
                Backend::Cluster(cluster) => cluster.event_source(),
            };
            self.readers = Some(readers::start(config, source, engine).await?);
        }
        #[cfg(not(feature = "persistence"))]
        let _ = (config, engine);
        Ok(())
    }

    /// The SQL side for the operator routes (flusher lag, sale report), once the flusher
    /// runs; None with the memory journal.
    pub fn sql_reader(&self) -> Option<Arc<dyn crate::sale_report::SqlReader>> {
        #[cfg(feature = "persistence")]
        {
            self.readers.as_ref().map(readers::Readers::sql_reader)
        }
        #[cfg(not(feature = "persistence"))]
        {
            None
        }
    }

    /// A cluster node's engine runs on these besides its journal; `None` off a cluster.
    pub fn cluster_ports(&self) -> Option<seckill_engine::ClusterPorts> {
        match &self.backend {
            #[cfg(feature = "persistence")]
            Backend::Cluster(cluster) => Some(cluster.cluster_ports()),
            _ => None,
        }
    }

    /// A cluster node's services, once its engine runs: the routes' way to the owners of
    /// the items it does not own. `None` off a cluster.
    pub async fn start_cluster_link(
        &mut self,
        engine: &Engine,
    ) -> Result<Option<Arc<dyn crate::owner_calls::OwnerCalls>>, StartError> {
        match &mut self.backend {
            #[cfg(feature = "persistence")]
            Backend::Cluster(cluster) => {
                let link = cluster.start_link(engine).await?;
                Ok(Some(link as Arc<dyn crate::owner_calls::OwnerCalls>))
            }
            _ => {
                let _ = engine;
                Ok(None)
            }
        }
    }

    /// A cluster node hands its partitions over (SIGTERM); call it before the engine
    /// stops. Nothing to do off a cluster.
    pub async fn hand_over(&mut self) {
        // `&mut`: the storage is not `Sync` (its recovery is not), and a shared borrow
        // held across the await would make the server's future not `Send`.
        #[cfg(feature = "persistence")]
        if let Backend::Cluster(cluster) = &mut self.backend {
            cluster.hand_over().await;
        }
    }

    /// After the engine has stopped: syncs the log and lets the readers drain within `grace`
    /// (and with `--cluster`, then hands the partitions' leases back).
    pub async fn shutdown(self, grace: Duration) {
        match self.backend {
            Backend::Memory => {
                let _ = grace;
            }
            #[cfg(feature = "persistence")]
            Backend::Durable(durable) => durable.shutdown(self.readers, grace).await,
            #[cfg(feature = "persistence")]
            Backend::Cluster(cluster) => cluster.shutdown(self.readers, grace).await,
        }
    }
}

#[cfg(feature = "persistence")]
mod durable {
    //! The RocksDB journal of `seckill-persistence` in the data directory.

    use std::sync::Arc;
    use std::time::Duration;

    use seckill_engine::{Journal, Recovery};
    use seckill_persistence::journal::{
        Durability as JournalDurability, JournalOptions, PersistenceError, RocksJournal,
    };
    use seckill_persistence::sql::EventSource;

    use super::readers::Readers;
    use crate::config::{Config, Durability};
    use crate::start_error::StartError;

    pub struct Durable {
        journal: Arc<RocksJournal>,
    }

    impl Durable {
        pub fn open(config: &Config) -> Result<(Durable, Arc<dyn Journal>, Recovery), StartError> {
            let options = JournalOptions {
                data_dir: config.data_dir.clone(),
                durability: match config.durability {
                    Durability::Sync => JournalDurability::Sync,
                    Durability::Async => JournalDurability::Async,
                },
                ..JournalOptions::default()
            };
            let (journal, recovery) = RocksJournal::open(&options).map_err(|e| match e {
                PersistenceError::Locked { .. } => StartError::DataDirLocked {
                    path: config.data_dir.display().to_string(),
                },
                other => StartError::Journal(other.to_string()),
            })?;
            let dyn_journal: Arc<dyn Journal> = journal.clone();
            Ok((Durable { journal }, dyn_journal, recovery))
        }

        /// The journal as its readers read it.
        pub fn event_source(&self) -> Arc<dyn EventSource> {
            Arc::clone(&self.journal) as Arc<dyn EventSource>
        }

        pub async fn shutdown(self, readers: Option<Readers>, grace: Duration) {
            // The shards have stopped: sync what async mode acknowledged early, then let the
            // readers copy the tail to SQL and to the events targets.
            self.journal.flush();
            if let Some(readers) = readers {
                readers.shutdown(grace).await;
            }
        }
    }
}

#[cfg(feature = "persistence")]
mod cluster {
    //! The journal on NATS JetStream (`--cluster`): a node of a cluster, which joins, takes
    //! its share of the partitions and hands calls for the others to their owners.

    use std::sync::Arc;
    use std::time::Duration;

    use seckill_engine::{CatalogLog, ClusterPorts, Engine, Journal, Recovery};
    use seckill_persistence::jetstream::{ClusterError, ClusterOptions, PartitionJournal};
    use seckill_persistence::sql::EventSource;

    use super::readers::Readers;
    use crate::cluster_link::ClusterLink;
    use crate::config::ClusterConfig;
    use crate::start_error::StartError;

    /// How long an append waits for JetStream before its callers hear "outcome unknown";
    /// well inside the default request timeout, so the answer is 503, not a timeout.
    const APPEND_PATIENCE: Duration = Duration::from_secs(2);

    pub struct Cluster {
        journal: Arc<PartitionJournal>,
        options: ClusterOptions,
        advertise: String,
        link: Option<Arc<ClusterLink>>,
    }

    impl Cluster {
        /// Connects and joins the cluster (no partition taken yet: the driver takes this
        /// node's share once the engine runs). Blocking. The recovery is the catalog's.
        pub fn open(
            cluster: &ClusterConfig,
        ) -> Result<(Cluster, Arc<dyn Journal>, Recovery), StartError> {
            let options = options(cluster);
            let (journal, recovery) = PartitionJournal::join(&options).map_err(start_error)?;
            tracing::info!(
                journal = "NATS JetStream",
                nats = %cluster.urls_for_log(),
                partitions = journal.partitions(),
                replicas = cluster.replicas,
                node_id = journal.node_id(),
                deployment_id = journal.deployment_id(),
                epoch = journal.epoch(),
                advertise = %cluster.advertise,
                "journal: NATS JetStream; a write is acknowledged once a quorum of the replicas \
                 has it"
            );
            let dyn_journal: Arc<dyn Journal> = journal.clone();
            let cluster = Cluster {
                journal,
                options,
                advertise: cluster.advertise.clone(),
                link: None,
            };
            Ok((cluster, dyn_journal, recovery))
        }

        /// What the engine runs on besides its journal: the leases and the catalog log.
        pub fn cluster_ports(&self) -> ClusterPorts {
            let catalog_log: Arc<dyn CatalogLog> = self.journal.catalog_log();
            ClusterPorts {
                ownership: self.journal.clone(),
                catalog_log: Some(catalog_log),
            }
        }

        /// Starts the node's services (membership, the partition driver, the catalog tail,
        /// the link to the other nodes) once the engine runs.
        pub async fn start_link(
            &mut self,
            engine: &Engine,
        ) -> Result<Arc<ClusterLink>, StartError> {
            let link = ClusterLink::start(
                Arc::clone(&self.journal),
                engine,
                &self.options,
                &self.advertise,
            )
            .await?;
            let link = Arc::new(link);
            self.link = Some(Arc::clone(&link));
            Ok(link)
        }

        /// SIGTERM, before the engine stops: every partition handed over.
        pub async fn hand_over(&self) {
            if let Some(link) = &self.link {
                link.hand_over().await;
            }
        }

        /// The journal as its readers read it: the catalog lane and the lanes of the
        /// partitions this node writes, so each partition's owner delivers its events.
        pub fn event_source(&self) -> Arc<dyn EventSource> {
            Arc::clone(&self.journal) as Arc<dyn EventSource>
        }

        pub async fn shutdown(self, readers: Option<Readers>, grace: Duration) {
            // The shards have stopped and every acknowledged batch is on a quorum already:
            // nothing to sync. The readers copy the tail to SQL and to the events targets,
            // then any lease still held goes back.
            if let Some(readers) = readers {
                readers.shutdown(grace).await;
            }
            let journal = self.journal;
            if let Err(error) = tokio::task::spawn_blocking(move || journal.release_all()).await {
                tracing::warn!(%error, "handing the partition leases back failed; they lapse");
            }
        }
    }

    fn options(cluster: &ClusterConfig) -> ClusterOptions {
        ClusterOptions {
            urls: cluster.urls.clone(),
            node_id: cluster.node_id.clone(),
            partitions: cluster.partitions,
            replicas: cluster.replicas,
            prefix: cluster.prefix.clone(),
            lease_ttl: Duration::from_secs(cluster.lease_ttl_s),
            lease_wait: None,
            append_patience: APPEND_PATIENCE,
            ..ClusterOptions::default()
        }
    }

    fn start_error(error: ClusterError) -> StartError {
        match error {
            ClusterError::PartitionsMismatch { stored, given } => {
                StartError::PartitionsMismatch { stored, given }
            }
            other => StartError::Journal(other.to_string()),
        }
    }
}

#[cfg(feature = "persistence")]
mod readers {
    //! The readers of a durable journal: the SQL flusher and one order-events deliverer per
    //! `--events` target. Each reads its own view of the journal (`SharedFloors`), so the
    //! journal trims only below the lowest floor of all of them: a target that is down
    //! keeps its events in the journal, and holds back no other reader.
    //!
    //! Everything that can refuse the start is done before any reader runs: every sink is
    //! made and every cursor file read first, so a bad target leaves nothing half-started.

    use std::sync::Arc;
    use std::time::Duration;

    use seckill_engine::Engine;
    use seckill_persistence::events::{
        start_events, CursorStore, DeliverOptions, EventTarget, EventsError, EventsHandle,
        FileCursorStore, SharedFloors, Sink, TargetKind, DEFAULT_DELIVER_TIMEOUT,
    };
    use seckill_persistence::sql::{
        EventSource, Flusher, FlusherHandle, FlusherOptions, FlusherReader, SaleReport,
    };

    use crate::config::Config;
    use crate::sale_report::{Funnel, MinuteLine, ReportFuture, ReportView, SqlReader, StatusLine};
    use crate::start_error::StartError;
    use crate::views::rfc3339;

    /// The events cursors' directory, inside the data directory.
    pub const CURSOR_DIR: &str = "events";
    /// The CloudEvents `source` and id prefix of a journal without a lasting identity.
    const DEPLOYMENT_UNNAMED: &str = "memory";
    /// Webhook events per call to the sink. The sink posts up to 32 subjects (orders) at
    /// once, each subject's events in turn, so a call lasts about its longest subject's
    /// answers; the bound on a call below still covers the worst case of one subject.
    pub const WEBHOOK_CHUNK_EVENTS_MAX: usize = 500;

    /// The running readers.
    pub struct Readers {
        flusher: FlusherHandle,
        events: Vec<EventsHandle>,
    }

    /// The `--events` targets made ready to start: their sinks made, their cursors readable.
    struct Deliveries {
        store: Arc<dyn CursorStore>,
        targets: Vec<(EventTarget, Box<dyn Sink>)>,
    }

    /// Starts the SQL flusher and the events deliverers on `source`, the journal.
    pub async fn start(
        config: &Config,
        source: Arc<dyn EventSource>,
        engine: &Engine,
    ) -> Result<Readers, StartError> {
        let deliveries = prepare_deliveries(config)?;
        let deployment = source
            .deployment_id()
            .unwrap_or_else(|| DEPLOYMENT_UNNAMED.to_owned());
        let targets = deliveries.as_ref().map_or(0, |d| d.targets.len());
        // Every view at once, before any reader runs: a reader that came later could find
        // the journal trimmed past its cursor.
        let mut views: Vec<Arc<dyn EventSource>> = SharedFloors::split(source, 1 + targets)
            .into_iter()
            .map(|view| Arc::new(view) as Arc<dyn EventSource>)
            .collect();
        let flusher_view = views.remove(0);
        let flusher = start_sql_flusher(config, flusher_view, engine).await?;
        let mut readers = Readers {
            flusher,
            events: Vec::with_capacity(targets),
        };
        if let Some(deliveries) = deliveries {
            let webhook_timeout_ms = config.events_webhook_timeout_ms;
            let started =
                readers.start_deliverers(deliveries, views, &deployment, webhook_timeout_ms);
            if let Err(error) = started {
                // A cursor that could not be saved (a full disk) or changed since it was
                // read: nothing may run half-started.
                readers.shutdown(Duration::ZERO).await;
                return Err(events_error(error));
            }
        }
        Ok(readers)
    }

    /// Starts the SQL flusher on `source`: an unreachable database (or one another
    /// deployment wrote) is an error here, so the server refuses to start.
    async fn start_sql_flusher(
        config: &Config,
        source: Arc<dyn EventSource>,
        engine: &Engine,
    ) -> Result<FlusherHandle, StartError> {
        let options = FlusherOptions {
            database_url: config.database_url.clone(),
            ..FlusherOptions::default()
        };
        Flusher::start(options, source, engine.clone())
            .await
            .map_err(|e| StartError::Database(e.to_string()))
    }

    /// `None` without `--events`; otherwise each target's sink, and the cursor store with
    /// every target's cursor read once (a damaged file stops the start here). No sink
    /// connects yet: a target that is down does not stop the start.
    /// Makes every target's sink and reads every cursor file, keeping nothing: what
    /// [`start`] will do, refused early.
    pub fn check(config: &Config) -> Result<(), StartError> {
        prepare_deliveries(config).map(drop)
    }

    fn prepare_deliveries(config: &Config) -> Result<Option<Deliveries>, StartError> {
        if config.events.is_empty() {
            return Ok(None);
        }
        let store =
            FileCursorStore::open(config.data_dir.join(CURSOR_DIR)).map_err(events_error)?;
        let mut targets = Vec::with_capacity(config.events.len());
        for target in &config.events {
            store.load(&target.key).map_err(events_error)?;
            let sink = target
                .sink(config.events_webhook_timeout_ms)
                .map_err(events_error)?;
            targets.push((target.clone(), sink));
        }
        Ok(Some(Deliveries {
            store: Arc::new(store),
            targets,
        }))
    }

    fn events_error(error: impl std::fmt::Display) -> StartError {
        StartError::Events(error.to_string())
    }

    /// How `target`'s deliverer runs. A webhook call is many POSTs (in turn within one
    /// order), each bounded by `webhook_timeout_ms`: the bound on a call covers a whole
    /// call of slow answers to one order's events (past the bound it counts as failed and
    /// is sent again, so a bound below that would never let a slow endpoint get anything).
    pub fn options_for(target: &EventTarget, webhook_timeout_ms: u64) -> DeliverOptions {
        match target.kind {
            TargetKind::Webhook { .. } => {
                let chunk = u32::try_from(WEBHOOK_CHUNK_EVENTS_MAX).unwrap_or(u32::MAX);
                let call = Duration::from_millis(webhook_timeout_ms).saturating_mul(chunk);
                DeliverOptions {
                    chunk_events_max: WEBHOOK_CHUNK_EVENTS_MAX,
                    deliver_timeout: call.max(DEFAULT_DELIVER_TIMEOUT),
                    ..DeliverOptions::default()
                }
            }
            TargetKind::Nats { .. } | TargetKind::Amqp { .. } => DeliverOptions::default(),
        }
    }

    /// The flusher's lag and the sale report, as the operator routes read them.
    #[derive(Debug)]
    struct SqlSide(FlusherReader);

    impl SqlReader for SqlSide {
        fn flusher_lag_s(&self) -> f64 {
            // Milliseconds to seconds for display: f64 holds any lag exactly enough.
            self.0.lag_ms().max(0) as f64 / 1000.0
        }

        fn report<'a>(&'a self, promotion_id: &'a str) -> ReportFuture<'a> {
            Box::pin(async move {
                let report = self
                    .0
                    .report(promotion_id)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(report_view(promotion_id, report, self.flusher_lag_s()))
            })
        }
    }

    /// The persistence crate's report in the API's shape.
    fn report_view(promotion_id: &str, report: SaleReport, sql_lag_s: f64) -> ReportView {
        ReportView {
            promotion_id: promotion_id.to_owned(),
            by_status: report
                .by_status
                .into_iter()
                .map(|line| StatusLine {
                    status: line.status,
                    orders: line.orders,
                    units: line.units,
                    revenue_cents: line.revenue_cents,
                })
                .collect(),
            funnel: Funnel {
                tokens_issued: report.tokens_issued,
                orders: report.orders,
                paid_orders: report.paid_orders,
            },
            orders_per_minute: report
                .orders_per_minute
                .into_iter()
                .map(|minute| MinuteLine {
                    minute: rfc3339(minute.minute_ms),
                    orders: minute.orders,
                    units: minute.units,
                })
                .collect(),
            sql_lag_s: Some(sql_lag_s),
        }
    }

    impl Readers {
        /// The SQL side of the operator routes.
        pub fn sql_reader(&self) -> Arc<dyn SqlReader> {
            Arc::new(SqlSide(self.flusher.reader()))
        }

        /// Starts a deliverer per target, each on its own view of the journal; stops at the
        /// first that cannot start.
        fn start_deliverers(
            &mut self,
            deliveries: Deliveries,
            views: Vec<Arc<dyn EventSource>>,
            deployment: &str,
            webhook_timeout_ms: u64,
        ) -> Result<(), EventsError> {
            for ((target, sink), view) in deliveries.targets.into_iter().zip(views) {
                let options = options_for(&target, webhook_timeout_ms);
                let handle = start_events(
                    view,
                    sink,
                    Arc::clone(&deliveries.store),
                    target.key.clone(),
                    deployment.to_owned(),
                    options,
                )?;
                tracing::info!(events_target = %target.label, "order events: delivering");
                self.events.push(handle);
            }
            Ok(())
        }

        /// Stops the deliverers and the flusher together, each given `grace` to finish what
        /// it has in flight: what a target did not get waits in the journal for the next
        /// start.
        pub async fn shutdown(self, grace: Duration) {
            let stopping: Vec<_> = self
                .events
                .into_iter()
                .map(|handle| {
                    let label = handle.label().to_owned();
                    tokio::spawn(async move { (label, handle.shutdown(grace).await) })
                })
                .collect();
            if let Err(error) = self.flusher.shutdown(grace).await {
                tracing::warn!(%error, "SQL flusher stopped before the tables caught up");
            }
            for stopped in stopping {
                match stopped.await {
                    Ok((_, Ok(()))) => {}
                    Ok((label, Err(error))) => tracing::warn!(
                        events_target = %label,
                        %error,
                        "order events: the deliverer stopped on an error; its events wait in \
                         the journal"
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "order events: a deliverer's stop failed");
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn config(dir: &std::path::Path, events: &[&str]) -> Config {
            let data_dir = dir.display().to_string();
            let mut args = vec![
                "seckill",
                "serve",
                "--auth",
                "header",
                "--data-dir",
                &data_dir,
            ];
            for &value in events {
                args.extend(["--events", value]);
            }
            args.extend(["--events-secret", "whsec-test"]);
            Config::from_args(args).expect("a valid config")
        }

        fn refusal(config: &Config) -> String {
            match prepare_deliveries(config) {
                Err(StartError::Events(message)) => message,
                Err(other) => panic!("expected an events refusal, got {other}"),
                Ok(_) => panic!("expected an events refusal, got a start"),
            }
        }

        #[test]
        fn without_events_nothing_is_made_in_the_data_directory() {
            let dir = tempfile::tempdir().expect("tempdir");
            let deliveries = prepare_deliveries(&config(dir.path(), &[])).expect("no targets");
            assert!(deliveries.is_none());
            assert!(!dir.path().join(CURSOR_DIR).exists());
        }

        #[test]
        fn targets_that_are_down_are_made_ready_without_connecting() {
            let dir = tempfile::tempdir().expect("tempdir");
            // Port 9 (discard) has nothing listening here: nothing is tried yet.
            let config = config(
                dir.path(),
                &[
                    "nats://127.0.0.1:9",
                    "amqp://guest:guest@127.0.0.1:9/%2f",
                    "http://127.0.0.1:9/hooks",
                ],
            );
            let deliveries = prepare_deliveries(&config)
                .expect("ready")
                .expect("three targets");
            let labels: Vec<String> = deliveries.targets.iter().map(|(_, s)| s.label()).collect();
            assert_eq!(labels.len(), 3, "{labels:?}");
            assert_eq!(labels[0], "nats 127.0.0.1:9");
            assert!(dir.path().join(CURSOR_DIR).is_dir());
        }

        #[test]
        fn a_damaged_cursor_file_refuses_the_start_naming_it() {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = config(dir.path(), &["nats://127.0.0.1:9"]);
            let cursors = dir.path().join(CURSOR_DIR);
            std::fs::create_dir_all(&cursors).expect("dir");
            let file = cursors.join(format!("{}.json", config.events[0].key));
            std::fs::write(&file, b"{\"version\": 1, \"lanes\"").expect("write");
            let message = refusal(&config);
            assert!(message.contains("damaged"), "{message}");
            assert!(message.contains(&config.events[0].key), "{message}");
        }

        #[test]
        fn a_webhook_call_may_last_a_whole_chunk_of_slow_answers() {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = config(dir.path(), &["nats://127.0.0.1:9", "http://127.0.0.1:9/h"]);
            let broker = options_for(&config.events[0], 5_000);
            assert_eq!(
                broker.chunk_events_max,
                DeliverOptions::default().chunk_events_max
            );
            let webhook = options_for(&config.events[1], 5_000);
            assert_eq!(webhook.chunk_events_max, WEBHOOK_CHUNK_EVENTS_MAX);
            let slowest_call = Duration::from_millis(5_000) * WEBHOOK_CHUNK_EVENTS_MAX as u32;
            assert!(webhook.deliver_timeout >= slowest_call);
            // A chunk of answers that fits inside the default bound keeps the default.
            let quick = options_for(&config.events[1], 10);
            assert_eq!(quick.deliver_timeout, DEFAULT_DELIVER_TIMEOUT);
        }
    }
}
