//! How an engine runs: shard count, bounds, timers, and their defaults.

use crate::error::{Error, Result};

/// Default mailbox capacity of one shard, in commands.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 65_536;
/// Default bound on commands decided per journal write.
pub const DEFAULT_BATCH_REQUESTS_MAX: usize = 8_192;
/// Default life of a purchase token (api.md: 60 s).
pub const DEFAULT_TOKEN_TTL_S: u32 = 60;
/// Default wake-up period of a shard for expiries (api.md wants them within 2 s).
pub const DEFAULT_EXPIRY_TICK_MS: u64 = 200;
/// Default number of journaled events between two snapshots.
pub const DEFAULT_SNAPSHOT_EVERY_EVENTS: u64 = 1_000_000;
/// Default time an ended promotion keeps its buyers in memory (api.md: `--retain-ended-s`).
pub const DEFAULT_RETAIN_ENDED_S: u64 = 86_400;
/// Default patience of a clean hand-over with a batch of the partition still being written:
/// past it the partition is dropped as if its lease was lost.
pub const DEFAULT_RELEASE_WAIT_MS: u64 = 5_000;
/// The most shards an engine runs.
pub const SHARDS_MAX: usize = 1024;

/// How an engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of shards (threads owning items). Default: the number of cores.
    pub shards: usize,
    pub mailbox_capacity: usize,
    pub batch_requests_max: usize,
    pub token_ttl_s: u32,
    pub expiry_tick_ms: u64,
    /// Take a snapshot after this many journaled events, or after as many as the last
    /// snapshot held orders and tokens if that is more; 0 turns automatic snapshots off.
    pub snapshot_every_events: u64,
    /// How long after its end a promotion's items keep their buyers and tokens in memory;
    /// after that they are archived (orders and stats stay readable).
    pub retain_ended_s: u64,
    /// How long a clean hand-over ([`crate::Engine::release_partition`]) waits for a batch
    /// of the partition that the journal is still writing. The control thread waits with
    /// it, and creates and a shutdown wait behind it, so a stalled journal must not hold
    /// them for good: past it the partition is refused and its shards drop it without
    /// waiting, as for a lost one, once they read their mailbox.
    pub release_wait_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
            batch_requests_max: DEFAULT_BATCH_REQUESTS_MAX,
            token_ttl_s: DEFAULT_TOKEN_TTL_S,
            expiry_tick_ms: DEFAULT_EXPIRY_TICK_MS,
            snapshot_every_events: DEFAULT_SNAPSHOT_EVERY_EVENTS,
            retain_ended_s: DEFAULT_RETAIN_ENDED_S,
            release_wait_ms: DEFAULT_RELEASE_WAIT_MS,
        }
    }
}

impl EngineConfig {
    /// Refuses a configuration the engine cannot run with, naming the field.
    pub fn check(&self) -> Result<()> {
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return Err(Error::invalid("shards", "must be 1..=1024"));
        }
        if self.mailbox_capacity == 0 {
            return Err(Error::invalid("mailbox_capacity", "must be at least 1"));
        }
        if self.batch_requests_max == 0 {
            return Err(Error::invalid("batch_requests_max", "must be at least 1"));
        }
        Ok(())
    }

    pub(crate) fn token_ttl_ms(&self) -> i64 {
        i64::from(self.token_ttl_s) * 1000
    }

    pub(crate) fn retain_ended_ms(&self) -> i64 {
        i64::try_from(self.retain_ended_s.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}
