//! Calls for items this node does not own (`--cluster`, api.md "v2: a cluster of nodes":
//! "writes and order reads by handing them to the owner").
//!
//! A route asks its own engine first; an engine that answers `NotOwner` has done nothing,
//! and the route hands the call to [`OwnerCalls`] (set in a cluster only), which finds the
//! partition's owner and answers with the owner's own answer. The trait keeps the routes
//! free of the cluster's types (they build without the `persistence` feature).

use std::future::Future;
use std::pin::Pin;

use seckill_engine::{
    OneClaim, Order, PromotionStats, PurchaseRequest, Purchased, Result, TokenGrant,
};

/// A boxed future of an owner's answer.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Hands calls to the owner of their item's partition.
pub trait OwnerCalls: Send + Sync + std::fmt::Debug + 'static {
    /// `claim`: what the promotion's eligibility rule reads ([`seckill_engine::Engine::claim_for`]);
    /// `human_check_passed`: this node verified the promotion's human check.
    fn issue_token<'a>(
        &'a self,
        promotion_id: &'a str,
        sku: &'a str,
        user_id: &'a str,
        claim: OneClaim,
        human_check_passed: bool,
    ) -> Answer<'a, TokenGrant>;

    fn purchase<'a>(
        &'a self,
        promotion_id: &'a str,
        sku: &'a str,
        user_id: &'a str,
        request: PurchaseRequest,
        claim: OneClaim,
    ) -> Answer<'a, Purchased>;

    fn order<'a>(&'a self, order_id: &'a str, user_id: Option<&'a str>) -> Answer<'a, Order>;

    fn cancel<'a>(&'a self, order_id: &'a str, user_id: Option<&'a str>) -> Answer<'a, Order>;

    fn pay<'a>(
        &'a self,
        order_id: &'a str,
        payment_ref: &'a str,
        amount_cents: Option<i64>,
    ) -> Answer<'a, Order>;

    /// The promotion with every item's exact stats, each from its owner (`Unavailable`
    /// when an owner does not answer: never stale figures).
    fn promotion_stats<'a>(&'a self, promotion_id: &'a str) -> Answer<'a, PromotionStats>;

    /// Waits (bounded) until every live node has applied the catalog up to `seq`, so that a
    /// catalog change is in force on every node before its answer.
    fn catalog_applied(&self, seq: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// `GET /admin/cluster`.
    fn status(&self) -> ClusterStatus;
}

/// What `GET /admin/cluster` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub partitions: u32,
    pub nodes: Vec<NodeStatus>,
}

/// One node of [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: String,
    pub advertise: String,
    /// The partitions whose lease it holds, ascending.
    pub partitions: Vec<u32>,
    /// When its last heartbeat landed (unix ms, the NATS server's clock).
    pub last_seen_ms: i64,
}
