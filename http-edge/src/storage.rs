//! Where the engine's log and the orders go: the only module that names the persistence
//! crate, so the rest of the edge builds whatever state that crate is in.
//!
//! Two backends:
//! - durable (feature `persistence`, the default): the RocksDB journal in the data directory
//!   and the SQL flusher keeping `orders` in step.
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
    /// Opens the log (taking the data directory's lock) and reads what recovery needs.
    pub fn open(config: &Config) -> Result<Storage, StartError> {
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
    /// the window of loss on power failure. `None` for the memory log (everything is lost).
    pub fn async_loss_window_ms(&self) -> Option<u64> {
        match self.backend {
            Backend::Memory => None,
            #[cfg(feature = "persistence")]
            Backend::Durable(_) => {
                Some(seckill_persistence::journal::DEFAULT_ASYNC_SYNC_INTERVAL_MS)
            }
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
        }
    }

    /// After the engine has stopped: syncs the log and lets the flusher drain within `grace`.
    pub async fn shutdown(self, grace: Duration) {
        match self.backend {
            Backend::Memory => {
                let _ = grace;
            }
            #[cfg(feature = "persistence")]
            Backend::Durable(durable) => durable.shutdown(grace).await,
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
            let options = FlusherOptions {
                database_url: config.database_url.clone(),
                ..FlusherOptions::default()
            };
            let source: Arc<dyn EventSource> = Arc::clone(&self.journal) as Arc<dyn EventSource>;
            let handle = Flusher::start(options, source, engine.clone())
                .await
                .map_err(|e| StartError::Database(e.to_string()))?;
            self.flusher = Some(handle);
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
