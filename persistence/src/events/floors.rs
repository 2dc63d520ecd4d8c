//! Several readers of one journal, one trimming floor: the journal may trim a lane only
//! below what every reader (the SQL flusher, each events target) is done with.
//!
//! [`SharedFloors::split`] wraps the journal's [`EventSource`] once and hands out one
//! [`ConsumerSource`] per reader, all made at once: a reader that came later could find
//! the log already trimmed past its cursor. Each view reads straight from the journal;
//! its `set_retain_floor` records that reader's floor, and the journal is told the lowest
//! floor of the lane once every reader has set one for it (until then, one reader that has
//! not said where it stands, a target still starting, holds the lane whole).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use seckill_engine::Event;

use crate::sql::{EventSource, SqlError};

/// The floors of every reader of one journal.
pub struct SharedFloors {
    inner: Arc<dyn EventSource>,
    /// Per lane, each reader's floor (by reader index); `None` until it sets one.
    floors: Mutex<BTreeMap<u32, Vec<Option<u64>>>>,
    readers: usize,
}

impl std::fmt::Debug for SharedFloors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFloors")
            .field("readers", &self.readers)
            .finish_non_exhaustive()
    }
}

impl SharedFloors {
    /// One view of `inner` per reader, `readers` of them (at least one): give each reader
    /// its own, and every reader that will ever read this journal in this process.
    pub fn split(inner: Arc<dyn EventSource>, readers: usize) -> Vec<ConsumerSource> {
        assert!(
            readers > 0,
            "a journal read by nobody needs no shared floors"
        );
        let shared = Arc::new(SharedFloors {
            inner,
            floors: Mutex::new(BTreeMap::new()),
            readers,
        });
        (0..readers)
            .map(|index| ConsumerSource {
                shared: Arc::clone(&shared),
                index,
            })
            .collect()
    }

    /// Records reader `index`'s floor of `lane`, and tells the journal the lowest floor of
    /// the lane once every reader has one.
    fn set(&self, index: usize, lane: u32, seq: u64) {
        let lowest = {
            let mut floors = self.floors.lock().unwrap_or_else(PoisonError::into_inner);
            let slots = floors
                .entry(lane)
                .or_insert_with(|| vec![None; self.readers]);
            slots[index] = Some(seq);
            lowest_of(slots)
        };
        // Outside the lock: the journal may trim now. Two readers racing here may tell it
        // two floors out of order; the journals keep the highest floor they were told,
        // and both were the lowest of every reader at their moment.
        if let Some(lowest) = lowest {
            self.inner.set_retain_floor(lane, lowest);
        }
    }

    /// The floors of `lane` as they stand, by reader (for tests and diagnostics).
    fn floors_of(&self, lane: u32) -> Vec<Option<u64>> {
        let floors = self.floors.lock().unwrap_or_else(PoisonError::into_inner);
        floors
            .get(&lane)
            .cloned()
            .unwrap_or_else(|| vec![None; self.readers])
    }
}

/// The lowest floor, if every reader has set one.
fn lowest_of(slots: &[Option<u64>]) -> Option<u64> {
    slots
        .iter()
        .copied()
        .collect::<Option<Vec<u64>>>()
        .and_then(|floors| floors.into_iter().min())
}

/// One reader's view of the shared journal.
pub struct ConsumerSource {
    shared: Arc<SharedFloors>,
    index: usize,
}

impl std::fmt::Debug for ConsumerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerSource")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl ConsumerSource {
    /// Every reader's floor of `lane`, by reader index (`None`: not set yet).
    pub fn floors_of(&self, lane: u32) -> Vec<Option<u64>> {
        self.shared.floors_of(lane)
    }
}

impl EventSource for ConsumerSource {
    fn lanes(&self) -> Vec<u32> {
        self.shared.inner.lanes()
    }

    fn read_batches(
        &self,
        lane: u32,
        after_seq: u64,
        batches_max: usize,
    ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
        self.shared.inner.read_batches(lane, after_seq, batches_max)
    }

    fn last_seq(&self, lane: u32) -> u64 {
        self.shared.inner.last_seq(lane)
    }

    fn set_retain_floor(&self, lane: u32, seq: u64) {
        self.shared.set(self.index, lane, seq);
    }

    fn deployment_id(&self) -> Option<String> {
        self.shared.inner.deployment_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal that only remembers the floors it was told.
    #[derive(Default)]
    struct Floors {
        told: Mutex<Vec<(u32, u64)>>,
    }

    impl EventSource for Floors {
        fn lanes(&self) -> Vec<u32> {
            vec![1, 2]
        }
        fn read_batches(
            &self,
            _lane: u32,
            _after_seq: u64,
            _batches_max: usize,
        ) -> Result<Vec<(u64, Vec<Event>)>, SqlError> {
            Ok(Vec::new())
        }
        fn last_seq(&self, lane: u32) -> u64 {
            u64::from(lane) * 100
        }
        fn set_retain_floor(&self, lane: u32, seq: u64) {
            self.told.lock().expect("lock").push((lane, seq));
        }
        fn deployment_id(&self) -> Option<String> {
            Some("dep".into())
        }
    }

    fn told(journal: &Floors) -> Vec<(u32, u64)> {
        std::mem::take(&mut *journal.told.lock().expect("lock"))
    }

    fn split(readers: usize) -> (Arc<Floors>, Vec<ConsumerSource>) {
        let journal = Arc::new(Floors::default());
        let views = SharedFloors::split(journal.clone(), readers);
        (journal, views)
    }

    #[test]
    fn nothing_is_trimmed_until_every_reader_said_where_it_stands() {
        let (journal, views) = split(3);
        views[0].set_retain_floor(1, 50);
        views[1].set_retain_floor(1, 70);
        assert!(
            told(&journal).is_empty(),
            "the third reader has not set a floor"
        );
        views[2].set_retain_floor(1, 60);
        assert_eq!(told(&journal), [(1, 50)]);
        assert_eq!(views[0].floors_of(1), [Some(50), Some(70), Some(60)]);
    }

    #[test]
    fn the_slowest_reader_holds_the_floor() {
        let (journal, views) = split(2);
        views[0].set_retain_floor(1, 5);
        views[1].set_retain_floor(1, 5);
        views[1].set_retain_floor(1, 900);
        views[1].set_retain_floor(1, 1_000);
        assert_eq!(told(&journal), [(1, 5), (1, 5), (1, 5)]);
        views[0].set_retain_floor(1, 400);
        assert_eq!(told(&journal), [(1, 400)]);
    }

    #[test]
    fn lanes_have_floors_of_their_own() {
        let (journal, views) = split(2);
        views[0].set_retain_floor(1, 10);
        views[1].set_retain_floor(2, 20);
        assert!(
            told(&journal).is_empty(),
            "each lane lacks one reader's floor"
        );
        views[1].set_retain_floor(1, 30);
        views[0].set_retain_floor(2, 40);
        assert_eq!(told(&journal), [(1, 10), (2, 20)]);
    }

    #[test]
    fn a_single_reader_passes_straight_through_and_reads_are_the_journals() {
        let (journal, views) = split(1);
        views[0].set_retain_floor(2, 7);
        assert_eq!(told(&journal), [(2, 7)]);
        assert_eq!(views[0].lanes(), [1, 2]);
        assert_eq!(views[0].last_seq(2), 200);
        assert_eq!(views[0].deployment_id().as_deref(), Some("dep"));
    }
}
