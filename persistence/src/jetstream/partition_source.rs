//! The partition journal as the SQL flusher's [`EventSource`] (cluster plan, Q6 and step
//! 10): the catalog lane, which every node flushes (the cursor row moved in the writing
//! transaction lets one node write each step; the others take the lane up again), and the
//! lanes of the partitions this node holds, each read up to what this node's appends
//! reached. A partition taken over is flushed on from the cursor its old owner left, so
//! no row is missing and none is written twice; a partition handed over leaves this
//! node's flusher.

use seckill_engine::Event;

use super::names::CATALOG_LANE;
use super::partition_journal::PartitionJournal;
use super::tail::read_up_to;
use crate::sql::{EventSource, SqlError};

impl EventSource for PartitionJournal {
    fn lanes(&self) -> Vec<u32> {
        std::iter::once(CATALOG_LANE)
            .chain(self.writing_lanes())
            .collect()
    }

    fn read_batches(
        &self,
        lane: u32,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        let last = EventSource::last_seq(self, lane);
        let stream = self.names().stream(lane);
        let js = self.js().clone();
        self.block_on(async move { read_up_to(&js, &stream, after_seq, batches_max, last).await })
            .map_err(|e| SqlError::Source(e.to_string()))
    }

    fn last_seq(&self, lane: u32) -> u64 {
        if lane == CATALOG_LANE {
            self.catalog_seen()
        } else {
            self.acked_seq(lane)
        }
    }

    /// Join mode purges no stream yet (no per-partition snapshot): nothing to do.
    fn set_retain_floor(&self, _lane: u32, _seq: u64) {}

    fn deployment_id(&self) -> Option<String> {
        Some(PartitionJournal::deployment_id(self).to_owned())
    }
}
