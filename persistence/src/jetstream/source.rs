//! The JetStream journal as the SQL flusher's [`EventSource`]: one lane per stream, read
//! up to what this node's appends reached (every message there is on a quorum).

use seckill_engine::Event;

use super::journal::JetStreamJournal;
use super::tail::read_up_to;
use crate::sql::{EventSource, SqlError};

impl EventSource for JetStreamJournal {
    fn lanes(&self) -> Vec<u32> {
        JetStreamJournal::lanes(self)
    }

    fn read_batches(
        &self,
        lane: u32,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        let last = self.lane_seq(lane);
        let stream = self.names().stream(lane);
        let js = self.js().clone();
        self.block_on(async move { read_up_to(&js, &stream, after_seq, batches_max, last).await })
            .map_err(|e| SqlError::Source(e.to_string()))
    }

    fn last_seq(&self, lane: u32) -> u64 {
        self.lane_seq(lane)
    }

    fn set_retain_floor(&self, lane: u32, seq: u64) {
        self.set_floor(lane, seq);
    }

    fn deployment_id(&self) -> Option<String> {
        Some(JetStreamJournal::deployment_id(self).to_owned())
    }
}
