//! `seckill-load soak`: api.md "Bounded memory". A storm of distinct shoppers who are all
//! refused must leave the server's resident memory within a fixed bound.
//!
//! The runner starts `seckill serve --auth header` itself (loopback port, temporary data
//! directory) with a token rate limit of one per second and shopper, prepares a sold-out
//! item (stock 1, bought out) and the item of an ended promotion (created, started,
//! stopped), then plays three phases one after the other, each with `shoppers` distinct
//! shoppers (a fresh `X-User-Id` each):
//! - `sold-out`: one request per shopper for the sold-out item, token and purchase in turn;
//! - `ended`: the same for the ended promotion's item;
//! - `rate-limited`: two token requests per shopper for the sold-out item, the second one
//!   past the shopper's limit (429 `rate_limited`).
//!
//! It reads the server's VmRSS from `/proc/<pid>/status` when the storm starts and every
//! `sample_interval`, and fails when the RSS at the end of the storm is more than
//! `max_growth_mib` above the RSS at its start, when the server died, when a phase did not
//! draw the refusal it is meant to, or when the storm hit its time bound.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;

use crate::client::{Api, Method, StatusCode};
use crate::report::{write_refusals, write_route_table, Measurements, Recorder};
use crate::run::{admin_post, create_and_start, window};
use crate::scenario::AuthMode;
use crate::server::{ServerSpec, SpawnedServer};

/// Distinct shoppers per phase by default.
pub const SHOPPERS_DEFAULT: u64 = 2_000_000;
/// Most shoppers per phase (user ids have room for 8 digits).
pub const SHOPPERS_MAX: u64 = 99_999_999;
/// The default bound on RSS growth from the start of the storm to its end.
pub const MAX_GROWTH_MIB_DEFAULT: u64 = 64;

const SOLD_OUT_PROMOTION: &str = "soak-sold-out";
const SOLD_OUT_SKU: &str = "soak-gone";
const ENDED_PROMOTION: &str = "soak-ended";
const ENDED_SKU: &str = "soak-over";
/// The server's config file: one token per second and shopper, no burst, so that a
/// shopper's second token request is over the limit.
const TOKEN_LIMIT_TOML: &str = "[rate_limit.token]\nper_s = 1\nburst = 1\n";
/// Token requests per shopper in the rate-limited phase: the first passes the limiter.
const LIMITED_REQUESTS: u64 = 2;
/// A phase misses its aim when fewer than this share of its requests meant to be refused
/// with its code were (a soak that never reaches the path it tests proves nothing).
const AIM_SHARE_MIN: f64 = 0.9;
/// How often a progress line goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What `soak` needs besides the server.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Distinct shoppers in each phase.
    pub shoppers: u64,
    /// Requests in flight at once (keep-alive connections).
    pub concurrency: usize,
    pub max_growth_mib: u64,
    /// The storm stops after this long (the soak then fails as incomplete).
    pub max_duration: Duration,
    pub sample_interval: Duration,
}

/// One part of the storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    SoldOut,
    Ended,
    RateLimited,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::SoldOut, Phase::Ended, Phase::RateLimited];

    pub fn name(self) -> &'static str {
        match self {
            Phase::SoldOut => "sold-out",
            Phase::Ended => "ended",
            Phase::RateLimited => "rate-limited",
        }
    }

    /// The refusal code the phase is meant to draw, and how many of it per shopper.
    fn aim(self) -> (&'static str, u64) {
        match self {
            Phase::SoldOut => ("sold_out", 1),
            Phase::Ended => ("ended", 1),
            Phase::RateLimited => ("rate_limited", LIMITED_REQUESTS - 1),
        }
    }

    /// Shopper `index` of this phase; ids of different phases never meet (`sa-00000042`).
    fn user(self, index: u64) -> String {
        let letter = match self {
            Phase::SoldOut => 'a',
            Phase::Ended => 'b',
            Phase::RateLimited => 'c',
        };
        format!("s{letter}-{index:08}")
    }
}

