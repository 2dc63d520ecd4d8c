//! What a run measured: per-route latency (hdrhistogram), refusals by code, throughput over
//! time, and the invariant verdicts; printed as text, written as JSON and as an SVG chart.
//!
//! Each worker records into its own [`Recorder`] (no shared lock on the hot path); the
//! recorders are merged once the wave is over.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::check::Verdict;
use crate::client::{Reply, TransportError};

/// Width of one timeline bucket.
pub const BUCKET_MS: u64 = 100;
/// Latencies above this are clamped (a request times out well before).
const LATENCY_US_MAX: u64 = 120_000_000;

/// One route's counts and latencies.
#[derive(Debug, Clone)]
struct RouteStats {
    latency_us: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
}

impl RouteStats {
    fn new() -> RouteStats {
        RouteStats {
            // 3 significant figures up to 120 s: ~30 KiB per route and worker.
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant histogram bounds are valid"),
            statuses: BTreeMap::new(),
        }
    }
}

/// One worker's measurements.
#[derive(Debug, Clone)]
pub struct Recorder {
    origin: Instant,
    routes: BTreeMap<&'static str, RouteStats>,
    refusals: BTreeMap<String, u64>,
    transport_errors: BTreeMap<String, u64>,
    /// Per [`BUCKET_MS`] since `origin`: (requests answered, orders accepted).
    timeline: Vec<(u64, u64)>,
}

impl Recorder {
    pub fn new(origin: Instant) -> Recorder {
        Recorder {
            origin,
            routes: BTreeMap::new(),
            refusals: BTreeMap::new(),
            transport_errors: BTreeMap::new(),
            timeline: Vec::new(),
        }
    }

    fn bucket(&mut self, at: Instant) -> &mut (u64, u64) {
        let index =
            (at.saturating_duration_since(self.origin).as_millis() as u64 / BUCKET_MS) as usize;
        if self.timeline.len() <= index {
            self.timeline.resize(index + 1, (0, 0));
        }
        &mut self.timeline[index]
    }

    /// Records one request of `route` that started at `started` (for open-loop load: when it
    /// was meant to start, so that queueing in the runner counts as latency).
    pub fn record(
        &mut self,
        route: &'static str,
        started: Instant,
        result: &Result<Reply, TransportError>,
    ) {
        let now = Instant::now();
        match result {
            Ok(reply) => {
                let latency_us = (now.saturating_duration_since(started).as_micros() as u64)
                    .clamp(1, LATENCY_US_MAX);
                let stats = self.routes.entry(route).or_insert_with(RouteStats::new);
                // Clamped into the histogram's bounds above, so recording cannot fail.
                let _ = stats.latency_us.record(latency_us);
                *stats.statuses.entry(reply.status.as_u16()).or_insert(0) += 1;
                if !reply.status.is_success() {
                    *self.refusals.entry(reply.error_code()).or_insert(0) += 1;
                }
                self.bucket(now).0 += 1;
            }
            Err(error) => {
                let kind = match error {
                    TransportError::Timeout => "timeout",
                    TransportError::Connection(_) => "connection",
                };
                *self
                    .transport_errors
                    .entry(format!("{route}:{kind}"))
                    .or_insert(0) += 1;
            }
        }
    }

    /// Requests that got no answer so far.
    pub fn transport_error_count(&self) -> u64 {
        self.transport_errors.values().sum()
    }

