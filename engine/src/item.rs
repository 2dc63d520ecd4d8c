//! One item's state and the rules that change it: the pure core of the engine.
//!
//! Every operation is split in two. `decide_*` reads the state, the time and the request and
//! returns either a refusal, the answer of an earlier identical request, or one [`Event`].
//! [`ItemState::apply`] then changes the state by that event, and it is the only code that
//! does. Replay after a restart calls `apply` alone, so a restarted item is the item that
//! was journaled, rule for rule.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::ids::format_order_id;
use crate::model::{ItemRecord, ItemStats, Order, OrderStatus, TokenGrant};
use crate::order_log::OrderLog;
use crate::rules::refuse_closed;
pub use crate::rules::DecideContext;
use crate::tokens::{TokenBook, TokenRecord};

/// A shopper is banned from a promotion after this many cancelled or expired orders in it.
pub const STRIKES_TO_BAN: u32 = 3;

/// What a decision found: the answer of an earlier request, or a new fact to journal with
/// the answer it gives.
// Transient (decided, then applied at once): boxing the event would put an allocation on
// the purchase path to save stack bytes nobody keeps.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<T> {
    Existing(T),
    New { event: Event, answer: T },
}

/// One shopper's standing on one item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buyer {
    /// Units in this user's pending and paid orders: what the per-user limit bounds.
    pub live_quantity: u32,
    /// This user's cancelled and expired orders on this item.
    pub strikes: u32,
    /// (request_id, order sequence number) of this user's orders: purchase idempotency.
    /// A list, not a map: a user holds few orders per item (the limit plus fewer than
    /// [`STRIKES_TO_BAN`] closed ones), and one small allocation per buyer is cheaper.
    pub requests: Vec<(String, u64)>,
    /// The token handed out last to this user, used or not.
    pub token: Option<String>,
}

impl Buyer {
    /// Holds nothing worth keeping: no order, no strike, no token.
    fn is_empty(&self) -> bool {
        self.live_quantity == 0
            && self.strikes == 0
            && self.requests.is_empty()
            && self.token.is_none()
    }

    /// The order sequence number an earlier purchase with `request_id` created.
    pub fn order_for_request(&self, request_id: &str) -> Option<u64> {
        self.requests
            .iter()
            .find(|(id, _)| id == request_id)
            .map(|(_, seq)| *seq)
    }
}

/// A payment confirmation as the operator sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payment<'a> {
    pub payment_ref: &'a str,
    /// When present, must equal the order's amount.
    pub amount_cents: Option<i64>,
}

/// Everything the engine knows about one item of one promotion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemState {
    pub key: u64,
    pub promotion_id: String,
    pub item: ItemRecord,
    pub payment_timeout_s: u32,
    pub require_token: bool,
    pub token_multiplier: u32,
    pub token_ttl_ms: i64,
    pub remaining: u64,
    pub reserved: u64,
    pub sold: u64,
    pub tokens_issued: u64,
    /// Orders by sequence number: `orders.get(seq - 1)`.
    pub orders: OrderLog,
    pub buyers: FxHashMap<String, Buyer>,
    pub tokens: TokenBook,
}

impl ItemState {
    /// A fresh item with all its stock remaining.
    pub fn new(
        key: u64,
        promotion_id: &str,
        item: ItemRecord,
        payment_timeout_s: u32,
        require_token: bool,
        token_multiplier: u32,
        token_ttl_ms: i64,
    ) -> Self {
        ItemState {
            key,
            promotion_id: promotion_id.to_owned(),
            remaining: item.stock,
            item,
            payment_timeout_s,
            require_token,
            token_multiplier,
            token_ttl_ms,
            reserved: 0,
            sold: 0,
            tokens_issued: 0,
            orders: OrderLog::default(),
            buyers: FxHashMap::default(),
            tokens: TokenBook::default(),
        }
    }

    /// The cap on outstanding tokens now: `remaining * token_multiplier`, saturating
    /// (api.md's amended rule: stock that comes back can always be bought again).
    pub fn tokens_cap(&self) -> u64 {
        self.remaining
            .saturating_mul(u64::from(self.token_multiplier))
    }

    /// Forgets the tokens expired by `now_ms`, and the buyers that only held such a token.
    /// Not an event: it changes no decision (see `tokens.rs`), only what memory holds.
    pub fn forget_expired_tokens(&mut self, now_ms: i64) {
        let buyers = &mut self.buyers;
        self.tokens.forget_expired(now_ms, |user_id, token| {
            let Some(buyer) = buyers.get_mut(user_id) else {
                return;
            };
            if buyer.token.as_deref() == Some(token) {
                buyer.token = None;
            }
            if buyer.is_empty() {
                buyers.remove(user_id);
            }
        });
    }

