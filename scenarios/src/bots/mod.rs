//! `seckill-load bots`: a bot farm and people compete for one item, under each setting of
//! the checks of api.md "v2: keeping bots out", and the runner reports who got the stock.
//!
//! For each mode ([`Mode`]: `off`, `limit`, `pow`, `pow+limit`) the runner starts a fresh
//! `seckill serve --auth header --trusted-proxies 127.0.0.1/32` (with `[rate_limit.ip]` in
//! the limit modes), creates one live promotion of one item (`per_user_limit` 1, tokens
//! required, `"human_check": "pow"` in the pow modes), and starts two populations at the
//! same moment:
//! - the farm: `bots` shopper ids spread over `bot_addresses` client addresses, with
//!   `bot_concurrency` requests in flight, trying again at once after a refusal (or after
//!   Retry-After, a knob), each id buying one unit and the farm moving on to its next id.
//!   Every shopper behind one address queues its challenges on that address's one solver
//!   thread: a farm of thousands of ids on a few machines has the CPU of those machines.
//! - people: `people` shoppers, one id and one address each, each starting within a
//!   reaction time, solving their own challenge on a thread of their own (each person's
//!   browser has its own CPU), then asking for a token, then buying; after 429 or a full
//!   token gate they wait Retry-After, and they give up after a minute of clicking.
//!
//! Every solve is real work here, on the same cores as the server: the kernel's fair
//! scheduler gives each solving thread an equal share, so while both populations solve, the
//! farm gets A / (A + P) of the CPU, as A machines against P browsers would; the absolute
//! times stretch by (A + P) / cores. The runner stands in for every client address with
//! `X-Forwarded-For`, which the server takes from its trusted proxy.
//!
//! Afterwards, from the admin stats: the stock balances, nothing is oversold, every unit
//! acknowledged is taken, and every answer is one api.md gives on its route.

mod mode;
mod options;
mod report;
mod shopper;
mod tally;

pub use mode::{Mode, UnknownMode};
pub use options::{
    BotsOptions, OptionsError, BOTS_MAX, BOT_ADDRESSES_MAX, DEFAULT_BOTS, DEFAULT_BOT_ADDRESSES,
    DEFAULT_BOT_CONCURRENCY, DEFAULT_IP_BURST, DEFAULT_IP_PER_S, DEFAULT_MODE_TIMEOUT_S,
    DEFAULT_PEOPLE, DEFAULT_PEOPLE_REACTION_MS, DEFAULT_POW_DIFFICULTY_BITS, DEFAULT_SEED,
    DEFAULT_STOCK, PEOPLE_MAX,
};
pub use report::{BotsReport, ModeReport, PopulationReport, StockStats};

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinSet;

use crate::client::{Api, Method, StatusCode};
use crate::pow::{self, SharedSolver};
use crate::run::{create_and_start, window};
use crate::scenario::AuthMode;
use crate::server::{ServerSpec, SpawnedServer};
use shopper::{play_shopper, Conduct, Ending, ItemPaths, Population, Sale, Shopper, Solver};
use tally::Tally;

/// The runner is the one proxy the server trusts: it stands in for every client address.
const TRUSTED_PROXIES: &str = "127.0.0.1/32";
const SKU: &str = "console";
const PRICE_CENTS: u64 = 49_900;
/// The promotion's window once started; the sale itself ends when the item sells out.
const SALE_WINDOW_S: u64 = 3_600;
/// From the last shopper task spawned to the start, so that every shopper is waiting.
const START_LEAD: Duration = Duration::from_millis(200);
/// What people (and bots that heed it) wait after 429, 503 or `tokens_exhausted`: the
/// Retry-After of every limit this scenario sets (whole seconds, rounded up, at least 1, so
/// 1 for any `per_s` >= 1). The load client does not read answer headers.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Requests one person sends at most: about a minute of clicking once a second.
const PERSON_REQUESTS_MAX: u64 = 60;
/// Hashes of the calibration that tells what a solve costs one thread here.
const CALIBRATION_HASHES: u64 = 1 << 16;