    /// Counts one order answered 201.
    pub fn order_accepted(&mut self) {
        self.bucket(Instant::now()).1 += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (route, stats) in &other.routes {
            let mine = self.routes.entry(route).or_insert_with(RouteStats::new);
            let _ = mine.latency_us.add(&stats.latency_us);
            for (status, count) in &stats.statuses {
                *mine.statuses.entry(*status).or_insert(0) += count;
            }
        }
        for (code, count) in &other.refusals {
            *self.refusals.entry(code.clone()).or_insert(0) += count;
        }
        for (kind, count) in &other.transport_errors {
            *self.transport_errors.entry(kind.clone()).or_insert(0) += count;
        }
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), (0, 0));
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
    }

    /// Builds the report body; `load_duration` is the time spent playing waves (waits for
    /// expiry and restarts excluded), the denominator of every rate.
    pub fn summarise(&self, load_duration: Duration) -> Measurements {
        let seconds = load_duration.as_secs_f64().max(1e-9);
        let mut routes = BTreeMap::new();
        let mut requests = 0;
        for (route, stats) in &self.routes {
            let count = stats.latency_us.len();
            requests += count;
            let percentile_ms =
                |quantile: f64| stats.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
            routes.insert(
                (*route).to_owned(),
                RouteReport {
                    requests: count,
                    requests_per_s: count as f64 / seconds,
                    p50_ms: percentile_ms(0.5),
                    p99_ms: percentile_ms(0.99),
                    p999_ms: percentile_ms(0.999),
                    max_ms: stats.latency_us.max() as f64 / 1000.0,
                    statuses: stats
                        .statuses
                        .iter()
                        .map(|(status, count)| (status.to_string(), *count))
                        .collect(),
                },
            );
        }
        let orders_accepted: u64 = self.timeline.iter().map(|bucket| bucket.1).sum();
        Measurements {
            load_duration_s: seconds,
            requests,
            requests_per_s: requests as f64 / seconds,
            orders_accepted,
            orders_accepted_per_s: orders_accepted as f64 / seconds,
            routes,
            refusals: self.refusals.clone(),
            transport_errors: self.transport_errors.clone(),
            timeline: self
                .timeline
                .iter()
                .enumerate()
                .map(|(index, (requests, orders))| TimelinePoint {
                    t_ms: index as u64 * BUCKET_MS,
                    requests: *requests,
                    orders_accepted: *orders,
                })
                .collect(),
        }
    }
}

/// Latency and counts of one route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteReport {
    pub requests: u64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// HTTP status -> count.
    pub statuses: BTreeMap<String, u64>,
}

/// One timeline bucket ([`BUCKET_MS`] wide) starting `t_ms` after the run began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub t_ms: u64,
    pub requests: u64,
    pub orders_accepted: u64,
}

/// The measured part of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurements {
    pub load_duration_s: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub orders_accepted: u64,
    pub orders_accepted_per_s: f64,
    pub routes: BTreeMap<String, RouteReport>,
    /// api.md error code -> count, over every non-2xx answer.
    pub refusals: BTreeMap<String, u64>,
    /// `route:kind` -> requests that got no HTTP answer at all.
    pub transport_errors: BTreeMap<String, u64>,
    pub timeline: Vec<TimelinePoint>,
}

/// Everything one run of one scenario produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    /// What was driven, e.g. `seckill (durability sync)` or a URL.
    pub target: String,
    pub scale: f64,
    pub promotion_id: String,
    pub restarts: u32,
    #[serde(flatten)]
    pub measurements: Measurements,
    pub checks: Vec<Verdict>,
    pub passed: bool,
}

