//! `seckill-load`: plays a scenario against a seckill server and checks the invariants;
//! `compare` plays it against seckill and the Redis + Lua baseline side by side; `soak`
//! storms a seckill server it starts with refusals and checks that its memory stays bounded;
//! `bots` lets a bot farm and people compete for one item with the checks against bots off
//! and on, and reports who got the stock.
//!
//! Exit codes: 0 every check passed, 1 a check failed, 2 the run itself could not happen
//! (bad scenario file, server would not start, ...).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand};
use seckill_scenarios::bots::{self, BotsOptions, Mode};
use seckill_scenarios::client::{Api, Credentials};
use seckill_scenarios::cluster::{run_cluster, ClusterOptions};
use seckill_scenarios::compare::{self, CompareOptions, Pairing};
use seckill_scenarios::report::{chart_svg, Report};
use seckill_scenarios::run::{run_scenario, RunOptions, Target};
use seckill_scenarios::scenario::{AuthMode, Scenario};
use seckill_scenarios::server::{Durability, ServerKind, ServerSpec, SpawnedServer};
use seckill_scenarios::soak::{self, SoakOptions, SHOPPERS_DEFAULT, SHOPPERS_MAX};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Plays flash-sale scenarios against seckill and checks the invariants"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Play one scenario against a running server (--url) or one the runner starts (--spawn).
    Run(RunArgs),
    /// Play scenarios against seckill and the Redis + Lua baseline, side by side.
    Compare(CompareArgs),
    /// Storm a seckill server it starts with refused shoppers; fail if its memory grows.
    Soak(SoakArgs),
    /// A bot farm and people compete for one item, with the checks against bots off and on.
    Bots(BotsArgs),
    /// A sale on a cluster of seckill nodes it starts (NATS and PostgreSQL given), the
    /// connections spread over the nodes; optionally kill -9 of one node mid-sale.
    Cluster(ClusterArgs),
}

#[derive(Debug, Args)]
struct ClusterArgs {
    /// The seckill binary; every node is started from it (--auth header, loopback).
    #[arg(long)]
    spawn: PathBuf,
    /// Nodes to start.
    #[arg(long, default_value_t = 3, value_parser = bounded(2, 16))]
    nodes: u64,
    /// The NATS servers (comma-separated `nats://` URLs, nats-server 2.11 or later).
    #[arg(long, env = "SECKILL_TEST_NATS_URLS")]
    nats: String,
    /// The PostgreSQL every node writes to.
    #[arg(long, env = "SECKILL_TEST_DATABASE_URL")]
    database_url: String,
    #[arg(long, default_value_t = 16, value_parser = bounded(1, 4096))]
    partitions: u64,
    #[arg(long, default_value_t = 3, value_parser = bounded(1, 600))]
    lease_ttl_s: u64,
    /// Requests in flight at once, spread over the nodes.
    #[arg(long, default_value_t = 64, value_parser = bounded(1, 4096))]
    connections: u64,
    #[arg(long, default_value_t = 20, value_parser = bounded(1, 3600))]
    duration_s: u64,
    /// kill -9 of the last node this many seconds into the sale (0: no fault).
    #[arg(long, default_value_t = 0)]
    kill_at_s: u64,
    /// Items of the promotion (spread over the partitions).
    #[arg(long, default_value_t = 32, value_parser = bounded(1, 1000))]
    items: u64,
    #[command(flatten)]
    keys: Keys,
}

/// Who the runner speaks as (and what a spawned server is started with).
#[derive(Debug, Args)]
struct Keys {
    /// Operator key the server was (or will be) started with.
    #[arg(
        long,
        env = "SECKILL_ADMIN_KEY",
        default_value = "seckill-load-admin-key"
    )]
    admin_key: String,
    /// HS256 secret for shopper JWTs (`--auth jwt`).
    #[arg(
        long,
        env = "SECKILL_USER_SECRET",
        default_value = "seckill-load-user-secret"
    )]
    user_secret: String,
}

impl Keys {
    fn credentials(&self, auth: AuthMode) -> Credentials {
        Credentials {
            admin_key: self.admin_key.clone(),
            auth,
            user_secret: self.user_secret.clone(),
        }
    }
}

