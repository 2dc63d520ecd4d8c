//! A shard: one thread, the single owner of its items.
//!
//! The loop is small on purpose. It takes a first command from its bounded mailbox (or
//! wakes on the expiry tick), drains more up to the batch bound, decides each one in memory
//! against the state as the earlier ones left it, hands all the batch's events to the
//! journal in one call, republishes the gates, and only then answers anybody. A journal
//! failure answers the whole batch "unavailable" and fences the shard: its memory is ahead of
//! the disk, so it must not say yes to anything again until a restart rebuilds it from the log.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;

use crate::catalog::{ItemGate, PromotionEntry};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::item::{DecideContext, Decision, ItemState};
use crate::model::{ItemStats, Order, OrderStatus, PurchaseRequest, Purchased, TokenGrant};
use crate::ports::{Clock, Journal, OrderSink};
use crate::pump::{PumpBatch, Responder};

/// One request to a shard, with the channel its answer goes back on.
#[derive(Debug)]
pub(crate) enum Command {
    /// Journal a promotion-level event (created, started, stopped) on the promotion's home
    /// shard. The shard does not interpret it: the engine applies it to the catalog after.
    JournalCatalog {
        event: Event,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Take ownership of this promotion's items that route to this shard.
    Install {
        entry: Arc<PromotionEntry>,
        keys: Vec<u64>,
        reply: oneshot::Sender<Result<()>>,
    },
    Token {
        key: u64,
        user_id: String,
        reply: Responder<TokenGrant>,
    },
    Purchase {
        key: u64,
        user_id: String,
        request: PurchaseRequest,
        reply: Responder<Purchased>,
    },
    ReadOrder {
        key: u64,
        seq: u64,
        user_id: Option<String>,
        reply: Responder<Order>,
    },
    Cancel {
        key: u64,
        seq: u64,
        user_id: Option<String>,
        reply: Responder<Order>,
    },
    Pay {
        key: u64,
        seq: u64,
        payment_ref: String,
        reply: Responder<Order>,
    },
    Stats {
        keys: Vec<u64>,
        reply: oneshot::Sender<Result<Vec<ItemStats>>>,
    },
    /// Finish the batch, hand over a copy of every item, then wait at the barrier until the
    /// snapshot taker has the whole engine's copy (a consistent cut of the log).
    Pause {
        images: Sender<Vec<ItemState>>,
        barrier: Arc<Barrier>,
    },
    /// Run the expiry pass now (tests with a manual clock use it instead of waiting).
    Tick { reply: oneshot::Sender<Result<()>> },
    /// Finish the batch and stop the thread.
    Shutdown { reply: oneshot::Sender<Result<()>> },
}

/// An item owned by this shard, with the shared views it republishes into.
#[derive(Debug)]
pub(crate) struct Slot {
    pub state: ItemState,
    pub entry: Arc<PromotionEntry>,
    pub gate: Arc<ItemGate>,
    /// How many of `state.orders` have their user in `gate.buyers`.
    pub buyers_published: usize,
}

impl Slot {
    fn publish(&mut self) {
        self.gate.publish(&self.state, &mut self.buyers_published);
    }
}

/// A shard's state without its thread: what recovery builds and the loop then owns.
#[derive(Debug, Default)]
pub(crate) struct ShardState {
    pub items: FxHashMap<u64, Slot>,
    /// (pay_before_ms, item key, order seq) of every order placed; stale entries (orders
    /// since paid or cancelled) are skipped when they come up.
    deadlines: BinaryHeap<Reverse<(i64, u64, u64)>>,
}

impl ShardState {
    /// Creates fresh items for the `keys` of `entry` (those routed here).
    pub fn install(&mut self, entry: &Arc<PromotionEntry>, keys: &[u64], token_ttl_ms: i64) {
        for (gate, item) in entry.gates.iter().zip(&entry.record.items) {
            if !keys.contains(&gate.key) {
                continue;
            }
            let state = ItemState::new(
                gate.key,
                &entry.record.id,
                item.clone(),
                entry.record.payment_timeout_s,
                entry.record.require_token,
                entry.record.token_multiplier,
                token_ttl_ms,
            );
            self.insert(state, entry, gate);
        }
    }

    /// Takes an item back from a snapshot.
    pub fn restore(&mut self, state: ItemState, entry: &Arc<PromotionEntry>, gate: &Arc<ItemGate>) {
        for (user_id, buyer) in &state.buyers {
            if buyer.strikes > 0 {
                entry.add_strikes(user_id.clone(), buyer.strikes);
            }
        }
        for (index, order) in state.orders.iter().enumerate() {
            if order.status == OrderStatus::PendingPayment {
                self.deadlines
                    .push(Reverse((order.pay_before_ms, state.key, index as u64 + 1)));
            }
        }
        self.insert(state, entry, gate);
    }