/// `key:count` pairs, space separated (`sold_out:12 ended:3`).
pub fn counts_text(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(key, count)| format!("{key}:{count}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line per route: requests, rate, latency percentiles and HTTP statuses.
pub fn write_route_table(out: &mut String, routes: &BTreeMap<String, RouteReport>) {
    let _ = writeln!(
        out,
        "  {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  statuses",
        "route", "requests", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for (route, stats) in routes {
        let _ = writeln!(
            out,
            "  {:<10} {:>9} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {}",
            route,
            stats.requests,
            stats.requests_per_s,
            stats.p50_ms,
            stats.p99_ms,
            stats.p999_ms,
            stats.max_ms,
            counts_text(&stats.statuses)
        );
    }
}

/// The refusals by api.md code and the requests that got no answer, where there are any.
pub fn write_refusals(out: &mut String, m: &Measurements) {
    if !m.refusals.is_empty() {
        let _ = writeln!(out, "  refusals: {}", counts_text(&m.refusals));
    }
    if !m.transport_errors.is_empty() {
        let _ = writeln!(out, "  no answer: {}", counts_text(&m.transport_errors));
    }
}

impl Report {
    /// The terminal rendering.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_summary(&mut out);
        write_route_table(&mut out, &self.measurements.routes);
        write_refusals(&mut out, &self.measurements);
        self.write_verdicts(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) {
        let m = &self.measurements;
        let _ = writeln!(
            out,
            "scenario {} (seed {}, scale {}) against {}; promotion {}",
            self.scenario, self.seed, self.scale, self.target, self.promotion_id
        );
        let _ = writeln!(
            out,
            "  load {:.2} s: {} requests ({:.0}/s), {} orders accepted ({:.0}/s){}",
            m.load_duration_s,
            m.requests,
            m.requests_per_s,
            m.orders_accepted,
            m.orders_accepted_per_s,
            if self.restarts > 0 {
                format!(", {} server restart(s)", self.restarts)
            } else {
                String::new()
            }
        );
    }

    fn write_verdicts(&self, out: &mut String) {
        for verdict in &self.checks {
            let _ = writeln!(
                out,
                "  [{}] {}: {}",
                if verdict.passed { " ok " } else { "FAIL" },
                verdict.name,
                verdict.detail
            );
        }
        let _ = writeln!(
            out,
            "  verdict: {}",
            if self.passed {
                "PASS".to_owned()
            } else {
                format!("FAIL (replay with seed {})", self.seed)
            }
        );
    }
}

const CHART_WIDTH: f64 = 900.0;
const CHART_HEIGHT: f64 = 360.0;
const CHART_LEFT: f64 = 70.0;
const CHART_RIGHT: f64 = 20.0;
const CHART_TOP: f64 = 40.0;
const CHART_BOTTOM: f64 = 50.0;
const PLOT_WIDTH: f64 = CHART_WIDTH - CHART_LEFT - CHART_RIGHT;
const PLOT_HEIGHT: f64 = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM;
const CHART_COLOURS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];
/// At most about this many points per line: timeline buckets are merged to fit.
const CHART_POINTS_MAX: usize = 150;

/// A throughput-over-time chart (requests/s and accepted orders/s), hand-written SVG.
pub fn chart_svg(title: &str, series: &[(&str, &Measurements)]) -> String {
    let chart = Chart::new(series);
    let mut svg = String::new();
    chart.write_frame(&mut svg, title);
    for (index, (label, values)) in chart.lines.iter().enumerate() {
        chart.write_line(&mut svg, index, label, values);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The chart's lines (two per series) and scales.
#[derive(Debug)]
struct Chart {
    lines: Vec<(String, Vec<f64>)>,
    /// Seconds per point (timeline buckets merged into one).
    step_s: f64,
    y_max: f64,
    x_max_s: f64,
}

/// Per-second rates of one figure of a timeline, `merge` buckets per point.
fn rates(timeline: &[TimelinePoint], merge: usize, pick: fn(&TimelinePoint) -> u64) -> Vec<f64> {
    let per_second = 1000.0 / (BUCKET_MS as f64 * merge as f64);
    timeline
        .chunks(merge)
        .map(|chunk| chunk.iter().map(pick).sum::<u64>() as f64 * per_second)
        .collect()
}

impl Chart {
    fn new(series: &[(&str, &Measurements)]) -> Chart {
        let bucket_count = series
            .iter()
            .map(|(_, m)| m.timeline.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let merge = bucket_count.div_ceil(CHART_POINTS_MAX).max(1);
        let mut lines = Vec::new();
        for (label, m) in series {
            let requests = rates(&m.timeline, merge, |point| point.requests);
            let orders = rates(&m.timeline, merge, |point| point.orders_accepted);
            lines.push((format!("{label} requests/s"), requests));
            lines.push((format!("{label} orders accepted/s"), orders));
        }
        let y_max = lines
            .iter()
            .flat_map(|(_, values)| values.iter().copied())
            .fold(1.0_f64, f64::max)
            * 1.1;
        Chart {
            lines,
            step_s: BUCKET_MS as f64 * merge as f64 / 1000.0,
            y_max,
            x_max_s: (bucket_count as f64 * BUCKET_MS as f64 / 1000.0).max(0.1),
        }
    }

    fn x(&self, seconds: f64) -> f64 {
        CHART_LEFT + seconds / self.x_max_s * PLOT_WIDTH
    }

    fn y(&self, value: f64) -> f64 {
        CHART_TOP + PLOT_HEIGHT - value / self.y_max * PLOT_HEIGHT
    }

    /// The SVG head, the title, the grid with its ticks and the axis label.
    fn write_frame(&self, svg: &mut String, title: &str) {
        let (width, height, left) = (CHART_WIDTH, CHART_HEIGHT, CHART_LEFT);
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            svg,
            r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-size="15">{}</text>"#,
            escape(title)
        );
        for tick in 0..=4 {
            let value = self.y_max / 4.0 * tick as f64;
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}</text>"##,
                CHART_WIDTH - CHART_RIGHT,
                self.y(value),
                self.y(value),
                CHART_LEFT - 6.0,
                self.y(value) + 4.0,
                value
            );
        }
        for tick in 0..=5 {
            let seconds = self.x_max_s / 5.0 * tick as f64;
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{:.1} s</text>"#,
                self.x(seconds),
                CHART_HEIGHT - CHART_BOTTOM + 18.0,
                seconds
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since start (per second rates)</text>"#,
            CHART_LEFT + PLOT_WIDTH / 2.0,
            CHART_HEIGHT - 10.0
        );
    }

    /// One line and its legend entry; orders lines (odd indexes) are dashed.
    fn write_line(&self, svg: &mut String, index: usize, label: &str, values: &[f64]) {
        let colour = CHART_COLOURS[index % CHART_COLOURS.len()];
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let x = self.x((i as f64 + 0.5) * self.step_s);
                format!("{x:.1},{:.1}", self.y(*value))
            })
            .collect();
        let dash = if index % 2 == 1 {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6"{dash} points="{}"/>"#,
            points.join(" ")
        );
        let legend_y = CHART_TOP + 14.0 * index as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{legend_y:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            CHART_WIDTH - CHART_RIGHT - 250.0,
            CHART_WIDTH - CHART_RIGHT - 225.0,
            CHART_WIDTH - CHART_RIGHT - 220.0,
            legend_y + 4.0,
            escape(label)
        );
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;

    fn reply(status: u16, body: &'static str) -> Result<Reply, TransportError> {
        Ok(Reply {
            status: StatusCode::from_u16(status).expect("status"),
            body: Bytes::from_static(body.as_bytes()),
        })
    }

    #[test]
    fn merged_recorders_count_routes_refusals_and_orders() {
        let origin = Instant::now();
        let mut first = Recorder::new(origin);
        let mut second = Recorder::new(origin);
        first.record("purchase", origin, &reply(201, "{}"));
        first.order_accepted();
        second.record(
            "purchase",
            origin,
            &reply(409, r#"{"error":{"code":"sold_out","message":"gone"}}"#),
        );
        second.record("token", origin, &Err(TransportError::Timeout));
        first.merge(&second);
        let m = first.summarise(Duration::from_secs(2));
        assert_eq!(m.requests, 2);
        assert_eq!(m.orders_accepted, 1);
        assert_eq!(m.orders_accepted_per_s, 0.5);
        assert_eq!(m.refusals.get("sold_out"), Some(&1));
        assert_eq!(m.transport_errors.get("token:timeout"), Some(&1));
        let purchase = &m.routes["purchase"];
        assert_eq!(purchase.statuses.get("201"), Some(&1));
        assert_eq!(purchase.statuses.get("409"), Some(&1));
        assert!(purchase.p50_ms <= purchase.p999_ms);
    }

    #[test]
    fn report_text_names_failures_and_the_seed_and_json_round_trips() {
        let origin = Instant::now();
        let mut recorder = Recorder::new(origin);
        recorder.record("token", origin, &reply(200, "{}"));
        let report = Report {
            scenario: "flash-100".into(),
            seed: 77,
            target: "test".into(),
            scale: 1.0,
            promotion_id: "p".into(),
            restarts: 0,
            measurements: recorder.summarise(Duration::from_secs(1)),
            checks: vec![Verdict::fail(
                "no_oversell",
                "sku a: 3 live units > stock 2",
            )],
            passed: false,
        };
        let text = report.to_text();
        assert!(text.contains("FAIL"), "{text}");
        assert!(text.contains("seed 77"), "{text}");
        assert!(text.contains("no_oversell"), "{text}");
        let json = serde_json::to_string(&report).expect("serialises");
        let back: Report = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, report);
    }

    #[test]
    fn chart_is_an_svg_with_one_line_per_series() {
        let origin = Instant::now();
        let mut recorder = Recorder::new(origin);
        recorder.record("token", origin, &reply(200, "{}"));
        let m = recorder.summarise(Duration::from_secs(1));
        let svg = chart_svg("t <1>", &[("seckill", &m), ("baseline", &m)]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("t &lt;1&gt;"));
    }
}
