//! `GET /admin/promotions/{id}/live`: Server-Sent Events, one `stats` event a second with the
//! promotion's item stats (from the shards, exact), the orders and refusals per second of
//! its items and the p99 latency of its token and purchase answers (from the live meters,
//! `crate::live`), and the SQL flusher's lag.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Serialize;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use utoipa::ToSchema;

use seckill_engine::{Engine, PromotionStats};

use super::openapi::{INTERNAL, OPERATOR_UNAUTHORIZED};
use crate::auth::Admin;
use crate::error::{AppError, ErrorBody};
use crate::extract::PathParams;
use crate::live::{rates, MeterReading, Rates, Watch};
use crate::sale_report::SqlReader;
use crate::state::{AppState, Closing};
use crate::views::rfc3339;

/// How often a watcher gets a `stats` event.
const LIVE_INTERVAL: Duration = Duration::from_secs(1);

/// The data of one `stats` event.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LiveStats {
    pub promotion_id: String,
    /// `upcoming`, `live` or `ended`.
    #[schema(value_type = String, example = "live")]
    pub status: &'static str,
    #[schema(format = DateTime)]
    pub server_time: String,
    pub items: Vec<LiveItem>,
    /// Purchases answered 201 in the last second, over every item.
    pub orders_per_s: f64,
    /// Token and purchase refusals in the last second by code, over every item.
    pub refusals_per_s: BTreeMap<&'static str, f64>,
    /// p99 of the last second's token and purchase answers; null when there were none.
    pub latency_p99_ms: Option<f64>,
    /// The SQL flusher's lag; null when the server has no SQL flusher.
    pub flusher_lag_s: Option<f64>,
}

/// One item of a `stats` event: its stock (exact, from its shard) and its last second.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LiveItem {
    pub sku: String,
    pub title: String,
    pub stock: u64,
    pub remaining: u64,
    pub reserved: u64,
    pub sold: u64,
    pub tokens_issued: u64,
    pub tokens_outstanding: u64,
    pub orders_per_s: f64,
    pub refusals_per_s: BTreeMap<&'static str, f64>,
}

