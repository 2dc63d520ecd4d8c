//! The link between nodes over NATS (cluster plan, Q4 and step 8): [`Forwarder`] hands calls
//! to the node that owns their partition, many to a frame; [`RpcServer`] runs them on the
//! owner's engine and answers many to a frame.
//!
//! - Requests go to `<prefix>.rpc.<owner>`; answers to the sender's own reply subject,
//!   `<prefix>.rpcr.<node>.<nonce>`, subscribed once. Plain publishes, not NATS requests:
//!   a request gets one reply, and one slow call would hold back a whole frame.
//! - One link task per owner takes the first queued call and whatever else is queued (up
//!   to [`CALLS_PER_FRAME_MAX`]) into one frame, so under load a frame carries many calls
//!   with no timer in the way, and alone a call leaves at once.
//! - The owner catches its catalog up to the sender's position before it runs a frame (a
//!   promotion just created on the sender is found); past [`CATALOG_WAIT`] it refuses the
//!   frame's calls as `Unavailable` (nothing done) rather than answer "not found".
//! - The owner runs the calls at once (each to its end, whatever becomes of the sender:
//!   engine calls are cancel-safe) and answers as they finish, whatever is ready together
//!   in one frame.
//!
//! What the sender learns (the edge maps it to api.md's codes): the owner's answer as it
//! gave it; [`ForwardError::NotSent`] when nothing left this node (not connected, the link
//! closed): nothing was done; [`ForwardError::Timeout`] when the frame left and no answer
//! came in time: a write's outcome is unknown, a read changed nothing.
//!
//! Nodes trust each other's frames: the NATS account they share must be private.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::Client;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use seckill_engine::{Admission, Engine, Error, OneClaim};
use tokio::sync::{mpsc, oneshot, watch};

use super::subscribe_now;
use super::wire::{
    decode_answers, decode_frame, encode_answers, encode_frame, Answer, AnswerFrame, Call, Frame,
    Op, WIRE_VERSION,
};
use crate::jetstream::ClusterError;

/// The most calls one frame carries.
pub const CALLS_PER_FRAME_MAX: usize = 256;
/// How long an owner waits for its catalog to reach a frame's position.
pub const CATALOG_WAIT: Duration = Duration::from_millis(500);

/// The subject `node` takes calls on.
pub fn rpc_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.rpc.{node}")
}

/// Why a forwarded call has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// Nothing left this node: nothing was done.
    #[error("the call was not sent to {owner}: {reason}")]
    NotSent { owner: String, reason: String },
    /// The frame left and no answer came in time: a write may have been done.
    #[error("{owner} did not answer in time")]
    Timeout { owner: String, write: bool },
}

/// Counts of what a [`Forwarder`] sent and heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    pub frames_sent: u64,
    pub calls_sent: u64,
    /// Answers that came after their call stopped waiting.
    pub late_answers: u64,
}

/// The sending side of the link. See the module docs.
pub struct Forwarder {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("node", &self.shared.me)
            .finish_non_exhaustive()
    }
}

struct Shared {
    client: Client,
    prefix: String,
    me: String,
    reply_to: String,
    catalog_seq: Box<dyn Fn() -> u64 + Send + Sync>,
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    links: Mutex<HashMap<String, mpsc::UnboundedSender<Call>>>,
    frames_sent: AtomicU64,
    calls_sent: AtomicU64,
    late_answers: AtomicU64,
}