/// Plays every mode of `options` against a fresh server started from `spec` each time.
pub async fn bots(spec: ServerSpec, options: &BotsOptions) -> Result<BotsReport> {
    options.validate()?;
    let hashes_per_s = tokio::task::spawn_blocking(|| pow::hashes_per_s(CALIBRATION_HASHES))
        .await
        .context("the calibration thread panicked")?;
    let arrivals = people_arrivals(options);
    let mut modes = Vec::new();
    for &mode in &options.modes {
        eprintln!(
            "mode {mode}: a fresh server, {} bots, {} people",
            options.bots, options.people
        );
        let report = play_mode(&spec, mode, options, &arrivals)
            .await
            .with_context(|| format!("mode {mode}"))?;
        modes.push(report);
    }
    Ok(BotsReport::new(
        spec.label(),
        options.clone(),
        hashes_per_s,
        modes,
    ))
}

/// When each person starts, after the sale's start: the same in every mode (seeded), so
/// that the modes differ only in their checks.
fn people_arrivals(options: &BotsOptions) -> Vec<Duration> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    (0..options.people)
        .map(|_| Duration::from_millis(rng.random_range(0..=options.people_reaction_ms)))
        .collect()
}

/// One mode on a server of its own, stopped afterwards (its files kept when a check failed).
async fn play_mode(
    spec: &ServerSpec,
    mode: Mode,
    options: &BotsOptions,
    arrivals: &[Duration],
) -> Result<ModeReport> {
    let config_dir = tempfile::Builder::new()
        .prefix("seckill-bots-")
        .tempdir()
        .context("creating a temporary directory")?;
    let spec = mode_spec(spec, mode, options, config_dir.path())?;
    let mut server = SpawnedServer::start(spec).await?;
    let outcome = play_sale(&server, mode, options, arrivals).await;
    let status = match server.stop().await {
        Ok(status) => status,
        Err(error) => format!("{error:#}"),
    };
    if !matches!(&outcome, Ok(report) if report.passed) {
        eprintln!(
            "mode {mode}: server stopped ({status}); data and log kept in {}",
            server.keep_files().display()
        );
    }
    outcome
}

/// The server of one mode: header auth, the runner as trusted proxy, the difficulty, and
/// in the limit modes a config file with `[rate_limit.ip]` (written into `config_dir`).
fn mode_spec(
    spec: &ServerSpec,
    mode: Mode,
    options: &BotsOptions,
    config_dir: &Path,
) -> Result<ServerSpec> {
    let mut spec = spec.clone();
    spec.credentials.auth = AuthMode::Header;
    spec.extra_args.extend([
        "--trusted-proxies".to_owned(),
        TRUSTED_PROXIES.to_owned(),
        "--pow-difficulty-bits".to_owned(),
        options.pow_difficulty_bits.to_string(),
    ]);
    if mode.limit() {
        let path = config_dir.join("seckill.toml");
        std::fs::write(&path, ip_limit_toml(options)).context("writing the server's config")?;
        spec.extra_args.push("--config".to_owned());
        spec.extra_args.push(path.display().to_string());
    }
    Ok(spec)
}

fn ip_limit_toml(options: &BotsOptions) -> String {
    format!(
        "[rate_limit.ip]\nper_s = {}\nburst = {}\n",
        options.ip_per_s, options.ip_burst
    )
}

