//! The engine handle: routes each call to the shard that owns the item, answers the cheap
//! refusals itself (by the rules in `rules.rs`), and hands catalog changes and snapshots to
//! the control thread.
//!
//! Cancel-safety: every write either completes or does not happen, whatever the caller's
//! future does. A shopper write is one non-blocking hand-over to a shard's mailbox: once it
//! is in, the shard decides and journals it whether anyone waits for the answer or not. A
//! catalog change is one hand-over to the control thread, likewise. Nothing that changes
//! state runs inside the caller's future after an `.await`.
//!
//! A cluster engine ([`Engine::start_cluster`]) holds the items of some partitions only. Every
//! call for an item goes through [`Engine::route`]: to its shard while the item's partition
//! is installed here and its lease is held, `NotOwner` (nothing done) otherwise. A one-node
//! engine pays one `Option` branch for it.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rustc_hash::FxHashMap;
use tokio::sync::oneshot;

use crate::catalog::{ItemGate, PromotionEntry, WindowChange};
use crate::command::{Command, OrderAddress};
use crate::config::EngineConfig;
use crate::control::{self, Control, ControlOp, CreateOutcome};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::guard::{
    check_eligibility, check_human, Admission, ClaimSource, HumanCheck, NoClaims, OneClaim,
    PromotionGuard,
};
use crate::ids::{is_valid_id, parse_order_id};
use crate::image::EngineImage;
use crate::model::{
    Creation, ItemStats, Order, PromotionSpec, PromotionStats, PromotionStatus, PublicPromotion,
    PurchaseRequest, Purchased, TokenGrant,
};
use crate::partition::{
    not_a_cluster, ClusterPorts, ClusterState, PartitionPart, PartitionRecovery, Released,
};
use crate::ports::{Ports, Recovery};
use crate::pump::Responder;
use crate::recovery::{rebuild, rebuild_catalog, rebuild_partition, Rebuilt};
use crate::rules::{purchase_gate_refusal, token_gate_refusal};
use crate::shard::{Shard, ShardCluster, ShardCounters, ShardPorts, ShardSettings};
use crate::shards::{Routing, Shards};
use crate::validate::validate_promotion;

/// A running engine. Cheap to clone: every clone talks to the same shards.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    core: Arc<Core>,
    control: Control,
    control_thread: Mutex<Option<JoinHandle<()>>>,
}

/// Checks an identifier from a caller.
fn check_id(field: &str, value: &str) -> Result<()> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(Error::invalid(field, "must match [A-Za-z0-9_.:-]{1,64}"))
    }
}

/// The answer of a write handed to shard `shard`. No answer means the shard died after it
/// took the write: it may have been journaled, so the outcome is unknown.
async fn answer_write<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    rx.await.unwrap_or(Err(Error::OutcomeUnknown))
}

/// The answer of a read handed to shard `shard`; no answer means the shard died.
async fn answer_read<T>(rx: oneshot::Receiver<Result<T>>, shard: usize) -> Result<T> {
    rx.await.unwrap_or(Err(Error::ShardDown(shard)))
}

impl Engine {
    /// Rebuilds the state from `recovery`, then starts the shards and the control thread.
    /// Returns once the engine is ready to answer: no request is taken before recovery has
    /// finished.
    pub fn start(config: EngineConfig, ports: Ports, recovery: Recovery) -> Result<Engine> {
        config.check()?;
        let rebuilt = rebuild(&config, recovery, &*ports.journal, ports.clock.now_ms())?;
        Engine::launch(config, ports, rebuilt, None)
    }

    /// Starts a cluster node's engine from `catalog`, the catalog's snapshot and log: every
    /// promotion is known, and no item is installed. A partition's items come with
    /// [`Engine::build_partition`] and [`Engine::adopt_partition`] once its lease is taken;
    /// until then every call for them answers `NotOwner`.
    ///
    /// `catalog` must hold no item (no item in its snapshot, no item event in its batches):
    /// such a recovery is a whole engine's, for [`Engine::start`], and is refused.
    /// Automatic snapshots are off: a cluster node's snapshots are per partition (plan step
    /// 6), and [`Engine::snapshot`] refuses.
    pub fn start_cluster(
        config: EngineConfig,
        ports: Ports,
        cluster: ClusterPorts,
        catalog: Recovery,
    ) -> Result<Engine> {
        config.check()?;
        let cluster = ClusterState::new(cluster);
        let rebuilt = rebuild_catalog(&config, catalog, cluster.partitions)?;
        Engine::launch(config, ports, rebuilt, Some(cluster))
    }