/// How a seckill server the runner starts itself is started.
#[derive(Debug, Args)]
struct ServerOptions {
    /// `--durability` for a spawned server.
    #[arg(long, value_enum, default_value = "sync")]
    durability: Durability,
    /// Extra argument for a spawned server (repeat), e.g. --server-arg=--shards --server-arg=2.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

impl ServerOptions {
    fn spec(&self, binary: &Path, credentials: Credentials) -> ServerSpec {
        ServerSpec {
            binary: binary.to_path_buf(),
            kind: ServerKind::Seckill {
                durability: self.durability,
            },
            credentials,
            extra_args: self.server_args.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct Common {
    /// Multiply every wave's shopper count (and open-loop rate) by this.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Replace the scenario's seed (to replay a failing run, pass the seed it printed).
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    keys: Keys,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the throughput-over-time chart (SVG) here.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Never draw a progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    scenario: PathBuf,
    /// A running server, e.g. http://127.0.0.1:8080.
    #[arg(long, conflicts_with = "spawn")]
    url: Option<String>,
    /// Start this seckill binary in a temporary data directory on a free port.
    #[arg(long)]
    spawn: Option<PathBuf>,
    /// Shopper auth; defaults to the scenario's `auth`.
    #[arg(long, value_enum)]
    auth: Option<AuthMode>,
    #[command(flatten)]
    server: ServerOptions,
    /// The SQLite orders file to compare with the engine (found by itself with --spawn).
    #[arg(long)]
    sqlite: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Scenario files (flash-100 and hot-sku are the ones the baseline serves).
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// The seckill binary.
    #[arg(long)]
    seckill: PathBuf,
    /// The seckill-baseline binary (default: next to this one, where
    /// `cargo build -p seckill-baseline` puts it).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The Redis behind the baseline (its persistence settings are changed for the run
    /// and restored afterwards).
    #[arg(
        long,
        env = "SECKILL_TEST_REDIS_URL",
        default_value = seckill_baseline::REDIS_URL_DEFAULT
    )]
    redis_url: String,
    /// Which pairings to play (default both).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "durable,memory"
    )]
    pairings: Vec<Pairing>,
    /// Requests redis-benchmark sends per pairing.
    #[arg(long, default_value_t = compare::BENCH_REQUESTS)]
    bench_requests: u64,
    /// Extra argument for the seckill servers (repeat).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Runs of each system per scenario and pairing (alternating); the table shows medians.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// The seckill binary; the soak starts it itself (--auth header, loopback, temporary
    /// data directory) to read its memory from /proc/<pid>/status.
    #[arg(long)]
    spawn: PathBuf,
    /// Distinct shoppers in each phase (sold-out, ended, rate-limited).
    #[arg(long, default_value_t = SHOPPERS_DEFAULT, value_parser = bounded(1, SHOPPERS_MAX))]
    shoppers: u64,
    /// Requests in flight at once (keep-alive connections).
    #[arg(long, default_value_t = 64, value_parser = bounded(1, 4096))]
    concurrency: u64,
    /// Fail when the server's RSS at the end of the storm is more than this above its RSS
    /// at the start.
    #[arg(long, default_value_t = soak::MAX_GROWTH_MIB_DEFAULT)]
    max_growth_mib: u64,
    /// Stop the storm after this many seconds (the soak then fails as incomplete).
    #[arg(long, default_value_t = 1800, value_parser = bounded(1, 86_400))]
    max_duration_s: u64,
    /// Milliseconds between two readings of the server's RSS.
    #[arg(long, default_value_t = 250, value_parser = bounded(10, 60_000))]
    sample_ms: u64,
    /// Write the soak report (with every RSS sample) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    server: ServerOptions,
    #[command(flatten)]
    keys: Keys,
}