/// What one phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: Phase,
    /// Shoppers played (fewer than asked when the time bound cut the storm short).
    pub shoppers: u64,
    /// The refusal the phase is meant to draw, and how many answers carried it.
    pub aimed_code: String,
    pub aimed_answers: u64,
    #[serde(flatten)]
    pub measurements: Measurements,
}

impl PhaseReport {
    /// Why the phase did not exercise what it is meant to, if it did not.
    fn missed_aim(&self) -> Option<String> {
        let (code, per_shopper) = self.phase.aim();
        let expected = self.shoppers * per_shopper;
        if self.aimed_answers as f64 >= expected as f64 * AIM_SHARE_MIN {
            return None;
        }
        Some(format!(
            "phase {}: {} {code} answers for {} shoppers, expected about {expected}",
            self.phase.name(),
            self.aimed_answers,
            self.shoppers
        ))
    }

    fn write(&self, out: &mut String) {
        let m = &self.measurements;
        let _ = writeln!(
            out,
            "phase {}: {} shoppers, {} answers in {:.1} s ({:.0}/s), {} of them {}",
            self.phase.name(),
            self.shoppers,
            m.requests,
            m.load_duration_s,
            m.requests_per_s,
            self.aimed_answers,
            self.aimed_code
        );
        write_route_table(out, &m.routes);
        write_refusals(out, m);
    }
}

/// One reading of the server's resident memory, `t_ms` after the storm started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RssSample {
    pub t_ms: u64,
    pub rss_kib: u64,
}

/// The whole soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub target: String,
    pub pid: u32,
    pub shoppers_per_phase: u64,
    pub concurrency: usize,
    pub phases: Vec<PhaseReport>,
    /// Every request sent, answered or not.
    pub requests_sent: u64,
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub rss_start_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_end_mib: f64,
    pub rss_growth_mib: f64,
    pub max_growth_mib: u64,
    pub rss_samples: Vec<RssSample>,
    pub failures: Vec<String>,
    pub passed: bool,
}

impl SoakReport {
    /// The terminal rendering.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "soak against {} (pid {}): {} distinct shoppers per phase, {} connections",
            self.target, self.pid, self.shoppers_per_phase, self.concurrency
        );
        for phase in &self.phases {
            phase.write(&mut out);
        }
        let _ = writeln!(
            out,
            "total: {} requests sent in {:.1} s ({:.0} requests/s)",
            self.requests_sent, self.duration_s, self.requests_per_s
        );
        let _ = writeln!(
            out,
            "RSS: start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB, growth {:+.1} MiB (bound {} MiB), {} samples",
            self.rss_start_mib,
            self.rss_peak_mib,
            self.rss_end_mib,
            self.rss_growth_mib,
            self.max_growth_mib,
            self.rss_samples.len()
        );
        for failure in &self.failures {
            let _ = writeln!(out, "  [FAIL] {failure}");
        }
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "verdict: {verdict}");
        out
    }
}

/// `VmRSS` of process `pid` in KiB; `None` when it is gone (a zombie has no `VmRSS`).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss_kib(&status)
}

/// The `VmRSS:   12345 kB` line of a `/proc/<pid>/status` text.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.split_whitespace().next()?.parse().ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A route of a prepared item: its name in the report and its path.
#[derive(Debug)]
struct Route {
    name: &'static str,
    path: String,
}

/// The token and purchase routes of one item.
#[derive(Debug)]
struct ItemRoutes {
    token: Route,
    purchase: Route,
}

impl ItemRoutes {
    fn of(promotion_id: &str, sku: &str) -> ItemRoutes {
        let item = format!("/promotions/{promotion_id}/items/{sku}");
        ItemRoutes {
            token: Route {
                name: "token",
                path: format!("{item}/token"),
            },
            purchase: Route {
                name: "purchase",
                path: format!("{item}/purchase"),
            },
        }
    }
}

