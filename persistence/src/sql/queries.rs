//! Every statement of the flusher but the orders upsert, each written once for both
//! databases: SQL that SQLite and PostgreSQL both accept, with dialect-free values (see
//! `dialect`). `excluded` is the upsert's proposed row in both (PostgreSQL folds the case).

use seckill_engine::{ItemState, ItemStats, PromotionRecord, PromotionStats, PromotionStatus};

use super::dialect::{placeholder_rows, Statement, Value};
use super::rows::PromotionChange;
use super::source::SINGLE_LANE;

/// Item rows per multi-row statement: [`ITEM_COLUMN_COUNT`] parameters each stays far below
/// SQLite's 32,766 and PostgreSQL's 65,535.
const ITEM_ROWS_PER_STATEMENT_MAX: usize = 1_000;

const PROMOTION_COLUMNS: &str = "id, name, starts_at, ends_at, payment_timeout_s, \
     require_token, token_multiplier, created_at, updated_at";
const PROMOTION_COLUMN_COUNT: usize = 9;
const ITEM_COLUMNS: &str = "promotion_id, sku, title, price_cents, per_user_limit, stock, \
     remaining, reserved, sold, tokens_issued, tokens_outstanding, updated_at";
const ITEM_COLUMN_COUNT: usize = 12;

/// A promotion's row at its creation leaves an existing row alone: the stats refresh or a
/// later start/stop may have moved it on.
const PROMOTION_CREATED_CONFLICT: &str = " ON CONFLICT (id) DO NOTHING";
/// The stats refresh copies the window as the engine has it now.
const PROMOTION_STATS_CONFLICT: &str = " ON CONFLICT (id) DO UPDATE SET \
     starts_at = excluded.starts_at, ends_at = excluded.ends_at, \
     updated_at = excluded.updated_at";
const ITEM_CREATED_CONFLICT: &str = " ON CONFLICT (promotion_id, sku) DO NOTHING";
const ITEM_STATS_CONFLICT: &str = " ON CONFLICT (promotion_id, sku) DO UPDATE SET \
     remaining = excluded.remaining, reserved = excluded.reserved, sold = excluded.sold, \
     tokens_issued = excluded.tokens_issued, tokens_outstanding = excluded.tokens_outstanding, \
     updated_at = excluded.updated_at";

// Lane 0 (a single log) keeps the one-row table of the first migration, so tables written
// before lanes existed go on from their cursor; every other lane has its row in
// `flusher_lane_cursor` (migration 0004). `Value::small` never saturates here: lanes are at
// most `LANE_MAX`, checked when the flusher takes a lane up.

/// The sequence number up to which the tables hold `lane`.
pub(crate) fn read_cursor(lane: u32) -> Statement {
    if lane == SINGLE_LANE {
        return Statement::plain("SELECT seq FROM flusher_cursor WHERE id = 1");
    }
    Statement::new(
        "SELECT seq FROM flusher_lane_cursor WHERE lane = ?",
        vec![Value::small(lane)],
    )
}

/// The row of a lane above 0, at 0, unless it has one already (then it touches no row).
pub(crate) fn add_lane(lane: u32, now_ms: i64) -> Statement {
    debug_assert_ne!(
        lane, SINGLE_LANE,
        "lane 0's row comes with the first migration"
    );
    Statement::new(
        "INSERT INTO flusher_lane_cursor (lane, seq, updated_at) VALUES (?, 0, ?) \
         ON CONFLICT (lane) DO NOTHING",
        vec![Value::small(lane), Value::Time(now_ms)],
    )
}

/// Moves `lane`'s cursor from `from` to `to`; touches no row if it is not at `from`
/// (another flusher moved it).
pub(crate) fn move_cursor(lane: u32, from: u64, to: u64, now_ms: i64) -> Statement {
    if lane == SINGLE_LANE {
        return Statement::new(
            "UPDATE flusher_cursor SET seq = ?, updated_at = ? WHERE id = 1 AND seq = ?",
            vec![Value::count(to), Value::Time(now_ms), Value::count(from)],
        );
    }
    Statement::new(
        "UPDATE flusher_lane_cursor SET seq = ?, updated_at = ? WHERE lane = ? AND seq = ?",
        vec![
            Value::count(to),
            Value::Time(now_ms),
            Value::small(lane),
            Value::count(from),
        ],
    )
}

/// Sets `lane`'s cursor, whatever it was.
pub(crate) fn set_cursor(lane: u32, seq: u64, now_ms: i64) -> Statement {
    if lane == SINGLE_LANE {
        return Statement::new(
            "UPDATE flusher_cursor SET seq = ?, updated_at = ? WHERE id = 1",
            vec![Value::count(seq), Value::Time(now_ms)],
        );
    }
    Statement::new(
        "UPDATE flusher_lane_cursor SET seq = ?, updated_at = ? WHERE lane = ?",
        vec![Value::count(seq), Value::Time(now_ms), Value::small(lane)],
    )
}

