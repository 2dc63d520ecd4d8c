//! The live meters behind `GET /admin/promotions/{id}/live`: per item of a watched
//! promotion, purchases answered 201 and refusals by code, and the latency of its token and
//! purchase answers.
//!
//! Counters are cumulative and never reset; each watcher samples them once a second and
//! shows the difference, so any number of watchers read the same counters. A promotion is
//! metered only while somebody watches it: the request path pays one atomic load when
//! nobody does, and the board holds at most the promotions being watched.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::error::ERROR_CODES;

/// Latency buckets: four per octave of microseconds, from 1 us to 2^32 us (over an hour).
const LATENCY_BUCKETS: usize = 4 * 32;

/// Which routes feed the meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeteredRoute {
    Token,
    Purchase,
}

/// Every watched promotion's meters.
#[derive(Debug, Default)]
pub struct LiveBoard {
    promotions: DashMap<Box<str>, Arc<PromotionMeter>>,
    /// `promotions.len()`, readable without touching the map's locks.
    watched: AtomicUsize,
}

/// One promotion's meters.
#[derive(Debug)]
pub struct PromotionMeter {
    items: Vec<(Box<str>, ItemMeter)>,
    latency_us: [AtomicU64; LATENCY_BUCKETS],
    watchers: AtomicUsize,
}

/// One item's counters.
#[derive(Debug)]
struct ItemMeter {
    orders: AtomicU64,
    /// Indexed like [`ERROR_CODES`].
    refusals: Vec<AtomicU64>,
}

/// Where one request's answer is counted: its promotion's meters and the item's index.
#[derive(Debug, Clone)]
pub struct MeterSlot {
    meter: Arc<PromotionMeter>,
    item: usize,
}

/// A watcher's hold on a promotion's meters: while any is alive the promotion is metered.
#[derive(Debug)]
pub struct Watch {
    board: &'static LiveBoard,
    id: Box<str>,
    meter: Arc<PromotionMeter>,
}

/// The cumulative counters at one moment; two of them give the rates between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterReading {
    /// Per item (in the meter's order): orders, and refusals indexed like [`ERROR_CODES`].
    pub items: Vec<(u64, Vec<u64>)>,
    pub latency_us: Vec<u64>,
}

impl LiveBoard {
    /// Starts (or joins) metering promotion `id`, whose items are `skus`.
    pub fn watch(&'static self, id: &str, skus: &[String]) -> Watch {
        let meter = {
            let entry = self.promotions.entry(id.into()).or_insert_with(|| {
                self.watched.fetch_add(1, Ordering::AcqRel);
                Arc::new(PromotionMeter::new(skus))
            });
            // Under the entry's lock: a leaving watcher's `remove_if` cannot run between the
            // lookup and this increment.
            entry.watchers.fetch_add(1, Ordering::AcqRel);
            Arc::clone(entry.value())
        };
        Watch {
            board: self,
            id: id.into(),
            meter,
        }
    }

    /// Where a token or purchase answer for `path` (`/promotions/{id}/items/{sku}/...`)
    /// is counted; None when nobody watches that promotion.
    pub fn slot(&self, path: &str) -> Option<MeterSlot> {
        if self.watched.load(Ordering::Acquire) == 0 {
            return None;
        }
        let (id, sku) = promotion_and_sku(path)?;
        let meter = Arc::clone(self.promotions.get(id)?.value());
        let item = meter.items.iter().position(|(s, _)| &**s == sku)?;
        Some(MeterSlot { meter, item })
    }
}

