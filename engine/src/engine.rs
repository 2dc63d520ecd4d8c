//! The engine handle: routes each call to the shard that owns the item, answers the cheap
//! refusals itself, and serialises the rare catalog changes (create, start, stop).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use dashmap::DashMap;
use rustc_hash::{FxBuildHasher, FxHashMap};
use tokio::sync::{oneshot, Mutex};

use crate::catalog::{ItemGate, PromotionEntry};
use crate::error::{Error, Result};
use crate::event::{EngineImage, Event, PromotionImage, EVENT_VERSION};
use crate::ids::{is_valid_id, item_key, parse_order_id, promotion_key};
use crate::model::{
    ItemStats, Order, PromotionSpec, PromotionStats, PromotionStatus, PublicPromotion,
    PurchaseRequest, Purchased, TokenGrant,
};
use crate::ports::{Clock, Journal, OrderSink, Recovery};
use crate::pump::Responder;
use crate::shard::{Command, Shard, ShardCounters, ShardSettings, ShardState};
use crate::validate::validate_promotion;

/// Default mailbox capacity of one shard, in commands.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 65_536;
/// Default bound on commands decided per journal write.
pub const DEFAULT_BATCH_REQUESTS_MAX: usize = 8_192;
/// Default life of a purchase token (api.md: 60 s).
pub const DEFAULT_TOKEN_TTL_S: u32 = 60;
/// Default wake-up period of a shard for expiries (api.md wants them within 2 s).
pub const DEFAULT_EXPIRY_TICK_MS: u64 = 200;
/// Default number of journaled events between two snapshots.
pub const DEFAULT_SNAPSHOT_EVERY_EVENTS: u64 = 1_000_000;

/// How an engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of shards (threads owning items). Default: the number of cores.
    pub shards: usize,
    pub mailbox_capacity: usize,
    pub batch_requests_max: usize,
    pub token_ttl_s: u32,
    pub expiry_tick_ms: u64,
    /// Take a snapshot after this many journaled events, or after as many as the last
    /// snapshot held orders and tokens if that is more; 0 turns automatic snapshots off.
    pub snapshot_every_events: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
            batch_requests_max: DEFAULT_BATCH_REQUESTS_MAX,
            token_ttl_s: DEFAULT_TOKEN_TTL_S,
            expiry_tick_ms: DEFAULT_EXPIRY_TICK_MS,
            snapshot_every_events: DEFAULT_SNAPSHOT_EVERY_EVENTS,
        }
    }
}

/// The ports an engine runs on.
#[derive(Clone)]
pub struct Ports {
    pub journal: Arc<dyn Journal>,
    pub clock: Arc<dyn Clock>,
    pub sink: Arc<dyn OrderSink>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports").finish_non_exhaustive()
    }
}

/// A running engine. Cheap to clone: every clone talks to the same shards.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    mailboxes: Vec<Sender<Command>>,
    promotions: DashMap<String, Arc<PromotionEntry>, FxBuildHasher>,
    gates: DashMap<u64, Arc<ItemGate>, FxBuildHasher>,
    /// Serialises create / start / stop / snapshot: rare, and each must see the catalog whole.
    catalog_lock: Mutex<()>,
    clock: Arc<dyn Clock>,
    journal: Arc<dyn Journal>,
    counters: Arc<ShardCounters>,
    config: EngineConfig,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Set by `shutdown` under the catalog lock: no snapshot may pause shards after it, since
    /// a stopped shard never reaches the snapshot's barrier.
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

impl std::fmt::Debug for dyn Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

impl std::fmt::Debug for dyn OrderSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrderSink")
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shard")
    }
}

/// Checks an identifier from a caller.
fn check_id(field: &str, value: &str) -> Result<()> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(Error::invalid(field, "must match [A-Za-z0-9_.:-]{1,64}"))
    }
}