    /// Starts the shards over the rebuilt state, then the control thread.
    fn launch(
        config: EngineConfig,
        ports: Ports,
        rebuilt: Rebuilt,
        cluster: Option<ClusterState>,
    ) -> Result<Engine> {
        let counters = Arc::new(ShardCounters::default());
        let shard_ports = ShardPorts {
            journal: Arc::clone(&ports.journal),
            clock: Arc::clone(&ports.clock),
            sink: Arc::clone(&ports.sink),
            counters: Arc::clone(&counters),
        };
        let shards = rebuilt
            .states
            .into_iter()
            .enumerate()
            .map(|(index, state)| {
                let (tx, rx) = crossbeam_channel::bounded(config.mailbox_capacity);
                let settings = ShardSettings {
                    index,
                    batch_requests_max: config.batch_requests_max,
                    expiry_tick: std::time::Duration::from_millis(config.expiry_tick_ms.max(1)),
                    token_ttl_ms: config.token_ttl_ms(),
                    epoch: rebuilt.epoch,
                    retain_ended_ms: config.retain_ended_ms(),
                };
                let shard_cluster = cluster.as_ref().map(|c| {
                    ShardCluster::new(
                        c.partitions,
                        Arc::clone(&c.ownership),
                        Arc::clone(&c.standings),
                    )
                });
                let shard = Shard::new(settings, state, rx, shard_ports.clone(), shard_cluster);
                (shard, tx)
            })
            .collect();
        let routing = match &cluster {
            Some(cluster) => Routing::cluster(config.shards, cluster.partitions),
            None => Routing::alone(config.shards),
        };
        if let Some(sync) = cluster.as_ref().and_then(|c| c.catalog.as_ref()) {
            sync.start_at(rebuilt.catalog_seq);
        }
        let core = Arc::new(Core {
            shards: Shards::spawn(shards, routing)?,
            catalog: rebuilt.catalog,
            journal: ports.journal,
            clock: ports.clock,
            counters,
            config,
            cluster,
        });
        let (control, control_thread) = Control::spawn(Arc::downgrade(&core))?;
        Ok(Engine {
            inner: Arc::new(Inner {
                core,
                control,
                control_thread: Mutex::new(Some(control_thread)),
            }),
        })
    }

    pub(crate) fn core(&self) -> &Core {
        &self.inner.core
    }

    /// The shard of the item `key`, when this engine may decide for it: always when it runs
    /// alone; in a cluster only while the item's partition is installed here and its lease
    /// is held (`NotOwner` otherwise: nothing was done, the owner may be asked). The shard
    /// checks again, for a command that reaches it after its partition was dropped.
    fn route(&self, key: u64) -> Result<usize> {
        let core = self.core();
        if let Some(cluster) = &core.cluster {
            cluster.check(key)?;
        }
        Ok(core.shards.of(key))
    }

    fn cluster(&self) -> Result<&ClusterState> {
        self.core().cluster.as_ref().ok_or_else(not_a_cluster)
    }

