//! One lane as the flusher copies it: the committed cursor, the batches read ahead of it,
//! and a hole in its sequence numbers being waited for. No I/O: the flusher reads and
//! writes, and tells the lane what happened.

use std::collections::VecDeque;
use std::time::Duration;

use seckill_engine::Event;
use tokio::time::Instant;

use super::rows::event_time_ms;

/// A hole in a lane's sequence numbers right after `after_seq`, and since when it is there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gap {
    pub after_seq: u64,
    pub since: Instant,
}

/// What [`Lane::take`] kept of a read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    pub batches: u64,
    pub events: u64,
    /// Holes given up on (waited for longer than the gap wait) to keep these batches.
    pub gaps_skipped: u64,
}

/// One lane: a log with its own sequence numbers and its own cursor in SQL.
#[derive(Debug)]
pub(crate) struct Lane {
    pub id: u32,
    /// The lane is in SQL up to here (the committed cursor).
    pub cursor: u64,
    /// The lane is in `pending` up to here.
    pub read_seq: u64,
    /// Batches read and not yet committed, contiguous from `cursor + 1` to `read_seq`.
    pub pending: VecDeque<(u64, Vec<Event>)>,
    pub pending_events: usize,
    pub gap: Option<Gap>,
}

impl Lane {
    /// A lane taken up at `cursor`, nothing read yet.
    pub fn new(id: u32, cursor: u64) -> Lane {
        Lane {
            id,
            cursor,
            read_seq: cursor,
            pending: VecDeque::new(),
            pending_events: 0,
            gap: None,
        }
    }

    /// Keeps the batches of a read (in sequence order) that continue `read_seq` without a
    /// hole, and those after a hole older than `gap_wait` (an append that failed after taking
    /// its number). Stops at a younger hole: its batch may still be being written.
    pub fn take(
        &mut self,
        batches: Vec<(u64, Vec<Event>)>,
        now: Instant,
        gap_wait: Duration,
    ) -> Taken {
        let mut taken = Taken::default();
        for (seq, events) in batches {
            if seq <= self.read_seq {
                continue;
            }
            if seq != self.read_seq + 1 {
                if !self.hole_is_permanent(seq, now, gap_wait) {
                    break;
                }
                taken.gaps_skipped += 1;
            }
            self.gap = None;
            self.read_seq = seq;
            self.pending_events += events.len();
            taken.events += events.len() as u64;
            taken.batches += 1;
            self.pending.push_back((seq, events));
        }
        taken
    }

    /// Whether the hole before `seq` has lasted `gap_wait`; starts timing a new hole.
    fn hole_is_permanent(&mut self, seq: u64, now: Instant, gap_wait: Duration) -> bool {
        let gap = match self.gap {
            Some(gap) if gap.after_seq == self.read_seq => gap,
            _ => {
                let gap = Gap {
                    after_seq: self.read_seq,
                    since: now,
                };
                self.gap = Some(gap);
                gap
            }
        };
        if now.duration_since(gap.since) < gap_wait {
            return false;
        }
        tracing::error!(
            lane = self.id,
            after_seq = self.read_seq,
            next_seq = seq,
            "the log has no batches between these sequence numbers; skipping the hole"
        );
        true
    }

    /// How many pending batches the next transaction takes: whole batches up to
    /// `events_max`, and at least one.
    pub fn chunk_len(&self, events_max: usize) -> usize {
        let mut events = 0;
        let mut batches = 0;
        for (_, batch) in &self.pending {
            if batches > 0 && events + batch.len() > events_max {
                break;
            }
            events += batch.len();
            batches += 1;
        }
        batches
    }

    /// The first `batches` pending batches (`events` events) are in SQL, up to `cursor_to`.
    pub fn committed(&mut self, batches: usize, events: usize, cursor_to: u64) {
        debug_assert!(cursor_to > self.cursor);
        self.pending.drain(..batches);
        self.pending_events -= events;
        self.cursor = cursor_to;
    }

    /// Takes up again at `cursor` (another flusher moved this lane's cursor): what was read
    /// ahead is dropped and read again from there.
    pub fn restart_at(&mut self, cursor: u64) {
        *self = Lane::new(self.id, cursor);
    }

    /// Events not in SQL: exact for what is read, estimated at `events_per_batch` for the
    /// batches up to `last_seq` not read yet.
    pub fn lag_events(&self, last_seq: u64, events_per_batch: f64) -> u64 {
        let unread_batches = last_seq.saturating_sub(self.read_seq);
        self.pending_events as u64 + (unread_batches as f64 * events_per_batch).round() as u64
    }

    /// The age of the oldest event not in SQL, in ms: of the oldest pending event, or of the
    /// hole being waited for when nothing is pending; 0 when the lane is in SQL up to
    /// `last_seq`.
    pub fn lag_ms(&self, last_seq: u64, now_ms: i64) -> i64 {
        if self.cursor >= last_seq {
            return 0;
        }
        let oldest_ms = self
            .pending
            .iter()
            .flat_map(|(_, events)| events.iter())
            .find_map(event_time_ms);
        match (oldest_ms, self.gap) {
            (Some(oldest_ms), _) => (now_ms - oldest_ms).max(0),
            (None, Some(gap)) => millis(gap.since.elapsed()),
            (None, None) => 0,
        }
    }
}

/// A duration in whole ms, saturating (a hole waited for 292 million years).
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(30);

    fn batches(seqs: &[u64]) -> Vec<(u64, Vec<Event>)> {
        seqs.iter().map(|seq| (*seq, Vec::new())).collect()
    }

    fn pending_seqs(lane: &Lane) -> Vec<u64> {
        lane.pending.iter().map(|(seq, _)| *seq).collect()
    }

    #[test]
    fn a_young_hole_stops_the_read_and_an_old_one_is_skipped() {
        let start = Instant::now();
        let mut lane = Lane::new(2, 4);
        let taken = lane.take(batches(&[3, 5, 7, 8]), start, WAIT);
        assert_eq!(pending_seqs(&lane), [5], "4 is committed, 6 may still come");
        assert_eq!(taken.gaps_skipped, 0);

        let taken = lane.take(batches(&[7, 8]), start + WAIT, WAIT);
        assert_eq!(pending_seqs(&lane), [5, 7, 8]);
        assert_eq!(taken.gaps_skipped, 1);
        assert_eq!(lane.read_seq, 8);
        assert!(lane.gap.is_none());
    }

    #[test]
    fn a_commit_moves_the_cursor_and_a_restart_drops_what_was_read() {
        let mut lane = Lane::new(1, 0);
        lane.take(batches(&[1, 2, 3]), Instant::now(), WAIT);
        lane.committed(2, 0, 2);
        assert_eq!((lane.cursor, pending_seqs(&lane)), (2, vec![3]));
        lane.restart_at(10);
        assert_eq!(
            (lane.cursor, lane.read_seq, lane.pending.len()),
            (10, 10, 0)
        );
        assert_eq!(lane.id, 1);
    }
}
