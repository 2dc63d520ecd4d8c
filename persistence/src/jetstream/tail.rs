//! Reading a lane's stream back: a run of sequences as batches of events.

use async_nats::jetstream::context::Context;
use futures::stream::{self, StreamExt, TryStreamExt};
use seckill_engine::Event;

use super::error::{nats, ClusterError};
use crate::journal::layout::decode_batch;

/// Reads in flight at once: the reads are independent, and one at a time would cost a
/// round trip per batch.
const READS_IN_FLIGHT: usize = 32;

/// The batches of `stream` with sequences `from_seq..=to_seq`, in order. A takeover record
/// (no payload) is an empty batch: the flusher moves its cursor over it, recovery skips it.
pub async fn read_range(
    js: &Context,
    stream: &str,
    from_seq: u64,
    to_seq: u64,
) -> Result<Vec<(u64, Vec<Event>)>, ClusterError> {
    if from_seq > to_seq {
        return Ok(Vec::new());
    }
    let handle = js
        .get_stream(stream)
        .await
        .map_err(|e| nats(&format!("opening stream {stream}"), e))?;
    let handle = &handle;
    stream::iter(from_seq..=to_seq)
        .map(|seq| async move {
            let message = handle
                .get_raw_message(seq)
                .await
                .map_err(|e| nats(&format!("reading {stream} at {seq}"), e))?;
            let events = if message.payload.is_empty() {
                Vec::new()
            } else {
                decode_batch(seq, &message.payload)
                    .map_err(|e| nats(&format!("decoding {stream} at {seq}"), e))?
            };
            Ok::<_, ClusterError>((seq, events))
        })
        .buffered(READS_IN_FLIGHT)
        .try_collect()
        .await
}