    pub fn stats(&self) -> ItemStats {
        ItemStats {
            sku: self.item.sku.clone(),
            title: self.item.title.clone(),
            price_cents: self.item.price_cents,
            per_user_limit: self.item.per_user_limit,
            stock: self.item.stock,
            remaining: self.remaining,
            reserved: self.reserved,
            sold: self.sold,
            tokens_issued: self.tokens_issued,
            tokens_outstanding: self.tokens.outstanding(),
        }
    }

    /// The order with sequence number `seq`, if it exists.
    pub fn order(&self, seq: u64) -> Option<&Order> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.orders.get(index)
    }

    /// Hands a purchase token to `user_id`, or the one they already hold unused.
    pub fn decide_token(
        &self,
        ctx: &DecideContext,
        user_id: &str,
        new_token: impl FnOnce() -> String,
    ) -> Result<Decision<TokenGrant>> {
        refuse_closed(ctx.banned, ctx.status)?;
        if self.remaining == 0 {
            return Err(Error::SoldOut);
        }
        let buyer = self.buyers.get(user_id);
        if let Some(buyer) = buyer {
            if buyer.live_quantity >= self.item.per_user_limit {
                return Err(Error::LimitExceeded);
            }
            if let Some(token) = &buyer.token {
                if let Some(record) = self.tokens.get(token) {
                    if !record.used && record.expires_at_ms > ctx.now_ms {
                        return Ok(Decision::Existing(TokenGrant {
                            token: token.clone(),
                            expires_at_ms: record.expires_at_ms,
                        }));
                    }
                }
            }
        }
        if self.tokens.outstanding() >= self.tokens_cap() {
            return Err(Error::TokensExhausted);
        }
        let grant = TokenGrant {
            token: new_token(),
            expires_at_ms: ctx.now_ms.saturating_add(self.token_ttl_ms),
        };
        Ok(Decision::New {
            event: Event::TokenIssued {
                item_key: self.key,
                user_id: user_id.to_owned(),
                token: grant.token.clone(),
                expires_at_ms: grant.expires_at_ms,
            },
            answer: grant,
        })
    }

    /// Decides a purchase. The checks run in the order of api.md's table, with one rule first:
    /// a request id seen before answers with its original order, whatever changed since.
    pub fn decide_purchase(
        &self,
        ctx: &DecideContext,
        user_id: &str,
        request_id: &str,
        quantity: u32,
        token: Option<&str>,
    ) -> Result<Decision<Order>> {
        let buyer = self.buyers.get(user_id);
        if let Some(seq) = buyer.and_then(|b| b.order_for_request(request_id)) {
            let order = self.order(seq).ok_or(Error::NotFound)?;
            return Ok(Decision::Existing(order.clone()));
        }
        refuse_closed(ctx.banned, ctx.status)?;
        if !ctx.eligible {
            return Err(Error::NotEligible);
        }
        if quantity == 0 || quantity > self.item.per_user_limit {
            return Err(Error::invalid(
                "quantity",
                format!("must be 1..={}", self.item.per_user_limit),
            ));
        }
        if self.remaining == 0 {
            return Err(Error::SoldOut);
        }
        let used_token = if self.require_token {
            let token = token.ok_or(Error::TokenInvalid)?;
            let record = self.tokens.get(token).ok_or(Error::TokenInvalid)?;
            if record.used || record.user_id != user_id || record.expires_at_ms <= ctx.now_ms {
                return Err(Error::TokenInvalid);
            }
            Some(token.to_owned())
        } else {
            None
        };
        let live_quantity = buyer.map_or(0, |b| b.live_quantity);
        if u64::from(live_quantity) + u64::from(quantity) > u64::from(self.item.per_user_limit) {
            return Err(Error::LimitExceeded);
        }
        if self.remaining < u64::from(quantity) {
            return Err(Error::InsufficientStock);
        }
        let order_seq = self.orders.len() as u64 + 1;
        let amount_cents = self
            .item
            .price_cents
            .checked_mul(i64::from(quantity))
            .ok_or_else(|| Error::invalid("quantity", "amount overflows"))?;
        let order = Order {
            order_id: format_order_id(self.key, ctx.epoch, order_seq),
            promotion_id: self.promotion_id.clone(),
            sku: self.item.sku.clone(),
            user_id: user_id.to_owned(),
            request_id: request_id.to_owned(),
            quantity,
            price_cents: self.item.price_cents,
            amount_cents,
            status: OrderStatus::PendingPayment,
            created_at_ms: ctx.now_ms,
            pay_before_ms: ctx
                .now_ms
                .saturating_add(i64::from(self.payment_timeout_s) * 1000),
            paid_at_ms: None,
            payment_ref: None,
            closed_at_ms: None,
        };
        Ok(Decision::New {
            answer: order.clone(),
            event: Event::OrderPlaced {
                item_key: self.key,
                order_seq,
                order,
                token: used_token,
            },
        })
    }

    /// Decides a shopper's cancel. `user_id` None means an operator (any order).
    pub fn decide_cancel(
        &self,
        now_ms: i64,
        order_id: &str,
        order_seq: u64,
        user_id: Option<&str>,
    ) -> Result<Decision<Order>> {
        let order = self.owned_order(order_id, order_seq, user_id)?;
        cancel_decision(order, self.key, order_seq, now_ms)
    }

    /// Decides a payment confirmation; idempotent by `payment_ref`. An `amount_cents` that
    /// differs from the order's is refused before anything else (api.md: payment notices are
    /// checked against the order's amount).
    pub fn decide_pay(
        &self,
        now_ms: i64,
        order_id: &str,
        order_seq: u64,
        payment: &Payment<'_>,
    ) -> Result<Decision<Order>> {
        let order = self.owned_order(order_id, order_seq, None)?;
        pay_decision(order, self.key, order_seq, payment, now_ms)
    }

    /// The expiry of order `order_seq` if it is still pending and its deadline has passed.
    pub fn decide_expiry(&self, now_ms: i64, order_seq: u64) -> Option<Event> {
        let order = self.order(order_seq)?;
        if order.status != OrderStatus::PendingPayment || order.pay_before_ms > now_ms {
            return None;
        }
        let mut order = order.clone();
        order.status = OrderStatus::Expired;
        order.closed_at_ms = Some(now_ms);
        Some(Event::OrderExpired {
            item_key: self.key,
            order_seq,
            order,
        })
    }

    /// The order `order_id` (whose sequence number is `order_seq`) if `user_id` may see it
    /// (operators, `None`, see every order). Another shopper's order is `NotFound`, not
    /// forbidden: no existence leak. So is an id of another epoch whose sequence number was
    /// given again after a crash took the first order back.
    pub fn owned_order(
        &self,
        order_id: &str,
        order_seq: u64,
        user_id: Option<&str>,
    ) -> Result<&Order> {
        let order = self.order(order_seq).ok_or(Error::NotFound)?;
        if order.order_id != order_id {
            return Err(Error::NotFound);
        }
        match user_id {
            Some(user) if order.user_id != user => Err(Error::NotFound),
            _ => Ok(order),
        }
    }

    /// Changes the state by one event of this item. Returns the user whose strike count grew
    /// (an order of theirs was cancelled or expired), so the caller can update the
    /// promotion-wide ban board.
    ///
    /// Panics when the event contradicts the state (stock that is not there, an order out of
    /// sequence): that is a corrupt log or a bug, and going on would sell what does not exist.
    pub fn apply(&mut self, event: &Event) -> Option<String> {
        let struck = match event {
            Event::TokenIssued {
                item_key,
                user_id,
                token,
                expires_at_ms,
            } => {
                assert_eq!(*item_key, self.key, "token event for another item");
                self.apply_token(user_id, token, *expires_at_ms);
                None
            }
            Event::OrderPlaced {
                item_key,
                order_seq,
                order,
                token,
            } => {
                assert_eq!(*item_key, self.key, "order event for another item");
                self.apply_placed(*order_seq, order, token.as_deref());
                None
            }
            Event::OrderPaid {
                item_key,
                order_seq,
                order,
            } => {
                let quantity = self.replace_pending(*item_key, *order_seq, order);
                self.reserved -= quantity;
                self.sold += quantity;
                None
            }
            Event::OrderCancelled {
                item_key,
                order_seq,
                order,
            }
            | Event::OrderExpired {
                item_key,
                order_seq,
                order,
            } => {
                let quantity = self.replace_pending(*item_key, *order_seq, order);
                Some(self.apply_closed(quantity, order))
            }
            // Promotion events go to the catalog, archiving to the shard that drops the item.
            Event::PromotionCreated { .. }
            | Event::PromotionGuarded { .. }
            | Event::PromotionStarted { .. }
            | Event::PromotionStopped { .. }
            | Event::ItemArchived { .. } => None,
        };
        assert_eq!(
            self.remaining + self.reserved + self.sold,
            self.item.stock,
            "stock conservation broken"
        );
        struck
    }

    fn apply_token(&mut self, user_id: &str, token: &str, expires_at_ms: i64) {
        let record = TokenRecord {
            user_id: user_id.to_owned(),
            expires_at_ms,
            used: false,
        };
        self.tokens.issue(token.to_owned(), record);
        self.buyers.entry(user_id.to_owned()).or_default().token = Some(token.to_owned());
        self.tokens_issued += 1;
    }

    fn apply_placed(&mut self, order_seq: u64, order: &Order, token: Option<&str>) {
        assert_eq!(
            order_seq,
            self.orders.len() as u64 + 1,
            "order out of sequence"
        );
        let quantity = u64::from(order.quantity);
        assert!(
            self.remaining >= quantity,
            "oversell: {quantity} > remaining"
        );
        self.remaining -= quantity;
        self.reserved += quantity;
        let buyer = self.buyers.entry(order.user_id.clone()).or_default();
        buyer.live_quantity += order.quantity;
        buyer.requests.push((order.request_id.clone(), order_seq));
        if let Some(token) = token {
            self.tokens.consume(token);
        }
        self.orders.push(order.clone());
        self.keep_tokens_within_cap(order.created_at_ms);
    }

    /// api.md: at no moment more than `remaining * token_multiplier` tokens outstanding.
    /// Stock that goes takes the newest tokens back with it. Part of `apply`, at the order's
    /// own time, so a replay takes back the same tokens.
    fn keep_tokens_within_cap(&mut self, now_ms: i64) {
        self.forget_expired_tokens(now_ms);
        let buyers = &mut self.buyers;
        while self.tokens.outstanding()
            > self
                .remaining
                .saturating_mul(u64::from(self.token_multiplier))
        {
            let revoked = self.tokens.revoke_newest(|user_id, token| {
                if let Some(buyer) = buyers.get_mut(user_id) {
                    if buyer.token.as_deref() == Some(token) {
                        buyer.token = None;
                    }
                }
            });
            if !revoked {
                break;
            }
        }
    }

    /// A pending order of `quantity` units was cancelled or expired: its stock comes back
    /// and its user takes a strike. Returns that user.
    fn apply_closed(&mut self, quantity: u64, order: &Order) -> String {
        self.reserved -= quantity;
        self.remaining += quantity;
        let buyer = self.buyers.entry(order.user_id.clone()).or_default();
        assert!(
            u64::from(buyer.live_quantity) >= quantity,
            "buyer quantity underflow"
        );
        buyer.live_quantity -= order.quantity;
        buyer.strikes += 1;
        order.user_id.clone()
    }

    /// Replaces a pending order by its closed version; returns its quantity.
    fn replace_pending(&mut self, item_key: u64, order_seq: u64, order: &Order) -> u64 {
        assert_eq!(item_key, self.key, "order event for another item");
        let index = order_seq
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .unwrap_or(usize::MAX);
        let stored = self
            .orders
            .get_mut(index)
            .unwrap_or_else(|| panic!("event for unknown order seq {order_seq}"));
        assert_eq!(
            stored.status,
            OrderStatus::PendingPayment,
            "only a pending order closes"
        );
        assert_eq!(stored.order_id, order.order_id, "order id changed");
        let quantity = u64::from(stored.quantity);
        assert!(self.reserved >= quantity, "reserved underflow");
        *stored = order.clone();
        quantity
    }
}

