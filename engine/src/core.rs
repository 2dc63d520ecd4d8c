//! What the engine handle and its control thread share: the shards, the catalog, the ports,
//! the counters, and for a cluster engine its partitions.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::config::EngineConfig;
use crate::partition::ClusterState;
use crate::ports::{Clock, Journal};
use crate::shard::ShardCounters;
use crate::shards::Shards;

#[derive(Debug)]
pub(crate) struct Core {
    pub shards: Shards,
    pub catalog: Catalog,
    pub journal: Arc<dyn Journal>,
    pub clock: Arc<dyn Clock>,
    pub counters: Arc<ShardCounters>,
    pub config: EngineConfig,
    /// The partitions of a cluster engine ([`crate::Engine::start_cluster`]); `None` for an
    /// engine that runs alone.
    pub cluster: Option<ClusterState>,
}