/// The statements of one promotion-level change of the log.
pub(crate) fn promotion_change(change: &PromotionChange, now_ms: i64) -> Vec<Statement> {
    match change {
        PromotionChange::Created(record) => promotion_created(record, now_ms),
        PromotionChange::Started {
            promotion_id,
            at_ms,
        } => vec![Statement::new(
            "UPDATE promotions SET starts_at = ?, updated_at = ? WHERE id = ?",
            vec![
                Value::Time(*at_ms),
                Value::Time(now_ms),
                Value::text(promotion_id),
            ],
        )],
        // As the engine does: the end moves to the stop, and a start after it with it (the
        // earlier of the two, written without SQLite's MIN or PostgreSQL's LEAST).
        PromotionChange::Stopped {
            promotion_id,
            at_ms,
        } => vec![Statement::new(
            "UPDATE promotions SET starts_at = CASE WHEN starts_at < ? THEN starts_at ELSE ? END, \
             ends_at = ?, updated_at = ? WHERE id = ?",
            vec![
                Value::Time(*at_ms),
                Value::Time(*at_ms),
                Value::Time(*at_ms),
                Value::Time(now_ms),
                Value::text(promotion_id),
            ],
        )],
    }
}

/// A promotion's row and its items as they are at creation (no stats yet).
fn promotion_created(record: &PromotionRecord, now_ms: i64) -> Vec<Statement> {
    let stats = PromotionStats {
        guard: Default::default(),
        id: record.id.clone(),
        name: record.name.clone(),
        // Not a column: the tables keep the window, not what it means at one time.
        status: PromotionStatus::at(record.starts_at_ms, record.ends_at_ms, now_ms),
        starts_at_ms: record.starts_at_ms,
        ends_at_ms: record.ends_at_ms,
        payment_timeout_s: record.payment_timeout_s,
        require_token: record.require_token,
        token_multiplier: record.token_multiplier,
        created_at_ms: record.created_at_ms,
        items: created_items(record),
    };
    promotion_rows(
        &stats,
        now_ms,
        PROMOTION_CREATED_CONFLICT,
        ITEM_CREATED_CONFLICT,
    )
}

/// The figures the engine gives the items it has just created (all their stock remaining,
/// nothing else yet), so that the rows at creation and a later stats refresh agree.
fn created_items(record: &PromotionRecord) -> Vec<ItemStats> {
    let (timeout_s, token, multiplier) = (
        record.payment_timeout_s,
        record.require_token,
        record.token_multiplier,
    );
    record
        .items
        .iter()
        .map(|item| {
            ItemState::new(0, &record.id, item.clone(), timeout_s, token, multiplier, 0).stats()
        })
        .collect()
}

/// A promotion's row and its items' stats as the engine has them now.
pub(crate) fn promotion_stats(stats: &PromotionStats, now_ms: i64) -> Vec<Statement> {
    promotion_rows(stats, now_ms, PROMOTION_STATS_CONFLICT, ITEM_STATS_CONFLICT)
}

/// The `promotions` row of `stats` and its items' rows, each with its conflict clause.
fn promotion_rows(
    stats: &PromotionStats,
    now_ms: i64,
    promotion_conflict: &str,
    item_conflict: &str,
) -> Vec<Statement> {
    let mut statements = vec![promotion_insert(stats, now_ms, promotion_conflict)];
    statements.extend(item_inserts(&stats.id, &stats.items, now_ms, item_conflict));
    statements
}

/// The insert of a `promotions` row, in [`PROMOTION_COLUMNS`] order.
fn promotion_insert(stats: &PromotionStats, now_ms: i64, on_conflict: &str) -> Statement {
    Statement::new(
        format!(
            "INSERT INTO promotions ({PROMOTION_COLUMNS}) VALUES {}{on_conflict}",
            placeholder_rows(1, PROMOTION_COLUMN_COUNT)
        ),
        vec![
            Value::text(&stats.id),
            Value::text(&stats.name),
            Value::Time(stats.starts_at_ms),
            Value::Time(stats.ends_at_ms),
            Value::small(stats.payment_timeout_s),
            Value::Bool(stats.require_token),
            Value::small(stats.token_multiplier),
            Value::Time(stats.created_at_ms),
            Value::Time(now_ms),
        ],
    )
}

/// An item's row values in [`ITEM_COLUMNS`] order.
fn push_item_values(promotion_id: &str, item: &ItemStats, now_ms: i64, values: &mut Vec<Value>) {
    values.extend([
        Value::text(promotion_id),
        Value::text(&item.sku),
        Value::text(&item.title),
        Value::Int(item.price_cents),
        Value::Int(i64::from(item.per_user_limit)),
    ]);
    let counts = [
        item.stock,
        item.remaining,
        item.reserved,
        item.sold,
        item.tokens_issued,
        item.tokens_outstanding,
    ];
    values.extend(counts.map(Value::count));
    values.push(Value::Time(now_ms));
}