/// Creates the promotion, lets both populations loose at once, waits for every shopper,
/// and reads the stats.
async fn play_sale(
    server: &SpawnedServer,
    mode: Mode,
    options: &BotsOptions,
    arrivals: &[Duration],
) -> Result<ModeReport> {
    let url = server.url();
    let credentials = server.spec().credentials.clone();
    let admin = Api::new(&url, credentials.clone(), 2);
    let promotion_id = mode.promotion_id();
    let body = promotion_body(mode, &promotion_id, options.stock);
    create_and_start(&admin, &promotion_id, &body).await?;
    // Connections first, so that a burst of connects (a dropped SYN costs 1 s) is not timed
    // as part of the sale.
    let farm_api = Api::new(&url, credentials.clone(), options.bot_concurrency as usize);
    let people_api = Api::new(&url, credentials, options.people as usize);
    farm_api.warm(options.bot_concurrency as usize).await;
    people_api.warm(options.people as usize).await;
    let start = Instant::now() + START_LEAD;
    let sale = Arc::new(Sale {
        mode,
        paths: ItemPaths::of(&promotion_id, SKU),
        start,
        deadline: start + Duration::from_secs(options.mode_timeout_s),
        farm_stop: Arc::new(AtomicBool::new(false)),
    });
    let farm = spawn_farm(&sale, farm_api, options)?;
    let crowd = spawn_people(&sale, people_api, arrivals);
    let bots = gather(farm).await?;
    let people = gather(crowd).await?;
    let wall = start.elapsed();
    let stats = read_stock(&admin, &promotion_id).await?;
    let tallies = (&bots, &people);
    Ok(ModeReport::new(
        mode,
        promotion_id,
        stats,
        tallies,
        wall,
        options,
    ))
}

fn promotion_body(mode: Mode, promotion_id: &str, stock: u64) -> serde_json::Value {
    let (starts_at, ends_at) = window(SALE_WINDOW_S);
    let mut body = json!({
        "id": promotion_id,
        "name": format!("bots vs people, checks {mode}"),
        "starts_at": starts_at,
        "ends_at": ends_at,
        "require_token": true,
        "items": [{"sku": SKU, "stock": stock, "price_cents": PRICE_CENTS, "per_user_limit": 1}],
    });
    if mode.pow() {
        body["human_check"] = json!("pow");
    }
    body
}

/// One farm machine: its address, its share of the ids, and in the pow modes its solver.
#[derive(Debug)]
struct Machine {
    number: u64,
    address: String,
    ids: u64,
    next_id: AtomicU64,
    solver: Option<SharedSolver>,
}

/// The farm's tasks, `bot_concurrency` of them (at least one per machine), round robin
/// over the machines; each plays its machine's next id until the farm stops.
fn spawn_farm(sale: &Arc<Sale>, api: Api, options: &BotsOptions) -> Result<JoinSet<Tally>> {
    let addresses = options.bot_addresses;
    let workers = options.bot_concurrency.max(addresses);
    let queue_max = workers.div_ceil(addresses) as usize;
    let mut machines = Vec::new();
    for number in 0..addresses {
        let solver = if sale.mode.pow() {
            let name = format!("pow-farm-{number}");
            let stop = Arc::clone(&sale.farm_stop);
            Some(SharedSolver::start(&name, queue_max, stop)?)
        } else {
            None
        };
        machines.push(Arc::new(Machine {
            number,
            address: bot_address(number),
            ids: farm_ids(options.bots, addresses, number),
            next_id: AtomicU64::new(0),
            solver,
        }));
    }
    let backoff = if options.bots_heed_retry_after {
        RETRY_AFTER
    } else {
        Duration::ZERO
    };
    let conduct = Conduct {
        backoff,
        requests_max: u64::MAX,
        heeds_farm_stop: true,
    };
    let population = Arc::new(Population { api, conduct });
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        let machine = Arc::clone(&machines[(worker % addresses) as usize]);
        tasks.spawn(bot_worker(
            Arc::clone(sale),
            Arc::clone(&population),
            machine,
        ));
    }
    Ok(tasks)
}

