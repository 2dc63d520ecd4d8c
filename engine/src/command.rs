//! What a shard is asked ([`Command`]) and how its answers wait for the journal ([`Reply`]).

use std::sync::Arc;

use crossbeam_channel::Receiver;
use tokio::sync::oneshot;

use crate::catalog::PromotionEntry;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::ids::parse_order_id;
use crate::item::ItemState;
use crate::model::{ItemStats, Order, PurchaseRequest, Purchased, TokenGrant};
use crate::pump::{PumpBatch, Responder};
use crate::shard_state::ShardState;

/// Which order a command is about: its id as the caller gave it, and the parts that route it.
#[derive(Debug, Clone)]
pub(crate) struct OrderAddress {
    pub key: u64,
    pub seq: u64,
    pub order_id: String,
}

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
        /// The shopper's claims meet the promotion's eligibility rule (see
        /// [`crate::rules::DecideContext::eligible`]).
        eligible: bool,
        reply: Responder<Purchased>,
    },
    ReadOrder {
        order: OrderAddress,
        user_id: Option<String>,
        reply: Responder<Order>,
    },
    Cancel {
        order: OrderAddress,
        user_id: Option<String>,
        reply: Responder<Order>,
    },
    Pay {
        order: OrderAddress,
        payment_ref: String,
        amount_cents: Option<i64>,
        reply: Responder<Order>,
    },
    Stats {
        keys: Vec<u64>,
        reply: oneshot::Sender<Result<Vec<ItemStats>>>,
    },
    /// Finish the batch, hand over a copy of every item (or why it cannot: a fenced shard's
    /// memory is ahead of its log), then wait until `resume` is closed: the snapshot taker
    /// holds every shard still until it has the whole engine's copy, a consistent cut of the
    /// log. Closing rather than sending means a taker that fails or dies releases everyone.
    Pause {
        image: oneshot::Sender<Result<Vec<ItemState>>>,
        resume: Receiver<()>,
    },
    /// Run the expiry pass now (tests with a manual clock use it instead of waiting).
    Tick { reply: oneshot::Sender<Result<()>> },
    /// Take over this shard's items of `partition`, built off the shard from the
    /// partition's lane, and decide them under `epoch` from now on (a cluster engine's
    /// adopt, see `partition.rs`). Deadlines that passed meanwhile expire in the batch the
    /// adopt joins; the answer waits for that batch's journal write.
    Adopt {
        partition: u32,
        epoch: u64,
        /// Boxed: every command in a mailbox slot pays for the largest variant's size.
        state: Box<ShardState>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Let every item of `partition` go (a cluster engine's release or lost lease): journal
    /// and answer the batch first, then, with `wait`, wait for an append the journal is
    /// still writing. Answers how many items left.
    DropPartition {
        partition: u32,
        wait: bool,
        reply: oneshot::Sender<Result<usize>>,
    },
    /// Finish the batch and stop the thread.
    Shutdown { reply: oneshot::Sender<Result<()>> },
    /// Fault injection for tests: the shard panics, as a broken invariant would make it.
    Fault,
}

impl Command {
    /// True for the commands that may journal something (a suspended shard refuses them and
    /// still answers the others: reads, installs, stops).
    pub fn may_write(&self) -> bool {
        matches!(
            self,
            Command::JournalCatalog { .. }
                | Command::Token { .. }
                | Command::Purchase { .. }
                | Command::Cancel { .. }
                | Command::Pay { .. }
                | Command::Tick { .. }
                | Command::Pause { .. }
                | Command::Adopt { .. }
        )
    }

    /// The items whose state the answer shows or changes; none for catalog, install and
    /// engine-wide commands.
    pub fn keys(&self) -> &[u64] {
        match self {
            Command::Token { key, .. } | Command::Purchase { key, .. } => std::slice::from_ref(key),
            Command::ReadOrder { order, .. }
            | Command::Cancel { order, .. }
            | Command::Pay { order, .. } => std::slice::from_ref(&order.key),
            Command::Stats { keys, .. } => keys,
            // A partition's adopt and drop are about a partition, which the shard handles
            // before it looks at any key.
            Command::JournalCatalog { .. }
            | Command::Install { .. }
            | Command::Pause { .. }
            | Command::Tick { .. }
            | Command::Adopt { .. }
            | Command::DropPartition { .. }
            | Command::Shutdown { .. }
            | Command::Fault => &[],
        }
    }

    /// What the command's answer depends on (see [`ReplyScope`]).
    pub fn scope(&self) -> ReplyScope {
        let keys = match self.keys() {
            [] => ScopeKeys::None,
            [key] => ScopeKeys::One(*key),
            keys => ScopeKeys::Many(keys.to_vec()),
        };
        ReplyScope {
            keys,
            write: self.may_write(),
        }
    }

    /// Answers the command with `error` instead of running it (a fenced shard).
    pub fn refuse(self, error: Error, replies: &mut Vec<Reply>) {
        match self {
            Command::JournalCatalog { reply, .. }
            | Command::Install { reply, .. }
            | Command::Tick { reply } => replies.push(Reply::Unit(reply, Err(error))),
            Command::Token { reply, .. } => replies.push(Reply::Token(reply, Err(error))),
            Command::Purchase { reply, .. } => replies.push(Reply::Purchase(reply, Err(error))),
            Command::ReadOrder { reply, .. }
            | Command::Cancel { reply, .. }
            | Command::Pay { reply, .. } => replies.push(Reply::Order(reply, Err(error))),
            Command::Stats { reply, .. } => replies.push(Reply::Stats(reply, Err(error))),
            Command::Pause { image, .. } => drop(image.send(Err(error))),
            Command::Adopt { reply, .. } => drop(reply.send(Err(error))),
            Command::DropPartition { reply, .. } => drop(reply.send(Err(error))),
            // Handled by the loop before refusing: stopping and faults are never refused.
            Command::Shutdown { .. } | Command::Fault => {}
        }
    }
}

/// What one answer waiting in a batch depends on, kept beside it until the batch is
/// journaled: the items it is about, and whether it answers a write. When the journal loses
/// some partitions' part of the batch, the answers about their items are replaced (a
/// write's by "outcome unknown", a read's by "not the owner") and the others stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplyScope {
    keys: ScopeKeys,
    pub write: bool,
}