async fn answer<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    rx.await
        .unwrap_or_else(|_| Err(Error::Unavailable("shard stopped".into())))
}

impl Engine {
    /// Rebuilds the state from `recovery`, then starts the shards. Returns once the engine
    /// is ready to answer: no request is taken before recovery has finished.
    pub fn start(config: EngineConfig, ports: Ports, recovery: Recovery) -> Result<Engine> {
        if config.shards == 0 || config.shards > 1024 {
            return Err(Error::invalid("shards", "must be 1..=1024"));
        }
        if config.mailbox_capacity == 0 || config.batch_requests_max == 0 {
            return Err(Error::invalid("mailbox_capacity", "must be at least 1"));
        }
        let token_ttl_ms = i64::from(config.token_ttl_s) * 1000;
        let mut states: Vec<ShardState> =
            (0..config.shards).map(|_| ShardState::default()).collect();
        let promotions: DashMap<String, Arc<PromotionEntry>, FxBuildHasher> =
            DashMap::with_hasher(FxBuildHasher);
        let gates: DashMap<u64, Arc<ItemGate>, FxBuildHasher> = DashMap::with_hasher(FxBuildHasher);

        let mut through_seq = 0;
        if let Some(image) = recovery.image {
            if image.version > EVENT_VERSION {
                return Err(Error::Unavailable(format!(
                    "snapshot version {} is newer than this build's {}",
                    image.version, EVENT_VERSION
                )));
            }
            through_seq = image.through_seq;
            for promotion in image.promotions {
                let entry = register(&promotions, &gates, promotion.record)?;
                entry
                    .starts_at_ms
                    .store(promotion.starts_at_ms, Ordering::Release);
                entry
                    .ends_at_ms
                    .store(promotion.ends_at_ms, Ordering::Release);
            }
            for item in image.items {
                let entry = promotions
                    .get(&item.promotion_id)
                    .map(|e| Arc::clone(e.value()))
                    .ok_or_else(|| Error::Unavailable("snapshot item without promotion".into()))?;
                let gate = gates
                    .get(&item.key)
                    .map(|g| Arc::clone(g.value()))
                    .ok_or_else(|| Error::Unavailable("snapshot item without gate".into()))?;
                states[shard_index(item.key, config.shards)].restore(item, &entry, &gate);
            }
        }
        for batch in recovery.batches {
            let (seq, events) = batch.map_err(|e| Error::Unavailable(e.to_string()))?;
            if seq <= through_seq {
                continue;
            }
            for event in &events {
                match event {
                    Event::PromotionCreated { promotion } => {
                        let entry = register(&promotions, &gates, promotion.clone())?;
                        let keys = entry.gates.iter().map(|g| g.key);
                        for (shard, keys) in keys_by_shard(keys, config.shards) {
                            states[shard].install(&entry, &keys, token_ttl_ms);
                        }
                    }
                    Event::PromotionStarted {
                        promotion_id,
                        at_ms,
                    } => {
                        if let Some(entry) = promotions.get(promotion_id) {
                            entry.apply_start(*at_ms);
                        }
                    }
                    Event::PromotionStopped {
                        promotion_id,
                        at_ms,
                    } => {
                        if let Some(entry) = promotions.get(promotion_id) {
                            entry.apply_stop(*at_ms);
                        }
                    }
                    other => {
                        let key = other.item_key().unwrap_or_default();
                        states[shard_index(key, config.shards)].apply(other);
                    }
                }
            }
        }
        for state in &mut states {
            state.publish_all();
        }

        let counters = Arc::new(ShardCounters::default());
        let mut mailboxes = Vec::with_capacity(config.shards);
        let mut threads = Vec::with_capacity(config.shards + 1);
        for (index, state) in states.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded(config.mailbox_capacity);
            let shard = Shard::new(
                ShardSettings {
                    index,
                    batch_requests_max: config.batch_requests_max,
                    expiry_tick: Duration::from_millis(config.expiry_tick_ms.max(1)),
                    token_ttl_ms,
                },
                state,
                rx,
                Arc::clone(&ports.journal),
                Arc::clone(&ports.clock),
                Arc::clone(&ports.sink),
                Arc::clone(&counters),
            );
            let handle = std::thread::Builder::new()
                .name(format!("seckill-shard-{index}"))
                .spawn(move || shard.run())
                .map_err(|e| Error::Unavailable(format!("cannot start shard thread: {e}")))?;
            mailboxes.push(tx);
            threads.push(handle);
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                mailboxes,
                promotions,
                gates,
                catalog_lock: Mutex::new(()),
                clock: ports.clock,
                journal: ports.journal,
                counters,
                config,
                threads: std::sync::Mutex::new(threads),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        if engine.inner.config.snapshot_every_events > 0 {
            engine.spawn_snapshot_taker()?;
        }
        Ok(engine)
    }

