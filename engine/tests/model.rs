//! The engine against a plain sequential model of api.md.
//!
//! proptest drives random sequences of operations from a handful of users (so they collide
//! on limits, tokens and request ids) over two items on different shards, with time moving
//! in between. After every step the engine's answer must equal the model's, and for every
//! item remaining + reserved + sold == stock and no user holds more than the limit.

mod common;

use std::collections::HashMap;

use proptest::prelude::*;
use seckill_engine::{Error, Order, OrderStatus};

use common::{request, spec, start, T0_MS};

const ITEMS: [&str; 2] = ["a", "b"];
const STOCK: u64 = 6;
const LIMIT: u32 = 2;
const TOKEN_TTL_MS: i64 = 60_000;
const PAYMENT_TIMEOUT_MS: i64 = 30_000;

#[derive(Debug, Clone)]
enum Op {
    Advance {
        ms: i64,
    },
    Token {
        user: u8,
        item: usize,
    },
    Purchase {
        user: u8,
        item: usize,
        quantity: u32,
        request: u8,
        token: TokenChoice,
    },
    Cancel {
        pick: usize,
        as_owner: bool,
    },
    Pay {
        pick: usize,
        reference: u8,
    },
    Stop,
}

#[derive(Debug, Clone, Copy)]
enum TokenChoice {
    Own,
    None,
    OtherUsers,
    Garbage,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0i64..70_000).prop_map(|ms| Op::Advance { ms }),
        // Whole multiples of 10 s land exactly on token and payment deadlines.
        1 => (1i64..7).prop_map(|tens| Op::Advance { ms: tens * 10_000 }),
        4 => (0u8..5, 0usize..2).prop_map(|(user, item)| Op::Token { user, item }),
        8 => (0u8..5, 0usize..2, 1u32..4, 0u8..4, prop_oneof![
                6 => Just(TokenChoice::Own),
                1 => Just(TokenChoice::None),
                1 => Just(TokenChoice::OtherUsers),
                1 => Just(TokenChoice::Garbage),
            ])
            .prop_map(|(user, item, quantity, request, token)| Op::Purchase {
                user, item, quantity, request, token
            }),
        3 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(pick, as_owner)| Op::Cancel { pick, as_owner }),
        3 => (any::<usize>(), 0u8..2).prop_map(|(pick, reference)| Op::Pay { pick, reference }),
        1 => Just(Op::Stop),
    ]
}

#[derive(Debug, Clone)]
struct MOrder {
    id: String,
    item: usize,
    user: String,
    quantity: u32,
    status: OrderStatus,
    pay_before_ms: i64,
    payment_ref: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct MToken {
    user: String,
    expires_at_ms: i64,
    used: bool,
}

#[derive(Debug, Default)]
struct MItem {
    remaining: u64,
    reserved: u64,
    sold: u64,
    tokens_issued: u64,
    tokens: HashMap<String, MToken>,
    latest_token: HashMap<String, String>,
    requests: HashMap<(String, String), usize>,
}

impl MItem {
    /// api.md: stock that goes takes the newest tokens back (the latest to expire; between
    /// equals, the greatest token), so no more than remaining * multiplier are outstanding.
    fn revoke_beyond_cap(&mut self, now_ms: i64) {
        while self.tokens_outstanding(now_ms) > self.remaining * 5 {
            let newest = self
                .tokens
                .iter()
                .filter(|(_, t)| !t.used && t.expires_at_ms > now_ms)
                .max_by(|a, b| (a.1.expires_at_ms, a.0).cmp(&(b.1.expires_at_ms, b.0)))
                .map(|(token, _)| token.clone());
            match newest {
                Some(token) => self.tokens.get_mut(&token).expect("token").used = true,
                None => break,
            }
        }
    }