/// `GET /admin/promotions/{id}/live`.
#[utoipa::path(
    get,
    path = "/admin/promotions/{id}/live",
    tag = "operator",
    operation_id = "promotion_live",
    summary = "Watch a promotion live (Server-Sent Events)",
    description = "A `text/event-stream` of one `stats` event a second, whose data is a \
                   `LiveStats` JSON object. The rates count from the moment the first \
                   watcher of the promotion connected. The stream ends when the server shuts \
                   down.",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "The promotion id.",
        pattern = r"^[A-Za-z0-9_.:-]{1,64}$")),
    responses(
        (status = 200, description = "The stream: `event: stats` and `data: <LiveStats>`, \
            once a second.", body = LiveStats, content_type = "text/event-stream"),
        (status = 401, description = OPERATOR_UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "`not_found`: no such promotion.", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = "`unavailable`: the server is starting.",
            body = ErrorBody),
    )
)]
pub async fn promotion_live(
    _: Admin,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Response, AppError> {
    let engine = state.engine()?.clone();
    let owner_calls = state.owner_calls().cloned();
    let stats = stats_of(&engine, owner_calls.as_ref(), &id).await?;
    let skus: Vec<String> = stats.items.iter().map(|item| item.sku.clone()).collect();
    let watch = state.live_board().watch(&id, &skus);
    let feed = Feed {
        engine,
        owner_calls,
        before: watch.read(),
        watch,
        id,
        sql: state.sql_reader(),
        closing: state.closing(),
        ticker: ticker(),
        sampled_at: Instant::now(),
    };
    let sse = Sse::new(events(feed)).keep_alive(KeepAlive::default());
    Ok(sse.into_response())
}

/// The promotion's stats: this engine's, or in a cluster each item's from its owner.
async fn stats_of(
    engine: &Engine,
    owner_calls: Option<&Arc<dyn crate::owner_calls::OwnerCalls>>,
    id: &str,
) -> seckill_engine::Result<PromotionStats> {
    match (engine.promotion_stats(id).await, owner_calls) {
        (Err(seckill_engine::Error::NotOwner { .. }), Some(owner)) => {
            owner.promotion_stats(id).await
        }
        (local, _) => local,
    }
}

fn ticker() -> Interval {
    // The first tick at once: the console shows the stock without waiting a second.
    let mut ticker = tokio::time::interval(LIVE_INTERVAL);
    // A watcher that fell behind gets the next event, not a burst of missed ones.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// One watcher's state between events.
struct Feed {
    engine: Engine,
    /// A cluster node's way to the figures of items other nodes own.
    owner_calls: Option<Arc<dyn crate::owner_calls::OwnerCalls>>,
    watch: Watch,
    id: String,
    before: MeterReading,
    sampled_at: Instant,
    sql: Option<Arc<dyn SqlReader>>,
    closing: Closing,
    ticker: Interval,
}

/// The stream of `stats` events: one a tick, until the server closes or the promotion is
/// gone. A tick whose stats the engine could not give (a shard's mailbox full in a storm,
/// a shard down) is a comment instead: the watcher stays, and so do its meters.
fn events(feed: Feed) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(feed, |mut feed| async move {
        tokio::select! {
            _ = feed.ticker.tick() => {}
            () = feed.closing.closed() => return None,
        }
        let stats = tokio::select! {
            stats = stats_of(&feed.engine, feed.owner_calls.as_ref(), &feed.id) => stats,
            () = feed.closing.closed() => return None,
        };
        let event = match stats {
            Ok(stats) => feed.stats_event(&stats),
            Err(seckill_engine::Error::NotFound) => return None,
            Err(error) => Event::default().comment(format!("stats unavailable: {}", error.code())),
        };
        Some((Ok(event), feed))
    })
}

impl Feed {
    /// The `stats` event for `stats` and the meters' last interval; the interval restarts.
    fn stats_event(&mut self, stats: &PromotionStats) -> Event {
        let reading = self.watch.read();
        let now = Instant::now();
        let elapsed_s = now.duration_since(self.sampled_at).as_secs_f64();
        let rates = rates(&self.before, &reading, elapsed_s);
        let live = live_stats(stats, &rates, self, self.engine.now_ms());
        self.before = reading;
        self.sampled_at = now;
        Event::default()
            .event("stats")
            .json_data(&live)
            // Serializing numbers and strings cannot fail; a comment keeps the stream up.
            .unwrap_or_else(|_| Event::default().comment("stats unavailable"))
    }
}

/// The event's data (pure: the stats, the rates and the lag in, the JSON shape out).
fn live_stats(stats: &PromotionStats, rates: &Rates, feed: &Feed, now_ms: i64) -> LiveStats {
    let mut total_refusals: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut orders_per_s = 0.0;
    let items = stats
        .items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            // Items are fixed at creation, so the meter has them in the same order (checked,
            // then searched for); a sku not found (cannot happen) shows no rates rather than
            // another item's.
            let index = if feed.watch.sku(index) == Some(item.sku.as_str()) {
                Some(index)
            } else {
                feed.watch.skus().position(|sku| sku == item.sku)
            };
            let (item_orders, item_refusals) = index
                .and_then(|index| rates.items.get(index))
                .cloned()
                .unwrap_or_default();
            orders_per_s += item_orders;
            for (code, per_s) in &item_refusals {
                *total_refusals.entry(code).or_default() += per_s;
            }
            LiveItem {
                sku: item.sku.clone(),
                title: item.title.clone(),
                stock: item.stock,
                remaining: item.remaining,
                reserved: item.reserved,
                sold: item.sold,
                tokens_issued: item.tokens_issued,
                tokens_outstanding: item.tokens_outstanding,
                orders_per_s: item_orders,
                refusals_per_s: item_refusals.into_iter().collect(),
            }
        })
        .collect();
    LiveStats {
        promotion_id: stats.id.clone(),
        status: stats.status.as_str(),
        server_time: rfc3339(now_ms),
        items,
        orders_per_s,
        refusals_per_s: total_refusals,
        latency_p99_ms: rates.latency_p99_ms,
        flusher_lag_s: feed.sql.as_ref().map(|sql| sql.flusher_lag_s()),
    }
}