    /// The engine's clock (the edge uses it for `server_time`).
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    fn shard_of(&self, key: u64) -> usize {
        shard_index(key, self.inner.mailboxes.len())
    }

    /// Puts a command in a shard's mailbox without waiting: a full mailbox is "overloaded".
    fn send(&self, shard: usize, command: Command) -> Result<()> {
        match self.inner.mailboxes[shard].try_send(command) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                metrics::counter!("seckill_shard_overloaded_total").increment(1);
                Err(Error::Overloaded)
            }
            Err(TrySendError::Disconnected(_)) => Err(Error::Unavailable("shard stopped".into())),
        }
    }

    /// Control commands (catalog, snapshots) must not be lost to a full mailbox: they wait
    /// for room, a millisecond at a time, for at most 10 s.
    async fn send_control(&self, shard: usize, mut command: Command) -> Result<()> {
        for _ in 0..10_000 {
            match self.inner.mailboxes[shard].try_send(command) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    command = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(Error::Unavailable("shard stopped".into()))
                }
            }
        }
        Err(Error::Overloaded)
    }

    fn entry(&self, promotion_id: &str) -> Result<Arc<PromotionEntry>> {
        self.inner
            .promotions
            .get(promotion_id)
            .map(|e| Arc::clone(e.value()))
            .ok_or(Error::NotFound)
    }

    fn gate(&self, promotion_id: &str, sku: &str) -> Result<(Arc<PromotionEntry>, Arc<ItemGate>)> {
        let entry = self.entry(promotion_id)?;
        let key = item_key(promotion_id, sku);
        let gate = self
            .inner
            .gates
            .get(&key)
            .map(|g| Arc::clone(g.value()))
            .ok_or(Error::NotFound)?;
        debug_assert_eq!(gate.item.sku, sku);
        Ok((entry, gate))
    }

    /// Creates a promotion. Atomic: one journaled event holds it whole.
    pub async fn create_promotion(&self, spec: PromotionSpec) -> Result<PromotionStats> {
        let now_ms = self.now_ms();
        let id = match &spec.id {
            Some(id) => id.clone(),
            None => format!("p-{:016x}", rand::random::<u64>()),
        };
        let record = validate_promotion(&spec, id, now_ms)?;
        let _catalog = self.inner.catalog_lock.lock().await;
        if self.inner.promotions.contains_key(&record.id) {
            return Err(Error::AlreadyExists);
        }
        let skus: rustc_hash::FxHashSet<&str> =
            record.items.iter().map(|item| item.sku.as_str()).collect();
        for other in self.inner.promotions.iter() {
            let (starts_at_ms, ends_at_ms) = other.window();
            let overlaps = record.starts_at_ms < ends_at_ms && starts_at_ms < record.ends_at_ms;
            if !overlaps {
                continue;
            }
            if let Some(item) = other
                .record
                .items
                .iter()
                .find(|item| skus.contains(item.sku.as_str()))
            {
                return Err(Error::SkuInOtherPromotion {
                    sku: item.sku.clone(),
                    other_promotion_id: other.record.id.clone(),
                });
            }
        }
        let keys: Vec<u64> = record
            .items
            .iter()
            .map(|item| item_key(&record.id, &item.sku))
            .collect();
        if keys.iter().any(|key| self.inner.gates.contains_key(key)) {
            // Two (promotion, sku) pairs with one 64-bit key: astronomically rare, and
            // refusing is the only way to keep order ids unique.
            return Err(Error::invalid(
                "id",
                "collides with another item key; choose another id",
            ));
        }

        let home = self.shard_of(promotion_key(&record.id));
        let (tx, rx) = oneshot::channel();
        self.send_control(
            home,
            Command::JournalCatalog {
                event: Event::PromotionCreated {
                    promotion: record.clone(),
                },
                reply: tx,
            },
        )
        .await?;
        answer(rx).await?;

        let entry = PromotionEntry::new(record, &keys);
        self.install(&entry, &keys).await?;
        for gate in &entry.gates {
            self.inner.gates.insert(gate.key, Arc::clone(gate));
        }
        self.inner
            .promotions
            .insert(entry.record.id.clone(), Arc::clone(&entry));
        Ok(fresh_stats(&entry, now_ms))
    }

    async fn install(&self, entry: &Arc<PromotionEntry>, keys: &[u64]) -> Result<()> {
        let by_shard = keys_by_shard(keys.iter().copied(), self.inner.mailboxes.len());
        let mut waits = Vec::with_capacity(by_shard.len());
        for (shard, keys) in by_shard {
            let (tx, rx) = oneshot::channel();
            self.send_control(
                shard,
                Command::Install {
                    entry: Arc::clone(entry),
                    keys,
                    reply: tx,
                },
            )
            .await?;
            waits.push(rx);
        }
        for rx in waits {
            answer(rx).await?;
        }
        Ok(())
    }

    /// Forces a promotion live from now. Starting a live one changes nothing; an ended one
    /// cannot start again.
    pub async fn start_promotion(&self, promotion_id: &str) -> Result<PromotionStats> {
        let _catalog = self.inner.catalog_lock.lock().await;
        let entry = self.entry(promotion_id)?;
        let now_ms = self.now_ms();
        match entry.status(now_ms) {
            PromotionStatus::Ended => return Err(Error::Ended),
            PromotionStatus::Live => {}
            PromotionStatus::Upcoming => {
                self.journal_catalog(
                    promotion_id,
                    Event::PromotionStarted {
                        promotion_id: promotion_id.to_owned(),
                        at_ms: now_ms,
                    },
                )
                .await?;
                entry.apply_start(now_ms);
            }
        }
        drop(_catalog);
        self.promotion_stats(promotion_id).await
    }

    /// Ends a promotion from now. Stopping an ended one changes nothing.
    pub async fn stop_promotion(&self, promotion_id: &str) -> Result<PromotionStats> {
        let _catalog = self.inner.catalog_lock.lock().await;
        let entry = self.entry(promotion_id)?;
        let now_ms = self.now_ms();
        if entry.status(now_ms) != PromotionStatus::Ended {
            self.journal_catalog(
                promotion_id,
                Event::PromotionStopped {
                    promotion_id: promotion_id.to_owned(),
                    at_ms: now_ms,
                },
            )
            .await?;
            entry.apply_stop(now_ms);
        }
        drop(_catalog);
        self.promotion_stats(promotion_id).await
    }

    async fn journal_catalog(&self, promotion_id: &str, event: Event) -> Result<()> {
        let home = self.shard_of(promotion_key(promotion_id));
        let (tx, rx) = oneshot::channel();
        self.send_control(home, Command::JournalCatalog { event, reply: tx })
            .await?;
        answer(rx).await
    }

    /// A promotion with exact per-item stats, read from the owning shards.
    pub async fn promotion_stats(&self, promotion_id: &str) -> Result<PromotionStats> {
        let entry = self.entry(promotion_id)?;
        let now_ms = self.now_ms();
        let by_shard = keys_by_shard(
            entry.gates.iter().map(|g| g.key),
            self.inner.mailboxes.len(),
        );
        let mut found: FxHashMap<u64, ItemStats> = FxHashMap::default();
        let mut waits = Vec::new();
        for (shard, keys) in by_shard {
            let (tx, rx) = oneshot::channel();
            self.send(
                shard,
                Command::Stats {
                    keys: keys.clone(),
                    reply: tx,
                },
            )?;
            waits.push((keys, rx));
        }
        for (keys, rx) in waits {
            let stats = answer(rx).await?;
            found.extend(keys.into_iter().zip(stats));
        }
        let mut stats = fresh_stats(&entry, now_ms);
        for (item, gate) in stats.items.iter_mut().zip(&entry.gates) {
            if let Some(exact) = found.remove(&gate.key) {
                *item = exact;
            }
            debug_assert_eq!(item.remaining + item.reserved + item.sold, item.stock);
        }
        Ok(stats)
    }

    /// Every promotion with stats, oldest first.
    pub async fn list_promotion_stats(&self) -> Result<Vec<PromotionStats>> {
        let mut ids: Vec<(i64, String)> = self
            .inner
            .promotions
            .iter()
            .map(|e| (e.record.created_at_ms, e.record.id.clone()))
            .collect();
        ids.sort();
        let mut all = Vec::with_capacity(ids.len());
        for (_, id) in ids {
            all.push(self.promotion_stats(&id).await?);
        }
        Ok(all)
    }

    /// The shoppers' view of one promotion, from the gates (no shard round trip).
    pub fn public_promotion(&self, promotion_id: &str) -> Result<PublicPromotion> {
        Ok(self.entry(promotion_id)?.public_view(self.now_ms()))
    }

    /// Upcoming and live promotions in the shoppers' view, soonest first.
    pub fn public_promotions(&self) -> Vec<PublicPromotion> {
        let now_ms = self.now_ms();
        let mut views: Vec<PublicPromotion> = self
            .inner
            .promotions
            .iter()
            .map(|e| e.public_view(now_ms))
            .filter(|v| v.status != PromotionStatus::Ended)
            .collect();
        views.sort_by(|a, b| a.starts_at_ms.cmp(&b.starts_at_ms).then(a.id.cmp(&b.id)));
        views
    }

    /// The refusal that needs no shard, if any: banned, not live, sold out.
    fn fast_refusal(
        entry: &PromotionEntry,
        gate: &ItemGate,
        user_id: &str,
        now_ms: i64,
    ) -> Option<Error> {
        if entry.is_banned(user_id) {
            return Some(Error::Banned);
        }
        match entry.status(now_ms) {
            PromotionStatus::Upcoming => return Some(Error::NotStarted),
            PromotionStatus::Ended => return Some(Error::Ended),
            PromotionStatus::Live => {}
        }
        if gate.is_sold_out() {
            return Some(Error::SoldOut);
        }
        None
    }

    /// The purchase refusal that needs no shard, if any. A user with an order on the item
    /// may be retrying a request id, which must answer the original order whatever changed
    /// since, so only refusals that cannot hide an order are given here: not started (no
    /// order exists yet), and sold out for users the gate knows hold no order here. Ended
    /// and banned users go to the shard, which checks the request id first.
    fn purchase_fast_refusal(
        entry: &PromotionEntry,
        gate: &ItemGate,
        user_id: &str,
        now_ms: i64,
    ) -> Option<Error> {
        match entry.status(now_ms) {
            PromotionStatus::Ended => None,
            PromotionStatus::Upcoming => Some(if entry.is_banned(user_id) {
                Error::Banned
            } else {
                Error::NotStarted
            }),
            PromotionStatus::Live => {
                if !gate.is_sold_out() || gate.buyers.contains(user_id) {
                    return None;
                }
                Some(if entry.is_banned(user_id) {
                    Error::Banned
                } else {
                    Error::SoldOut
                })
            }
        }
    }

    /// Hands a purchase token to `user_id` for one item.
    pub async fn issue_token(
        &self,
        promotion_id: &str,
        sku: &str,
        user_id: &str,
    ) -> Result<TokenGrant> {
        check_id("user_id", user_id)?;
        let (entry, gate) = self.gate(promotion_id, sku)?;
        if let Some(refusal) = Self::fast_refusal(&entry, &gate, user_id, self.now_ms()) {
            return Err(refusal);
        }
        let (tx, rx) = Responder::channel();
        self.send(
            self.shard_of(gate.key),
            Command::Token {
                key: gate.key,
                user_id: user_id.to_owned(),
                reply: tx,
            },
        )?;
        answer(rx).await
    }

    /// Buys. `created` tells a new order (201) from the original order of a repeated
    /// request id (200).
    pub async fn purchase(
        &self,
        promotion_id: &str,
        sku: &str,
        user_id: &str,
        request: PurchaseRequest,
    ) -> Result<Purchased> {
        check_id("user_id", user_id)?;
        check_id("request_id", &request.request_id)?;
        if let Some(token) = &request.token {
            if token.len() > 128 {
                return Err(Error::invalid("token", "longer than 128 bytes"));
            }
        }
        let (entry, gate) = self.gate(promotion_id, sku)?;
        if let Some(refusal) = Self::purchase_fast_refusal(&entry, &gate, user_id, self.now_ms()) {
            return Err(refusal);
        }
        if request.quantity == 0 {
            return Err(Error::invalid("quantity", "must be at least 1"));
        }
        let (tx, rx) = Responder::channel();
        self.send(
            self.shard_of(gate.key),
            Command::Purchase {
                key: gate.key,
                user_id: user_id.to_owned(),
                request,
                reply: tx,
            },
        )?;
        answer(rx).await
    }

    fn route_order(&self, order_id: &str) -> Result<(u64, u64)> {
        parse_order_id(order_id).ok_or(Error::NotFound)
    }

    /// Reads an order. `user_id` Some(user): a shopper, who only sees their own orders;
    /// None: an operator.
    pub async fn order(&self, order_id: &str, user_id: Option<&str>) -> Result<Order> {
        let (key, seq) = self.route_order(order_id)?;
        let (tx, rx) = Responder::channel();
        self.send(
            self.shard_of(key),
            Command::ReadOrder {
                key,
                seq,
                user_id: user_id.map(str::to_owned),
                reply: tx,
            },
        )?;
        answer(rx).await
    }

    /// Cancels a pending order; cancelling a cancelled one answers it unchanged.
    pub async fn cancel(&self, order_id: &str, user_id: Option<&str>) -> Result<Order> {
        let (key, seq) = self.route_order(order_id)?;
        let (tx, rx) = Responder::channel();
        self.send(
            self.shard_of(key),
            Command::Cancel {
                key,
                seq,
                user_id: user_id.map(str::to_owned),
                reply: tx,
            },
        )?;
        answer(rx).await
    }

    /// Confirms payment (operator). Idempotent by `payment_ref`.
    pub async fn pay(&self, order_id: &str, payment_ref: &str) -> Result<Order> {
        check_id("payment_ref", payment_ref)?;
        let (key, seq) = self.route_order(order_id)?;
        let (tx, rx) = Responder::channel();
        self.send(
            self.shard_of(key),
            Command::Pay {
                key,
                seq,
                payment_ref: payment_ref.to_owned(),
                reply: tx,
            },
        )?;
        answer(rx).await
    }

    /// Runs every shard's expiry pass now and waits for it to be journaled. The shards do it
    /// on their own every `expiry_tick_ms`; tests with a manual clock call this instead.
    pub async fn tick(&self) -> Result<()> {
        let mut waits = Vec::new();
        for shard in 0..self.inner.mailboxes.len() {
            let (tx, rx) = oneshot::channel();
            self.send_control(shard, Command::Tick { reply: tx })
                .await?;
            waits.push(rx);
        }
        for rx in waits {
            answer(rx).await?;
        }
        Ok(())
    }

    /// Takes a consistent image of the whole engine and hands it to the journal.
    pub async fn snapshot(&self) -> Result<EngineImage> {
        let _catalog = self.inner.catalog_lock.lock().await;
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(Error::Unavailable("the engine is shutting down".into()));
        }
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.take_and_save_image())
            .await
            .map_err(|e| Error::Unavailable(format!("snapshot task failed: {e}")))?
    }

    /// Pauses every shard at a batch boundary, copies their items, and resumes them. The
    /// caller holds the catalog lock, so no catalog change is half-way.
    fn take_and_save_image(&self) -> Result<EngineImage> {
        let shards = self.inner.mailboxes.len();
        let barrier = Arc::new(Barrier::new(shards + 1));
        let (images_tx, images_rx) = crossbeam_channel::bounded(shards);
        for mailbox in &self.inner.mailboxes {
            let sent = mailbox.send(Command::Pause {
                images: images_tx.clone(),
                barrier: Arc::clone(&barrier),
            });
            if sent.is_err() {
                // A stopped shard can never reach the barrier; nothing was paused for good
                // because the others are released below only if all were reached.
                return Err(Error::Unavailable("shard stopped".into()));
            }
        }
        let mut items = Vec::new();
        for _ in 0..shards {
            match images_rx.recv() {
                Ok(part) => items.extend(part),
                Err(_) => return Err(Error::Unavailable("shard stopped".into())),
            }
        }
        // Every shard is parked at the barrier: nothing is being appended.
        let through_seq = self.inner.journal.last_seq();
        let promotions: Vec<PromotionImage> = self
            .inner
            .promotions
            .iter()
            .map(|e| {
                let (starts_at_ms, ends_at_ms) = e.window();
                PromotionImage {
                    record: e.record.clone(),
                    starts_at_ms,
                    ends_at_ms,
                }
            })
            .collect();
        self.inner
            .counters
            .events_since_snapshot
            .store(0, Ordering::Relaxed);
        barrier.wait();
        let records: usize = items
            .iter()
            .map(|item| item.orders.len() + item.tokens.len())
            .sum();
        self.inner
            .counters
            .records_in_last_snapshot
            .store(records as u64, Ordering::Relaxed);
        let image = EngineImage {
            version: EVENT_VERSION,
            through_seq,
            promotions,
            items,
        };
        let started = std::time::Instant::now();
        self.inner
            .journal
            .save_snapshot(&image)
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        metrics::histogram!("seckill_snapshot_seconds").record(started.elapsed().as_secs_f64());
        Ok(image)
    }

    fn spawn_snapshot_taker(&self) -> Result<()> {
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.config.snapshot_every_events;
        let handle = std::thread::Builder::new()
            .name("seckill-snapshot".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(500));
                let Some(inner) = weak.upgrade() else { return };
                if inner.mailboxes.is_empty() {
                    return;
                }
                // A snapshot copies every order and token while the shards are paused, so
                // its cost grows with the state. Waiting for at least as many new events as
                // the last snapshot held records keeps that cost at a constant share of the
                // work per event, and replay after a crash at most about as long as loading
                // the snapshot (Redis rewrites its AOF by the same rule, at 100% growth).
                let due = every.max(
                    inner
                        .counters
                        .records_in_last_snapshot
                        .load(Ordering::Relaxed),
                );
                if inner.counters.events_since_snapshot.load(Ordering::Relaxed) < due {
                    continue;
                }
                let engine = Engine { inner };
                let _catalog = engine.inner.catalog_lock.blocking_lock();
                if engine.inner.stopping.load(Ordering::Acquire) {
                    return;
                }
                if let Err(error) = engine.take_and_save_image() {
                    tracing::warn!(%error, "snapshot failed; the log is kept whole");
                    if matches!(error, Error::Unavailable(ref m) if m == "shard stopped") {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Unavailable(format!("cannot start snapshot thread: {e}")))?;
        drop(handle);
        Ok(())
    }

    /// Stops every shard after its current batch is journaled and answered. Calls made after
    /// this answer "unavailable".
    pub async fn shutdown(&self) -> Result<()> {
        {
            // Under the catalog lock: no snapshot is pausing shards now, and none starts after.
            let _catalog = self.inner.catalog_lock.lock().await;
            self.inner.stopping.store(true, Ordering::Release);
        }
        let mut waits = Vec::new();
        for shard in 0..self.inner.mailboxes.len() {
            let (tx, rx) = oneshot::channel();
            if self
                .send_control(shard, Command::Shutdown { reply: tx })
                .await
                .is_ok()
            {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
        let threads: Vec<JoinHandle<()>> = self
            .inner
            .threads
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await
        .map_err(|e| Error::Unavailable(format!("join failed: {e}")))?;
        Ok(())
    }
}

/// The shard that owns the item with key `key` among `shards` shards.
fn shard_index(key: u64, shards: usize) -> usize {
    (key % shards as u64) as usize
}

/// Item keys grouped by owning shard, so that each shard gets one command for all of them.
fn keys_by_shard(keys: impl Iterator<Item = u64>, shards: usize) -> FxHashMap<usize, Vec<u64>> {
    let mut by_shard: FxHashMap<usize, Vec<u64>> = FxHashMap::default();
    for key in keys {
        by_shard
            .entry(shard_index(key, shards))
            .or_default()
            .push(key);
    }
    by_shard
}

/// Adds a promotion and its gates to the catalog (recovery path).
fn register(
    promotions: &DashMap<String, Arc<PromotionEntry>, FxBuildHasher>,
    gates: &DashMap<u64, Arc<ItemGate>, FxBuildHasher>,
    record: crate::model::PromotionRecord,
) -> Result<Arc<PromotionEntry>> {
    let keys: Vec<u64> = record
        .items
        .iter()
        .map(|item| item_key(&record.id, &item.sku))
        .collect();
    let entry = PromotionEntry::new(record, &keys);
    for gate in &entry.gates {
        gates.insert(gate.key, Arc::clone(gate));
    }
    if promotions
        .insert(entry.record.id.clone(), Arc::clone(&entry))
        .is_some()
    {
        return Err(Error::Unavailable(format!(
            "the log creates promotion {} twice",
            entry.record.id
        )));
    }
    Ok(entry)
}

/// Stats of a promotion whose items have sold nothing yet.
fn fresh_stats(entry: &PromotionEntry, now_ms: i64) -> PromotionStats {
    let (starts_at_ms, ends_at_ms) = entry.window();
    PromotionStats {
        id: entry.record.id.clone(),
        name: entry.record.name.clone(),
        status: PromotionStatus::at(starts_at_ms, ends_at_ms, now_ms),
        starts_at_ms,
        ends_at_ms,
        payment_timeout_s: entry.record.payment_timeout_s,
        require_token: entry.record.require_token,
        token_multiplier: entry.record.token_multiplier,
        created_at_ms: entry.record.created_at_ms,
        items: entry
            .record
            .items
            .iter()
            .map(|item| ItemStats {
                sku: item.sku.clone(),
                title: item.title.clone(),
                price_cents: item.price_cents,
                per_user_limit: item.per_user_limit,
                stock: item.stock,
                remaining: item.stock,
                reserved: 0,
                sold: 0,
                tokens_issued: 0,
            })
            .collect(),
    }
}