/// One of the farm's request slots: plays its machine's ids one after the other; the first
/// to see the item sold out (or the time bound) stops the whole farm.
async fn bot_worker(sale: Arc<Sale>, population: Arc<Population>, machine: Arc<Machine>) -> Tally {
    let mut tally = Tally::default();
    tokio::time::sleep_until(tokio::time::Instant::from_std(sale.start)).await;
    let solver = machine
        .solver
        .as_ref()
        .map_or(Solver::OwnThread, Solver::Shared);
    while !sale.farm_stop.load(Ordering::Relaxed) {
        let index = machine.next_id.fetch_add(1, Ordering::Relaxed);
        if index >= machine.ids {
            break;
        }
        let shopper = Shopper::new(bot_user(machine.number, index), &machine.address);
        let ending = play_shopper(&sale, &population, &shopper, solver, &mut tally).await;
        if matches!(ending, Ending::SoldOut | Ending::TimeUp) {
            sale.farm_stop.store(true, Ordering::Relaxed);
            break;
        }
    }
    tally
}

/// One task per person, each starting at its arrival.
fn spawn_people(sale: &Arc<Sale>, api: Api, arrivals: &[Duration]) -> JoinSet<Tally> {
    let conduct = Conduct {
        backoff: RETRY_AFTER,
        requests_max: PERSON_REQUESTS_MAX,
        heeds_farm_stop: false,
    };
    let population = Arc::new(Population { api, conduct });
    let mut tasks = JoinSet::new();
    for (index, arrival) in arrivals.iter().enumerate() {
        let shared = Arc::clone(sale);
        let population = Arc::clone(&population);
        let arrives_at = sale.start + *arrival;
        let index = index as u64;
        tasks.spawn(async move {
            let mut tally = Tally::default();
            tokio::time::sleep_until(tokio::time::Instant::from_std(arrives_at)).await;
            let shopper = Shopper::new(person_user(index), &person_address(index));
            let solver = Solver::OwnThread;
            play_shopper(&shared, &population, &shopper, solver, &mut tally).await;
            tally
        });
    }
    tasks
}

async fn gather(mut tasks: JoinSet<Tally>) -> Result<Tally> {
    let mut total = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        total.merge(&joined.context("a shopper task panicked")?);
    }
    Ok(total)
}

