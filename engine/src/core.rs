//! What the engine handle and its control thread share: the shards, the catalog, the ports
//! and the counters.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::config::EngineConfig;
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
}