    fn insert(&mut self, state: ItemState, entry: &Arc<PromotionEntry>, gate: &Arc<ItemGate>) {
        let mut slot = Slot {
            state,
            entry: Arc::clone(entry),
            gate: Arc::clone(gate),
            buyers_published: 0,
        };
        slot.publish();
        let previous = self.items.insert(slot.state.key, slot);
        assert!(previous.is_none(), "item installed twice");
    }

    /// Applies one item event (live or replayed) to its item and the shared boards.
    pub fn apply(&mut self, event: &Event) {
        let Some(key) = event.item_key() else { return };
        let Some(slot) = self.items.get_mut(&key) else {
            panic!("event for an item this shard does not own: {key:016x}");
        };
        if let Some(user_id) = slot.state.apply(event) {
            slot.entry.add_strikes(user_id, 1);
        }
        if let Event::OrderPlaced {
            order_seq, order, ..
        } = event
        {
            self.deadlines
                .push(Reverse((order.pay_before_ms, key, *order_seq)));
        }
    }

    /// Republishes every gate after recovery.
    pub fn publish_all(&mut self) {
        for slot in self.items.values_mut() {
            slot.publish();
        }
    }

    /// Decides and applies the expiry of every order whose deadline has passed.
    fn expire_due(&mut self, now_ms: i64, events: &mut Vec<Event>, touched: &mut Vec<u64>) {
        while let Some(Reverse((deadline_ms, key, seq))) = self.deadlines.peek().copied() {
            if deadline_ms > now_ms {
                break;
            }
            self.deadlines.pop();
            let Some(slot) = self.items.get(&key) else {
                continue;
            };
            if let Some(event) = slot.state.decide_expiry(now_ms, seq) {
                self.apply(&event);
                events.push(event);
                touched.push(key);
            }
        }
    }
}

/// An answer waiting for the batch's journal write.
enum Reply {
    Unit(oneshot::Sender<Result<()>>, Result<()>),
    Token(Responder<TokenGrant>, Result<TokenGrant>),
    Purchase(Responder<Purchased>, Result<Purchased>),
    Order(Responder<Order>, Result<Order>),
    Stats(
        oneshot::Sender<Result<Vec<ItemStats>>>,
        Result<Vec<ItemStats>>,
    ),
}

impl Reply {
    fn is_accepted_purchase(&self) -> bool {
        matches!(self, Reply::Purchase(_, Ok(p)) if p.created)
    }

    /// Sends the answer; `failure` replaces every answer when the batch was not made durable.
    /// A caller that stopped waiting is no error: its answer is simply dropped.
    fn send(self, failure: Option<&Error>, pumps: &mut PumpBatch) {
        fn pick<T>(result: Result<T>, failure: Option<&Error>) -> Result<T> {
            match failure {
                Some(error) => Err(error.clone()),
                None => result,
            }
        }
        match self {
            Reply::Unit(tx, r) => drop(tx.send(pick(r, failure))),
            Reply::Token(tx, r) => tx.respond(pick(r, failure), pumps),
            Reply::Purchase(tx, r) => tx.respond(pick(r, failure), pumps),
            Reply::Order(tx, r) => tx.respond(pick(r, failure), pumps),
            Reply::Stats(tx, r) => drop(tx.send(pick(r, failure))),
        }
    }
}

/// Counters shared by the shards and the snapshot taker.
#[derive(Debug, Default)]
pub(crate) struct ShardCounters {
    /// Events journaled since the last snapshot.
    pub events_since_snapshot: AtomicU64,
    /// Orders and tokens the last snapshot held: what the next one costs to take and write.
    pub records_in_last_snapshot: AtomicU64,
}

/// The fixed settings of a shard's loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShardSettings {
    pub index: usize,
    pub batch_requests_max: usize,
    pub expiry_tick: Duration,
    pub token_ttl_ms: i64,
}

