//! Where the engine's log and the orders go: the only module that names the persistence
//! crate, so the rest of the edge builds whatever state that crate is in.
//!
//! Three backends:
//! - durable (feature `persistence`, the default): the RocksDB journal in the data directory
//!   and the SQL flusher keeping `orders` in step.
//! - cluster (`--cluster`, feature `persistence`): the journal on NATS JetStream (an append
//!   is acknowledged once a quorum of the NATS servers has it) and the same SQL flusher
//!   reading it. Nothing durable goes to the data directory then.
//! - memory (`--unsafe-memory-journal`, development only): nothing survives a restart, and
//!   the server says so loudly. Without the `persistence` feature it is the only backend,
//!   and the server refuses to start unless it is asked for by name: it never claims a
//!   durability it does not have.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use seckill_engine::{Engine, Journal, MemoryJournal, NullSink, OrderSink, Recovery};

use crate::config::Config;
use crate::start_error::StartError;

/// The opened log, the recovery it handed back, and (once started) the flusher.
pub struct Storage {
    journal: Arc<dyn Journal>,
    recovery: Option<Recovery>,
    backend: Backend,
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
            });
        }
        #[cfg(feature = "persistence")]
        {
            if let Some(cluster_config) = &config.cluster {
                let (cluster, journal, recovery) = cluster::Cluster::open(cluster_config)?;
                return Ok(Storage {
                    journal,
                    recovery: Some(recovery),
                    backend: Backend::Cluster(cluster),
                });
            }
            let (durable, journal, recovery) = durable::Durable::open(config)?;
            Ok(Storage {
                journal,
                recovery: Some(recovery),
                backend: Backend::Durable(durable),
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

    /// Starts the SQL flusher; an unreachable database is an error here, so the server
    /// exits instead of running half-working.
    pub async fn start_flusher(
        &mut self,
        config: &Config,
        engine: &Engine,
    ) -> Result<(), StartError> {
        match &mut self.backend {
            Backend::Memory => {
                let _ = (config, engine);
                Ok(())
            }
            #[cfg(feature = "persistence")]
            Backend::Durable(durable) => durable.start_flusher(config, engine).await,
            #[cfg(feature = "persistence")]
            Backend::Cluster(cluster) => cluster.start_flusher(config, engine).await,
        }
    }

    /// After the engine has stopped: syncs the log and lets the flusher drain within `grace`
    /// (and with `--cluster`, then hands the partitions' leases back).
    pub async fn shutdown(self, grace: Duration) {
        match self.backend {
            Backend::Memory => {
                let _ = grace;
            }
            #[cfg(feature = "persistence")]
            Backend::Durable(durable) => durable.shutdown(grace).await,
            #[cfg(feature = "persistence")]
            Backend::Cluster(cluster) => cluster.shutdown(grace).await,
        }
    }
}

#[cfg(feature = "persistence")]
mod durable {
    //! The RocksDB journal and the SQL flusher of `seckill-persistence`.

    use std::sync::Arc;
    use std::time::Duration;

    use seckill_engine::{Engine, Journal, Recovery};
    use seckill_persistence::journal::{
        Durability as JournalDurability, JournalOptions, PersistenceError, RocksJournal,
    };
    use seckill_persistence::sql::{EventSource, Flusher, FlusherHandle, FlusherOptions};

    use crate::config::{Config, Durability};
    use crate::start_error::StartError;

    /// Starts the SQL flusher on `source`: an unreachable database (or one another
    /// deployment wrote) is an error here, so the server refuses to start.
    pub async fn start_sql_flusher(
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

    pub struct Durable {
        journal: Arc<RocksJournal>,
        flusher: Option<FlusherHandle>,
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
            Ok((
                Durable {
                    journal,
                    flusher: None,
                },
                dyn_journal,
                recovery,
            ))
        }

        pub async fn start_flusher(
            &mut self,
            config: &Config,
            engine: &Engine,
        ) -> Result<(), StartError> {
            let source: Arc<dyn EventSource> = Arc::clone(&self.journal) as Arc<dyn EventSource>;
            self.flusher = Some(start_sql_flusher(config, source, engine).await?);
            Ok(())
        }

        pub async fn shutdown(self, grace: Duration) {
            // The shards have stopped: sync what async mode acknowledged early, then let the
            // flusher copy the tail to SQL.
            self.journal.flush();
            if let Some(flusher) = self.flusher {
                if let Err(error) = flusher.shutdown(grace).await {
                    tracing::warn!(%error, "SQL flusher stopped before the tables caught up");
                }
            }
        }
    }
}

#[cfg(feature = "persistence")]
mod cluster {
    //! The journal on NATS JetStream (`--cluster`) and the SQL flusher reading it.

    use std::sync::Arc;
    use std::time::Duration;

    use seckill_engine::{Engine, Journal, Recovery};
    use seckill_persistence::jetstream::{ClusterError, ClusterOptions, JetStreamJournal};
    use seckill_persistence::sql::{EventSource, FlusherHandle};

    use super::durable::start_sql_flusher;
    use crate::config::{ClusterConfig, Config};
    use crate::start_error::StartError;

    /// How long an append waits for JetStream before its callers hear "outcome unknown";
    /// well inside the default request timeout, so the answer is 503, not a timeout.
    const APPEND_PATIENCE: Duration = Duration::from_secs(2);

    pub struct Cluster {
        journal: Arc<JetStreamJournal>,
        flusher: Option<FlusherHandle>,
    }

    impl Cluster {
        /// Connects and takes every partition. Blocking; with another node holding the
        /// partitions it waits (a standby, which the journal logs) until they are free.
        pub fn open(
            cluster: &ClusterConfig,
        ) -> Result<(Cluster, Arc<dyn Journal>, Recovery), StartError> {
            let (journal, recovery) =
                JetStreamJournal::open(&options(cluster)).map_err(start_error)?;
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
            Ok((
                Cluster {
                    journal,
                    flusher: None,
                },
                dyn_journal,
                recovery,
            ))
        }

        pub async fn start_flusher(
            &mut self,
            config: &Config,
            engine: &Engine,
        ) -> Result<(), StartError> {
            let source: Arc<dyn EventSource> = Arc::clone(&self.journal) as Arc<dyn EventSource>;
            self.flusher = Some(start_sql_flusher(config, source, engine).await?);
            Ok(())
        }

        pub async fn shutdown(self, grace: Duration) {
            // The shards have stopped and every acknowledged batch is on a quorum already:
            // nothing to sync. The flusher copies the tail to SQL, then the leases go back
            // so that another node can take the partitions at once instead of after a TTL.
            if let Some(flusher) = self.flusher {
                if let Err(error) = flusher.shutdown(grace).await {
                    tracing::warn!(%error, "SQL flusher stopped before the tables caught up");
                }
            }
            let journal = self.journal;
            if let Err(error) = tokio::task::spawn_blocking(move || journal.shutdown()).await {
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
            // A second node waits as a standby for as long as the first one runs.
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