    /// Tokens unused and unexpired at `now_ms`.
    fn tokens_outstanding(&self, now_ms: i64) -> u64 {
        self.tokens
            .values()
            .filter(|t| !t.used && t.expires_at_ms > now_ms)
            .count() as u64
    }
}

/// The model: the rules of api.md written as plainly as possible.
struct Model {
    now_ms: i64,
    ended: bool,
    items: Vec<MItem>,
    orders: Vec<MOrder>,
    strikes: HashMap<String, u32>,
}

enum MTokenAnswer {
    Existing(String),
    New,
}

impl Model {
    fn new() -> Self {
        Model {
            now_ms: T0_MS,
            ended: false,
            items: ITEMS
                .iter()
                .map(|_| MItem {
                    remaining: STOCK,
                    ..MItem::default()
                })
                .collect(),
            orders: Vec::new(),
            strikes: HashMap::new(),
        }
    }

    fn live_quantity(&self, item: usize, user: &str) -> u32 {
        self.orders
            .iter()
            .filter(|o| o.item == item && o.user == user && o.status.is_live())
            .map(|o| o.quantity)
            .sum()
    }

    fn close(&mut self, index: usize, status: OrderStatus) {
        let order = &mut self.orders[index];
        order.status = status;
        let item = &mut self.items[order.item];
        item.reserved -= u64::from(order.quantity);
        item.remaining += u64::from(order.quantity);
        *self.strikes.entry(order.user.clone()).or_default() += 1;
    }

    fn expire(&mut self) {
        for index in 0..self.orders.len() {
            let order = &self.orders[index];
            if order.status == OrderStatus::PendingPayment && order.pay_before_ms <= self.now_ms {
                self.close(index, OrderStatus::Expired);
            }
        }
    }

    fn closed(&self, user: &str) -> Option<Error> {
        if self.strikes.get(user).copied().unwrap_or(0) >= 3 {
            return Some(Error::Banned);
        }
        if self.ended || self.now_ms >= T0_MS + common::WINDOW_MS {
            return Some(Error::Ended);
        }
        None
    }

    fn token(&mut self, item: usize, user: &str) -> Result<MTokenAnswer, Error> {
        if let Some(refusal) = self.closed(user) {
            return Err(refusal);
        }
        if self.items[item].remaining == 0 {
            return Err(Error::SoldOut);
        }
        if self.live_quantity(item, user) >= LIMIT {
            return Err(Error::LimitExceeded);
        }
        let state = &self.items[item];
        if let Some(token) = state.latest_token.get(user) {
            let record = &state.tokens[token];
            if !record.used && record.expires_at_ms > self.now_ms {
                return Ok(MTokenAnswer::Existing(token.clone()));
            }
        }
        // api.md's amended rule: at most remaining * multiplier tokens outstanding.
        if state.tokens_outstanding(self.now_ms) >= state.remaining * 5 {
            return Err(Error::TokensExhausted);
        }
        Ok(MTokenAnswer::New)
    }

    fn record_token(&mut self, item: usize, user: &str, token: String) {
        let state = &mut self.items[item];
        state.tokens_issued += 1;
        state.tokens.insert(
            token.clone(),
            MToken {
                user: user.to_owned(),
                expires_at_ms: self.now_ms + TOKEN_TTL_MS,
                used: false,
            },
        );
        state.latest_token.insert(user.to_owned(), token);
    }

    /// Ok(Some(index)) an earlier order, Ok(None) a new order is due.
    fn purchase(
        &self,
        item: usize,
        user: &str,
        request_id: &str,
        quantity: u32,
        token: Option<&str>,
    ) -> Result<Option<usize>, Error> {
        let state = &self.items[item];
        if let Some(index) = state
            .requests
            .get(&(user.to_owned(), request_id.to_owned()))
        {
            return Ok(Some(*index));
        }
        if let Some(refusal) = self.closed(user) {
            return Err(refusal);
        }
        if quantity > LIMIT {
            return Err(Error::InvalidRequest {
                field: "quantity".into(),
                reason: format!("must be 1..={LIMIT}"),
            });
        }
        if state.remaining == 0 {
            return Err(Error::SoldOut);
        }
        let token = token.ok_or(Error::TokenInvalid)?;
        let record = state.tokens.get(token).ok_or(Error::TokenInvalid)?;
        if record.used || record.user != user || record.expires_at_ms <= self.now_ms {
            return Err(Error::TokenInvalid);
        }
        if self.live_quantity(item, user) + quantity > LIMIT {
            return Err(Error::LimitExceeded);
        }
        if state.remaining < u64::from(quantity) {
            return Err(Error::InsufficientStock);
        }
        Ok(None)
    }