/// Multi-row inserts of `items`, [`ITEM_ROWS_PER_STATEMENT_MAX`] rows at most each.
fn item_inserts(
    promotion_id: &str,
    items: &[ItemStats],
    now_ms: i64,
    on_conflict: &str,
) -> Vec<Statement> {
    items
        .chunks(ITEM_ROWS_PER_STATEMENT_MAX)
        .map(|part| {
            let mut values = Vec::with_capacity(part.len() * ITEM_COLUMN_COUNT);
            for item in part {
                push_item_values(promotion_id, item, now_ms, &mut values);
            }
            Statement::new(
                format!(
                    "INSERT INTO promotion_items ({ITEM_COLUMNS}) VALUES {}{on_conflict}",
                    placeholder_rows(part.len(), ITEM_COLUMN_COUNT)
                ),
                values,
            )
        })
        .collect()
}

/// The deployment recorded beside the tables, if any.
pub(crate) fn read_deployment() -> Statement {
    Statement::plain("SELECT deployment_id FROM seckill_deployment WHERE id = 1")
}

/// Records `deployment_id` unless one is recorded already (then it touches no row).
pub(crate) fn record_deployment(deployment_id: &str, now_ms: i64) -> Statement {
    Statement::new(
        "INSERT INTO seckill_deployment (id, deployment_id, recorded_at) VALUES (1, ?, ?) \
         ON CONFLICT (id) DO NOTHING",
        vec![Value::text(deployment_id), Value::Time(now_ms)],
    )
}

/// Records `ours` in place of `found`.
pub(crate) fn replace_deployment(found: &str, ours: &str, now_ms: i64) -> Statement {
    Statement::new(
        "UPDATE seckill_deployment SET deployment_id = ?, recorded_at = ? \
         WHERE id = 1 AND deployment_id = ?",
        vec![Value::text(ours), Value::Time(now_ms), Value::text(found)],
    )
}

/// Zero when the tables hold nothing at all (no order, no promotion, every lane's cursor at
/// 0), more otherwise. `COUNT` over `LIMIT 1`: whether a row exists, without counting them
/// all (and a `BIGINT` on PostgreSQL, where `SUM` of the lanes would be `NUMERIC`). A lane's
/// row at 0 is only a lane seen, not written.
pub(crate) fn tables_written() -> Statement {
    Statement::plain(
        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM orders LIMIT 1) AS o) \
         + (SELECT COUNT(*) FROM (SELECT 1 FROM promotions LIMIT 1) AS p) \
         + (SELECT COUNT(*) FROM (SELECT 1 FROM flusher_lane_cursor WHERE seq > 0 LIMIT 1) AS l) \
         + COALESCE((SELECT seq FROM flusher_cursor WHERE id = 1), 0)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str) -> ItemStats {
        ItemStats {
            sku: sku.to_owned(),
            title: sku.to_owned(),
            price_cents: 100,
            per_user_limit: 1,
            stock: 10,
            remaining: 10,
            reserved: 0,
            sold: 0,
            tokens_issued: 0,
            tokens_outstanding: 0,
        }
    }

    #[test]
    fn lane_0_keeps_the_first_cursor_table_and_other_lanes_have_rows_of_their_own() {
        assert_eq!(
            read_cursor(SINGLE_LANE).postgres_sql(),
            "SELECT seq FROM flusher_cursor WHERE id = 1"
        );
        assert_eq!(
            move_cursor(SINGLE_LANE, 4, 9, 0).postgres_sql(),
            "UPDATE flusher_cursor SET seq = $1, updated_at = $2 WHERE id = 1 AND seq = $3"
        );
        assert_eq!(
            read_cursor(3).postgres_sql(),
            "SELECT seq FROM flusher_lane_cursor WHERE lane = $1"
        );
        assert_eq!(
            move_cursor(3, 4, 9, 0).postgres_sql(),
            "UPDATE flusher_lane_cursor SET seq = $1, updated_at = $2 WHERE lane = $3 AND seq = $4"
        );
    }

    #[test]
    fn items_go_in_statements_of_bounded_size() {
        let skus: Vec<String> = (0..=ITEM_ROWS_PER_STATEMENT_MAX)
            .map(|n| format!("s{n}"))
            .collect();
        let items: Vec<ItemStats> = skus.iter().map(|sku| item(sku.as_str())).collect();
        let statements = item_inserts("p", &items, 2, ITEM_CREATED_CONFLICT);
        assert_eq!(statements.len(), 2, "1,000 items, then 1");
        assert_eq!(
            statements[0].postgres_sql().matches('$').count(),
            ITEM_ROWS_PER_STATEMENT_MAX * ITEM_COLUMN_COUNT
        );
        let last = statements[1].postgres_sql();
        assert!(
            last.ends_with(
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (promotion_id, sku) DO NOTHING"
            ),
            "{last}"
        );
    }
}
