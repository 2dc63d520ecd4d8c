//! A shard: one thread, the single owner of its items.
//!
//! The loop is small on purpose. It takes a first command from its bounded mailbox (or
//! wakes on the expiry tick), drains more up to the batch bound, decides each one in memory
//! against the state as the earlier ones left it, hands all the batch's events to the
//! journal in one call, republishes the gates, and only then answers anybody. A journal
//! failure answers the whole batch "unavailable" and fences the shard: its memory is ahead of
//! the disk, so it must not say yes to anything again until a restart rebuilds it from the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::archive;
use crate::command::{Command, OrderAddress, Reply};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::item::{DecideContext, Decision, ItemState, Payment};
use crate::model::ArchivedItem;
use crate::model::{ItemStats, Order, PurchaseRequest, Purchased, TokenGrant};
use crate::ports::{Clock, Journal, OrderSink, PendingAppend};
use crate::pump::PumpBatch;
use crate::shard_state::{ShardState, Slot};

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
    /// This engine start's epoch, part of every order id.
    pub epoch: u64,
    /// How long after its promotion's end an item stays in memory.
    pub retain_ended_ms: i64,
}

/// The ports a shard writes through.
#[derive(Clone)]
pub(crate) struct ShardPorts {
    pub journal: Arc<dyn Journal>,
    pub clock: Arc<dyn Clock>,
    pub sink: Arc<dyn OrderSink>,
    pub counters: Arc<ShardCounters>,
}

/// The running shard: its state, its mailbox and the ports it writes through.
pub(crate) struct Shard {
    settings: ShardSettings,
    state: ShardState,
    mailbox: Receiver<Command>,
    ports: ShardPorts,
    events: Vec<Event>,
    replies: Vec<Reply>,
    /// The batch's answers for callers on threads with a [`crate::ReplyPump`].
    pumps: PumpBatch,
    touched: Vec<u64>,
    /// Set once a journal write failed for good: every later command is refused.
    fenced: Option<Error>,
    /// A batch whose append the journal goes on writing in the background: its effects are
    /// in memory, so writes wait (refused) until it lands; reads are answered meanwhile.
    suspended: Option<Suspended>,
    stopping: Option<tokio::sync::oneshot::Sender<Result<()>>>,
    /// This batch paused for a snapshot.
    paused: bool,
    last_housekeeping: Instant,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("index", &self.settings.index)
            .finish_non_exhaustive()
    }
}

impl Shard {
    pub fn new(
        settings: ShardSettings,
        state: ShardState,
        mailbox: Receiver<Command>,
        ports: ShardPorts,
    ) -> Self {
        Shard {
            settings,
            state,
            mailbox,
            ports,
            events: Vec::new(),
            replies: Vec::new(),
            pumps: PumpBatch::default(),
            touched: Vec::new(),
            fenced: None,
            suspended: None,
            stopping: None,
            paused: false,
            last_housekeeping: Instant::now(),
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
            if self.suspended.is_some() {
                self.check_suspended();
            }
            let now_ms = self.ports.clock.now_ms();
            self.upkeep(now_ms);
            if let Some(command) = first {
                self.handle(command, now_ms);
            }
            // A pause (snapshot) ends the batch: the time read at its start is stale after it.
            while self.replies.len() < self.settings.batch_requests_max
                && self.stopping.is_none()
                && !self.paused
            {
                match self.mailbox.try_recv() {
                    Ok(command) => self.handle(command, now_ms),
                    Err(_) => break,
                }
            }
            self.paused = false;
            self.commit();
            if let Some(reply) = self.stopping.take() {
                let _ = reply.send(Ok(()));
                return;
            }
        }
        self.commit();
    }

    /// Expiries on every pass; the item scan of housekeeping once per tick.
    fn upkeep(&mut self, now_ms: i64) {
        if self.fenced.is_some() || self.suspended.is_some() {
            return;
        }
        // Housekeeping first: the gates it publishes then show journaled state only.
        if self.last_housekeeping.elapsed() >= self.settings.expiry_tick {
            self.last_housekeeping = Instant::now();
            self.housekeep(now_ms);
        }
        self.state
            .expire_due(now_ms, &mut self.events, &mut self.touched);
    }

