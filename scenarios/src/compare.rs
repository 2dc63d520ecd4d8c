//! `seckill-load compare`: the same scenario, the same runner, the same run, against seckill
//! and against the Redis + Lua baseline, in two fair pairings:
//! - durable: Redis with `appendonly yes` + `appendfsync always` vs seckill `--durability sync`;
//! - memory: Redis without persistence vs seckill `--durability async`.
//!
//! Redis's persistence settings are changed with CONFIG SET for the run and restored after.
//! redis-benchmark runs the purchase script alone (EVALSHA) for the raw figure without HTTP.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use redis::aio::MultiplexedConnection;
use seckill_baseline::{delete_promotion_keys, key_prefix, PURCHASE_LUA};
use serde::{Deserialize, Serialize};

use crate::client::{Api, Credentials};
use crate::report::Report;
use crate::run::{run_scenario, RunOptions, Target};
use crate::scenario::{AuthMode, Scenario};
use crate::server::{Durability, ServerKind, ServerSpec, SpawnedServer};

/// Requests redis-benchmark sends per pairing.
pub const BENCH_REQUESTS: u64 = 200_000;
/// Connections of redis-benchmark (about what the baseline's multiplexed connection sees).
const BENCH_CLIENTS: u32 = 50;

/// Which persistence the two systems run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Pairing {
    /// Redis appendfsync always vs seckill durability sync.
    Durable,
    /// Redis without persistence vs seckill durability async.
    Memory,
}

impl Pairing {
    fn seckill_durability(self) -> Durability {
        match self {
            Pairing::Durable => Durability::Sync,
            Pairing::Memory => Durability::Async,
        }
    }

    /// The pairing as the table names it.
    fn label(self) -> &'static str {
        match self {
            Pairing::Durable => "durable (sync / appendfsync always)",
            Pairing::Memory => "memory (async / no persistence)",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Pairing::Durable => "durable: seckill sync vs redis appendfsync always",
            Pairing::Memory => "memory: seckill async vs redis no persistence",
        }
    }
}

/// What `compare` needs.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub scenarios: Vec<Scenario>,
    pub seckill: PathBuf,
    pub baseline: PathBuf,
    pub redis_url: String,
    pub pairings: Vec<Pairing>,
    pub run: RunOptions,
    pub credentials: Credentials,
    pub seckill_args: Vec<String>,
    pub bench_requests: u64,
    /// Runs of each system per (scenario, pairing), alternating which goes first; the table
    /// shows medians. The machine is shared and noisy: one run proves little.
    pub repeat: u32,
}

/// The headline figures of one run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunFigures {
    pub requests_per_s: f64,
    pub orders_accepted_per_s: f64,
    pub passed: bool,
}

impl RunFigures {
    fn of(report: &Report) -> RunFigures {
        RunFigures {
            requests_per_s: report.measurements.requests_per_s,
            orders_accepted_per_s: report.measurements.orders_accepted_per_s,
            passed: report.passed,
        }
    }
}

/// One scenario under one pairing, both systems, over `--repeat` alternating runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareRow {
    pub scenario: String,
    pub pairing: Pairing,
    /// The run with the median requests/s (its latencies are the ones shown).
    pub seckill: Report,
    pub baseline: Report,
    pub seckill_runs: Vec<RunFigures>,
    pub baseline_runs: Vec<RunFigures>,
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The report whose requests/s is the median one.
fn median_report(mut reports: Vec<Report>) -> Option<Report> {
    reports.sort_by(|a, b| {
        a.measurements
            .requests_per_s
            .total_cmp(&b.measurements.requests_per_s)
    });
    let middle = reports.len() / 2;
    reports.into_iter().nth(middle)
}

impl CompareRow {
    fn median_of(runs: &[RunFigures], pick: fn(&RunFigures) -> f64) -> f64 {
        median(&runs.iter().map(pick).collect::<Vec<_>>())
    }

    /// Median (seckill, baseline) of a figure over the repetitions.
    pub fn medians(&self, pick: fn(&RunFigures) -> f64) -> (f64, f64) {
        (
            Self::median_of(&self.seckill_runs, pick),
            Self::median_of(&self.baseline_runs, pick),
        )
    }

    pub fn seckill_passed(&self) -> bool {
        self.seckill_runs.iter().all(|run| run.passed)
    }

