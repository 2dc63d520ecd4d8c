//! The invariant checker: a pure function from what the runner saw and what the server
//! and the SQL table say now, to verdicts. Gathering that state is the runner's job
//! (`run.rs`); keeping the judgement pure lets tests feed it fabricated, broken states.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::scenario::{BuyerAction, Expectations};

/// How long past `pay_before` an order may still show `pending_payment` (api.md: 2 s).
pub const EXPIRY_GRACE_MS: i64 = 2_000;
/// Examples quoted in a failed verdict.
const EXAMPLES_MAX: usize = 5;

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Verdict {
    pub fn pass(name: &str, detail: impl Into<String>) -> Verdict {
        Verdict {
            name: name.to_owned(),
            passed: true,
            detail: detail.into(),
        }
    }

    pub fn fail(name: &str, detail: impl Into<String>) -> Verdict {
        Verdict {
            name: name.to_owned(),
            passed: false,
            detail: detail.into(),
        }
    }

    fn from_problems(name: &str, problems: &[String], ok_detail: String) -> Verdict {
        if problems.is_empty() {
            Verdict::pass(name, ok_detail)
        } else {
            let shown: Vec<&str> = problems
                .iter()
                .take(EXAMPLES_MAX)
                .map(String::as_str)
                .collect();
            Verdict::fail(
                name,
                format!("{} problem(s), e.g. {}", problems.len(), shown.join("; ")),
            )
        }
    }
}

/// An item's figures as the admin API reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemState {
    pub sku: String,
    pub stock: u64,
    pub remaining: u64,
    pub reserved: u64,
    pub sold: u64,
    pub per_user_limit: u32,
}

/// What came of the buyer's pay or cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    /// Answered 200: the order must now be paid / cancelled.
    Done,
    /// Refused (e.g. `not_payable` because it expired first).
    Refused,
    /// Sent but no answer (server killed): it may or may not have happened.
    NoAnswer,
    /// The buyer left the order alone.
    NotTried,
}

/// An order the server acknowledged to the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedOrder {
    pub order_id: String,
    pub user_id: String,
    pub sku: String,
    pub quantity: u32,
    /// 201 (true) or 200 for a repeated request id (false).
    pub created: bool,
    pub action: BuyerAction,
    pub outcome: ActionOutcome,
    pub pay_before_ms: Option<i64>,
}

/// An order as the engine (`GET /orders/{id}`) or the SQL table shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: String,
    pub user_id: String,
    pub sku: String,
    pub quantity: u32,
    pub status: String,
}

impl OrderView {
    fn is_live(&self) -> bool {
        matches!(self.status.as_str(), "pending_payment" | "paid")
    }
}

/// Everything the checker judges.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub items: Vec<ItemState>,
    pub observed: Vec<ObservedOrder>,
    /// Engine answers for observed orders (and SQL rows): `None` means 404.
    pub engine_orders: HashMap<String, Option<OrderView>>,
    /// The SQL `orders` table, when the runner can read it.
    pub sql_orders: Option<Vec<OrderView>>,
    /// Runner's clock when the engine orders were read (unix ms).
    pub now_ms: i64,
    pub expect: Expectations,
    /// The admin API answered 404 for the promotion the runner created.
    pub promotion_missing: bool,
}

/// Every verdict, in a stable order.
pub fn check(world: &World) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    if world.promotion_missing {
        verdicts.push(Verdict::fail(
            "promotion_exists",
            "the server answers 404 for the promotion the runner created",
        ));
    }
    verdicts.extend([
        stock_balance(world),
        no_oversell(world),
        per_user_limit(world),
        acknowledged_orders_exist(world),
    ]);
    verdicts.push(match &world.sql_orders {
        Some(rows) => sql_matches_engine(world, rows),
        None => Verdict::pass("sql_matches_engine", "skipped: no SQL table to read"),
    });
    if world.expect.all_paid || world.expect.sold_out {
        verdicts.push(expectations(world));
    }
    verdicts
}

/// remaining + reserved + sold == stock, for every item.
fn stock_balance(world: &World) -> Verdict {
    let problems: Vec<String> = world
        .items
        .iter()
        .filter(|item| item.remaining + item.reserved + item.sold != item.stock)
        .map(|item| {
            format!(
                "{}: remaining {} + reserved {} + sold {} != stock {}",
                item.sku, item.remaining, item.reserved, item.sold, item.stock
            )
        })
        .collect();
    let detail = format!("{} item(s) balance", world.items.len());
    Verdict::from_problems("stock_balance", &problems, detail)
}

