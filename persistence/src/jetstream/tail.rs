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
///
/// Sequences the stream no longer holds (purged below a snapshot and every reader's floor
/// of the node that owned it) are not asked for: the run moves up to the stream's first
/// sequence, as many sequences long, so a reader starting below it (an events target new on
/// a node that took the partitions over) reads what is kept instead of failing on the
/// first purged number. The readers see the purged numbers as a hole, which they pass once
/// it is older than their gap wait.
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
    let state = &handle.cached_info().state;
    let (from_seq, to_seq) = kept_run(from_seq, to_seq, state.first_sequence, state.last_sequence);
    if from_seq > to_seq {
        return Ok(Vec::new());
    }
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

/// Up to `batches_max` batches of `stream` after `after_seq`, none past `last_seq` (what is
/// known to be on a quorum): a lane read for the SQL flusher.
pub async fn read_up_to(
    js: &Context,
    stream: &str,
    after_seq: u64,
    batches_max: usize,
    last_seq: u64,
) -> Result<Vec<(u64, Vec<Event>)>, ClusterError> {
    if after_seq >= last_seq || batches_max == 0 {
        return Ok(Vec::new());
    }
    let to = last_seq.min(after_seq.saturating_add(batches_max as u64));
    read_range(js, stream, after_seq + 1, to).await
}

/// `from..=to` moved up past what the stream purged (`first` is its first kept sequence),
/// keeping its length, and not past `last`.
fn kept_run(from: u64, to: u64, first: u64, last: u64) -> (u64, u64) {
    if from >= first {
        return (from, to);
    }
    let shift = first - from;
    (first, to.saturating_add(shift).min(last.max(to)))
}

#[cfg(test)]
mod tests {
    use super::kept_run;

    #[test]
    fn a_run_below_the_first_kept_sequence_moves_up_to_it() {
        assert_eq!(
            kept_run(5, 9, 1, 100),
            (5, 9),
            "nothing purged below the run"
        );
        assert_eq!(
            kept_run(1, 10, 51, 100),
            (51, 60),
            "moved up, as long as asked"
        );
        assert_eq!(
            kept_run(1, 10, 95, 100),
            (95, 100),
            "not past the stream's end"
        );
        assert_eq!(
            kept_run(1, 10, 101, 100),
            (101, 100),
            "all purged: nothing to read"
        );
    }
}