    fn housekeep(&mut self, now_ms: i64) {
        self.state.housekeep(now_ms);
        if self.ports.journal.keeps_archive() {
            for key in self.state.archivable(now_ms, self.settings.retain_ended_ms) {
                self.archive_item(key);
            }
        }
    }

    /// Writes an ended item to the journal's archive, then drops it from memory with an
    /// `ItemArchived` event (journaled with this batch, after the archive is durable).
    fn archive_item(&mut self, key: u64) {
        let Some(slot) = self.state.items.get_mut(&key) else {
            return;
        };
        let item = ArchivedItem {
            key,
            promotion_id: slot.state.promotion_id.clone(),
            stats: slot.state.stats(),
            orders: slot.state.orders.len() as u64,
        };
        let orders: Vec<Order> = slot.state.orders.iter().cloned().collect();
        match self.ports.journal.archive_item(&item, &orders) {
            Ok(()) => {
                let event = Event::ItemArchived { item_key: key };
                self.state.apply(&event);
                self.events.push(event);
                metrics::counter!("seckill_items_archived_total").increment(1);
            }
            Err(error) => {
                tracing::warn!(%error, item = key, "archiving an ended item failed; it stays in memory and is tried again");
            }
        }
    }

    /// The archived item `key` and its promotion, or `NotFound`.
    fn archived(
        &self,
        key: u64,
    ) -> Result<(
        ArchivedItem,
        &std::sync::Arc<crate::catalog::PromotionEntry>,
    )> {
        let entry = self.state.archived.get(&key).ok_or(Error::NotFound)?;
        let item = archive::item(&*self.ports.journal, key)?.ok_or(Error::NotFound)?;
        Ok((item, entry))
    }

