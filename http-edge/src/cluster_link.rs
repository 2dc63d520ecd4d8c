//! A cluster node's services beside its engine (`--cluster`): membership, the lease view
//! and the driver that takes and hands over partitions, the catalog tail and its
//! acknowledgements, the link that serves other nodes' calls and hands this node's calls
//! for items it does not own to their owner ([`OwnerCalls`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill_engine::{
    item_key, parse_order_id, partition_of, Engine, Error, OneClaim, Order, PromotionStats,
    PurchaseRequest, Purchased, Result, TokenGrant,
};
use seckill_persistence::cluster::catalog_acks::{CatalogAcks, ACK_WAIT};
use seckill_persistence::cluster::catalog_tail::CatalogTail;
use seckill_persistence::cluster::node::ClusterNode;
use seckill_persistence::cluster::owners::Owners;
use seckill_persistence::cluster::registry::{self, Registry};
use seckill_persistence::cluster::rpc::{self, ForwardError, Forwarder, RpcServer};
use seckill_persistence::cluster::views::GateViews;
use seckill_persistence::cluster::wire::{Answer, Op};
use seckill_persistence::jetstream::{ClusterOptions, Names, PartitionJournal};

use crate::owner_calls::{self, ClusterStatus, NodeStatus, OwnerCalls};
use crate::start_error::StartError;

/// How long a call waits for its partition to have an owner (a hand-over, a takeover)
/// before it answers 503 `unavailable` (nothing was sent).
const OWNER_WAIT: Duration = Duration::from_secs(2);
/// How long a forwarded call waits for the owner's answer: under the edge's request timeout
/// (5 s by default), and past the owner's append patience (2 s) plus a frame's trip.
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// A holder whose view arrived this recently is running, whatever its membership record
/// says (a JetStream write, held up during a NATS server's leader election; views travel
/// on core NATS, ten a second).
const HOLDER_HEARD: Duration = Duration::from_secs(1);
/// The pause between two looks for an owner.
const OWNER_POLL: Duration = Duration::from_millis(25);
/// How long a starting node waits for every partition to have an owner before it says it
/// is ready anyway (its calls for unowned partitions answer 503 meanwhile).
const READY_WAIT: Duration = Duration::from_secs(15);

/// The running services of a cluster node. See the module docs.
pub struct ClusterLink {
    engine: Engine,
    node: ClusterNode,
    forwarder: Forwarder,
    server: RpcServer,
    /// Publishes this node's partitions' figures and keeps the others' (for the cheap
    /// refusals); stopped when the link is dropped.
    views: GateViews,
    tail: tokio::sync::Mutex<Option<CatalogTail>>,
    acks: Arc<CatalogAcks>,
    partitions: u32,
    me: String,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("node", &self.me)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl ClusterLink {
    /// Starts every service of a node whose engine runs on `journal` (on the current Tokio
    /// runtime), then waits (up to [`READY_WAIT`]) until every partition has an owner.
    pub async fn start(
        journal: Arc<PartitionJournal>,
        engine: &Engine,
        options: &ClusterOptions,
        advertise: &str,
    ) -> std::result::Result<ClusterLink, StartError> {
        let failed =
            |what: &str, e: &dyn std::fmt::Display| StartError::Journal(format!("{what}: {e}"));
        let js = registry::connect(options)
            .await
            .map_err(|e| failed("connecting to NATS", &e))?;
        let client = js.client();
        let me = options.node_id.clone();
        let partitions = journal.partitions();
        let acks = CatalogAcks::start(&client, &options.prefix, &me)
            .await
            .map_err(|e| failed("the catalog acknowledgements", &e))?;
        let acks = Arc::new(acks);
        let tail = CatalogTail::start(
            &client,
            &Names::new(&options.prefix),
            journal.catalog_log(),
            engine.clone(),
            Some(Arc::clone(&acks)),
        )
        .await
        .map_err(|e| failed("the catalog tail", &e))?;
        let catalog_engine = engine.clone();
        let forwarder = Forwarder::start(&client, &options.prefix, &me, move || {
            catalog_engine.catalog_seq()
        })
        .await
        .map_err(|e| failed("the link to other nodes", &e))?;
        let registry = Registry::start(&js, options, advertise)
            .await
            .map_err(|e| failed("joining the membership", &e))?;
        // After the membership claim, which waits out an earlier process of this node id:
        // two servers on one subject would both run a frame.
        let server = RpcServer::start(&client, &options.prefix, &me, engine.clone())
            .await
            .map_err(|e| failed("serving other nodes", &e))?;
        let views = GateViews::start(&client, &options.prefix, &me, engine.clone())
            .await
            .map_err(|e| failed("the views between nodes", &e))?;
        let owners = Owners::start(&js, options, partitions)
            .await
            .map_err(|e| failed("the lease view", &e))?;
        let node = ClusterNode::start(journal, engine.clone(), registry, owners)
            .map_err(|e| failed("the partition driver", &e))?;
        let link = ClusterLink {
            engine: engine.clone(),
            node,
            forwarder,
            server,
            views,
            tail: tokio::sync::Mutex::new(Some(tail)),
            acks,
            partitions,
            me,
        };
        link.wait_owned(READY_WAIT).await;
        Ok(link)
    }

    /// Until every partition has a holder, or `within`.
    async fn wait_owned(&self, within: Duration) {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.node.owners().holders().iter().all(Option::is_some) {
                tracing::info!(
                    waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    owned_here = self.node.owned_partitions().len(),
                    "every partition has an owner"
                );
                return;
            }
            tokio::time::sleep(OWNER_POLL).await;
        }
        tracing::warn!(
            "not every partition has an owner yet; their calls answer 503 until one takes them"
        );
    }