/// Every order the checker knows of: the engine's answers, plus SQL rows for orders the
/// engine was not asked about (the SQL table sees orders whose answers were lost).
fn visible_orders(world: &World) -> Vec<&OrderView> {
    let mut orders: Vec<&OrderView> = world.engine_orders.values().flatten().collect();
    if let Some(rows) = &world.sql_orders {
        orders.extend(
            rows.iter()
                .filter(|row| !world.engine_orders.contains_key(&row.order_id)),
        );
    }
    orders
}

/// Live units never exceed stock: neither by the stats nor by counting orders.
fn no_oversell(world: &World) -> Verdict {
    let mut problems = Vec::new();
    let mut live_units: HashMap<&str, u64> = HashMap::new();
    for order in visible_orders(world).into_iter().filter(|o| o.is_live()) {
        *live_units.entry(order.sku.as_str()).or_insert(0) += u64::from(order.quantity);
    }
    let mut units_held = 0;
    for item in &world.items {
        let held = item.reserved + item.sold;
        units_held += held;
        if held > item.stock {
            problems.push(format!(
                "{}: reserved {} + sold {} > stock {}",
                item.sku, item.reserved, item.sold, item.stock
            ));
        }
        let counted = live_units.get(item.sku.as_str()).copied().unwrap_or(0);
        if counted > item.stock {
            problems.push(format!(
                "{}: {} live units in orders > stock {}",
                item.sku, counted, item.stock
            ));
        }
    }
    let stock: u64 = world.items.iter().map(|item| item.stock).sum();
    let detail = format!("{units_held} of {stock} units held by live orders");
    Verdict::from_problems("no_oversell", &problems, detail)
}

/// One user's live units for an item never exceed `per_user_limit`.
fn per_user_limit(world: &World) -> Verdict {
    let limits: HashMap<&str, u32> = world
        .items
        .iter()
        .map(|item| (item.sku.as_str(), item.per_user_limit))
        .collect();
    let mut held: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let orders = visible_orders(world);
    for order in orders.iter().filter(|o| o.is_live()) {
        *held
            .entry((order.user_id.as_str(), order.sku.as_str()))
            .or_insert(0) += u64::from(order.quantity);
    }
    let problems: Vec<String> = held
        .iter()
        .filter_map(|((user, sku), units)| {
            let limit = u64::from(limits.get(sku).copied().unwrap_or(u32::MAX));
            (*units > limit).then(|| format!("{user} holds {units} of {sku} (limit {limit})"))
        })
        .collect();
    let detail = format!("{} (user, item) pairs within their limit", held.len());
    Verdict::from_problems("per_user_limit", &problems, detail)
}

/// The statuses an acknowledged order may show now.
fn allowed_statuses(order: &ObservedOrder, now_ms: i64) -> Vec<&'static str> {
    let target = match order.action {
        BuyerAction::Pay => Some("paid"),
        BuyerAction::Cancel => Some("cancelled"),
        BuyerAction::Leave => None,
    };
    let overdue = order
        .pay_before_ms
        .is_some_and(|pay_before_ms| now_ms > pay_before_ms + EXPIRY_GRACE_MS);
    let unattended: &[&'static str] = if overdue {
        &["expired"]
    } else {
        &["pending_payment", "expired"]
    };
    match (order.outcome, target) {
        (ActionOutcome::Done, Some(target)) => vec![target],
        (ActionOutcome::NoAnswer, Some(target)) => {
            let mut allowed = unattended.to_vec();
            allowed.push(target);
            allowed
        }
        // A refused cancel can only mean paid or expired; a refused pay, cancelled or
        // expired; neither leaves it pending for ever.
        _ => unattended.to_vec(),
    }
}

/// Every order the server acknowledged exists, belongs to the right shopper and item, and
/// shows the state the buyer's actions imply.
fn acknowledged_orders_exist(world: &World) -> Verdict {
    let mut problems = Vec::new();
    for order in &world.observed {
        let Some(found) = world.engine_orders.get(&order.order_id) else {
            problems.push(format!("{}: not looked up", order.order_id));
            continue;
        };
        let Some(view) = found else {
            problems.push(format!(
                "{}: acknowledged ({}) but answers 404",
                order.order_id,
                if order.created { 201 } else { 200 }
            ));
            continue;
        };
        if view.user_id != order.user_id || view.sku != order.sku || view.quantity != order.quantity
        {
            problems.push(format!(
                "{}: shows {}/{}/x{} but was bought as {}/{}/x{}",
                order.order_id,
                view.user_id,
                view.sku,
                view.quantity,
                order.user_id,
                order.sku,
                order.quantity
            ));
        }
        let allowed = allowed_statuses(order, world.now_ms);
        if !allowed.contains(&view.status.as_str()) {
            problems.push(format!(
                "{}: status {} after {:?} ({:?}), expected one of {:?}",
                order.order_id, view.status, order.action, order.outcome, allowed
            ));
        }
    }
    let detail = format!(
        "{} acknowledged order(s) found as expected",
        world.observed.len()
    );
    Verdict::from_problems("acknowledged_orders_exist", &problems, detail)
}