    /// Journals the batch, republishes what it changed, then answers everybody.
    fn commit(&mut self) {
        let failure = if self.events.is_empty() {
            None
        } else {
            self.journal_batch().err()
        };
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

    /// Appends the batch's events; on failure suspends the shard (the journal goes on
    /// writing the batch) or fences it (it does not).
    fn journal_batch(&mut self) -> Result<()> {
        let started = Instant::now();
        match self.ports.journal.append(&self.events) {
            Ok(seq) => {
                metrics::histogram!("seckill_journal_append_seconds")
                    .record(started.elapsed().as_secs_f64());
                self.after_durable(seq);
                Ok(())
            }
            Err(error) => {
                metrics::counter!("seckill_journal_errors_total").increment(1);
                match self.ports.journal.pending_append() {
                    PendingAppend::Landed(seq) => {
                        self.after_durable(seq);
                        Ok(())
                    }
                    PendingAppend::Waiting if self.events.iter().any(is_catalog_event) => {
                        // The control thread heard "unknown" for this catalog change and
                        // will not learn that it landed; only a restart's replay tells.
                        self.fence(&error);
                        Err(Error::OutcomeUnknown)
                    }
                    PendingAppend::Waiting => {
                        tracing::warn!(shard = self.settings.index, %error, "journal append not answered in time; writes wait for it, reads go on");
                        metrics::gauge!("seckill_shards_suspended").increment(1.0);
                        self.suspended = Some(Suspended {
                            events: std::mem::take(&mut self.events),
                            touched: std::mem::take(&mut self.touched),
                        });
                        // The batch lands later, or never: its callers learn which by
                        // repeating the call.
                        Err(Error::OutcomeUnknown)
                    }
                    PendingAppend::Final | PendingAppend::Failed(_) => {
                        self.fence(&error);
                        Err(Error::OutcomeUnknown)
                    }
                }
            }
        }
    }

    /// Later commands were never tried: "not done". The failed batch may be in the log all
    /// the same (a write that reached it before its fsync failed is replayed after a
    /// restart), so its callers learn the outcome by repeating the call.
    fn fence(&mut self, error: &crate::error::JournalError) {
        tracing::error!(shard = self.settings.index, %error, "journal append failed; shard fenced until restart");
        self.fenced = Some(Error::Unavailable(error.to_string()));
    }

    /// What follows a durable batch: counters, gates, the sink.
    fn after_durable(&mut self, seq: u64) {
        metrics::histogram!("seckill_journal_batch_events").record(self.events.len() as f64);
        self.ports
            .counters
            .events_since_snapshot
            .fetch_add(self.events.len() as u64, Ordering::Relaxed);
        self.publish_gates();
        self.ports.sink.publish(seq, &self.events);
    }

    /// Asks the journal about the suspended batch: landed (carry on), lost for good
    /// (fence), or still on its way.
    fn check_suspended(&mut self) {
        let outcome = self.ports.journal.pending_append();
        if outcome == PendingAppend::Waiting {
            return;
        }
        let Some(suspended) = self.suspended.take() else {
            return;
        };
        metrics::gauge!("seckill_shards_suspended").decrement(1.0);
        match outcome {
            PendingAppend::Landed(seq) => {
                tracing::info!(
                    shard = self.settings.index,
                    seq,
                    "the suspended batch landed; writes resume"
                );
                debug_assert!(self.events.is_empty() && self.touched.is_empty());
                self.events = suspended.events;
                self.touched = suspended.touched;
                self.after_durable(seq);
                self.events.clear();
                self.touched.clear();
            }
            PendingAppend::Failed(error) => self.fence(&error),
            PendingAppend::Final => self.fence(&crate::error::JournalError(
                "the journal gave up on a suspended batch".into(),
            )),
            PendingAppend::Waiting => unreachable!("returned above"),
        }
    }

    fn publish_gates(&mut self) {
        self.touched.sort_unstable();
        self.touched.dedup();
        let now_ms = self.ports.clock.now_ms();
        for key in &self.touched {
            if let Some(slot) = self.state.items.get_mut(key) {
                slot.publish(now_ms);
                metrics::gauge!("seckill_item_remaining", "promotion" => slot.state.promotion_id.clone(), "sku" => slot.state.item.sku.clone())
                    .set(slot.state.remaining as f64);
            }
        }
    }

    fn handle(&mut self, command: Command, now_ms: i64) {
        match command {
            Command::Fault => panic!("fault injected into shard {}", self.settings.index),
            Command::Shutdown { reply } => self.stopping = Some(reply),
            command => match self.fenced.clone() {
                Some(error) => command.refuse(error, &mut self.replies),
                None if self.suspended.is_some() && command.may_write() => {
                    command.refuse(suspended_error(), &mut self.replies);
                }
                None => self.run_command(command, now_ms),
            },
        }
    }

    fn run_command(&mut self, command: Command, now_ms: i64) {
        match command {
            Command::JournalCatalog { event, reply } => {
                self.events.push(event);
                self.replies.push(Reply::Unit(reply, Ok(())));
            }
            Command::Install { entry, keys, reply } => {
                self.state
                    .install(&entry, &keys, self.settings.token_ttl_ms, now_ms);
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
                eligible,
                reply,
            } => {
                let result = self.purchase(key, &user_id, &request, eligible, now_ms);
                self.replies.push(Reply::Purchase(reply, result));
            }
            Command::ReadOrder {
                order,
                user_id,
                reply,
            } => {
                let result = self.read_order(&order, user_id.as_deref());
                self.replies.push(Reply::Order(reply, result));
            }
            Command::Cancel {
                order,
                user_id,
                reply,
            } => {
                let result = self.cancel(&order, user_id.as_deref(), now_ms);
                self.replies.push(Reply::Order(reply, result));
            }
            Command::Pay {
                order,
                payment_ref,
                amount_cents,
                reply,
            } => {
                let payment = Payment {
                    payment_ref: &payment_ref,
                    amount_cents,
                };
                let result = self.pay(&order, &payment, now_ms);
                self.replies.push(Reply::Order(reply, result));
            }
            Command::Stats { keys, reply } => {
                let result = self.stats(&keys, now_ms);
                self.replies.push(Reply::Stats(reply, result));
            }
            Command::Pause { image, resume } => self.pause(image, &resume, now_ms),
            Command::Tick { reply } => {
                self.housekeep(now_ms);
                self.state
                    .expire_due(now_ms, &mut self.events, &mut self.touched);
                self.replies.push(Reply::Unit(reply, Ok(())));
            }
            Command::Shutdown { .. } | Command::Fault => {
                unreachable!("handled before run_command")
            }
        }
    }

    /// Hands the snapshot taker a copy of every item, then waits for it to finish.
    fn pause(
        &mut self,
        image: tokio::sync::oneshot::Sender<Result<Vec<ItemState>>>,
        resume: &Receiver<()>,
        now_ms: i64,
    ) {
        // Everything decided so far must be journaled before the copy is taken, or the
        // snapshot would hold events the log does not. A failed write fences the shard, and
        // a fenced shard's memory is ahead of its log: it has no image to give.
        self.commit();
        if let Some(error) = &self.fenced {
            let _ = image.send(Err(error.clone()));
            return;
        }
        if self.suspended.is_some() {
            // The commit above may have left a batch pending: memory is ahead of the log.
            let _ = image.send(Err(suspended_error()));
            return;
        }
        let copy = self
            .state
            .items
            .values_mut()
            .map(|slot| {
                slot.state.forget_expired_tokens(now_ms);
                slot.state.clone()
            })
            .collect();
        self.paused = true;
        if image.send(Ok(copy)).is_ok() {
            // Returns when the taker closes the channel (or, never, sends on it).
            let _ = resume.recv();
        }
    }

    fn context(&self, slot: &Slot, user_id: &str, now_ms: i64) -> DecideContext {
        DecideContext {
            now_ms,
            status: slot.entry.status(now_ms),
            banned: slot.entry.is_banned(user_id),
            epoch: self.settings.epoch,
            // Tokens are checked at the gate; a purchase sets it from its command.
            eligible: true,
        }
    }

    fn token(&mut self, key: u64, user_id: &str, now_ms: i64) -> Result<TokenGrant> {
        if !self.state.items.contains_key(&key) {
            let (_, entry) = self.archived(key)?;
            return Err(crate::rules::refuse_closed(
                entry.is_banned(user_id),
                entry.status(now_ms),
            )
            .err()
            .unwrap_or(Error::Ended));
        }
        let slot = self.state.items.get_mut(&key).ok_or(Error::NotFound)?;
        // Exact count of outstanding tokens: expired ones no longer hold a place.
        slot.state.forget_expired_tokens(now_ms);
        let slot = self.state.items.get(&key).ok_or(Error::NotFound)?;
        let ctx = self.context(slot, user_id, now_ms);
        let decision = slot.state.decide_token(&ctx, user_id, new_token)?;
        Ok(self.settle(key, decision))
    }

    fn purchase(
        &mut self,
        key: u64,
        user_id: &str,
        request: &PurchaseRequest,
        eligible: bool,
        now_ms: i64,
    ) -> Result<Purchased> {
        let Some(slot) = self.state.items.get(&key) else {
            let (_, entry) = self.archived(key)?;
            let banned = entry.is_banned(user_id);
            let journal = &*self.ports.journal;
            let order = archive::purchase(journal, key, user_id, &request.request_id, banned)?;
            return Ok(Purchased {
                order,
                created: false,
            });
        };
        let ctx = DecideContext {
            eligible,
            ..self.context(slot, user_id, now_ms)
        };
        let decision = slot.state.decide_purchase(
            &ctx,
            user_id,
            &request.request_id,
            request.quantity,
            request.token.as_deref(),
        )?;
        let created = matches!(decision, Decision::New { .. });
        let order = self.settle(key, decision);
        if created {
            // A gate that knows every buyer must know this one before the journal write: a
            // retry of this request id that came through it would otherwise be refused.
            if let Some(slot) = self.state.items.get(&key) {
                slot.gate.note_buyer(user_id);
            }
        }
        Ok(Purchased { order, created })
    }

    fn read_order(&self, order: &OrderAddress, user_id: Option<&str>) -> Result<Order> {
        if self
            .suspended
            .as_ref()
            .is_some_and(|s| s.changes_order(&order.order_id))
        {
            // Its last change is not in the log yet and may never be: no answer beats a
            // state the log may not confirm.
            return Err(suspended_error());
        }
        match self.state.items.get(&order.key) {
            Some(slot) => slot
                .state
                .owned_order(&order.order_id, order.seq, user_id)
                .cloned(),
            None => self.archived_order(order, user_id),
        }
    }

    fn archived_order(&self, order: &OrderAddress, user_id: Option<&str>) -> Result<Order> {
        self.archived(order.key)?;
        let journal = &*self.ports.journal;
        archive::order(journal, order.key, &order.order_id, order.seq, user_id)
    }

    fn cancel(
        &mut self,
        order: &OrderAddress,
        user_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Order> {
        if !self.state.items.contains_key(&order.key) {
            let archived = self.archived_order(order, user_id)?;
            return archive::cancel(&archived, order.key, order.seq, now_ms);
        }
        self.decide_and_apply(order.key, |item| {
            item.decide_cancel(now_ms, &order.order_id, order.seq, user_id)
        })
    }

    fn pay(&mut self, order: &OrderAddress, payment: &Payment<'_>, now_ms: i64) -> Result<Order> {
        if !self.state.items.contains_key(&order.key) {
            let archived = self.archived_order(order, None)?;
            return archive::pay(&archived, order.key, order.seq, payment, now_ms);
        }
        self.decide_and_apply(order.key, |item| {
            item.decide_pay(now_ms, &order.order_id, order.seq, payment)
        })
    }

    fn stats(&mut self, keys: &[u64], now_ms: i64) -> Result<Vec<ItemStats>> {
        keys.iter()
            .map(|key| match self.state.items.get_mut(key) {
                Some(slot) => {
                    slot.state.forget_expired_tokens(now_ms);
                    Ok(slot.state.stats())
                }
                None => self.archived(*key).map(|(item, _)| item.stats),
            })
            .collect()
    }

    fn decide_and_apply(
        &mut self,
        key: u64,
        decide: impl FnOnce(&ItemState) -> Result<Decision<Order>>,
    ) -> Result<Order> {
        let slot = self.state.items.get(&key).ok_or(Error::NotFound)?;
        let decision = decide(&slot.state)?;
        Ok(self.settle(key, decision))
    }

    /// The answer of a decision; a new fact is applied and queued for the batch's journal
    /// write first.
    fn settle<T>(&mut self, key: u64, decision: Decision<T>) -> T {
        match decision {
            Decision::Existing(answer) => answer,
            Decision::New { event, answer } => {
                self.state.apply(&event);
                self.events.push(event);
                self.touched.push(key);
                answer
            }
        }
    }
}

/// A fresh purchase token: 128 random bits, so tokens cannot be guessed from each other.
fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A batch the journal is still writing (see `Shard::suspended`).
#[derive(Debug)]
struct Suspended {
    events: Vec<Event>,
    touched: Vec<u64>,
}

impl Suspended {
    fn changes_order(&self, order_id: &str) -> bool {
        self.events
            .iter()
            .any(|event| event.order().is_some_and(|o| o.order_id == order_id))
    }
}

fn is_catalog_event(event: &Event) -> bool {
    event.item_key().is_none()
}

fn suspended_error() -> Error {
    Error::Unavailable("the journal is not answering; writes resume once it is back".into())
}