/// `(id, sku)` of `/promotions/{id}/items/{sku}/token` (or `/purchase`).
fn promotion_and_sku(path: &str) -> Option<(&str, &str)> {
    let mut parts = path.strip_prefix("/promotions/")?.split('/');
    let id = parts.next()?;
    (parts.next()? == "items").then_some(())?;
    let sku = parts.next()?;
    Some((id, sku))
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.meter.watchers.fetch_sub(1, Ordering::AcqRel) == 1 {
            let removed = self.board.promotions.remove_if(&self.id, |_, meter| {
                meter.watchers.load(Ordering::Acquire) == 0
            });
            if removed.is_some() {
                self.board.watched.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Watch {
    /// The promotion's counters now.
    pub fn read(&self) -> MeterReading {
        self.meter.read()
    }

    /// The sku at `index` of [`MeterReading::items`].
    pub fn sku(&self, index: usize) -> Option<&str> {
        self.meter.items.get(index).map(|(sku, _)| &**sku)
    }

    /// The skus, in the order of [`MeterReading::items`].
    pub fn skus(&self) -> impl Iterator<Item = &str> {
        self.meter.items.iter().map(|(sku, _)| &**sku)
    }
}

impl PromotionMeter {
    fn new(skus: &[String]) -> Self {
        PromotionMeter {
            items: skus
                .iter()
                .map(|sku| {
                    let refusals = ERROR_CODES.iter().map(|_| AtomicU64::new(0)).collect();
                    let meter = ItemMeter {
                        orders: AtomicU64::new(0),
                        refusals,
                    };
                    (sku.as_str().into(), meter)
                })
                .collect(),
            latency_us: std::array::from_fn(|_| AtomicU64::new(0)),
            watchers: AtomicUsize::new(0),
        }
    }

    fn read(&self) -> MeterReading {
        MeterReading {
            items: self
                .items
                .iter()
                .map(|(_, item)| {
                    let refusals = item.refusals.iter().map(|n| n.load(Ordering::Relaxed));
                    (item.orders.load(Ordering::Relaxed), refusals.collect())
                })
                .collect(),
            latency_us: self
                .latency_us
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

impl MeterSlot {
    /// Counts one answer: `status`, its error `code` (None for a success), its latency.
    pub fn record(&self, route: MeteredRoute, status: u16, code: Option<&str>, elapsed_us: u64) {
        let item = &self.meter.items[self.item].1;
        if let Some(code) = code {
            if let Some(index) = ERROR_CODES.iter().position(|known| *known == code) {
                item.refusals[index].fetch_add(1, Ordering::Relaxed);
            }
        } else if route == MeteredRoute::Purchase && status == 201 {
            item.orders.fetch_add(1, Ordering::Relaxed);
        }
        self.meter.latency_us[latency_bucket(elapsed_us)].fetch_add(1, Ordering::Relaxed);
    }
}

/// The bucket of a latency: four per octave (the octave's top two bits below its leading
/// one), so a bucket is at most 19% wide.
fn latency_bucket(elapsed_us: u64) -> usize {
    let us = elapsed_us.max(1);
    let octave = 63 - us.leading_zeros() as usize;
    let quarter = if octave >= 2 {
        ((us >> (octave - 2)) & 3) as usize
    } else {
        ((us << (2 - octave)) & 3) as usize
    };
    (octave * 4 + quarter).min(LATENCY_BUCKETS - 1)
}

/// The upper bound of a bucket, in microseconds.
fn bucket_upper_us(bucket: usize) -> f64 {
    let octave = bucket / 4;
    let quarter = bucket % 4;
    // 2^octave * (1 + (quarter + 1) / 4): the start of the next bucket.
    2f64.powi(i32::try_from(octave).unwrap_or(i32::MAX)) * (1.0 + (quarter as f64 + 1.0) / 4.0)
}

/// What happened between two readings of one meter.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    /// Per item: orders per second, and refusals per second by code (codes with none left
    /// out).
    pub items: Vec<(f64, Vec<(&'static str, f64)>)>,
    /// p99 of the answers between the readings, in milliseconds; None when there were none.
    pub latency_p99_ms: Option<f64>,
}

/// Below this, an interval is too short to give a rate (the first event comes at once): its
/// counts are shown as if over this long, so one stray order is not thousands a second.
const RATE_INTERVAL_MIN_S: f64 = 0.5;

/// The rates from `before` to `after`, `elapsed_s` apart (pure: the watcher's arithmetic).
pub fn rates(before: &MeterReading, after: &MeterReading, elapsed_s: f64) -> Rates {
    let elapsed_s = elapsed_s.max(RATE_INTERVAL_MIN_S);
    let per_s = |n: u64| n as f64 / elapsed_s;
    let items = after
        .items
        .iter()
        .zip(&before.items)
        .map(|((orders, refusals), (orders_before, refusals_before))| {
            let by_code = ERROR_CODES
                .iter()
                .zip(refusals.iter().zip(refusals_before))
                .filter_map(|(code, (n, n_before))| {
                    let delta = n.saturating_sub(*n_before);
                    (delta > 0).then(|| (*code, per_s(delta)))
                })
                .collect();
            (per_s(orders.saturating_sub(*orders_before)), by_code)
        })
        .collect();
    let latency: Vec<u64> = after
        .latency_us
        .iter()
        .zip(&before.latency_us)
        .map(|(n, n_before)| n.saturating_sub(*n_before))
        .collect();
    Rates {
        items,
        latency_p99_ms: p99_ms(&latency),
    }
}

/// The 99th percentile of a bucketed count, as its bucket's upper bound in milliseconds.
fn p99_ms(buckets: &[u64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    // The smallest bucket at or below which at least 99% of the answers fall.
    let wanted = total - total / 100;
    let mut seen = 0;
    for (bucket, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= wanted {
            return Some(bucket_upper_us(bucket) / 1000.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skus(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn nothing_is_metered_until_somebody_watches() {
        let board: &'static LiveBoard = Box::leak(Box::default());
        assert!(board.slot("/promotions/p1/items/a/purchase").is_none());
        let watch = board.watch("p1", &skus(&["a", "b"]));
        assert!(board.slot("/promotions/p1/items/b/token").is_some());
        assert!(board.slot("/promotions/p1/items/zz/token").is_none());
        assert!(board.slot("/promotions/p2/items/a/token").is_none());
        drop(watch);
        assert!(board.slot("/promotions/p1/items/a/purchase").is_none());
        assert_eq!(board.watched.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_promotion_stays_metered_while_any_watcher_is_left() {
        let board: &'static LiveBoard = Box::leak(Box::default());
        let first = board.watch("p1", &skus(&["a"]));
        let second = board.watch("p1", &skus(&["a"]));
        drop(first);
        let slot = board
            .slot("/promotions/p1/items/a/purchase")
            .expect("still watched");
        slot.record(MeteredRoute::Purchase, 201, None, 100);
        assert_eq!(second.read().items[0].0, 1);
    }

    #[test]
    fn orders_refusals_and_latency_become_rates() {
        let board: &'static LiveBoard = Box::leak(Box::default());
        let watch = board.watch("p1", &skus(&["a"]));
        let before = watch.read();
        let slot = board
            .slot("/promotions/p1/items/a/purchase")
            .expect("watched");
        for _ in 0..10 {
            slot.record(MeteredRoute::Purchase, 201, None, 1_000);
        }
        // A repeated request_id (200) is not a new order; a token is not an order.
        slot.record(MeteredRoute::Purchase, 200, None, 1_000);
        slot.record(MeteredRoute::Token, 200, None, 1_000);
        for _ in 0..4 {
            slot.record(MeteredRoute::Purchase, 409, Some("sold_out"), 1_000);
        }
        let rates = rates(&before, &watch.read(), 2.0);
        assert_eq!(rates.items[0].0, 5.0);
        assert_eq!(rates.items[0].1, vec![("sold_out", 2.0)]);
        let p99 = rates.latency_p99_ms.expect("answers were timed");
        assert!(
            (1.0..=1.25).contains(&p99),
            "p99 {p99} ms for answers of 1 ms"
        );
    }

    #[test]
    fn an_interval_too_short_for_a_rate_does_not_inflate_it() {
        let board: &'static LiveBoard = Box::leak(Box::default());
        let watch = board.watch("p1", &skus(&["a"]));
        let before = watch.read();
        let slot = board
            .slot("/promotions/p1/items/a/purchase")
            .expect("watched");
        slot.record(MeteredRoute::Purchase, 201, None, 100);
        let rates = rates(&before, &watch.read(), 0.001);
        assert_eq!(
            rates.items[0].0, 2.0,
            "one order over at least half a second"
        );
    }

    #[test]
    fn no_answers_no_p99() {
        let board: &'static LiveBoard = Box::leak(Box::default());
        let watch = board.watch("p1", &skus(&["a"]));
        let reading = watch.read();
        assert_eq!(rates(&reading, &reading, 1.0).latency_p99_ms, None);
    }

    #[test]
    fn the_p99_is_the_slow_tail() {
        let mut buckets = vec![0u64; LATENCY_BUCKETS];
        buckets[latency_bucket(100)] = 98;
        buckets[latency_bucket(50_000)] = 2;
        let p99 = p99_ms(&buckets).expect("counted");
        assert!((50.0..63.0).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn buckets_grow_with_latency_and_bound_it() {
        let mut last = 0;
        for us in [1u64, 2, 3, 5, 8, 100, 1_000, 65_000, 10_000_000] {
            let bucket = latency_bucket(us);
            assert!(bucket >= last, "{us} us");
            assert!(
                bucket_upper_us(bucket) > us as f64,
                "{us} us under its bucket's bound"
            );
            last = bucket;
        }
    }
}