    /// SIGTERM: every partition handed over (engine first, then the lease), the membership
    /// left; then the services stop. Call before the engine stops.
    pub async fn hand_over(&self) {
        self.views.leave().await;
        let handed = self.node.hand_over_all().await;
        tracing::info!(partitions = handed, "partitions handed over");
        if let Some(tail) = self.tail.lock().await.take() {
            tail.stop().await;
        }
        self.server.stop();
    }

    /// The holder of the partition of item `key`, as the lease view has it, while it is
    /// live (a view of it heard within [`HOLDER_HEARD`], or its membership record
    /// current): a dead node's lease stays until its TTL, and a call sent to it would wait
    /// out its whole answer time for nothing (and end "unknown" when nothing was done).
    fn holder(&self, key: u64) -> Option<String> {
        let partition = partition_of(key, self.partitions);
        let holder = self
            .node
            .owners()
            .holders()
            .get(partition as usize)
            .cloned()
            .flatten()?;
        let live = holder == self.me
            || self.views.heard_within(&holder, HOLDER_HEARD)
            || self.node.registry().live().contains(&holder);
        live.then_some(holder)
    }

    /// Runs `op` on the owner of item `key`: another node through the link, or this one
    /// when the lease view says so (an adopt that finished meanwhile). A `NotOwner` from
    /// the owner (it moved before deciding: nothing done) is routed again, for up to
    /// [`OWNER_WAIT`].
    async fn route(&self, key: u64, op: Op) -> Result<Answer> {
        let started = Instant::now();
        loop {
            let answer = match self.holder(key) {
                Some(holder) if holder == self.me => rpc::run(&self.engine, op.clone()).await,
                Some(holder) => match self.forwarder.call(&holder, op.clone(), ANSWER_WAIT).await {
                    Ok(answer) => answer,
                    Err(ForwardError::NotSent { reason, .. }) => {
                        return Err(Error::Unavailable(reason));
                    }
                    Err(ForwardError::Timeout { write: true, .. }) => {
                        metrics::counter!("seckill_cluster_forward_timeouts_total").increment(1);
                        return Err(Error::OutcomeUnknown);
                    }
                    Err(ForwardError::Timeout { owner, .. }) => {
                        return Err(Error::Unavailable(format!("{owner} did not answer")));
                    }
                },
                None => Answer::Refused(Error::NotOwner {
                    partition: partition_of(key, self.partitions),
                }),
            };
            match answer {
                Answer::Refused(Error::NotOwner { .. }) if started.elapsed() < OWNER_WAIT => {
                    tokio::time::sleep(OWNER_POLL).await;
                }
                Answer::Refused(Error::NotOwner { .. }) => {
                    return Err(Error::Unavailable(
                        "the item's partition has no owner now (a hand-over or a takeover); retry"
                            .into(),
                    ));
                }
                answer => {
                    metrics::histogram!("seckill_cluster_forward_seconds")
                        .record(started.elapsed().as_secs_f64());
                    return Ok(answer);
                }
            }
        }
    }

    async fn route_order(&self, order_id: &str, op: Op) -> Result<Order> {
        let key = parse_order_id(order_id).ok_or(Error::NotFound)?.item_key;
        match self.route(key, op).await? {
            Answer::Order(order) => Ok(order),
            other => Err(unexpected(other)),
        }
    }

    /// The promotion's stats, each item's from its owner.
    async fn gather_stats(&self, promotion_id: &str) -> Result<PromotionStats> {
        let public = self.engine.public_promotion(promotion_id)?;
        let mut stats = self.engine.promotion_stats_owned(promotion_id).await?;
        let mut missing: Vec<(String, u64)> = public
            .items
            .iter()
            .map(|item| (item.sku.clone(), item_key(promotion_id, &item.sku)))
            .filter(|(sku, _)| !stats.items.iter().any(|i| &i.sku == sku))
            .collect();
        while let Some((_, key)) = missing.first().cloned() {
            let op = Op::StatsOwned {
                promotion_id: promotion_id.to_owned(),
            };
            let Answer::Stats(theirs) = self.route(key, op).await? else {
                return Err(Error::Unavailable("an owner's stats did not come".into()));
            };
            let before = missing.len();
            for item in theirs.items {
                if let Some(at) = missing.iter().position(|(sku, _)| *sku == item.sku) {
                    missing.remove(at);
                    stats.items.push(item);
                }
            }
            if missing.len() == before {
                // The owner moved between the lease view and the answer.
                return Err(Error::Unavailable(
                    "an item's owner changed while its stats were read; retry".into(),
                ));
            }
        }
        // In the promotion's own order.
        stats.items.sort_by_key(|item| {
            public
                .items
                .iter()
                .position(|p| p.sku == item.sku)
                .unwrap_or(usize::MAX)
        });
        Ok(stats)
    }
}