/// The item's stats from `GET /admin/promotions/{id}`.
async fn read_stock(admin: &Api, promotion_id: &str) -> Result<StockStats> {
    #[derive(Deserialize)]
    struct Promotion {
        items: Vec<StockStats>,
    }
    let path = format!("/admin/promotions/{promotion_id}");
    let reply = admin
        .admin(Method::GET, &path, None::<&()>)
        .await
        .context("reading the promotion's stats")?;
    if reply.status != StatusCode::OK {
        bail!(
            "GET {path}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    let value: serde_json::Value = reply.json().context("the promotion's stats as JSON")?;
    // Accept the promotion at the top level or wrapped as {"promotion": {...}}.
    let promotion = value.get("promotion").cloned().unwrap_or(value);
    let promotion: Promotion =
        serde_json::from_value(promotion).context("the promotion's stats fields")?;
    promotion
        .items
        .into_iter()
        .next()
        .context("the promotion has no item")
}

/// Ids behind machine `number`: `bots` spread as evenly as they go.
fn farm_ids(bots: u64, addresses: u64, number: u64) -> u64 {
    bots / addresses + u64::from(number < bots % addresses)
}

/// Client addresses in 198.18.0.0/15, the range RFC 2544 sets aside for benchmarks: the
/// farm in 198.18/16, people in 198.19/16.
fn bot_address(number: u64) -> String {
    format!("198.18.{}.{}", number / 256, number % 256)
}

fn person_address(index: u64) -> String {
    format!("198.19.{}.{}", index / 256, index % 256)
}

fn bot_user(machine: u64, index: u64) -> String {
    format!("b{machine:05}-{index:07}")
}

fn person_user(index: u64) -> String {
    format!("p{index:05}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Credentials;
    use crate::scenario::is_identifier;
    use crate::server::{Durability, ServerKind};
    use std::collections::HashSet;

    #[test]
    fn the_farm_spreads_every_id_over_its_machines() {
        for (bots, addresses) in [(5_000, 8), (500, 8), (7, 3), (8, 8)] {
            let per_machine: Vec<u64> = (0..addresses)
                .map(|n| farm_ids(bots, addresses, n))
                .collect();
            assert_eq!(per_machine.iter().sum::<u64>(), bots);
            let (fewest, most) = (per_machine.iter().min(), per_machine.iter().max());
            assert!(most
                .zip(fewest)
                .is_some_and(|(most, fewest)| most - fewest <= 1));
        }
    }

    #[test]
    fn ids_and_addresses_are_distinct_and_valid_up_to_the_bounds() {
        let last_machine = BOT_ADDRESSES_MAX - 1;
        let last_person = PEOPLE_MAX - 1;
        let users = [
            bot_user(0, 0),
            bot_user(last_machine, BOTS_MAX - 1),
            person_user(0),
            person_user(last_person),
        ];
        assert!(users.iter().all(|user| is_identifier(user)), "{users:?}");
        let addresses = [
            bot_address(0),
            bot_address(last_machine),
            person_address(0),
            person_address(last_person),
        ];
        for address in &addresses {
            assert!(address.parse::<std::net::Ipv4Addr>().is_ok(), "{address}");
        }
        let distinct: HashSet<&String> = addresses.iter().collect();
        assert_eq!(distinct.len(), addresses.len());
    }

    #[test]
    fn people_arrive_within_their_reaction_time_the_same_way_in_every_mode() {
        let options = BotsOptions {
            people: 50,
            people_reaction_ms: 300,
            ..BotsOptions::default()
        };
        let arrivals = people_arrivals(&options);
        assert_eq!(arrivals.len(), 50);
        assert!(arrivals.iter().all(|a| *a <= Duration::from_millis(300)));
        assert_eq!(arrivals, people_arrivals(&options));
        let spread: HashSet<&Duration> = arrivals.iter().collect();
        assert!(spread.len() > 1, "arrivals are spread, not all at once");
    }

    fn base_spec() -> ServerSpec {
        ServerSpec {
            binary: "seckill".into(),
            kind: ServerKind::Seckill {
                durability: Durability::Sync,
            },
            credentials: Credentials {
                admin_key: "k".into(),
                auth: AuthMode::Jwt,
                user_secret: "s".into(),
            },
            extra_args: Vec::new(),
        }
    }

    #[test]
    fn only_the_limit_modes_get_an_address_limit_and_every_mode_trusts_the_runner() {
        let options = BotsOptions::default();
        let dir = tempfile::tempdir().expect("temporary directory");
        for mode in Mode::ALL {
            let spec = mode_spec(&base_spec(), mode, &options, dir.path()).expect("spec");
            assert_eq!(spec.credentials.auth, AuthMode::Header);
            let args = spec.extra_args.join(" ");
            assert!(args.contains("--trusted-proxies 127.0.0.1/32"), "{args}");
            assert!(args.contains("--pow-difficulty-bits 16"), "{args}");
            assert_eq!(args.contains("--config"), mode.limit(), "{mode}: {args}");
        }
        let config: toml::Table = toml::from_str(&ip_limit_toml(&options)).expect("valid TOML");
        let ip = &config["rate_limit"]["ip"];
        assert_eq!(ip["per_s"].as_integer(), Some(DEFAULT_IP_PER_S as i64));
        assert_eq!(ip["burst"].as_integer(), Some(DEFAULT_IP_BURST as i64));
    }

    #[test]
    fn only_the_pow_modes_ask_for_a_proof_of_work() {
        for mode in Mode::ALL {
            let body = promotion_body(mode, &mode.promotion_id(), 20);
            assert_eq!(body.get("human_check").is_some(), mode.pow(), "{mode}");
            assert_eq!(body["items"][0]["stock"], json!(20));
            assert_eq!(body["require_token"], json!(true));
        }
    }
}