    /// Rebuilds one partition from what the journal handed over when this node took its
    /// lease: the snapshot's items, then fresh items for the catalog's items of the
    /// partition that have no state, then the lane's batches applied in order. Pure (the
    /// shards, the gates and the ban board are untouched; the strikes are collected into
    /// the part), so it runs on any thread, off the control thread, however long the lane.
    ///
    /// Refuses, with `Unavailable`:
    /// - an event or snapshot item of an item the catalog does not know ("catalog behind":
    ///   build again once the catalog caught up), or of another partition;
    /// - a lane or snapshot holding an order of an epoch at or above `recovery.epoch`: new
    ///   order ids could repeat old ones;
    /// - archived items (a cluster node keeps no archive);
    /// - a lane that contradicts itself (an oversell, an order out of sequence: a corrupt
    ///   log or a bug).
    pub fn build_partition(&self, recovery: PartitionRecovery) -> Result<PartitionPart> {
        let core = self.core();
        let cluster = self.cluster()?;
        cluster.check_partition(recovery.partition)?;
        if let Some(sync) = &cluster.catalog {
            if sync.applied_seq() < recovery.catalog_seq {
                return Err(Error::Unavailable(format!(
                    "the catalog is at {}, behind the partition's takeover at {}: catch up and build again",
                    sync.applied_seq(),
                    recovery.catalog_seq
                )));
            }
        }
        let partition = recovery.partition;
        let epoch = recovery.epoch;
        // A contradiction in the lane trips an assert of the item's `apply`; the half-built
        // part touched nothing shared, so it is dropped and the caller's thread lives on.
        let built = std::panic::catch_unwind(AssertUnwindSafe(|| {
            rebuild_partition(
                &core.catalog,
                &core.config,
                cluster.partitions,
                &*core.journal,
                recovery,
            )
        }));
        let (states, strikes) = match built {
            Ok(built) => built?,
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "partition {partition}'s lane contradicts itself (a corrupt log or a bug); not built"
                )))
            }
        };
        Ok(PartitionPart {
            partition,
            epoch,
            instance: cluster.instance,
            states,
            strikes,
        })
    }

    /// Installs a built partition: on the control thread (serialised with creates, which
    /// meanwhile installed nothing of it), every shard takes its items under the part's
    /// epoch, publishes their gates, and expires the payment deadlines that passed while
    /// the partition had no owner, journaled in that very batch. Then the replay's strikes
    /// are on the board and the partition is Owned: its calls go to the shards. Returns how
    /// many items were adopted.
    ///
    /// Refused when the partition is installed already (an adopt, a release or a lost
    /// lease under way): two copies of an item must never decide; and `NotOwner` when its
    /// lease is not held for sure (the adopt decides expiries). Refused too (`Unavailable`)
    /// for a part of a holding the partition was dropped under without waiting for its
    /// appends (a lost lease, a failed adopt, a release that waited out the journal): one of
    /// them may still land, so only a later holding, whose takeover fences it, adopts the
    /// partition again; and while such a drop is still on its way to a busy shard. On an
    /// error nothing of the partition stays installed; the shards may have journaled
    /// expiries, so a retry takes the lease again and builds from the lane as it stands.
    /// Cancel-safe: once handed over it runs to its end.
    pub async fn adopt_partition(&self, part: PartitionPart) -> Result<usize> {
        self.cluster()?;
        self.control(|reply| ControlOp::AdoptPartition {
            part: Box::new(part),
            reply,
        })
        .await
    }

    /// The clean hand-over of `partition`: from the call on, its calls answer `NotOwner`;
    /// every shard journals and answers what it decided for the partition (a journal that
    /// stalls holds the release back) and waits for an append the journal is still
    /// writing; then the partition's items, strikes and gate views leave. Returns once none
    /// is left, so the lease can go: nothing of the partition is appended after. A
    /// partition not installed is released at once, with no item.
    pub async fn release_partition(&self, partition: u32) -> Result<Released> {
        self.cluster()?.check_partition(partition)?;
        self.control(|reply| ControlOp::ReleasePartition { partition, reply })
            .await
    }

    /// The lease holding of `partition` under `epoch` was lost (taken over, or given up):
    /// its calls answer `NotOwner` from now on, and its items leave the shards without
    /// waiting for an append still being written (the journal answers it as lost). Returns
    /// at once; the drop itself runs on the control thread, before any later adopt.
    ///
    /// A loss of another holding than the one the partition is adopted under is stale (a
    /// late report about an earlier holding, after the partition was taken again) and is
    /// ignored: the current items decide only under their own holding anyway.
    pub fn lose_partition(&self, partition: u32, epoch: u64) {
        let Ok(cluster) = self.cluster() else {
            return;
        };
        if cluster.check_partition(partition).is_err() {
            return;
        }
        if !cluster.standings.lose_if_tied(partition, epoch) {
            tracing::debug!(partition, epoch, "a stale lease loss is ignored");
            return;
        }
        if self
            .inner
            .control
            .submit(ControlOp::LosePartition { partition, epoch })
            .is_err()
        {
            // The engine is stopping, and its shards with it.
            tracing::warn!(
                partition,
                "a lost partition is not dropped: the engine is stopping"
            );
        }
    }

    /// The catalog log's last sequence this engine's catalog holds (0 without a catalog
    /// log, or when the engine runs alone).
    pub fn catalog_seq(&self) -> u64 {
        self.core()
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.catalog.as_ref())
            .map_or(0, |sync| sync.applied_seq())
    }

    /// Applies, in order, every change the catalog log holds past this engine's catalog
    /// (other nodes' creates, starts and stops), on the control thread; returns the
    /// sequence the catalog holds then. A node calls it when the log moved, and before it
    /// builds a partition whose takeover saw a later catalog. Refused without a catalog log.
    pub async fn catch_up_catalog(&self) -> Result<u64> {
        self.cluster()?;
        self.control(|reply| ControlOp::CatchUpCatalog { reply })
            .await
    }

    /// Applies `entries` of the catalog log (`(seq, events)`, in order, as
    /// [`crate::CatalogLog::read_after`] gives them) that a reader off the control thread
    /// read: the catalog tail, so that the control thread never waits on the network for
    /// it. Entries the catalog holds already are skipped; a gap is refused (read again).
    /// Returns the sequence the catalog holds then.
    pub async fn apply_catalog(&self, entries: Vec<(u64, Vec<Event>)>) -> Result<u64> {
        self.cluster()?;
        self.control(|reply| ControlOp::ApplyCatalog { entries, reply })
            .await
    }

    /// The epoch of the lease holding `partition` is adopted (or being adopted) under here;
    /// `None` when it is not installed, or when the engine runs alone.
    pub fn partition_epoch(&self, partition: u32) -> Option<u64> {
        self.cluster().ok()?.standings.epoch(partition)
    }

    /// The partitions installed here, ascending (empty when the engine runs alone). One of
    /// them whose lease is not held for sure still answers `NotOwner`.
    pub fn owned_partitions(&self) -> Vec<u32> {
        self.core()
            .cluster
            .as_ref()
            .map_or_else(Vec::new, |cluster| cluster.standings.owned())
    }

    /// The engine's clock (the edge uses it for `server_time`).
    pub fn now_ms(&self) -> i64 {
        self.core().clock.now_ms()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.core().config
    }

    /// Shards whose thread died: their items answer 503 until a restart.
    pub fn dead_shards(&self) -> Vec<usize> {
        self.core().shards.down()
    }

    /// Fault injection for tests: makes shard `shard` panic as a broken invariant would.
    #[doc(hidden)]
    pub fn inject_shard_panic(&self, shard: usize) {
        if shard < self.core().shards.count() {
            let _ = self.core().shards.send(shard, Command::Fault);
        }
    }

    /// Hands `op` to the control thread and waits for its answer.
    async fn control<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T>>) -> ControlOp,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.inner.control.submit(op(reply))?;
        control::answer(answer).await
    }

    /// Creates a promotion, atomically: one journaled event holds it whole. Repeating the
    /// call with the same id and body is a retry: it answers the promotion, `created` false.
    pub async fn create_promotion(&self, spec: PromotionSpec) -> Result<Creation> {
        let id = match &spec.id {
            Some(id) => id.clone(),
            None => format!("p-{:016x}", rand::random::<u64>()),
        };
        let record = validate_promotion(&spec, id, self.now_ms())?;
        let id = record.id.clone();
        let outcome = self
            .control(|reply| ControlOp::Create { record, reply })
            .await?;
        match outcome {
            CreateOutcome::Created(entry) => Ok(Creation {
                promotion: entry.fresh_stats(self.now_ms()),
                created: true,
            }),
            CreateOutcome::Existing => Ok(Creation {
                promotion: self.stats_after_write(&id).await?,
                created: false,
            }),
        }
    }

    /// Forces a promotion live from now. Starting a live one changes nothing; an ended one
    /// cannot start again.
    pub async fn start_promotion(&self, promotion_id: &str) -> Result<PromotionStats> {
        self.change_window(promotion_id, WindowChange::Start).await
    }

    /// Ends a promotion from now. Stopping an ended one changes nothing.
    pub async fn stop_promotion(&self, promotion_id: &str) -> Result<PromotionStats> {
        self.change_window(promotion_id, WindowChange::Stop).await
    }

    async fn change_window(&self, id: &str, change: WindowChange) -> Result<PromotionStats> {
        let promotion_id = id.to_owned();
        self.control(|reply| ControlOp::Window {
            promotion_id,
            change,
            reply,
        })
        .await?;
        self.stats_after_write(id).await
    }

    /// Takes a consistent image of the whole engine and hands it to the journal. A cluster
    /// engine refuses: it holds some partitions only, and an image without the others
    /// would lose their orders.
    pub async fn snapshot(&self) -> Result<EngineImage> {
        self.control(|reply| ControlOp::Snapshot { reply }).await
    }

    /// A promotion with exact per-item stats, read from the owning shards. In a cluster,
    /// `NotOwner` when any of its items is not this engine's to read (never stale figures).
    pub async fn promotion_stats(&self, promotion_id: &str) -> Result<PromotionStats> {
        let entry = self.core().catalog.entry(promotion_id)?;
        let keys: Vec<u64> = entry.gates.iter().map(|g| g.key).collect();
        for key in &keys {
            self.route(*key)?;
        }
        self.stats_of(&entry, keys).await
    }

    /// The stats a done catalog write answers with. In a cluster, the items of partitions
    /// not owned here show their figures as created: the write happened, so an error would
    /// be wrong, and only their owners know their figures (the edge asks them, plan step 9).
    async fn stats_after_write(&self, promotion_id: &str) -> Result<PromotionStats> {
        let Some(cluster) = &self.core().cluster else {
            return self.promotion_stats(promotion_id).await;
        };
        let entry = self.core().catalog.entry(promotion_id)?;
        let (stats, _) = self.owned_part(&entry, cluster).await?;
        Ok(stats)
    }

    /// `entry`'s stats with the exact figures of the items this engine decides for now
    /// (the others as created), and which those are, gate for gate.
    async fn owned_part(
        &self,
        entry: &PromotionEntry,
        cluster: &ClusterState,
    ) -> Result<(PromotionStats, Vec<bool>)> {
        let owned: Vec<bool> = entry
            .gates
            .iter()
            .map(|gate| cluster.check(gate.key).is_ok())
            .collect();
        let keys = entry
            .gates
            .iter()
            .zip(&owned)
            .filter(|(_, owned)| **owned)
            .map(|(gate, _)| gate.key)
            .collect();
        Ok((self.stats_of(entry, keys).await?, owned))
    }

    /// The promotion's stats with the exact figures of the items `keys` (the others as
    /// created).
    async fn stats_of(&self, entry: &PromotionEntry, keys: Vec<u64>) -> Result<PromotionStats> {
        let mut found = self
            .item_stats(self.core().shards.by_shard(keys.into_iter()))
            .await?;
        let mut stats = entry.fresh_stats(self.now_ms());
        for (item, gate) in stats.items.iter_mut().zip(&entry.gates) {
            if let Some(exact) = found.remove(&gate.key) {
                *item = exact;
            }
            debug_assert_eq!(item.remaining + item.reserved + item.sold, item.stock);
        }
        Ok(stats)
    }

    async fn item_stats(
        &self,
        by_shard: BTreeMap<usize, Vec<u64>>,
    ) -> Result<FxHashMap<u64, ItemStats>> {
        let mut waits = Vec::with_capacity(by_shard.len());
        for (shard, keys) in by_shard {
            let (reply, rx) = oneshot::channel();
            let command = Command::Stats {
                keys: keys.clone(),
                reply,
            };
            self.core().shards.send(shard, command)?;
            waits.push((shard, keys, rx));
        }
        let mut found = FxHashMap::default();
        for (shard, keys, rx) in waits {
            found.extend(keys.into_iter().zip(answer_read(rx, shard).await?));
        }
        Ok(found)
    }

    /// Every promotion with stats, oldest first.
    pub async fn list_promotion_stats(&self) -> Result<Vec<PromotionStats>> {
        let mut ids: Vec<(i64, String)> = self
            .core()
            .catalog
            .entries()
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

    /// Every promotion, oldest first, with the exact stats of the items this engine
    /// decides for and no others: what a cluster node's SQL flusher writes (each item's
    /// row by its owner). An engine alone owns every item: [`Engine::list_promotion_stats`].
    pub async fn list_promotion_stats_owned(&self) -> Result<Vec<PromotionStats>> {
        if self.core().cluster.is_none() {
            return self.list_promotion_stats().await;
        }
        let mut entries = self.core().catalog.entries();
        entries.sort_by(|x, y| {
            (x.record.created_at_ms, &x.record.id).cmp(&(y.record.created_at_ms, &y.record.id))
        });
        let mut all = Vec::with_capacity(entries.len());
        for entry in entries {
            all.push(self.owned_stats_of(&entry).await?);
        }
        Ok(all)
    }

    /// One promotion with the exact stats of the items this engine decides for and no
    /// others (a cluster node's part of the answer; alone: [`Engine::promotion_stats`]).
    pub async fn promotion_stats_owned(&self, promotion_id: &str) -> Result<PromotionStats> {
        let entry = self.core().catalog.entry(promotion_id)?;
        self.owned_stats_of(&entry).await
    }

    /// `entry`'s stats with the items this engine decides for alone.
    async fn owned_stats_of(&self, entry: &PromotionEntry) -> Result<PromotionStats> {
        let Some(cluster) = &self.core().cluster else {
            let keys = entry.gates.iter().map(|g| g.key).collect();
            return self.stats_of(entry, keys).await;
        };
        let (mut stats, owned) = self.owned_part(entry, cluster).await?;
        let mut mine = owned.iter();
        stats
            .items
            .retain(|_| mine.next().copied().unwrap_or(false));
        Ok(stats)
    }

    /// The shoppers' view of one promotion, from the gates (no shard round trip).
    pub fn public_promotion(&self, promotion_id: &str) -> Result<PublicPromotion> {
        let entry = self.core().catalog.entry(promotion_id)?;
        Ok(self.with_remote_figures(&entry, entry.public_view(self.now_ms())))
    }

    /// Upcoming and live promotions in the shoppers' view, soonest first.
    pub fn public_promotions(&self) -> Vec<PublicPromotion> {
        let now_ms = self.now_ms();
        let mut views: Vec<PublicPromotion> = self
            .core()
            .catalog
            .entries()
            .iter()
            .map(|e| (e, e.public_view(now_ms)))
            .filter(|(_, v)| v.status != PromotionStatus::Ended)
            .map(|(e, v)| self.with_remote_figures(e, v))
            .collect();
        views.sort_by(|a, b| a.starts_at_ms.cmp(&b.starts_at_ms).then(a.id.cmp(&b.id)));
        views
    }

    /// Hands a purchase token to `user_id` for one item of an open promotion (one without a
    /// human check or an eligibility rule: the others refuse, see
    /// [`Engine::issue_token_admitted`]).
    pub async fn issue_token(
        &self,
        promotion_id: &str,
        sku: &str,
        user_id: &str,
    ) -> Result<TokenGrant> {
        self.issue_token_admitted(promotion_id, sku, user_id, Admission::none())
            .await
    }

    /// What a token request for this item still has to pass once the gate's own refusals
    /// (banned, not live, sold out) and the promotion's eligibility rule let it through:
    /// the human check to verify before [`Engine::issue_token_admitted`]. Lets a caller spend
    /// a costly check (a captcha verifier's round trip) only on requests that could succeed.
    /// The promotion's guard (its human check and eligibility rule), from the catalog:
    /// what a cluster node checks and forwards for an item it does not own.
    pub fn guard_of(&self, promotion_id: &str) -> Result<PromotionGuard> {
        Ok(self
            .core()
            .catalog
            .entry(promotion_id)?
            .record
            .guard
            .clone())
    }

    /// The claim `guard`'s eligibility rule reads, as `claims` has it: what is forwarded to
    /// the owner of an item with a call (nothing for a promotion without a rule).
    pub fn claim_for(guard: &PromotionGuard, claims: &dyn ClaimSource) -> OneClaim {
        OneClaim(guard.eligibility.as_ref().and_then(|rule| {
            claims
                .claim(&rule.claim)
                .map(|value| (rule.claim.clone(), value))
        }))
    }

    pub fn token_precheck(
        &self,
        promotion_id: &str,
        sku: &str,
        user_id: &str,
        claims: &dyn ClaimSource,
    ) -> Result<HumanCheck> {
        check_id("user_id", user_id)?;
        let (entry, gate) = self.core().catalog.gate(promotion_id, sku)?;
        self.token_route(&entry, &gate, user_id)?;
        self.token_refusal(&entry, &gate, user_id, claims)?;
        Ok(entry.record.guard.human_check)
    }

    /// Hands a purchase token to `user_id`, with the claims and the human check's outcome
    /// the caller brings. Order of refusals: 404, banned, not live, sold out, not eligible,
    /// human check failed; all at the gate, before a shard is asked.
    pub async fn issue_token_admitted(
        &self,
        promotion_id: &str,
        sku: &str,
        user_id: &str,
        admission: Admission<'_>,
    ) -> Result<TokenGrant> {
        check_id("user_id", user_id)?;
        let (entry, gate) = self.core().catalog.gate(promotion_id, sku)?;
        let shard = self.token_route(&entry, &gate, user_id)?;
        self.token_refusal(&entry, &gate, user_id, admission.claims)?;
        check_human(&entry.record.guard, admission.human_check_passed)?;
        let (reply, rx) = Responder::channel();
        let command = Command::Token {
            key: gate.key,
            user_id: user_id.to_owned(),
            reply,
        };
        self.core().shards.send(shard, command)?;
        answer_write(rx).await
    }

    /// The shard of a token request's item, before the gate's refusals: a gate of a
    /// partition not owned here shows no figure to refuse by, so such a request is refused
    /// by the owner's view when it can be, and answers `NotOwner` (hand it over) otherwise.
    fn token_route(&self, entry: &PromotionEntry, gate: &ItemGate, user_id: &str) -> Result<usize> {
        self.route(gate.key).map_err(|not_owner| {
            self.remote_token_refusal(entry, gate, user_id)
                .unwrap_or(not_owner)
        })
    }

    fn token_refusal(
        &self,
        entry: &crate::catalog::PromotionEntry,
        gate: &ItemGate,
        user_id: &str,
        claims: &dyn ClaimSource,
    ) -> Result<()> {
        let status = entry.status(self.now_ms());
        if let Some(refusal) =
            token_gate_refusal(status, gate.is_sold_out(), || entry.is_banned(user_id))
        {
            return Err(refusal);
        }
        check_eligibility(&entry.record.guard, claims)
    }

    /// Buys, as a shopper without claims (a promotion with an eligibility rule refuses, see
    /// [`Engine::purchase_admitted`]). `created` tells a new order (201) from the original
    /// order of a repeated request id (200).
    pub async fn purchase(
        &self,
        promotion_id: &str,
        sku: &str,
        user_id: &str,
        request: PurchaseRequest,
    ) -> Result<Purchased> {
        self.purchase_admitted(promotion_id, sku, user_id, request, &NoClaims)
            .await
    }

    /// Buys, as a shopper with `claims` (checked against the promotion's eligibility rule
    /// at the gate, after its own refusals).
    pub async fn purchase_admitted(
        &self,
        promotion_id: &str,
        sku: &str,
        user_id: &str,
        request: PurchaseRequest,
        claims: &dyn ClaimSource,
    ) -> Result<Purchased> {
        check_id("user_id", user_id)?;
        check_id("request_id", &request.request_id)?;
        if request
            .token
            .as_ref()
            .is_some_and(|token| token.len() > 128)
        {
            return Err(Error::invalid("token", "longer than 128 bytes"));
        }
        let (entry, gate) = self.core().catalog.gate(promotion_id, sku)?;
        // Before the gate's refusals: a gate of a partition not owned here shows no figure
        // to refuse by; the catalog may, and the owner decides otherwise.
        let shard = self.route(gate.key).map_err(|not_owner| {
            self.remote_purchase_refusal(&entry, user_id)
                .unwrap_or(not_owner)
        })?;
        if let Some(refusal) = self.purchase_refusal(&entry, &gate, user_id) {
            return Err(refusal);
        }
        let eligible = check_eligibility(&entry.record.guard, claims).is_ok();
        if !eligible && gate.holds_no_order(user_id) {
            // Known to hold no order here, so this is no retry: refused at the gate. Anyone
            // else goes to the shard, which answers a repeated request id first.
            return Err(Error::NotEligible);
        }
        if request.quantity == 0 {
            return Err(Error::invalid("quantity", "must be at least 1"));
        }
        let (reply, rx) = Responder::channel();
        let command = Command::Purchase {
            key: gate.key,
            user_id: user_id.to_owned(),
            request,
            eligible,
            reply,
        };
        self.core().shards.send(shard, command)?;
        answer_write(rx).await
    }

    fn purchase_refusal(
        &self,
        entry: &crate::catalog::PromotionEntry,
        gate: &ItemGate,
        user_id: &str,
    ) -> Option<Error> {
        purchase_gate_refusal(
            entry.status(self.now_ms()),
            gate.is_sold_out(),
            gate.buyers_complete(),
            // Checked again after a miss: an item being archived empties its set after
            // clearing the flag, and a user it held must not be refused meanwhile.
            || gate.buyers.contains(user_id) || !gate.buyers_complete(),
            || entry.is_banned(user_id),
        )
    }

    /// Reads an order. `user_id` Some(user): a shopper, who only sees their own orders;
    /// None: an operator.
    pub async fn order(&self, order_id: &str, user_id: Option<&str>) -> Result<Order> {
        let user_id = user_id.map(str::to_owned);
        let (shard, rx) = self.order_command(order_id, |order, reply| Command::ReadOrder {
            order,
            user_id,
            reply,
        })?;
        answer_read(rx, shard).await
    }

    /// Cancels a pending order; cancelling a cancelled one answers it unchanged.
    pub async fn cancel(&self, order_id: &str, user_id: Option<&str>) -> Result<Order> {
        let user_id = user_id.map(str::to_owned);
        let (_, rx) = self.order_command(order_id, |order, reply| Command::Cancel {
            order,
            user_id,
            reply,
        })?;
        answer_write(rx).await
    }

    /// Confirms payment (operator). Idempotent by `payment_ref`; when `amount_cents` is given
    /// it must be the order's amount (409 `amount_mismatch` otherwise, nothing changed).
    pub async fn pay(
        &self,
        order_id: &str,
        payment_ref: &str,
        amount_cents: Option<i64>,
    ) -> Result<Order> {
        check_id("payment_ref", payment_ref)?;
        let payment_ref = payment_ref.to_owned();
        let (_, rx) = self.order_command(order_id, |order, reply| Command::Pay {
            order,
            payment_ref,
            amount_cents,
            reply,
        })?;
        answer_write(rx).await
    }

    /// Sends the command `make` builds for the order `order_id` to its shard.
    fn order_command(
        &self,
        order_id: &str,
        make: impl FnOnce(OrderAddress, Responder<Order>) -> Command,
    ) -> Result<(usize, oneshot::Receiver<Result<Order>>)> {
        let parsed = parse_order_id(order_id).ok_or(Error::NotFound)?;
        let order = OrderAddress {
            key: parsed.item_key,
            seq: parsed.order_seq,
            order_id: order_id.to_owned(),
        };
        let shard = self.route(order.key)?;
        let (reply, rx) = Responder::channel();
        self.core().shards.send(shard, make(order, reply))?;
        Ok((shard, rx))
    }

    /// Runs every shard's expiry pass now and waits for it to be journaled. The shards do it
    /// on their own every `expiry_tick_ms`; tests with a manual clock call this instead.
    pub async fn tick(&self) -> Result<()> {
        self.control(|reply| ControlOp::Tick { reply }).await
    }

    /// Stops the control thread after the operation under way, and with it every shard
    /// after its current batch is journaled and answered. Dead shards are skipped: shutdown
    /// never waits on them. Calls made after this answer "unavailable".
    pub async fn shutdown(&self) -> Result<()> {
        let (reply, stopped) = oneshot::channel();
        // A shutdown always gets into the control queue; it fails only when the control
        // thread is gone already (an earlier shutdown), and then the shards are stopped.
        if self
            .inner
            .control
            .submit(ControlOp::Shutdown { reply })
            .is_ok()
        {
            drop(stopped.await);
        }
        let mut threads = self.core().shards.take_threads();
        let control_thread = self
            .inner
            .control_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        threads.extend(control_thread);
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await
        .map_err(|e| Error::Unavailable(format!("join failed: {e}")))
    }
}