/// What every worker of the storm shares.
#[derive(Debug)]
struct SoakContext {
    api: Api,
    sold_out: ItemRoutes,
    ended: ItemRoutes,
    shoppers: u64,
    concurrency: usize,
    deadline: Instant,
    /// Requests sent so far, for the progress lines.
    sent: AtomicU64,
}

impl SoakContext {
    fn item(&self, phase: Phase) -> &ItemRoutes {
        match phase {
            Phase::Ended => &self.ended,
            Phase::SoldOut | Phase::RateLimited => &self.sold_out,
        }
    }

    /// One POST as a shopper, recorded; no retry (a request that got no answer counts as
    /// such in the report).
    async fn send(
        &self,
        recorder: &mut Recorder,
        route: &Route,
        credential: &(&'static str, String),
        body: Option<&serde_json::Value>,
    ) {
        let started = Instant::now();
        let result = self
            .api
            .shopper(Method::POST, &route.path, credential, body)
            .await;
        recorder.record(route.name, started, &result);
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts the server, plays the storm, stops the server (SIGTERM to its pid, SIGKILL after a
/// grace period), and keeps its data directory and log when the soak failed.
pub async fn soak(mut spec: ServerSpec, options: &SoakOptions) -> Result<SoakReport> {
    let config_dir = tempfile::Builder::new()
        .prefix("seckill-soak-")
        .tempdir()
        .context("creating a temporary directory")?;
    let config_path = config_dir.path().join("seckill.toml");
    std::fs::write(&config_path, TOKEN_LIMIT_TOML).context("writing the server's config")?;
    spec.credentials.auth = AuthMode::Header;
    spec.extra_args.push("--config".into());
    spec.extra_args.push(config_path.display().to_string());
    let mut server = SpawnedServer::start(spec).await?;
    eprintln!(
        "started {} at {} (pid {}, log {})",
        server.spec().label(),
        server.url(),
        server.pid().unwrap_or_default(),
        server.log_path().display()
    );
    let outcome = storm(&server, options).await;
    let status = match server.stop().await {
        Ok(status) => status,
        Err(error) => format!("{error:#}"),
    };
    if matches!(&outcome, Ok(report) if report.passed) {
        eprintln!("server stopped ({status})");
    } else {
        eprintln!(
            "server stopped ({status}); data and log kept in {}",
            server.keep_files().display()
        );
    }
    outcome
}

/// The two items the storm is refused on: a stock-1 item bought out by one shopper, and
/// the item of a promotion that was started and stopped.
async fn prepare(api: &Api) -> Result<(ItemRoutes, ItemRoutes)> {
    create_item(api, SOLD_OUT_PROMOTION, SOLD_OUT_SKU, 1).await?;
    let sold_out = ItemRoutes::of(SOLD_OUT_PROMOTION, SOLD_OUT_SKU);
    let buyer = api.shopper_header("soak-buyer");
    let body = json!({"request_id": "soak-buy-out"});
    let reply = api
        .shopper(Method::POST, &sold_out.purchase.path, &buyer, Some(&body))
        .await
        .context("buying the stock-1 item out")?;
    if reply.status != StatusCode::CREATED {
        bail!(
            "buying the stock-1 item out: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    create_item(api, ENDED_PROMOTION, ENDED_SKU, 1000).await?;
    let stop = format!("/admin/promotions/{ENDED_PROMOTION}/stop");
    let what = format!("stopping promotion {ENDED_PROMOTION}");
    admin_post(api, &stop, None, &what).await?;
    Ok((sold_out, ItemRoutes::of(ENDED_PROMOTION, ENDED_SKU)))
}

/// A live promotion of one item that needs no token.
async fn create_item(api: &Api, promotion_id: &str, sku: &str, stock: u64) -> Result<()> {
    let (starts_at, ends_at) = window(3600);
    let body = json!({
        "id": promotion_id, "name": promotion_id, "starts_at": starts_at, "ends_at": ends_at,
        "require_token": false, "items": [{"sku": sku, "stock": stock, "price_cents": 100}],
    });
    create_and_start(api, promotion_id, &body).await
}

/// Everything the storm measured, before it is judged.
#[derive(Debug)]
struct Storm {
    pid: u32,
    rss_start_kib: u64,
    /// `None` when the server was gone by the end.
    rss_end_kib: Option<u64>,
    trace: RssTrace,
    phases: Vec<PhaseReport>,
    duration: Duration,
    sent: u64,
}

/// Prepares the items, samples the RSS while the three phases play, and judges.
async fn storm(server: &SpawnedServer, options: &SoakOptions) -> Result<SoakReport> {
    let pid = server.pid().context("the server has no process id")?;
    let credentials = server.spec().credentials.clone();
    let api = Api::new(&server.url(), credentials, options.concurrency);
    let (sold_out, ended) = prepare(&api).await?;
    // Connections first, so that their buffers are in the starting RSS.
    api.warm(options.concurrency).await;
    let Some(rss_start_kib) = vm_rss_kib(pid) else {
        bail!("cannot read VmRSS from /proc/{pid}/status (the server has exited?)");
    };
    let started = Instant::now();
    let context = Arc::new(SoakContext {
        api,
        sold_out,
        ended,
        shoppers: options.shoppers,
        concurrency: options.concurrency,
        deadline: started + options.max_duration,
        sent: AtomicU64::new(0),
    });
    let (stop, stopped) = oneshot::channel();
    let sampler = Sampler {
        pid,
        interval: options.sample_interval,
        origin: started,
        context: Arc::clone(&context),
    };
    let sampling = tokio::spawn(sampler.run(stopped));
    let mut phases = Vec::new();
    for phase in Phase::ALL {
        phases.push(play_phase(&context, phase).await?);
    }
    let duration = started.elapsed();
    let rss_end_kib = vm_rss_kib(pid);
    let _ = stop.send(());
    let trace = sampling.await.context("the RSS sampler panicked")?;
    let measured = Storm {
        pid,
        rss_start_kib,
        rss_end_kib,
        trace,
        phases,
        duration,
        sent: context.sent.load(Ordering::Relaxed),
    };
    Ok(measured.judge(server.spec().label(), options))
}

/// Plays one phase with `concurrency` workers and merges their measurements.
async fn play_phase(context: &Arc<SoakContext>, phase: Phase) -> Result<PhaseReport> {
    let origin = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..context.concurrency {
        tasks.spawn(phase_worker(
            Arc::clone(context),
            phase,
            Arc::clone(&next),
            origin,
        ));
    }
    let mut recorder = Recorder::new(origin);
    while let Some(joined) = tasks.join_next().await {
        recorder.merge(&joined.context("a soak worker panicked")?);
    }
    let measurements = recorder.summarise(origin.elapsed());
    let (code, _) = phase.aim();
    Ok(PhaseReport {
        phase,
        // Workers that stop at the deadline take no index; the others overshoot by one.
        shoppers: next.load(Ordering::Relaxed).min(context.shoppers),
        aimed_code: code.to_owned(),
        aimed_answers: measurements.refusals.get(code).copied().unwrap_or(0),
        measurements,
    })
}

/// One worker: plays shoppers of `phase` until there are none left or time is up.
async fn phase_worker(
    context: Arc<SoakContext>,
    phase: Phase,
    next: Arc<AtomicU64>,
    origin: Instant,
) -> Recorder {
    let mut recorder = Recorder::new(origin);
    while Instant::now() < context.deadline {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= context.shoppers {
            break;
        }
        play_soak_shopper(&context, phase, index, &mut recorder).await;
    }
    recorder
}

/// One shopper with a user id of its own: one request, or two in the rate-limited phase.
async fn play_soak_shopper(
    context: &SoakContext,
    phase: Phase,
    index: u64,
    recorder: &mut Recorder,
) {
    let shopper = context.api.shopper_header(&phase.user(index));
    let item = context.item(phase);
    if phase == Phase::RateLimited {
        for _ in 0..LIMITED_REQUESTS {
            context.send(recorder, &item.token, &shopper, None).await;
        }
    } else if index.is_multiple_of(2) {
        context.send(recorder, &item.token, &shopper, None).await;
    } else {
        let body = json!({ "request_id": format!("r{index}") });
        context
            .send(recorder, &item.purchase, &shopper, Some(&body))
            .await;
    }
}

/// What the sampler saw after the starting reading.
#[derive(Debug, Default)]
struct RssTrace {
    samples: Vec<RssSample>,
    /// The process had no VmRSS any more (it exited).
    server_gone: bool,
}

/// Reads the server's VmRSS every `interval` until told to stop.
#[derive(Debug)]
struct Sampler {
    pid: u32,
    interval: Duration,
    origin: Instant,
    context: Arc<SoakContext>,
}

impl Sampler {
    async fn run(self, mut stop: oneshot::Receiver<()>) -> RssTrace {
        let mut trace = RssTrace::default();
        let mut printed = Instant::now();
        loop {
            tokio::select! {
                _ = &mut stop => return trace,
                () = tokio::time::sleep(self.interval) => {}
            }
            let Some(rss_kib) = vm_rss_kib(self.pid) else {
                trace.server_gone = true;
                return trace;
            };
            let t_ms = self.origin.elapsed().as_millis() as u64;
            trace.samples.push(RssSample { t_ms, rss_kib });
            if printed.elapsed() >= PROGRESS_EVERY {
                printed = Instant::now();
                self.progress(rss_kib);
            }
        }
    }

    fn progress(&self, rss_kib: u64) {
        eprintln!(
            "  {:.0} s: {} requests sent, RSS {:.1} MiB",
            self.origin.elapsed().as_secs_f64(),
            self.context.sent.load(Ordering::Relaxed),
            mib(rss_kib)
        );
    }
}

impl Storm {
    /// The report, with every reason to fail.
    fn judge(self, target: String, options: &SoakOptions) -> SoakReport {
        let samples = &self.trace.samples;
        // A server that died has no end reading: its last one stands in.
        let end_kib = self.rss_end_kib.or(samples.last().map(|s| s.rss_kib));
        let end_kib = end_kib.unwrap_or(self.rss_start_kib);
        let readings = samples.iter().map(|s| s.rss_kib);
        let peak_kib = readings.fold(self.rss_start_kib.max(end_kib), u64::max);
        let growth_mib = mib(end_kib) - mib(self.rss_start_kib);
        let failures = self.failures(growth_mib, options);
        let passed = failures.is_empty();
        let seconds = self.duration.as_secs_f64().max(1e-9);
        SoakReport {
            target,
            pid: self.pid,
            shoppers_per_phase: options.shoppers,
            concurrency: options.concurrency,
            phases: self.phases,
            requests_sent: self.sent,
            duration_s: seconds,
            requests_per_s: self.sent as f64 / seconds,
            rss_start_mib: mib(self.rss_start_kib),
            rss_peak_mib: mib(peak_kib),
            rss_end_mib: mib(end_kib),
            rss_growth_mib: growth_mib,
            max_growth_mib: options.max_growth_mib,
            rss_samples: self.trace.samples,
            failures,
            passed,
        }
    }

    fn failures(&self, growth_mib: f64, options: &SoakOptions) -> Vec<String> {
        let mut failures = Vec::new();
        if self.trace.server_gone || self.rss_end_kib.is_none() {
            let pid = self.pid;
            failures.push(format!("the server (pid {pid}) exited during the storm"));
        }
        if growth_mib > options.max_growth_mib as f64 {
            failures.push(format!(
                "RSS grew {growth_mib:.1} MiB from the start of the storm to its end, more than \
                 the {} MiB bound: memory grows with refusals",
                options.max_growth_mib
            ));
        }
        let cut_short = self.phases.iter().any(|p| p.shoppers < options.shoppers);
        if cut_short {
            let played: Vec<String> = self
                .phases
                .iter()
                .map(|phase| format!("{} {}", phase.phase.name(), phase.shoppers))
                .collect();
            failures.push(format!(
                "time bound of {} s reached before {} shoppers per phase were played ({})",
                options.max_duration.as_secs(),
                options.shoppers,
                played.join(", ")
            ));
        }
        failures.extend(self.phases.iter().filter_map(PhaseReport::missed_aim));
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_from_a_proc_status_text() {
        let status = "Name:\tseckill\nVmPeak:\t  200000 kB\nVmRSS:\t   51234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss_kib(status), Some(51_234));
        let zombie = "Name:\tzombie\nState:\tZ (zombie)\n";
        assert_eq!(parse_vm_rss_kib(zombie), None);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        let rss = vm_rss_kib(std::process::id()).expect("VmRSS of the test process");
        assert!(rss > 0);
    }

    #[test]
    fn shopper_ids_are_distinct_across_phases_and_valid_identifiers() {
        let ids: Vec<String> = Phase::ALL
            .iter()
            .map(|phase| phase.user(SHOPPERS_MAX))
            .collect();
        assert_eq!(ids, ["sa-99999999", "sb-99999999", "sc-99999999"]);
        assert!(ids.iter().all(|id| crate::scenario::is_identifier(id)));
    }

    /// A storm of three phases that each drew their aim; RSS in MiB.
    fn storm(start_mib: u64, end_mib: Option<u64>, shoppers: u64) -> Storm {
        let origin = Instant::now();
        let phases = Phase::ALL
            .iter()
            .map(|&phase| {
                let (code, per_shopper) = phase.aim();
                PhaseReport {
                    phase,
                    shoppers,
                    aimed_code: code.to_owned(),
                    aimed_answers: shoppers * per_shopper,
                    measurements: Recorder::new(origin).summarise(Duration::from_secs(1)),
                }
            })
            .collect();
        Storm {
            pid: 7,
            rss_start_kib: start_mib * 1024,
            rss_end_kib: end_mib.map(|end| end * 1024),
            trace: RssTrace::default(),
            phases,
            duration: Duration::from_secs(2),
            sent: 4_000,
        }
    }

    fn judged(storm: Storm) -> SoakReport {
        let options = SoakOptions {
            shoppers: 1_000,
            concurrency: 4,
            max_growth_mib: 64,
            max_duration: Duration::from_secs(60),
            sample_interval: Duration::from_millis(100),
        };
        storm.judge("test".into(), &options)
    }

    #[test]
    fn growth_within_the_bound_passes_and_beyond_it_fails() {
        let fine = judged(storm(100, Some(150), 1_000));
        assert!(fine.passed, "{}", fine.to_text());
        assert_eq!(fine.rss_growth_mib, 50.0);
        assert_eq!(fine.requests_per_s, 2_000.0);
        let grown = judged(storm(100, Some(165), 1_000));
        assert!(!grown.passed);
        let text = grown.to_text();
        assert!(text.contains("RSS grew 65.0 MiB"), "{text}");
    }

    #[test]
    fn a_dead_server_a_short_storm_and_a_missed_aim_fail() {
        let dead = judged(storm(100, None, 1_000));
        assert!(dead.failures.iter().any(|f| f.contains("exited")));
        let short = judged(storm(100, Some(100), 10));
        assert!(short.failures.iter().any(|f| f.contains("time bound")));
        let mut missed = storm(100, Some(100), 1_000);
        missed.phases[2].aimed_answers = 10;
        let missed = judged(missed);
        assert_eq!(missed.failures.len(), 1, "{:?}", missed.failures);
        assert!(missed.failures[0].starts_with("phase rate-limited"));
    }
}
