//! The stream of batches that `Engine::start` replays after the snapshot.
//!
//! A reader thread reads and decodes the log in chunks while the engine applies the chunk
//! before (two cores instead of one on the critical path of a restart), through a channel of
//! two chunks, so memory stays bounded however long the log is. The stream owns nothing that
//! borrows the database, so it is a plain `Iterator + Send` for the engine.

use std::fmt;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use seckill_engine::{Event, JournalError};

use super::error::PersistenceError;
use super::store::Store;

/// Bounds on one read of the log (batches, and stored bytes: a batch holds up to a shard's
/// whole batch of requests), which bound the memory of recovery.
const RECOVERY_CHUNK_BATCHES: usize = 1024;
const RECOVERY_CHUNK_BYTES: usize = 4 << 20;
/// Decoded chunks waiting for the engine.
const RECOVERY_CHUNKS_AHEAD: usize = 2;

type Chunk = Result<Vec<(u64, Vec<Event>)>, PersistenceError>;

pub(super) struct LogStream {
    /// `None` only while dropping.
    chunks: Option<Receiver<Chunk>>,
    reader: Option<JoinHandle<()>>,
    buffer: std::vec::IntoIter<(u64, Vec<Event>)>,
    last_seq: u64,
    started: Instant,
    finished: bool,
}

impl fmt::Debug for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStream")
            .field("last_seq", &self.last_seq)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl LogStream {
    /// Streams `from_seq..=last_seq`; `started` is when opening began (recovery time).
    pub(super) fn start(
        store: Arc<Store>,
        from_seq: u64,
        last_seq: u64,
        started: Instant,
    ) -> Result<Self, PersistenceError> {
        let (sender, chunks) = sync_channel::<Chunk>(RECOVERY_CHUNKS_AHEAD);
        let reader = std::thread::Builder::new()
            .name("seckill-journal-recovery".into())
            .spawn(move || {
                let mut next_seq = from_seq;
                while next_seq <= last_seq {
                    let chunk = match store.read_range(
                        next_seq,
                        last_seq,
                        RECOVERY_CHUNK_BATCHES,
                        RECOVERY_CHUNK_BYTES,
                    ) {
                        Ok(batches) => match batches.last() {
                            Some((last, _)) => {
                                next_seq = last + 1;
                                Ok(batches)
                            }
                            None => Err(PersistenceError::Io(format!(
                                "corrupt log: batches {next_seq}..={last_seq} are missing"
                            ))),
                        },
                        Err(error) => Err(error),
                    };
                    let failed = chunk.is_err();
                    // A closed channel: the engine stopped reading (it failed); so do we.
                    if sender.send(chunk).is_err() || failed {
                        break;
                    }
                }
                // The database handle goes before the channel closes, so that once the
                // engine has seen the end, dropping the journal really closes the database.
                drop(store);
                drop(sender);
            })
            .map_err(|e| PersistenceError::Io(format!("cannot start the recovery reader: {e}")))?;
        Ok(LogStream {
            chunks: Some(chunks),
            reader: Some(reader),
            buffer: Vec::new().into_iter(),
            last_seq,
            started,
            finished: false,
        })
    }

    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            let seconds = self.started.elapsed().as_secs_f64();
            metrics::histogram!("seckill_recovery_seconds").record(seconds);
            tracing::info!(
                recovery_seconds = seconds,
                last_seq = self.last_seq,
                "journal replayed"
            );
        }
    }
}

impl Iterator for LogStream {
    type Item = Result<(u64, Vec<Event>), JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = self.buffer.next() {
                return Some(Ok(batch));
            }
            if self.finished {
                return None;
            }
            let Some(chunks) = &self.chunks else {
                return None;
            };
            match chunks.recv() {
                Ok(Ok(batches)) => self.buffer = batches.into_iter(),
                Ok(Err(error)) => {
                    // One error ends the stream: the engine refuses to start on a broken log.
                    self.finished = true;
                    return Some(Err(error.into()));
                }
                Err(_) => {
                    self.finish();
                    return None;
                }
            }
        }
    }
}

impl Drop for LogStream {
    /// Closes the channel (a reader blocked on it stops) and waits for the reader, so that
    /// once the stream is gone nothing holds the database any more: a journal dropped after
    /// it really closes, and the directory can be opened again at once.
    fn drop(&mut self) {
        drop(self.chunks.take());
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