impl Forwarder {
    /// Subscribes to this node's reply subject and starts the dispatcher on the current
    /// Tokio runtime. `catalog_seq` tells this node's catalog position (what the owner
    /// catches up to before it runs a frame).
    pub async fn start(
        client: &Client,
        prefix: &str,
        me: &str,
        catalog_seq: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Result<Forwarder, ClusterError> {
        let reply_to = format!("{prefix}.rpcr.{me}.{:016x}", rand::random::<u64>());
        let answers = subscribe_now(client, &reply_to).await?;
        let shared = Arc::new(Shared {
            client: client.clone(),
            prefix: prefix.to_owned(),
            me: me.to_owned(),
            reply_to,
            catalog_seq: Box::new(catalog_seq),
            next_id: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            frames_sent: AtomicU64::new(0),
            calls_sent: AtomicU64::new(0),
            late_answers: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(dispatch(Arc::clone(&shared), answers, stopped));
        Ok(Forwarder { shared, stop })
    }

    /// Hands `op` to `owner` and waits `within` for its answer.
    pub async fn call(
        &self,
        owner: &str,
        op: Op,
        within: Duration,
    ) -> Result<Answer, ForwardError> {
        let write = op.is_write();
        let not_sent = |reason: &str| ForwardError::NotSent {
            owner: owner.to_owned(),
            reason: reason.to_owned(),
        };
        if self.shared.client.connection_state() != State::Connected {
            return Err(not_sent("this node is not connected to NATS"));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (answered, answer) = oneshot::channel();
        self.shared.lock_waiting().insert(id, answered);
        // However this call ends (answered, timed out, or its caller gone), its entry goes.
        let _waiting = Waiting {
            shared: &self.shared,
            id,
        };
        if self.shared.link(owner).send(Call { id, op }).is_err() {
            return Err(not_sent("the link to the owner stopped"));
        }
        match tokio::time::timeout(within, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            // The waiter was dropped: the frame was never published.
            Ok(Err(_)) => Err(not_sent("the frame could not be published")),
            Err(_) => Err(ForwardError::Timeout {
                owner: owner.to_owned(),
                write,
            }),
        }
    }

    pub fn stats(&self) -> LinkStats {
        LinkStats {
            frames_sent: self.shared.frames_sent.load(Ordering::Relaxed),
            calls_sent: self.shared.calls_sent.load(Ordering::Relaxed),
            late_answers: self.shared.late_answers.load(Ordering::Relaxed),
        }
    }
}

/// A call's entry in the waiting table, removed when the call ends.
struct Waiting<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shared.lock_waiting().remove(&self.id);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        // The link tasks end once their senders are gone.
        self.shared
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Shared {
    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Answer>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The queue of `owner`'s link, started on first use.
    fn link(self: &Arc<Self>, owner: &str) -> mpsc::UnboundedSender<Call> {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(link) = links.get(owner).filter(|link| !link.is_closed()) {
            return link.clone();
        }
        let (calls, queue) = mpsc::unbounded_channel();
        tokio::spawn(run_link(Arc::clone(self), owner.to_owned(), queue));
        links.insert(owner.to_owned(), calls.clone());
        calls
    }
}

/// Sends `owner`'s queued calls, whatever is queued together in one frame.
async fn run_link(shared: Arc<Shared>, owner: String, mut queue: mpsc::UnboundedReceiver<Call>) {
    let subject = rpc_subject(&shared.prefix, &owner);
    while let Some(first) = queue.recv().await {
        let mut calls = vec![first];
        while calls.len() < CALLS_PER_FRAME_MAX {
            match queue.try_recv() {
                Ok(call) => calls.push(call),
                Err(_) => break,
            }
        }
        let ids: Vec<u64> = calls.iter().map(|call| call.id).collect();
        let frame = Frame {
            version: WIRE_VERSION,
            from: shared.me.clone(),
            reply_to: shared.reply_to.clone(),
            catalog_seq: (shared.catalog_seq)(),
            calls,
        };
        let published = shared
            .client
            .publish(subject.clone(), encode_frame(&frame).into())
            .await;
        match published {
            Ok(()) => {
                shared.frames_sent.fetch_add(1, Ordering::Relaxed);
                shared
                    .calls_sent
                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(%owner, %error, "a frame could not be published; its calls were not sent");
                // Their waiters dropped: each call answers "not sent".
                let mut waiting = shared.lock_waiting();
                for id in ids {
                    waiting.remove(&id);
                }
            }
        }
    }
}

/// Hands each answer to its waiting call.
async fn dispatch(
    shared: Arc<Shared>,
    mut answers: async_nats::Subscriber,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            message = answers.next() => message,
            _ = stopped.changed() => return,
        };
        let Some(message) = message else { return };
        let frame = match decode_answers(&message.payload) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, "an answer frame was dropped");
                continue;
            }
        };
        let mut waiting = shared.lock_waiting();
        for (id, answer) in frame.answers {
            match waiting.remove(&id) {
                Some(waiter) => {
                    let _ = waiter.send(answer);
                }
                None => {
                    shared.late_answers.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The serving side of the link: runs other nodes' calls on this node's engine. Stops on
/// [`RpcServer::stop`] or when dropped.
#[derive(Debug)]
pub struct RpcServer {
    stop: watch::Sender<bool>,
}

impl RpcServer {
    /// Takes calls for `node` on the current Tokio runtime.
    pub async fn start(
        client: &Client,
        prefix: &str,
        node: &str,
        engine: Engine,
    ) -> Result<RpcServer, ClusterError> {
        let calls = subscribe_now(client, &rpc_subject(prefix, node)).await?;
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(client.clone(), calls, engine, stopped));
        Ok(RpcServer { stop })
    }

    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    client: Client,
    mut calls: async_nats::Subscriber,
    engine: Engine,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            message = calls.next() => message,
            _ = stopped.changed() => return,
        };
        let Some(message) = message else { return };
        match decode_frame(&message.payload) {
            Ok(frame) => {
                tokio::spawn(answer_frame(client.clone(), engine.clone(), frame));
            }
            Err(error) => {
                metrics::counter!("seckill_rpc_frames_refused_total").increment(1);
                tracing::warn!(%error, "a call frame was refused");
            }
        }
    }
}

/// Runs a frame's calls and answers them as they finish.
async fn answer_frame(client: Client, engine: Engine, frame: Frame) {
    metrics::counter!("seckill_rpc_calls_served_total").increment(frame.calls.len() as u64);
    let behind = !caught_up(&engine, frame.catalog_seq).await;
    let mut running: FuturesUnordered<_> = frame
        .calls
        .into_iter()
        .map(|call| {
            let engine = engine.clone();
            async move {
                let answer = if behind {
                    Answer::Refused(Error::Unavailable(
                        "this node's catalog is behind the caller's; retry".into(),
                    ))
                } else {
                    run(&engine, call.op).await
                };
                (call.id, answer)
            }
        })
        .collect();
    while let Some(first) = running.next().await {
        let mut answers = vec![first];
        while answers.len() < CALLS_PER_FRAME_MAX {
            match running.next().now_or_never() {
                Some(Some(answer)) => answers.push(answer),
                _ => break,
            }
        }
        publish_answers(&client, &frame.reply_to, &frame.from, answers).await;
    }
}

/// The largest answer frame sent whole: a frame of big answers (stats of large promotions)
/// past NATS's message limit would lose every answer in it, so such a frame goes one answer
/// to a message instead.
const ANSWER_FRAME_BYTES_MAX: usize = 256 * 1024;

async fn publish_answers(client: &Client, reply_to: &str, from: &str, answers: Vec<(u64, Answer)>) {
    let whole_frame = AnswerFrame {
        version: WIRE_VERSION,
        answers,
    };
    let whole = encode_answers(&whole_frame);
    let payloads = if whole.len() <= ANSWER_FRAME_BYTES_MAX || whole_frame.answers.len() == 1 {
        vec![whole]
    } else {
        whole_frame
            .answers
            .into_iter()
            .map(|answer| {
                encode_answers(&AnswerFrame {
                    version: WIRE_VERSION,
                    answers: vec![answer],
                })
            })
            .collect()
    };
    for payload in payloads {
        if let Err(error) = client.publish(reply_to.to_owned(), payload.into()).await {
            // The calls are done; their senders time out and learn the outcome by repeating.
            tracing::warn!(to = %from, %error, "answers could not be published");
        }
    }
}

/// Whether the engine's catalog reaches `seq`, catching up for at most [`CATALOG_WAIT`].
async fn caught_up(engine: &Engine, seq: u64) -> bool {
    if engine.catalog_seq() >= seq {
        return true;
    }
    let waited = tokio::time::timeout(CATALOG_WAIT, async {
        while engine.catalog_seq() < seq {
            if engine.catch_up_catalog().await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            } else if engine.catalog_seq() < seq {
                // The log is ahead of what it showed this node yet.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    waited.is_ok()
}

/// One call on `engine`, as the owner runs a forwarded one (also for a node that finds
/// itself the owner after all).
pub async fn run(engine: &Engine, op: Op) -> Answer {
    let refused = Answer::Refused;
    match op {
        Op::Token {
            promotion_id,
            sku,
            user_id,
            claim,
            human_check_passed,
        } => {
            let claims = OneClaim(claim);
            let admission = Admission {
                claims: &claims,
                human_check_passed,
            };
            engine
                .issue_token_admitted(&promotion_id, &sku, &user_id, admission)
                .await
                .map_or_else(refused, Answer::Token)
        }
        Op::Purchase {
            promotion_id,
            sku,
            user_id,
            request,
            claim,
        } => engine
            .purchase_admitted(&promotion_id, &sku, &user_id, request, &OneClaim(claim))
            .await
            .map_or_else(refused, Answer::Purchased),
        Op::ReadOrder { order_id, user_id } => engine
            .order(&order_id, user_id.as_deref())
            .await
            .map_or_else(refused, Answer::Order),
        Op::Cancel { order_id, user_id } => engine
            .cancel(&order_id, user_id.as_deref())
            .await
            .map_or_else(refused, Answer::Order),
        Op::Pay {
            order_id,
            payment_ref,
            amount_cents,
        } => engine
            .pay(&order_id, &payment_ref, amount_cents)
            .await
            .map_or_else(refused, Answer::Order),
        Op::StatsOwned { promotion_id } => engine
            .promotion_stats_owned(&promotion_id)
            .await
            .map_or_else(refused, Answer::Stats),
    }
}