/// The SQL table holds the same orders in the same states as the engine.
fn sql_matches_engine(world: &World, rows: &[OrderView]) -> Verdict {
    let mut problems = Vec::new();
    let by_id: HashMap<&str, &OrderView> = rows
        .iter()
        .map(|row| (row.order_id.as_str(), row))
        .collect();
    if by_id.len() != rows.len() {
        problems.push(format!(
            "{} duplicate order id(s) in SQL",
            rows.len() - by_id.len()
        ));
    }
    let mut live: HashMap<&str, u64> = HashMap::new();
    let mut paid: HashMap<&str, u64> = HashMap::new();
    for row in rows {
        if row.is_live() {
            *live.entry(row.sku.as_str()).or_insert(0) += u64::from(row.quantity);
        }
        if row.status == "paid" {
            *paid.entry(row.sku.as_str()).or_insert(0) += u64::from(row.quantity);
        }
    }
    for item in &world.items {
        let live_units = live.get(item.sku.as_str()).copied().unwrap_or(0);
        let paid_units = paid.get(item.sku.as_str()).copied().unwrap_or(0);
        if live_units != item.reserved + item.sold {
            problems.push(format!(
                "{}: SQL live units {} != engine reserved {} + sold {}",
                item.sku, live_units, item.reserved, item.sold
            ));
        }
        if paid_units != item.sold {
            problems.push(format!(
                "{}: SQL paid units {} != engine sold {}",
                item.sku, paid_units, item.sold
            ));
        }
    }
    for order in &world.observed {
        if !by_id.contains_key(order.order_id.as_str()) {
            problems.push(format!("{}: acknowledged but not in SQL", order.order_id));
        }
    }
    for (order_id, engine) in &world.engine_orders {
        match (engine, by_id.get(order_id.as_str())) {
            (Some(engine), Some(row)) if engine.status != row.status => problems.push(format!(
                "{order_id}: engine says {}, SQL says {}",
                engine.status, row.status
            )),
            (None, Some(_)) => problems.push(format!("{order_id}: in SQL, unknown to engine")),
            _ => {}
        }
    }
    let detail = format!("{} SQL row(s) agree with the engine", rows.len());
    Verdict::from_problems("sql_matches_engine", &problems, detail)
}

/// The scenario's own promises (`[expect]`).
fn expectations(world: &World) -> Verdict {
    let mut problems = Vec::new();
    for item in &world.items {
        if world.expect.sold_out && item.remaining != 0 {
            problems.push(format!("{}: {} units never sold", item.sku, item.remaining));
        }
        if world.expect.all_paid && item.sold != item.stock {
            problems.push(format!(
                "{}: sold {} of {} (remaining {}, reserved {})",
                item.sku, item.sold, item.stock, item.remaining, item.reserved
            ));
        }
    }
    let detail = "the scenario's [expect] holds".to_owned();
    Verdict::from_problems("expectations", &problems, detail)
}