    pub fn baseline_passed(&self) -> bool {
        self.baseline_runs.iter().all(|run| run.passed)
    }
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub rows: Vec<CompareRow>,
    /// Pairing -> redis-benchmark EVALSHA requests/s of the purchase script.
    pub redis_benchmark_per_s: Vec<(Pairing, Option<f64>)>,
}

/// Redis persistence settings, to put back afterwards.
#[derive(Debug, Clone)]
struct RedisPersistence {
    appendonly: String,
    appendfsync: String,
    save: String,
}

async fn config_get(redis: &mut MultiplexedConnection, name: &str) -> Result<String> {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(redis)
        .await
        .with_context(|| format!("CONFIG GET {name}"))?;
    Ok(pair.get(1).cloned().unwrap_or_default())
}

async fn config_set(redis: &mut MultiplexedConnection, name: &str, value: &str) -> Result<()> {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async::<()>(redis)
        .await
        .with_context(|| format!("CONFIG SET {name} {value}"))
}

async fn persistence(redis: &mut MultiplexedConnection) -> Result<RedisPersistence> {
    Ok(RedisPersistence {
        appendonly: config_get(redis, "appendonly").await?,
        appendfsync: config_get(redis, "appendfsync").await?,
        save: config_get(redis, "save").await?,
    })
}

/// Waits for the AOF rewrite that turning `appendonly` on starts.
async fn wait_aof_settled(redis: &mut MultiplexedConnection) -> Result<()> {
    for _ in 0..600 {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(redis)
            .await
            .context("INFO persistence")?;
        let busy = info.lines().any(|line| {
            line.trim() == "aof_rewrite_in_progress:1" || line.trim() == "aof_rewrite_scheduled:1"
        });
        if !busy {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!("redis AOF rewrite did not finish in 60 s")
}

async fn apply_pairing(redis: &mut MultiplexedConnection, pairing: Pairing) -> Result<()> {
    match pairing {
        Pairing::Durable => {
            config_set(redis, "appendfsync", "always").await?;
            config_set(redis, "appendonly", "yes").await?;
            wait_aof_settled(redis).await
        }
        Pairing::Memory => {
            config_set(redis, "appendonly", "no").await?;
            config_set(redis, "save", "").await
        }
    }
}

async fn restore(redis: &mut MultiplexedConnection, saved: &RedisPersistence) -> Result<()> {
    config_set(redis, "appendfsync", &saved.appendfsync).await?;
    config_set(redis, "appendonly", &saved.appendonly).await?;
    config_set(redis, "save", &saved.save).await?;
    wait_aof_settled(redis).await
}

/// `redis://host:port[/db]` -> (host, port).
fn host_port(redis_url: &str) -> (String, u16) {
    let rest = redis_url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379");
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    match rest.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().unwrap_or(6379)),
        None => (rest.to_owned(), 6379),
    }
}

/// The number before "requests per second" in redis-benchmark's `-q` output.
pub fn parse_bench_output(output: &str) -> Option<f64> {
    output.lines().rev().find_map(|line| {
        let before = line.split("requests per second").next()?;
        if before.len() == line.len() {
            return None;
        }
        before.split_whitespace().last()?.parse().ok()
    })
}

/// Runs redis-benchmark on the purchase script (no token, a huge stock, random users).
async fn redis_benchmark(
    redis: &mut MultiplexedConnection,
    redis_url: &str,
    requests: u64,
) -> Result<Option<f64>> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(PURCHASE_LUA)
        .query_async(redis)
        .await
        .context("SCRIPT LOAD")?;
    let prefix = key_prefix("bench");
    redis::cmd("SET")
        .arg(format!("{prefix}stock:x"))
        .arg(1_000_000_000u64)
        .query_async::<()>(redis)
        .await?;
    let (host, port) = host_port(redis_url);
    let output = tokio::process::Command::new("redis-benchmark")
        .args(["-h", &host, "-p", &port.to_string(), "-q"])
        .args([
            "-n",
            &requests.to_string(),
            "-c",
            &BENCH_CLIENTS.to_string(),
        ])
        .args(["-r", "100000000", "EVALSHA", &sha, "6"])
        .arg(format!("{prefix}stock:x"))
        .arg(format!("{prefix}buyers:x"))
        .arg(format!("{prefix}tok:x"))
        .arg(format!("{prefix}req:__rand_int__"))
        .arg(format!("{prefix}seq"))
        .arg(format!("{prefix}queue"))
        .args(["user__rand_int__", "1", "1000000000", ""])
        .arg(format!("{prefix}order:"))
        .args(["bench:", "bench", "x", "100"])
        .args(["2026-01-01T00:00:00Z", "2026-01-01T00:15:00Z"])
        .output()
        .await;
    let figure = match output {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout).replace('\r', "\n");
            parse_bench_output(&text)
        }
        Err(error) => {
            eprintln!("  redis-benchmark not run: {error}");
            None
        }
    };
    delete_promotion_keys(redis, "bench").await?;
    Ok(figure)
}