/// The running shard: its state, its mailbox and the ports it writes through.
pub(crate) struct Shard {
    settings: ShardSettings,
    state: ShardState,
    mailbox: Receiver<Command>,
    journal: Arc<dyn Journal>,
    clock: Arc<dyn Clock>,
    sink: Arc<dyn OrderSink>,
    counters: Arc<ShardCounters>,
    events: Vec<Event>,
    replies: Vec<Reply>,
    /// The batch's answers for callers on threads with a [`crate::ReplyPump`].
    pumps: PumpBatch,
    touched: Vec<u64>,
    /// Set once a journal write failed: every later command is refused.
    fenced: Option<Error>,
    stopping: Option<oneshot::Sender<Result<()>>>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: ShardSettings,
        state: ShardState,
        mailbox: Receiver<Command>,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn OrderSink>,
        counters: Arc<ShardCounters>,
    ) -> Self {
        Shard {
            settings,
            state,
            mailbox,
            journal,
            clock,
            sink,
            counters,
            events: Vec::new(),
            replies: Vec::new(),
            pumps: PumpBatch::default(),
            touched: Vec::new(),
            fenced: None,
            stopping: None,
        }
    }

    /// The shard's loop; returns when told to shut down or when every sender is gone.
    pub fn run(mut self) {
        loop {
            let first = match self.mailbox.recv_timeout(self.settings.expiry_tick) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let now_ms = self.clock.now_ms();
            if self.fenced.is_none() {
                self.state
                    .expire_due(now_ms, &mut self.events, &mut self.touched);
            }
            if let Some(command) = first {
                self.handle(command, now_ms);
            }
            while self.replies.len() < self.settings.batch_requests_max && self.stopping.is_none() {
                match self.mailbox.try_recv() {
                    Ok(command) => self.handle(command, now_ms),
                    Err(_) => break,
                }
            }
            self.commit();
            if let Some(reply) = self.stopping.take() {
                let _ = reply.send(Ok(()));
                return;
            }
        }
        self.commit();
    }

    /// Journals the batch, republishes what it changed, then answers everybody.
    fn commit(&mut self) {
        let mut failure = None;
        if !self.events.is_empty() {
            let started = Instant::now();
            match self.journal.append(&self.events) {
                Ok(seq) => {
                    metrics::histogram!("seckill_journal_append_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!("seckill_journal_batch_events")
                        .record(self.events.len() as f64);
                    self.counters
                        .events_since_snapshot
                        .fetch_add(self.events.len() as u64, Ordering::Relaxed);
                    self.publish_gates();
                    self.sink.publish(seq, &self.events);
                }
                Err(error) => {
                    tracing::error!(shard = self.settings.index, %error, "journal append failed; shard fenced until restart");
                    metrics::counter!("seckill_journal_errors_total").increment(1);
                    let error = Error::Unavailable(error.to_string());
                    self.fenced = Some(error.clone());
                    failure = Some(error);
                }
            }
        }
        if !self.replies.is_empty() {
            metrics::histogram!("seckill_shard_batch_requests").record(self.replies.len() as f64);
            let accepted = self
                .replies
                .iter()
                .filter(|r| r.is_accepted_purchase())
                .count();
            if accepted > 0 && failure.is_none() {
                metrics::counter!("seckill_orders_accepted_total").increment(accepted as u64);
            }
        }
        for reply in self.replies.drain(..) {
            reply.send(failure.as_ref(), &mut self.pumps);
        }
        self.pumps.flush();
        self.events.clear();
        self.touched.clear();
    }

    fn publish_gates(&mut self) {
        self.touched.sort_unstable();
        self.touched.dedup();
        for key in &self.touched {
            if let Some(slot) = self.state.items.get_mut(key) {
                slot.publish();
                metrics::gauge!("seckill_item_remaining", "promotion" => slot.state.promotion_id.clone(), "sku" => slot.state.item.sku.clone())
                    .set(slot.state.remaining as f64);
            }
        }
    }

    fn handle(&mut self, command: Command, now_ms: i64) {
        if let Some(error) = &self.fenced {
            let error = error.clone();
            self.refuse(command, error);
            return;
        }
        match command {
            Command::JournalCatalog { event, reply } => {
                self.events.push(event);
                self.replies.push(Reply::Unit(reply, Ok(())));
            }
            Command::Install { entry, keys, reply } => {
                self.state
                    .install(&entry, &keys, self.settings.token_ttl_ms);
                self.replies.push(Reply::Unit(reply, Ok(())));
            }
            Command::Token {
                key,
                user_id,
                reply,
            } => {
                let result = self.token(key, &user_id, now_ms);
                self.replies.push(Reply::Token(reply, result));
            }
            Command::Purchase {
                key,
                user_id,
                request,
                reply,
            } => {
                let result = self.purchase(key, &user_id, &request, now_ms);
                self.replies.push(Reply::Purchase(reply, result));
            }
            Command::ReadOrder {
                key,
                seq,
                user_id,
                reply,
            } => {
                let result = self
                    .state
                    .items
                    .get(&key)
                    .ok_or(Error::NotFound)
                    .and_then(|slot| slot.state.owned_order(seq, user_id.as_deref()).cloned());
                self.replies.push(Reply::Order(reply, result));
            }
            Command::Cancel {
                key,
                seq,
                user_id,
                reply,
            } => {
                let result = self.decide_and_apply(key, |item| {
                    item.decide_cancel(now_ms, seq, user_id.as_deref())
                });
                self.replies.push(Reply::Order(reply, result));
            }
            Command::Pay {
                key,
                seq,
                payment_ref,
                reply,
            } => {
                let result =
                    self.decide_and_apply(key, |item| item.decide_pay(now_ms, seq, &payment_ref));
                self.replies.push(Reply::Order(reply, result));
            }
            Command::Stats { keys, reply } => {
                let result = keys
                    .iter()
                    .map(|key| {
                        self.state
                            .items
                            .get(key)
                            .map(|slot| slot.state.stats())
                            .ok_or(Error::NotFound)
                    })
                    .collect();
                self.replies.push(Reply::Stats(reply, result));
            }
            Command::Pause { images, barrier } => {
                // Everything decided so far must be journaled before the copy is taken, or the
                // snapshot would hold events the log does not.
                self.commit();
                let copy = self
                    .state
                    .items
                    .values()
                    .map(|slot| slot.state.clone())
                    .collect();
                let _ = images.send(copy);
                barrier.wait();
            }
            Command::Tick { reply } => {
                self.state
                    .expire_due(now_ms, &mut self.events, &mut self.touched);
                self.replies.push(Reply::Unit(reply, Ok(())));
            }
            Command::Shutdown { reply } => {
                self.stopping = Some(reply);
            }
        }
    }

    fn refuse(&mut self, command: Command, error: Error) {
        match command {
            Command::JournalCatalog { reply, .. }
            | Command::Install { reply, .. }
            | Command::Tick { reply } => self.replies.push(Reply::Unit(reply, Err(error))),
            Command::Token { reply, .. } => self.replies.push(Reply::Token(reply, Err(error))),
            Command::Purchase { reply, .. } => {
                self.replies.push(Reply::Purchase(reply, Err(error)))
            }
            Command::ReadOrder { reply, .. }
            | Command::Cancel { reply, .. }
            | Command::Pay { reply, .. } => self.replies.push(Reply::Order(reply, Err(error))),
            Command::Stats { reply, .. } => self.replies.push(Reply::Stats(reply, Err(error))),
            Command::Pause { images, barrier } => {
                let _ = images.send(Vec::new());
                barrier.wait();
            }
            Command::Shutdown { reply } => self.stopping = Some(reply),
        }
    }

    fn context(slot: &Slot, user_id: &str, now_ms: i64) -> DecideContext {
        DecideContext {
            now_ms,
            status: slot.entry.status(now_ms),
            banned: slot.entry.is_banned(user_id),
        }
    }

    fn token(&mut self, key: u64, user_id: &str, now_ms: i64) -> Result<TokenGrant> {
        let slot = self.state.items.get(&key).ok_or(Error::NotFound)?;
        let ctx = Self::context(slot, user_id, now_ms);
        match slot.state.decide_token(&ctx, user_id, new_token)? {
            Decision::Existing(grant) => Ok(grant),
            Decision::New(event) => {
                let grant = match &event {
                    Event::TokenIssued {
                        token,
                        expires_at_ms,
                        ..
                    } => TokenGrant {
                        token: token.clone(),
                        expires_at_ms: *expires_at_ms,
                    },
                    _ => unreachable!("decide_token only issues tokens"),
                };
                self.record(key, event);
                Ok(grant)
            }
        }
    }

    fn purchase(
        &mut self,
        key: u64,
        user_id: &str,
        request: &PurchaseRequest,
        now_ms: i64,
    ) -> Result<Purchased> {
        let slot = self.state.items.get(&key).ok_or(Error::NotFound)?;
        let ctx = Self::context(slot, user_id, now_ms);
        let decision = slot.state.decide_purchase(
            &ctx,
            user_id,
            &request.request_id,
            request.quantity,
            request.token.as_deref(),
        )?;
        match decision {
            Decision::Existing(order) => Ok(Purchased {
                order,
                created: false,
            }),
            Decision::New(event) => {
                let order = event.order().cloned();
                self.record(key, event);
                let order = order.ok_or_else(|| Error::Unavailable("no order in event".into()))?;
                Ok(Purchased {
                    order,
                    created: true,
                })
            }
        }
    }

    fn decide_and_apply(
        &mut self,
        key: u64,
        decide: impl FnOnce(&ItemState) -> Result<Decision<Order>>,
    ) -> Result<Order> {
        let slot = self.state.items.get(&key).ok_or(Error::NotFound)?;
        match decide(&slot.state)? {
            Decision::Existing(order) => Ok(order),
            Decision::New(event) => {
                let order = event.order().cloned();
                self.record(key, event);
                order.ok_or_else(|| Error::Unavailable("no order in event".into()))
            }
        }
    }

    /// Applies a decided event and queues it for the batch's journal write.
    fn record(&mut self, key: u64, event: Event) {
        self.state.apply(&event);
        self.events.push(event);
        self.touched.push(key);
    }
}

/// A fresh purchase token: 128 random bits, so tokens cannot be guessed from each other.
fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}