/// The cancel of `order` (order `order_seq` of item `item_key`): pure, so archived orders are
/// decided by the same rule.
pub fn cancel_decision(
    order: &Order,
    item_key: u64,
    order_seq: u64,
    now_ms: i64,
) -> Result<Decision<Order>> {
    match order.status {
        OrderStatus::Cancelled => Ok(Decision::Existing(order.clone())),
        OrderStatus::Paid | OrderStatus::Expired => Err(Error::NotCancellable),
        OrderStatus::PendingPayment => {
            let mut order = order.clone();
            order.status = OrderStatus::Cancelled;
            order.closed_at_ms = Some(now_ms);
            Ok(Decision::New {
                answer: order.clone(),
                event: Event::OrderCancelled {
                    item_key,
                    order_seq,
                    order,
                },
            })
        }
    }
}

/// The payment of `order`: pure, like [`cancel_decision`].
pub fn pay_decision(
    order: &Order,
    item_key: u64,
    order_seq: u64,
    payment: &Payment<'_>,
    now_ms: i64,
) -> Result<Decision<Order>> {
    if payment
        .amount_cents
        .is_some_and(|amount| amount != order.amount_cents)
    {
        return Err(Error::AmountMismatch);
    }
    let payment_ref = payment.payment_ref;
    match order.status {
        OrderStatus::Paid if order.payment_ref.as_deref() == Some(payment_ref) => {
            Ok(Decision::Existing(order.clone()))
        }
        OrderStatus::Paid => Err(Error::AlreadyPaid),
        OrderStatus::Cancelled | OrderStatus::Expired => Err(Error::NotPayable),
        OrderStatus::PendingPayment => {
            let mut order = order.clone();
            order.status = OrderStatus::Paid;
            order.paid_at_ms = Some(now_ms);
            order.payment_ref = Some(payment_ref.to_owned());
            Ok(Decision::New {
                answer: order.clone(),
                event: Event::OrderPaid {
                    item_key,
                    order_seq,
                    order,
                },
            })
        }
    }
}