async fn play(
    spec: ServerSpec,
    scenario: &Scenario,
    options: &RunOptions,
    redis: Option<&mut MultiplexedConnection>,
) -> Result<Report> {
    let mut server = SpawnedServer::start(spec.clone()).await?;
    let mut target = Target {
        api: Api::new(&server.url(), spec.credentials.clone(), 1024),
        label: spec.label(),
        sqlite_path: server.sqlite_path(),
        server: None,
    };
    target.server = Some(server);
    let result = run_scenario(scenario, &mut target, options).await;
    server = target.server.take().context("server handed back")?;
    let _ = server.stop().await;
    if let Ok(report) = &result {
        if !report.passed {
            eprintln!(
                "  {} failed its checks; files kept in {}",
                spec.label(),
                server.keep_files().display()
            );
        }
        if let Some(redis) = redis {
            delete_promotion_keys(redis, &report.promotion_id).await?;
        }
    }
    result
}

/// Runs every scenario under every pairing against both systems.
pub async fn compare(options: &CompareOptions) -> Result<Comparison> {
    let client = redis::Client::open(options.redis_url.as_str()).context("redis url")?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {}", options.redis_url))?;
    let saved = persistence(&mut redis).await?;
    let outcome = compare_inner(options, &mut redis).await;
    let restored = restore(&mut redis, &saved).await;
    let comparison = outcome?;
    restored.context("restoring redis persistence settings")?;
    Ok(comparison)
}

async fn compare_inner(
    options: &CompareOptions,
    redis: &mut MultiplexedConnection,
) -> Result<Comparison> {
    let mut credentials = options.credentials.clone();
    // The baseline trusts X-User-Id only; both systems get the same shoppers.
    credentials.auth = AuthMode::Header;
    let mut rows = Vec::new();
    let mut benches = Vec::new();
    for pairing in &options.pairings {
        eprintln!("== {}", pairing.describe());
        apply_pairing(redis, *pairing).await?;
        let bench = redis_benchmark(redis, &options.redis_url, options.bench_requests).await?;
        benches.push((*pairing, bench));
        for scenario in &options.scenarios {
            let baseline_spec = ServerSpec {
                binary: options.baseline.clone(),
                kind: ServerKind::Baseline {
                    redis_url: options.redis_url.clone(),
                },
                credentials: credentials.clone(),
                extra_args: Vec::new(),
            };
            let seckill_spec = ServerSpec {
                binary: options.seckill.clone(),
                kind: ServerKind::Seckill {
                    durability: pairing.seckill_durability(),
                },
                credentials: credentials.clone(),
                extra_args: options.seckill_args.clone(),
            };
            let mut seckill_reports = Vec::new();
            let mut baseline_reports = Vec::new();
            for round in 0..options.repeat.max(1) {
                let baseline_first = round.is_multiple_of(2);
                for system in 0..2 {
                    if (system == 0) == baseline_first {
                        eprintln!(
                            "  {} run {}: redis+lua baseline...",
                            scenario.name,
                            round + 1
                        );
                        let spec = baseline_spec.clone();
                        baseline_reports
                            .push(play(spec, scenario, &options.run, Some(&mut *redis)).await?);
                    } else {
                        eprintln!("  {} run {}: seckill...", scenario.name, round + 1);
                        let spec = seckill_spec.clone();
                        seckill_reports.push(play(spec, scenario, &options.run, None).await?);
                    }
                }
            }
            let seckill_runs = seckill_reports.iter().map(RunFigures::of).collect();
            let baseline_runs = baseline_reports.iter().map(RunFigures::of).collect();
            rows.push(CompareRow {
                scenario: scenario.name.clone(),
                pairing: *pairing,
                seckill: median_report(seckill_reports).context("a seckill run")?,
                baseline: median_report(baseline_reports).context("a baseline run")?,
                seckill_runs,
                baseline_runs,
            });
        }
    }
    Ok(Comparison {
        rows,
        redis_benchmark_per_s: benches,
    })
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}x", ours / theirs)
    } else {
        "n/a".into()
    }
}