/// True when every verdict passed.
pub fn all_passed(verdicts: &[Verdict]) -> bool {
    verdicts.iter().all(|verdict| verdict.passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, stock: u64, remaining: u64, reserved: u64, sold: u64) -> ItemState {
        ItemState {
            sku: sku.into(),
            stock,
            remaining,
            reserved,
            sold,
            per_user_limit: 1,
        }
    }

    fn view(id: &str, user: &str, sku: &str, status: &str) -> OrderView {
        OrderView {
            order_id: id.into(),
            user_id: user.into(),
            sku: sku.into(),
            quantity: 1,
            status: status.into(),
        }
    }

    fn observed(
        id: &str,
        user: &str,
        action: BuyerAction,
        outcome: ActionOutcome,
    ) -> ObservedOrder {
        ObservedOrder {
            order_id: id.into(),
            user_id: user.into(),
            sku: "a".into(),
            quantity: 1,
            created: true,
            action,
            outcome,
            pay_before_ms: Some(10_000),
        }
    }

    /// Two units of `a`: one paid by u1, one pending for u2; SQL agrees.
    fn consistent() -> World {
        let paid = view("o1", "u1", "a", "paid");
        let pending = view("o2", "u2", "a", "pending_payment");
        World {
            items: vec![item("a", 3, 1, 1, 1)],
            observed: vec![
                observed("o1", "u1", BuyerAction::Pay, ActionOutcome::Done),
                observed("o2", "u2", BuyerAction::Leave, ActionOutcome::NotTried),
            ],
            engine_orders: [
                ("o1".to_owned(), Some(paid.clone())),
                ("o2".to_owned(), Some(pending.clone())),
            ]
            .into_iter()
            .collect(),
            sql_orders: Some(vec![paid, pending]),
            now_ms: 5_000,
            expect: Expectations::default(),
            promotion_missing: false,
        }
    }

    fn failed(world: &World) -> Vec<String> {
        check(world)
            .into_iter()
            .filter(|verdict| !verdict.passed)
            .map(|verdict| verdict.name)
            .collect()
    }

    #[test]
    fn a_consistent_world_passes_every_check() {
        let verdicts = check(&consistent());
        assert!(all_passed(&verdicts), "{verdicts:#?}");
    }

    #[test]
    fn unbalanced_stats_fail_stock_balance() {
        let mut world = consistent();
        world.items[0].remaining = 2;
        assert_eq!(failed(&world), vec!["stock_balance".to_owned()]);
    }

    #[test]
    fn oversold_orders_fail_no_oversell_even_when_stats_look_fine() {
        let mut world = consistent();
        world.items = vec![item("a", 1, 0, 0, 1)];
        let rows = world.sql_orders.as_mut().expect("sql");
        rows.push(view("o3", "u3", "a", "paid"));
        assert!(failed(&world).contains(&"no_oversell".to_owned()));
    }

    #[test]
    fn a_user_above_the_limit_fails() {
        let mut world = consistent();
        world.items[0] = item("a", 3, 0, 2, 1);
        let rows = world.sql_orders.as_mut().expect("sql");
        rows.push(view("o3", "u1", "a", "pending_payment"));
        let failures = failed(&world);
        assert_eq!(failures, vec!["per_user_limit".to_owned()], "{failures:?}");
    }

    #[test]
    fn a_lost_acknowledged_order_fails() {
        let mut world = consistent();
        world.engine_orders.insert("o2".into(), None);
        world.sql_orders = None;
        world.items[0] = item("a", 3, 2, 0, 1);
        assert_eq!(failed(&world), vec!["acknowledged_orders_exist".to_owned()]);
    }

    #[test]
    fn a_paid_order_showing_pending_fails_and_an_overdue_pending_order_fails() {
        let mut world = consistent();
        world
            .engine_orders
            .insert("o1".into(), Some(view("o1", "u1", "a", "pending_payment")));
        assert!(failed(&world).contains(&"acknowledged_orders_exist".to_owned()));

        let mut late = consistent();
        late.now_ms = 10_000 + EXPIRY_GRACE_MS + 1;
        assert!(failed(&late).contains(&"acknowledged_orders_exist".to_owned()));
    }

    #[test]
    fn sql_lagging_or_disagreeing_fails() {
        let mut missing = consistent();
        missing.sql_orders = Some(vec![view("o1", "u1", "a", "paid")]);
        assert_eq!(failed(&missing), vec!["sql_matches_engine".to_owned()]);

        let mut stale = consistent();
        stale.sql_orders = Some(vec![
            view("o1", "u1", "a", "pending_payment"),
            view("o2", "u2", "a", "pending_payment"),
        ]);
        assert_eq!(failed(&stale), vec!["sql_matches_engine".to_owned()]);
    }

    #[test]
    fn a_promotion_lost_in_a_crash_fails() {
        let mut world = consistent();
        world.promotion_missing = true;
        world.items.clear();
        world.sql_orders = None;
        assert!(failed(&world).contains(&"promotion_exists".to_owned()));
    }

    #[test]
    fn expectations_are_checked_only_when_asked() {
        let mut world = consistent();
        assert!(all_passed(&check(&world)));
        world.expect.all_paid = true;
        assert_eq!(failed(&world), vec!["expectations".to_owned()]);
    }

    #[test]
    fn an_unanswered_pay_may_or_may_not_have_happened() {
        let order = observed("o", "u", BuyerAction::Pay, ActionOutcome::NoAnswer);
        let allowed = allowed_statuses(&order, 0);
        assert!(allowed.contains(&"paid"));
        assert!(allowed.contains(&"pending_payment"));
        assert!(!allowed.contains(&"cancelled"));
    }
}