#[derive(Debug, Args)]
struct BotsArgs {
    /// The seckill binary; started afresh for every mode (--auth header, the runner as
    /// trusted proxy, loopback, temporary data directory).
    #[arg(long)]
    spawn: PathBuf,
    /// The modes to compare, in this order: off, limit (per-address limit), pow (proof of
    /// work), pow+limit (both).
    #[arg(long, value_delimiter = ',', default_value = "off,limit,pow,pow+limit")]
    modes: Vec<Mode>,
    /// Shopper ids of the bot farm.
    #[arg(long, default_value_t = bots::DEFAULT_BOTS, value_parser = bounded(1, bots::BOTS_MAX))]
    bots: u64,
    /// Client addresses (machines) of the farm; its ids are spread over them.
    #[arg(long, default_value_t = bots::DEFAULT_BOT_ADDRESSES,
          value_parser = bounded(1, bots::BOT_ADDRESSES_MAX))]
    bot_addresses: u64,
    /// The farm's requests in flight at once.
    #[arg(long, default_value_t = bots::DEFAULT_BOT_CONCURRENCY,
          value_parser = bounded(1, bots::BOTS_MAX))]
    bot_concurrency: u64,
    /// Bots wait Retry-After on 429 instead of trying again at once.
    #[arg(long)]
    bots_heed_retry_after: bool,
    /// People, one id and one address each.
    #[arg(long, default_value_t = bots::DEFAULT_PEOPLE, value_parser = bounded(1, bots::PEOPLE_MAX))]
    people: u64,
    /// Each person starts at a random moment (seeded) within this many ms of the start.
    #[arg(long, default_value_t = bots::DEFAULT_PEOPLE_REACTION_MS, value_parser = bounded(0, 60_000))]
    people_reaction_ms: u64,
    /// Units of the item (per_user_limit 1).
    #[arg(long, default_value_t = bots::DEFAULT_STOCK, value_parser = bounded(1, 1_000_000_000))]
    stock: u64,
    /// Leading zero bits of a proof of work (the server's own default is 20; see the README).
    #[arg(long, default_value_t = u64::from(bots::DEFAULT_POW_DIFFICULTY_BITS),
          value_parser = bounded(1, u64::from(seckill_scenarios::pow::DIFFICULTY_BITS_MAX)))]
    pow_difficulty_bits: u64,
    /// `[rate_limit.ip] per_s` in the limit modes.
    #[arg(long, default_value_t = bots::DEFAULT_IP_PER_S, value_parser = bounded(1, 1_000_000))]
    ip_per_s: u64,
    /// `[rate_limit.ip] burst` in the limit modes.
    #[arg(long, default_value_t = bots::DEFAULT_IP_BURST, value_parser = bounded(1, 1_000_000))]
    ip_burst: u64,
    /// A mode's sale stops after this many seconds even if the item has not sold out.
    #[arg(long, default_value_t = bots::DEFAULT_MODE_TIMEOUT_S, value_parser = bounded(1, 3_600))]
    mode_timeout_s: u64,
    /// Seeds the people's arrival times.
    #[arg(long, default_value_t = bots::DEFAULT_SEED)]
    seed: u64,
    /// Fail unless people get a larger share of the stock with pow+limit than with off.
    #[arg(long)]
    expect_people_gain: bool,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    server: ServerOptions,
    #[command(flatten)]
    keys: Keys,
}