/// A median figure of both systems and their ratio, one table line.
fn write_figure(out: &mut String, row: &CompareRow, name: &str, pick: fn(&RunFigures) -> f64) {
    let (ours, theirs) = row.medians(pick);
    let _ = writeln!(
        out,
        "| {} | {} | {} | {:.0} | {:.0} | {} |",
        row.scenario,
        row.pairing.label(),
        name,
        ours,
        theirs,
        ratio(ours, theirs)
    );
}

fn orders_per_s(run: &RunFigures) -> f64 {
    run.orders_accepted_per_s
}

fn requests_per_s(run: &RunFigures) -> f64 {
    run.requests_per_s
}

fn pass_or_fail(passed: bool) -> &'static str {
    if passed {
        "pass"
    } else {
        "FAIL"
    }
}

/// One (scenario, pairing): median rates with their ratios, latencies of the median runs,
/// and the invariant verdicts.
fn write_row(out: &mut String, row: &CompareRow) {
    let pairing = row.pairing.label();
    write_figure(out, row, "accepted orders/s", orders_per_s);
    write_figure(out, row, "requests/s", requests_per_s);
    let (ours, theirs) = (&row.seckill.measurements, &row.baseline.measurements);
    for route in ["token", "purchase"] {
        if let (Some(a), Some(b)) = (ours.routes.get(route), theirs.routes.get(route)) {
            let _ = writeln!(
                out,
                "| {} | {} | {} p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | |",
                row.scenario, pairing, route, a.p50_ms, a.p99_ms, b.p50_ms, b.p99_ms
            );
        }
    }
    let _ = writeln!(
        out,
        "| {} | {} | invariants | {} | {} | |",
        row.scenario,
        pairing,
        pass_or_fail(row.seckill_passed()),
        pass_or_fail(row.baseline_passed())
    );
}

/// Every run's requests/s / accepted orders/s, so the reader sees the spread.
fn write_runs(out: &mut String, row: &CompareRow) {
    let list = |runs: &[RunFigures]| {
        runs.iter()
            .map(|run| format!("{:.0}/{:.0}", run.requests_per_s, run.orders_accepted_per_s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "\nruns of {} ({:?}), requests/s / accepted orders/s: seckill [{}], redis+lua [{}]",
        row.scenario,
        row.pairing,
        list(&row.seckill_runs),
        list(&row.baseline_runs)
    );
}

impl Comparison {
    /// The side-by-side table (markdown, so it pastes into the README as is): measured
    /// figures and seckill / baseline ratios; what a ratio should reach is the reader's call.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| scenario | pairing | figure | seckill | redis+lua | ratio |\n|---|---|---|---:|---:|---:|"
        );
        for row in &self.rows {
            write_row(&mut out, row);
        }
        for row in &self.rows {
            write_runs(&mut out, row);
        }
        for (pairing, figure) in &self.redis_benchmark_per_s {
            let _ = writeln!(
                out,
                "\nredis-benchmark EVALSHA purchase script alone ({:?}, {} clients): {}",
                pairing,
                BENCH_CLIENTS,
                figure.map_or("not measured".to_owned(), |f| format!("{f:.0} calls/s"))
            );
        }
        out
    }

    /// True when every run on both sides passed its invariant checks.
    pub fn all_passed(&self) -> bool {
        self.rows
            .iter()
            .all(|row| row.seckill_passed() && row.baseline_passed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn bench_output_parses_in_quiet_and_progress_forms() {
        let quiet = "EVALSHA abc 6 k1: 41237.11 requests per second, p50=0.879 msec\n";
        assert_eq!(parse_bench_output(quiet), Some(41237.11));
        let noisy = "EVALSHA abc: rps=40000.0 (overall: 39000.0) avg_msec=1.1\nEVALSHA abc: 39876.50 requests per second\n";
        assert_eq!(parse_bench_output(noisy), Some(39876.50));
        assert_eq!(parse_bench_output("ERR unknown command"), None);
    }

    #[test]
    fn redis_urls_split_into_host_and_port() {
        assert_eq!(
            host_port("redis://127.0.0.1:6379"),
            ("127.0.0.1".into(), 6379)
        );
        assert_eq!(host_port("redis://localhost/0"), ("localhost".into(), 6379));
        assert_eq!(host_port("redis://:pw@h:6380/1"), ("h".into(), 6380));
    }
}