/// The items of a [`ReplyScope`], without an allocation for the usual one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ScopeKeys {
    None,
    One(u64),
    /// A stats read of several items.
    Many(Vec<u64>),
}

impl ReplyScope {
    /// The scope of an answer to a write about the items `keys` (an adopt's: its expiries
    /// are journaled with the batch, so a lane lost in it fails the adopt).
    pub fn writes(keys: Vec<u64>) -> ReplyScope {
        let keys = match keys.len() {
            0 => ScopeKeys::None,
            1 => ScopeKeys::One(keys[0]),
            _ => ScopeKeys::Many(keys),
        };
        ReplyScope { keys, write: true }
    }

    pub fn keys(&self) -> &[u64] {
        match &self.keys {
            ScopeKeys::None => &[],
            ScopeKeys::One(key) => std::slice::from_ref(key),
            ScopeKeys::Many(keys) => keys,
        }
    }
}

/// An answer waiting for the batch's journal write.
pub(crate) enum Reply {
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
    pub fn is_accepted_purchase(&self) -> bool {
        matches!(self, Reply::Purchase(_, Ok(p)) if p.created)
    }

    /// The item of the order a successful answer carries (a purchase's, a cancel's, a
    /// pay's or a read's): what a shard checks against the lanes that landed.
    pub fn answered_order_key(&self) -> Option<u64> {
        let order = match self {
            Reply::Purchase(_, Ok(purchased)) => &purchased.order,
            Reply::Order(_, Ok(order)) => order,
            _ => return None,
        };
        parse_order_id(&order.order_id).map(|parsed| parsed.item_key)
    }

    /// Sends the answer; `failure` replaces it when the part of the batch it depends on was
    /// not made durable. A caller that stopped waiting is no error: its answer is simply
    /// dropped.
    pub fn send(self, failure: Option<Error>, pumps: &mut PumpBatch) {
        fn pick<T>(result: Result<T>, failure: Option<Error>) -> Result<T> {
            match failure {
                Some(error) => Err(error),
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