fn unexpected(answer: Answer) -> Error {
    match answer {
        Answer::Refused(error) => error,
        other => Error::Unavailable(format!("an owner answered {other:?} to another call")),
    }
}

type Boxed<'a, T> = owner_calls::Answer<'a, T>;

impl OwnerCalls for ClusterLink {
    fn issue_token<'a>(
        &'a self,
        promotion_id: &'a str,
        sku: &'a str,
        user_id: &'a str,
        claim: OneClaim,
        human_check_passed: bool,
    ) -> Boxed<'a, TokenGrant> {
        Box::pin(async move {
            let op = Op::Token {
                promotion_id: promotion_id.to_owned(),
                sku: sku.to_owned(),
                user_id: user_id.to_owned(),
                claim: claim.0,
                human_check_passed,
            };
            match self.route(item_key(promotion_id, sku), op).await? {
                Answer::Token(grant) => Ok(grant),
                other => Err(unexpected(other)),
            }
        })
    }

    fn purchase<'a>(
        &'a self,
        promotion_id: &'a str,
        sku: &'a str,
        user_id: &'a str,
        request: PurchaseRequest,
        claim: OneClaim,
    ) -> Boxed<'a, Purchased> {
        Box::pin(async move {
            let op = Op::Purchase {
                promotion_id: promotion_id.to_owned(),
                sku: sku.to_owned(),
                user_id: user_id.to_owned(),
                request,
                claim: claim.0,
            };
            match self.route(item_key(promotion_id, sku), op).await? {
                Answer::Purchased(purchased) => Ok(purchased),
                other => Err(unexpected(other)),
            }
        })
    }

    fn order<'a>(&'a self, order_id: &'a str, user_id: Option<&'a str>) -> Boxed<'a, Order> {
        Box::pin(async move {
            let op = Op::ReadOrder {
                order_id: order_id.to_owned(),
                user_id: user_id.map(str::to_owned),
            };
            self.route_order(order_id, op).await
        })
    }

    fn cancel<'a>(&'a self, order_id: &'a str, user_id: Option<&'a str>) -> Boxed<'a, Order> {
        Box::pin(async move {
            let op = Op::Cancel {
                order_id: order_id.to_owned(),
                user_id: user_id.map(str::to_owned),
            };
            self.route_order(order_id, op).await
        })
    }

    fn pay<'a>(
        &'a self,
        order_id: &'a str,
        payment_ref: &'a str,
        amount_cents: Option<i64>,
    ) -> Boxed<'a, Order> {
        Box::pin(async move {
            let op = Op::Pay {
                order_id: order_id.to_owned(),
                payment_ref: payment_ref.to_owned(),
                amount_cents,
            };
            self.route_order(order_id, op).await
        })
    }

    fn promotion_stats<'a>(&'a self, promotion_id: &'a str) -> Boxed<'a, PromotionStats> {
        Box::pin(self.gather_stats(promotion_id))
    }

    fn catalog_applied(&self, seq: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // The live members, and any node heard from on the views lately whose
            // membership heartbeat is held up: a node left out here could answer 404 for
            // the promotion right after the 201.
            let mut others: Vec<String> = self.node.registry().live();
            others.extend(self.views.heard_from(HOLDER_HEARD));
            others.sort_unstable();
            others.dedup();
            others.retain(|node| *node != self.me);
            let late = self.acks.wait_applied(seq, &others, ACK_WAIT).await;
            if !late.is_empty() {
                tracing::warn!(
                    ?late,
                    seq,
                    "these nodes had not applied a catalog change within its wait"
                );
            }
        })
    }

    fn status(&self) -> ClusterStatus {
        let holders = self.node.owners().holders();
        let nodes = self
            .node
            .registry()
            .records()
            .into_iter()
            .filter_map(|status| {
                let partitions: Vec<u32> = (0..self.partitions)
                    .filter(|p| {
                        holders.get(*p as usize).cloned().flatten().as_deref()
                            == Some(status.record.node_id.as_str())
                    })
                    .collect();
                (status.live || !partitions.is_empty()).then_some(NodeStatus {
                    node_id: status.record.node_id,
                    advertise: status.record.advertise,
                    partitions,
                    last_seen_ms: status.last_seen_ms,
                })
            })
            .collect();
        ClusterStatus {
            partitions: self.partitions,
            nodes,
        }
    }
}
