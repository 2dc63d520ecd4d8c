//! Every node applies the catalog log's changes as they land (cluster plan, Q2): a task
//! reads the log past the engine's catalog and hands what it read to the engine
//! (`Engine::apply_catalog`) whenever a message is published on the catalog stream's
//! subject, which every node's append is, and every [`POLL_EVERY`] besides, for a wake-up
//! that was missed (a reconnect, a slow consumer). The reads run in the task, never on the
//! engine's control thread, so a slow or absent NATS holds up no partition move.
//!
//! Core NATS delivers the stream's messages to a plain subscriber as they are published, so
//! no subject of our own is needed for the wake-up; what the engine applies still comes
//! from the stream, in order, never from the wake-up's payload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use seckill_engine::Engine;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::catalog_acks::{CatalogAcks, ANNOUNCE_EVERY};
use crate::jetstream::{ClusterError, JetStreamCatalogLog, Names, CATALOG_LANE};

/// How often the tail catches up without a wake-up.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// How soon the tail looks again after a wake-up that found nothing new yet.
const RECHECK_AFTER_WAKEUP: Duration = Duration::from_millis(10);

/// The running tail; [`CatalogTail::stop`] ends it.
#[derive(Debug)]
pub struct CatalogTail {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl CatalogTail {
    /// Subscribes to the catalog stream's subject of `names` on `client` and starts the task
    /// on the current runtime. With `acks`, the task announces the engine's position after
    /// each catch-up that moved it, and every [`ANNOUNCE_EVERY`] besides.
    pub async fn start(
        client: &async_nats::Client,
        names: &Names,
        log: Arc<JetStreamCatalogLog>,
        engine: Engine,
        acks: Option<Arc<CatalogAcks>>,
    ) -> Result<CatalogTail, ClusterError> {
        let subject = names.subject(CATALOG_LANE);
        // An append from here on wakes the tail.
        let wakeups = super::subscribe_now(client, &subject).await?;
        let (stop, stopped) = watch::channel(false);
        let tail = Tail { log, engine, acks };
        let task = tokio::spawn(run(wakeups, tail, stopped));
        Ok(CatalogTail { stop, task })
    }

    /// Stops the task and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What the task works with.
struct Tail {
    log: Arc<JetStreamCatalogLog>,
    engine: Engine,
    acks: Option<Arc<CatalogAcks>>,
}

async fn run(mut wakeups: async_nats::Subscriber, tail: Tail, mut stopped: watch::Receiver<bool>) {
    let Tail { log, engine, acks } = &tail;
    let mut announced_at: Option<Instant> = None;
    let mut failing = false;
    let mut next_look = POLL_EVERY;
    loop {
        let woken = tokio::select! {
            _ = stopped.changed() => return,
            // A closed subscription wakes nobody: the timer carries on alone.
            () = async {
                if wakeups.next().await.is_none() {
                    std::future::pending::<()>().await;
                }
            } => true,
            () = tokio::time::sleep(next_look) => false,
        };
        let before = engine.catalog_seq();
        // Every wake-up that queued up meanwhile is answered by this one catch-up.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, wakeups.next()).await {}
        match catch_up(log, engine).await {
            Ok(seq) if failing => {
                tracing::info!(seq, "the catalog log is read again");
                failing = false;
            }
            Ok(_) => {}
            Err(error) if !failing => {
                tracing::warn!(%error, "the catalog log cannot be read; trying again");
                failing = true;
            }
            Err(_) => {}
        }
        if let Some(acks) = acks {
            let moved = engine.catalog_seq() != before;
            if moved || announced_at.is_none_or(|at| at.elapsed() >= ANNOUNCE_EVERY) {
                acks.announce(engine.catalog_seq()).await;
                announced_at = Some(Instant::now());
            }
        }
        // The wake-up reaches subscribers as the stream takes the message, which may be
        // before the stream reports it stored: look again soon when it brought nothing.
        next_look = next_look_after(woken, engine.catalog_seq() != before, next_look);
        if *stopped.borrow() {
            return;
        }
    }
}

/// How long to sleep before the next look. A wake-up that found nothing new looks again
/// after [`RECHECK_AFTER_WAKEUP`], then after twice as long each time nothing is found,
/// up to [`POLL_EVERY`]; anything found, or a plain poll, keeps to [`POLL_EVERY`].
fn next_look_after(woken: bool, moved: bool, last: Duration) -> Duration {
    match (woken, moved) {
        (_, true) => POLL_EVERY,
        (true, false) => RECHECK_AFTER_WAKEUP,
        (false, false) if last < POLL_EVERY => (last * 2).min(POLL_EVERY),
        (false, false) => POLL_EVERY,
    }
}

/// Reads what the log holds past the engine's catalog, if anything, and has the engine
/// apply it; the sequence the catalog holds then.
async fn catch_up(log: &JetStreamCatalogLog, engine: &Engine) -> Result<u64, String> {
    let applied = engine.catalog_seq();
    let last = log.last_seq().await.map_err(|e| e.to_string())?;
    if last == applied {
        return Ok(applied);
    }
    // Below what the engine applied too: the read refuses a stream made again.
    let entries = log
        .read_entries_after(applied)
        .await
        .map_err(|e| e.to_string())?;
    engine
        .apply_catalog(entries)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_up_that_found_nothing_looks_again_sooner_then_backs_off_to_the_poll() {
        let first = next_look_after(true, false, POLL_EVERY);
        assert_eq!(first, RECHECK_AFTER_WAKEUP);
        let second = next_look_after(false, false, first);
        assert_eq!(second, RECHECK_AFTER_WAKEUP * 2);
        let mut look = second;
        for _ in 0..10 {
            look = next_look_after(false, false, look);
        }
        assert_eq!(look, POLL_EVERY, "backs off to the poll and stays there");
        assert_eq!(
            next_look_after(false, true, second),
            POLL_EVERY,
            "found: poll again"
        );
    }
}