impl BotsArgs {
    fn options(&self) -> BotsOptions {
        BotsOptions {
            modes: self.modes.clone(),
            bots: self.bots,
            bot_addresses: self.bot_addresses,
            bot_concurrency: self.bot_concurrency,
            bots_heed_retry_after: self.bots_heed_retry_after,
            people: self.people,
            people_reaction_ms: self.people_reaction_ms,
            stock: self.stock,
            // Bounded by its parser to DIFFICULTY_BITS_MAX, well within u32.
            pow_difficulty_bits: self.pow_difficulty_bits as u32,
            ip_per_s: self.ip_per_s,
            ip_burst: self.ip_burst,
            mode_timeout_s: self.mode_timeout_s,
            seed: self.seed,
            expect_people_gain: self.expect_people_gain,
        }
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The parser of a whole-number flag that must lie in `min..=max`.
fn bounded(min: u64, max: u64) -> RangedU64ValueParser {
    clap::value_parser!(u64).range(min..=max)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => run(args).await,
        Command::Compare(args) => run_compare(args).await,
        Command::Soak(args) => run_soak(args).await,
        Command::Bots(args) => run_bots(args).await,
        Command::Cluster(args) => run_cluster_sale(args).await,
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("seckill-load: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run_cluster_sale(args: ClusterArgs) -> Result<bool> {
    // Each bounded by its parser.
    let options = ClusterOptions {
        binary: args.spawn,
        credentials: args.keys.credentials(AuthMode::Header),
        nodes: args.nodes as usize,
        nats_urls: args.nats,
        database_url: args.database_url,
        partitions: args.partitions as u32,
        lease_ttl_s: args.lease_ttl_s,
        connections: args.connections as usize,
        duration: Duration::from_secs(args.duration_s),
        kill_at: (args.kill_at_s > 0).then(|| Duration::from_secs(args.kill_at_s)),
        items: args.items as usize,
    };
    let report = run_cluster(&options).await?;
    report.print();
    Ok(report.per_node.iter().any(|node| node.created > 0))
}

fn load_scenario(path: &Path, common: &Common) -> Result<Scenario> {
    let mut scenario = Scenario::load(path)?;
    if let Some(seed) = common.seed {
        scenario.seed = seed;
    }
    Ok(scenario.scaled(common.scale))
}

fn run_options(common: &Common) -> RunOptions {
    RunOptions {
        scale: common.scale,
        progress: !common.no_progress && std::env::var_os("CI").is_none(),
        quiet: false,
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("serialising the report")?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn write_outputs(common: &Common, json: &impl serde::Serialize, svg: Option<String>) -> Result<()> {
    if let Some(path) = &common.json {
        write_json(path, json)?;
    }
    if let (Some(path), Some(svg)) = (&common.chart, svg) {
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn run(args: RunArgs) -> Result<bool> {
    let scenario = load_scenario(&args.scenario, &args.common)?;
    let auth = args.auth.unwrap_or(scenario.auth);
    let credentials = args.common.keys.credentials(auth);
    let options = run_options(&args.common);
    let mut target = match (&args.url, &args.spawn) {
        (Some(url), _) => Target {
            api: Api::new(url, credentials, 1024),
            server: None,
            label: url.clone(),
            sqlite_path: args.sqlite.clone(),
        },
        (None, Some(binary)) => {
            let spec = args.server.spec(binary, credentials.clone());
            let server = SpawnedServer::start(spec.clone()).await?;
            eprintln!(
                "started {} at {} (data {})",
                spec.label(),
                server.url(),
                server.data_dir().display()
            );
            Target {
                api: Api::new(&server.url(), credentials, 1024),
                label: spec.label(),
                sqlite_path: args.sqlite.clone().or_else(|| server.sqlite_path()),
                server: Some(server),
            }
        }
        (None, None) => anyhow::bail!("give --url of a running server or --spawn PATH_TO_SECKILL"),
    };
    let result = run_scenario(&scenario, &mut target, &options).await;
    if let Some(server) = target.server.as_mut() {
        let status = server.stop().await?;
        let keep = !matches!(&result, Ok(report) if report.passed);
        if keep {
            eprintln!(
                "server stopped ({status}); data and log kept in {}",
                server.keep_files().display()
            );
        }
    }
    let report: Report =
        result.with_context(|| format!("scenario {} (seed {})", scenario.name, scenario.seed))?;
    print!("{}", report.to_text());
    let svg = chart_svg(
        &format!("{}: {}", report.scenario, report.target),
        &[(report.target.as_str(), &report.measurements)],
    );
    write_outputs(&args.common, &report, Some(svg))?;
    Ok(report.passed)
}

/// `--baseline`, or `seckill-baseline` next to this executable.
fn baseline_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let me = std::env::current_exe().context("locating seckill-load")?;
    let sibling = me.with_file_name("seckill-baseline");
    if !sibling.exists() {
        anyhow::bail!(
            "{} not found: build it with `cargo build -p seckill-baseline` or pass --baseline",
            sibling.display()
        );
    }
    Ok(sibling)
}

async fn run_compare(args: CompareArgs) -> Result<bool> {
    let scenarios = args
        .scenarios
        .iter()
        .map(|path| load_scenario(path, &args.common))
        .collect::<Result<Vec<_>>>()?;
    let options = CompareOptions {
        scenarios,
        seckill: args.seckill.clone(),
        baseline: baseline_binary(args.baseline.as_deref())?,
        redis_url: args.redis_url.clone(),
        pairings: args.pairings.clone(),
        run: run_options(&args.common),
        credentials: args.common.keys.credentials(AuthMode::Header),
        seckill_args: args.server_args.clone(),
        bench_requests: args.bench_requests,
        repeat: args.repeat,
    };
    let comparison = compare::compare(&options).await?;
    for row in &comparison.rows {
        print!("{}", row.baseline.to_text());
        print!("{}", row.seckill.to_text());
    }
    println!();
    print!("{}", comparison.to_text());
    // One chart per (scenario, pairing), named after --chart: out.svg -> out-hot-sku-durable.svg.
    if let Some(chart) = &args.common.chart {
        let stem = chart
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "compare".into());
        for row in &comparison.rows {
            let pairing = format!("{:?}", row.pairing).to_lowercase();
            let path = chart.with_file_name(format!("{stem}-{}-{pairing}.svg", row.scenario));
            let svg = chart_svg(
                &format!("{} ({pairing})", row.scenario),
                &[
                    ("seckill", &row.seckill.measurements),
                    ("redis+lua", &row.baseline.measurements),
                ],
            );
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    write_outputs(&args.common, &comparison, None)?;
    Ok(comparison.all_passed())
}

async fn run_soak(args: SoakArgs) -> Result<bool> {
    let options = SoakOptions {
        shoppers: args.shoppers,
        concurrency: args.concurrency as usize,
        max_growth_mib: args.max_growth_mib,
        max_duration: Duration::from_secs(args.max_duration_s),
        sample_interval: Duration::from_millis(args.sample_ms),
    };
    let credentials = args.keys.credentials(AuthMode::Header);
    let spec = args.server.spec(&args.spawn, credentials);
    let report = soak::soak(spec, &options).await?;
    print!("{}", report.to_text());
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(report.passed)
}

async fn run_bots(args: BotsArgs) -> Result<bool> {
    let options = args.options();
    let credentials = args.keys.credentials(AuthMode::Header);
    let spec = args.server.spec(&args.spawn, credentials);
    let report = bots::bots(spec, &options).await?;
    print!("{}", report.to_text());
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(report.passed)
}