    fn cancel(&mut self, index: usize, user: &str) -> Result<(), Error> {
        let order = &self.orders[index];
        if order.user != user {
            return Err(Error::NotFound);
        }
        match order.status {
            OrderStatus::Cancelled => Ok(()),
            OrderStatus::Paid | OrderStatus::Expired => Err(Error::NotCancellable),
            OrderStatus::PendingPayment => {
                self.close(index, OrderStatus::Cancelled);
                Ok(())
            }
        }
    }

    fn pay(&mut self, index: usize, reference: &str) -> Result<(), Error> {
        let order = &mut self.orders[index];
        match order.status {
            OrderStatus::Paid if order.payment_ref.as_deref() == Some(reference) => Ok(()),
            OrderStatus::Paid => Err(Error::AlreadyPaid),
            OrderStatus::Cancelled | OrderStatus::Expired => Err(Error::NotPayable),
            OrderStatus::PendingPayment => {
                order.status = OrderStatus::Paid;
                order.payment_ref = Some(reference.to_owned());
                let item = &mut self.items[order.item];
                item.reserved -= u64::from(order.quantity);
                item.sold += u64::from(order.quantity);
                Ok(())
            }
        }
    }
}

fn same_order(engine: &Order, model: &MOrder) {
    assert_eq!(engine.order_id, model.id);
    assert_eq!(engine.user_id, model.user);
    assert_eq!(engine.quantity, model.quantity);
    assert_eq!(engine.status, model.status, "status of {}", model.id);
    assert_eq!(engine.payment_ref, model.payment_ref);
}

fn run(ops: Vec<Op>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let h = start(2);
        let mut s = spec("p", &[("a", STOCK, LIMIT), ("b", STOCK, LIMIT)], true);
        s.payment_timeout_s = (PAYMENT_TIMEOUT_MS / 1000) as u32;
        h.engine.create_promotion(s).await.expect("created");
        let mut model = Model::new();

        for op in ops {
            match op {
                Op::Advance { ms } => {
                    h.clock.advance_ms(ms);
                    model.now_ms += ms;
                    h.engine.tick().await.expect("tick");
                    model.expire();
                }
                Op::Token { user, item } => {
                    let user = format!("u{user}");
                    let expected = model.token(item, &user);
                    let got = h.engine.issue_token("p", ITEMS[item], &user).await;
                    match (expected, got) {
                        (Ok(MTokenAnswer::Existing(token)), Ok(grant)) => {
                            assert_eq!(grant.token, token)
                        }
                        (Ok(MTokenAnswer::New), Ok(grant)) => {
                            assert!(!model.items[item].tokens.contains_key(&grant.token));
                            model.record_token(item, &user, grant.token);
                        }
                        (Err(e), Err(g)) => assert_eq!(g, e),
                        (e, g) => panic!("token: model {:?} engine {g:?}", e.map(|_| ())),
                    }
                }
                Op::Purchase {
                    user,
                    item,
                    quantity,
                    request: r,
                    token,
                } => {
                    let user = format!("u{user}");
                    let other = format!("u{}", (user.as_bytes()[1] - b'0' + 1) % 5);
                    let token = match token {
                        TokenChoice::Own => model.items[item].latest_token.get(&user).cloned(),
                        TokenChoice::None => None,
                        TokenChoice::OtherUsers => {
                            model.items[item].latest_token.get(&other).cloned()
                        }
                        TokenChoice::Garbage => Some("not-a-token".into()),
                    };
                    let request_id = format!("r{r}");
                    let expected =
                        model.purchase(item, &user, &request_id, quantity, token.as_deref());
                    let got = h
                        .engine
                        .purchase(
                            "p",
                            ITEMS[item],
                            &user,
                            request(&request_id, quantity, token.clone()),
                        )
                        .await;
                    match (expected, got) {
                        (Ok(Some(index)), Ok(bought)) => {
                            assert!(!bought.created);
                            same_order(&bought.order, &model.orders[index]);
                        }
                        (Ok(None), Ok(bought)) => {
                            assert!(bought.created);
                            let state = &mut model.items[item];
                            if let Some(t) = &token {
                                state.tokens.get_mut(t).expect("token").used = true;
                            }
                            state.remaining -= u64::from(quantity);
                            state.reserved += u64::from(quantity);
                            state.revoke_beyond_cap(model.now_ms);
                            state
                                .requests
                                .insert((user.clone(), request_id), model.orders.len());
                            let order = MOrder {
                                id: bought.order.order_id.clone(),
                                item,
                                user: user.clone(),
                                quantity,
                                status: OrderStatus::PendingPayment,
                                pay_before_ms: model.now_ms + PAYMENT_TIMEOUT_MS,
                                payment_ref: None,
                            };
                            same_order(&bought.order, &order);
                            model.orders.push(order);
                        }
                        (Err(e), Err(g)) => assert_eq!(g.code(), e.code(), "purchase refusal"),
                        (e, g) => panic!("purchase: model {e:?} engine {g:?}"),
                    }
                }
                Op::Cancel { pick, as_owner } => {
                    if model.orders.is_empty() {
                        continue;
                    }
                    let index = pick % model.orders.len();
                    let owner = model.orders[index].user.clone();
                    let user = if as_owner { owner } else { format!("{owner}x") };
                    let expected = model.cancel(index, &user);
                    let got = h.engine.cancel(&model.orders[index].id, Some(&user)).await;
                    match (expected, got) {
                        (Ok(()), Ok(order)) => same_order(&order, &model.orders[index]),
                        (Err(e), Err(g)) => assert_eq!(g, e),
                        (e, g) => panic!("cancel: model {e:?} engine {g:?}"),
                    }
                }
                Op::Pay { pick, reference } => {
                    if model.orders.is_empty() {
                        continue;
                    }
                    let index = pick % model.orders.len();
                    let reference = format!("pay-{reference}");
                    let expected = model.pay(index, &reference);
                    let got = h
                        .engine
                        .pay(&model.orders[index].id, &reference, None)
                        .await;
                    match (expected, got) {
                        (Ok(()), Ok(order)) => same_order(&order, &model.orders[index]),
                        (Err(e), Err(g)) => assert_eq!(g, e),
                        (e, g) => panic!("pay: model {e:?} engine {g:?}"),
                    }
                }
                Op::Stop => {
                    h.engine.stop_promotion("p").await.expect("stop");
                    model.ended = true;
                }
            }

            // The invariants, at every step.
            let stats = h.engine.promotion_stats("p").await.expect("stats");
            for (index, item) in stats.items.iter().enumerate() {
                assert_eq!(item.remaining + item.reserved + item.sold, item.stock);
                let m = &model.items[index];
                assert_eq!(
                    (item.remaining, item.reserved, item.sold, item.tokens_issued),
                    (m.remaining, m.reserved, m.sold, m.tokens_issued),
                    "stats of {}",
                    item.sku
                );
                assert_eq!(
                    item.tokens_outstanding,
                    m.tokens_outstanding(model.now_ms),
                    "outstanding tokens of {}",
                    item.sku
                );
                for user in 0..5 {
                    assert!(model.live_quantity(index, &format!("u{user}")) <= LIMIT);
                }
            }
        }
        // Every order the model knows reads back the same from the engine.
        for order in &model.orders {
            let got = h.engine.order(&order.id, None).await.expect("order exists");
            same_order(&got, order);
        }
        h.engine.shutdown().await.expect("shutdown");
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn the_engine_agrees_with_the_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops);
    }
}
