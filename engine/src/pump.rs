//! Replies delivered on the caller's own thread, one wake-up per batch.
//!
//! A shard answers a batch of requests at once. Completing each caller's oneshot from the
//! shard thread makes the caller's runtime schedule the woken task from a foreign thread,
//! and a single-threaded tokio runtime then wakes its driver with a syscall per task. A
//! thread that runs many callers (an HTTP worker) can install a [`ReplyPump`] instead: the
//! shard hands it the batch's answers and wakes it once, and the pump completes the oneshots
//! on that thread, where waking a task is a push onto the local run queue.
//!
//! Callers on threads without a pump (tests, embedders) are answered directly.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::sync::oneshot;

use crate::error::Result;

type Delivery = Box<dyn FnOnce() + Send>;

/// The answers waiting for one thread's pump task, and how to wake it.
#[derive(Default)]
pub struct ReplyPump {
    inbox: Mutex<Inbox>,
}

#[derive(Default)]
struct Inbox {
    deliveries: Vec<Delivery>,
    /// The pump task's waker while it waits; taken by whoever wakes it.
    waker: Option<Waker>,
}

impl std::fmt::Debug for ReplyPump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyPump").finish_non_exhaustive()
    }
}

thread_local! {
    static THIS_THREAD: RefCell<Option<Arc<ReplyPump>>> = const { RefCell::new(None) };
}

impl ReplyPump {
    /// Makes this thread's engine calls answered through a pump, and spawns the pump's task
    /// on the current tokio runtime. Call it once per thread, from inside the runtime that
    /// runs the thread's requests (a current-thread runtime, for the pump to help).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn install_on_this_thread() {
        let pump = Arc::new(ReplyPump::default());
        THIS_THREAD.with(|slot| *slot.borrow_mut() = Some(Arc::clone(&pump)));
        tokio::spawn(PumpTask { pump });
    }

    /// Adds a batch's answers for this pump and wakes its task if it is waiting.
    fn deliver(&self, deliveries: impl IntoIterator<Item = Delivery>) {
        let waker = {
            let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
            inbox.deliveries.extend(deliveries);
            inbox.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Runs the answers handed to its pump, on the pump's thread, for as long as the runtime
/// lives.
struct PumpTask {
    pump: Arc<ReplyPump>,
}

impl Future for PumpTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let deliveries = {
                let mut inbox = self
                    .pump
                    .inbox
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                // Registered under the same lock the shard takes to add answers: an answer
                // added after this look finds the waker and wakes the task.
                if inbox.deliveries.is_empty() {
                    inbox.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                std::mem::take(&mut inbox.deliveries)
            };
            for delivery in deliveries {
                delivery();
            }
        }
    }
}

/// Where a shard sends one answer: straight to the caller's oneshot, or through the
/// caller's thread's pump.
pub(crate) struct Responder<T> {
    tx: oneshot::Sender<Result<T>>,
    pump: Option<Arc<ReplyPump>>,
}

impl<T> std::fmt::Debug for Responder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("pumped", &self.pump.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Responder<T> {
    /// A oneshot for an answer, routed through this thread's pump if it has one.
    pub(crate) fn channel() -> (Responder<T>, oneshot::Receiver<Result<T>>) {
        let (tx, rx) = oneshot::channel();
        let pump = THIS_THREAD.with(|slot| slot.borrow().clone());
        (Responder { tx, pump }, rx)
    }

    /// Answers now, or queues the answer in `batch` for the caller's pump.
    pub(crate) fn respond(self, result: Result<T>, batch: &mut PumpBatch) {
        match self.pump {
            None => drop(self.tx.send(result)),
            Some(pump) => {
                let tx = self.tx;
                batch.add(pump, Box::new(move || drop(tx.send(result))));
            }
        }
    }
}

/// The answers of one shard batch, grouped by pump, handed over by [`PumpBatch::flush`].
#[derive(Default)]
pub(crate) struct PumpBatch {
    /// Few pumps (one per HTTP worker), so a list beats a map.
    by_pump: Vec<(Arc<ReplyPump>, Vec<Delivery>)>,
}

impl PumpBatch {
    fn add(&mut self, pump: Arc<ReplyPump>, delivery: Delivery) {
        match self.by_pump.iter_mut().find(|(p, _)| Arc::ptr_eq(p, &pump)) {
            Some((_, deliveries)) => deliveries.push(delivery),
            None => self.by_pump.push((pump, vec![delivery])),
        }
    }

    /// Hands every queued answer to its pump: one lock and at most one wake-up per pump.
    pub(crate) fn flush(&mut self) {
        for (pump, deliveries) in self.by_pump.drain(..) {
            pump.deliver(deliveries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_arrive_through_the_pump_and_directly() {
        // Without a pump: answered directly.
        let (responder, rx) = Responder::<u32>::channel();
        assert!(responder.pump.is_none());
        let mut batch = PumpBatch::default();
        responder.respond(Ok(1), &mut batch);
        batch.flush();
        assert_eq!(rx.await.expect("answered").expect("ok"), 1);

        // With a pump: queued, then delivered by the pump task after the flush, from
        // another thread, as a shard does.
        ReplyPump::install_on_this_thread();
        let mut waiting = Vec::new();
        let mut responders = Vec::new();
        for i in 0..100u32 {
            let (responder, rx) = Responder::<u32>::channel();
            assert!(responder.pump.is_some());
            responders.push((i, responder));
            waiting.push((i, rx));
        }
        std::thread::spawn(move || {
            let mut batch = PumpBatch::default();
            for (i, responder) in responders {
                responder.respond(Ok(i), &mut batch);
                if i % 10 == 9 {
                    batch.flush();
                }
            }
            batch.flush();
        });
        for (i, rx) in waiting {
            // A lost wake-up would leave the answer in the inbox for ever: fail instead of
            // hanging (the bound is generous; the answers arrive in microseconds).
            let answer = tokio::time::timeout(std::time::Duration::from_secs(10), rx)
                .await
                .expect("the pump delivered the answer");
            assert_eq!(answer.expect("answered").expect("ok"), i);
        }
        THIS_THREAD.with(|slot| *slot.borrow_mut() = None);
    }
}
