//! Plays a scenario against a target: creates and starts the promotion, plays the waves
//! (closed or open loop, killing and restarting the server where asked), waits for
//! expiries, gathers the state and asks the checker for verdicts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;

use crate::check::{self, ActionOutcome, ItemState, ObservedOrder, OrderView, World};
use crate::client::{Api, Method, Reply, StatusCode};
use crate::report::{Recorder, Report};
use crate::scenario::{BuyerAction, ItemPlan, Scenario, Wave};
use crate::server::SpawnedServer;

/// Attempts at one request while the server is down for a restart (50 ms apart, after the
/// server is back): generous, a restart on a busy machine takes seconds.
const RETRIES_DURING_RESTART_MAX: u32 = 40;
/// Attempts at one request that got no answer while no restart was planned.
const RETRIES_MAX: u32 = 3;
/// How long the SQL table may lag the engine before the check fails (api.md: 5 s).
const SQL_SETTLE_S: u64 = 10;
/// Concurrent `GET /orders/{id}` while checking.
const CHECK_CONCURRENCY: usize = 32;

/// What the runner drives.
#[derive(Debug)]
pub struct Target {
    pub api: Api,
    /// Present when the runner started the server (needed by restart scenarios).
    pub server: Option<SpawnedServer>,
    pub label: String,
    /// The SQLite orders table to compare with the engine, when known.
    pub sqlite_path: Option<PathBuf>,
}

/// Knobs of one run that are not in the scenario file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scale: f64,
    /// Draw a progress bar (only on a terminal, never in CI).
    pub progress: bool,
    /// Print nothing but the report (no waiting notices).
    pub quiet: bool,
}

/// One item of the live promotion.
#[derive(Debug, Clone)]
struct LiveItem {
    /// The sku with the run tag, as the server knows it.
    sku: String,
}

/// What every worker of a run shares.
#[derive(Debug)]
struct RunContext {
    api: Api,
    promotion_id: String,
    items: Vec<LiveItem>,
    /// Cumulative pick weights, same order as `items`.
    cumulative_weights: Vec<f64>,
    require_token: bool,
    seed: u64,
    run_tag: String,
    /// True while the runner has the server down for a restart.
    server_down: AtomicBool,
    /// True when the wave plans a restart (transport errors are then expected).
    restart_planned: AtomicBool,
}

impl RunContext {
    fn pick_item(&self, roll: f64) -> usize {
        let total = self.cumulative_weights.last().copied().unwrap_or(1.0);
        let point = roll * total;
        self.cumulative_weights
            .iter()
            .position(|edge| point < *edge)
            .unwrap_or(self.items.len() - 1)
    }

    async fn wait_while_down(&self) {
        while self.server_down.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// POSTs a request (every load request is a POST), retrying with the same body, so the
    /// same request id, when it got no answer; records every attempt. `None` when it never
    /// got an answer.
    async fn post(
        &self,
        recorder: &mut Recorder,
        route: &'static str,
        mut started: Instant,
        path: &str,
        credential: Option<&(&'static str, String)>,
        body: Option<&serde_json::Value>,
    ) -> Option<Reply> {
        let mut attempt = 0;
        loop {
            let result = match credential {
                Some(credential) => self.api.shopper(Method::POST, path, credential, body).await,
                None => self.api.admin(Method::POST, path, body).await,
            };
            recorder.record(route, started, &result);
            match result {
                Ok(reply) => return Some(reply),
                Err(_) => {
                    attempt += 1;
                    let limit = if self.restart_planned.load(Ordering::Acquire) {
                        RETRIES_DURING_RESTART_MAX
                    } else {
                        RETRIES_MAX
                    };
                    if attempt >= limit {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    self.wait_while_down().await;
                    started = Instant::now();
                }
            }
        }
    }
}

/// Admin view of a promotion: only what the checker needs, tolerant of extra fields.
#[derive(Debug, Deserialize)]
struct AdminPromotion {
    #[serde(default)]
    items: Vec<AdminItem>,
}

#[derive(Debug, Deserialize)]
struct AdminItem {
    sku: String,
    stock: u64,
    remaining: u64,
    reserved: u64,
    sold: u64,
    #[serde(default = "one")]
    per_user_limit: u32,
}

fn one() -> u32 {
    1
}

/// An order as api.md returns it.
#[derive(Debug, Deserialize)]
struct OrderBody {
    order_id: String,
    user_id: String,
    sku: String,
    quantity: u32,
    status: String,
    #[serde(default)]
    pay_before: Option<String>,
}

/// RFC 3339 to unix ms.
fn parse_time_ms(text: &str) -> Option<i64> {
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((parsed.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn format_time(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A short tag that keeps promotion ids and skus of different runs apart on one server.
fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    format!("{:06x}", (nanos as u64 ^ (nanos >> 64) as u64) & 0xff_ffff)
}

/// A stable per-shopper seed: the same scenario seed replays the same choices.
fn shopper_seed(seed: u64, wave_index: usize, user_number: u64) -> u64 {
    let mut x = seed
        ^ (wave_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ user_number.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Plays `scenario` (already scaled) against `target` and returns the report.
pub async fn run_scenario(
    scenario: &Scenario,
    target: &mut Target,
    options: &RunOptions,
) -> Result<Report> {
    if scenario.needs_spawn() && target.server.is_none() {
        bail!(
            "scenario {} kills and restarts the server: run it with --spawn, not --url",
            scenario.name
        );
    }
    let tag = run_tag();
    let context = Arc::new(create_promotion(scenario, &target.api, &tag).await?);
    let origin = Instant::now();
    let mut recorder = Recorder::new(origin);
    let mut observed = Vec::new();
    let mut load_duration = Duration::ZERO;
    for (wave_index, wave) in scenario.waves.iter().enumerate() {
        let wave_started = Instant::now();
        let (wave_recorder, wave_orders) =
            play_wave(&context, wave_index, wave, target, origin, options).await?;
        load_duration += wave_started.elapsed();
        recorder.merge(&wave_recorder);
        observed.extend(wave_orders);
        if wave.wait_for_expiry {
            wait_for_expiries(&context, scenario, options).await?;
        }
    }
    let verdicts = gather_and_check(&context, scenario, target, observed).await?;
    let passed = check::all_passed(&verdicts);
    Ok(Report {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        target: target.label.clone(),
        scale: options.scale,
        promotion_id: context.promotion_id.clone(),
        restarts: target.server.as_ref().map_or(0, |server| server.restarts),
        measurements: recorder.summarise(load_duration),
        checks: verdicts,
        passed,
    })
}

/// One item of the create body. Defaults are left out: a 1,000-item promotion must fit in
/// api.md's 64 KiB body limit.
fn promotion_item(item: &ItemPlan, tag: &str) -> serde_json::Value {
    let mut body = json!({
        "sku": format!("{}-{}", item.sku, tag),
        "stock": item.stock,
        "price_cents": item.price_cents,
    });
    if item.per_user_limit != 1 {
        body["per_user_limit"] = json!(item.per_user_limit);
    }
    body
}

/// An operator POST that must succeed (2xx); `what` names it in the error.
pub(crate) async fn admin_post(
    api: &Api,
    path: &str,
    body: Option<&serde_json::Value>,
    what: &str,
) -> Result<Reply> {
    let reply = api
        .admin(Method::POST, path, body)
        .await
        .with_context(|| what.to_owned())?;
    if !reply.status.is_success() {
        bail!(
            "{what}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    Ok(reply)
}

/// A promotion window that opens in a minute (the runner starts promotions at once) and
/// lasts `duration_s`: (`starts_at`, `ends_at`) in RFC 3339.
pub(crate) fn window(duration_s: u64) -> (String, String) {
    let starts_at = time::OffsetDateTime::now_utc() + time::Duration::seconds(60);
    let ends_at = starts_at + time::Duration::seconds(duration_s as i64);
    (format_time(starts_at), format_time(ends_at))
}

/// Creates a promotion from its api.md body and starts it now.
pub(crate) async fn create_and_start(
    api: &Api,
    promotion_id: &str,
    body: &serde_json::Value,
) -> Result<()> {
    let what = format!("creating promotion {promotion_id}");
    admin_post(api, "/admin/promotions", Some(body), &what).await?;
    let path = format!("/admin/promotions/{promotion_id}/start");
    let what = format!("starting promotion {promotion_id}");
    admin_post(api, &path, None, &what).await?;
    Ok(())
}

/// Creates the promotion (window starting in a minute) and starts it now.
async fn create_promotion(scenario: &Scenario, api: &Api, tag: &str) -> Result<RunContext> {
    let promotion_id = format!("{}-{}", scenario.name, tag);
    let plan = &scenario.promotion;
    let items = scenario.items();
    let (starts_at, ends_at) = window(plan.duration_s);
    let body = json!({
        "id": promotion_id,
        "name": format!("{} ({})", scenario.name, scenario.description),
        "starts_at": starts_at,
        "ends_at": ends_at,
        "payment_timeout_s": plan.payment_timeout_s,
        "require_token": plan.require_token,
        "token_multiplier": plan.token_multiplier,
        "items": items.iter().map(|item| promotion_item(item, tag)).collect::<Vec<_>>(),
    });
    create_and_start(api, &promotion_id, &body).await?;
    let mut cumulative = 0.0;
    let cumulative_weights = items
        .iter()
        .map(|item| {
            cumulative += item.weight;
            cumulative
        })
        .collect();
    Ok(RunContext {
        api: api.clone(),
        promotion_id,
        items: items
            .iter()
            .map(|item| LiveItem {
                sku: format!("{}-{}", item.sku, tag),
            })
            .collect(),
        cumulative_weights,
        require_token: plan.require_token,
        seed: scenario.seed,
        run_tag: tag.to_owned(),
        server_down: AtomicBool::new(false),
        restart_planned: AtomicBool::new(false),
    })
}

fn progress_bar(options: &RunOptions, length: u64, label: &str) -> ProgressBar {
    let visible = options.progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if visible {
        ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>16} [{elapsed_precise}] {wide_bar} {pos}/{len} shoppers ({per_sec})",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_owned());
    bar
}

/// What the workers of one wave share.
struct WaveRun {
    context: Arc<RunContext>,
    wave_index: usize,
    wave: Wave,
    origin: Instant,
    started: Instant,
    next_shopper: AtomicU64,
    /// Shoppers done so far (the restart monitor watches it).
    done: Arc<AtomicU64>,
    bar: ProgressBar,
}

impl WaveRun {
    /// The next shopper and when it starts, `None` once the wave is over. Closed loop: the
    /// next shopper starts now. Open loop: shoppers arrive on a fixed schedule, late ones
    /// start at once (and their latency counts from when they should have started).
    async fn take_shopper(&self) -> Option<(u64, Instant)> {
        let index = self.next_shopper.fetch_add(1, Ordering::Relaxed);
        if index >= self.wave.shoppers {
            return None;
        }
        match self.wave.rate_per_s {
            None => Some((index, Instant::now())),
            Some(rate) => {
                let at = self.started + Duration::from_secs_f64(index as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
                Some((index, at))
            }
        }
    }
}

/// One worker: plays shoppers until the wave is over.
async fn wave_worker(run: Arc<WaveRun>) -> (Recorder, Vec<ObservedOrder>) {
    let mut recorder = Recorder::new(run.origin);
    let mut orders = Vec::new();
    while let Some((index, start)) = run.take_shopper().await {
        play_shopper(
            &run.context,
            run.wave_index,
            &run.wave,
            index,
            start,
            &mut recorder,
            &mut orders,
        )
        .await;
        run.done.fetch_add(1, Ordering::Relaxed);
        run.bar.inc(1);
    }
    (recorder, orders)
}

/// A restart wave hands the server to a monitor task that kills it at the mark.
fn start_monitor(
    run: &WaveRun,
    target: &mut Target,
    finished: &Arc<AtomicBool>,
) -> Option<tokio::task::JoinHandle<Result<SpawnedServer>>> {
    let kill_at = run.wave.kill_at?;
    let server = target.server.take()?;
    run.context.restart_planned.store(true, Ordering::Release);
    let threshold = ((run.wave.shoppers as f64 * kill_at) as u64).max(1);
    Some(tokio::spawn(restart_monitor(
        Arc::clone(&run.context),
        server,
        Arc::clone(&run.done),
        Arc::clone(finished),
        threshold,
    )))
}

/// Plays one wave with `wave.concurrency` workers; returns their merged measurements and the
/// orders the server acknowledged.
async fn play_wave(
    context: &Arc<RunContext>,
    wave_index: usize,
    wave: &Wave,
    target: &mut Target,
    origin: Instant,
    options: &RunOptions,
) -> Result<(Recorder, Vec<ObservedOrder>)> {
    let workers = u64::from(wave.concurrency).min(wave.shoppers);
    context.api.warm(workers as usize).await;
    let bar = progress_bar(options, wave.shoppers, &wave.name);
    let run = Arc::new(WaveRun {
        context: Arc::clone(context),
        wave_index,
        wave: wave.clone(),
        origin,
        started: Instant::now(),
        next_shopper: AtomicU64::new(0),
        done: Arc::new(AtomicU64::new(0)),
        bar,
    });
    let finished = Arc::new(AtomicBool::new(false));
    let monitor = start_monitor(&run, target, &finished);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(wave_worker(Arc::clone(&run)));
    }
    let mut recorder = Recorder::new(origin);
    let mut orders = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (worker_recorder, worker_orders) = joined.context("a load worker panicked")?;
        recorder.merge(&worker_recorder);
        orders.extend(worker_orders);
    }
    finished.store(true, Ordering::Release);
    run.bar.finish_and_clear();
    if let Some(monitor) = monitor {
        let server = monitor.await.context("the restart monitor panicked")??;
        target.api = Api::new(&server.url(), target.api.credentials().clone(), 256);
        target.server = Some(server);
        context.restart_planned.store(false, Ordering::Release);
    }
    Ok((recorder, orders))
}

/// Waits until `threshold` shoppers are done, SIGKILLs the server, restarts it on the same
/// data directory and port, and hands it back.
async fn restart_monitor(
    context: Arc<RunContext>,
    mut server: SpawnedServer,
    done: Arc<AtomicU64>,
    finished: Arc<AtomicBool>,
    threshold: u64,
) -> Result<SpawnedServer> {
    while done.load(Ordering::Relaxed) < threshold && !finished.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    context.server_down.store(true, Ordering::Release);
    server.kill9().await?;
    let restarted = server.restart().await;
    context.server_down.store(false, Ordering::Release);
    restarted?;
    Ok(server)
}

/// One shopper: for each attempt, a token (when required), a purchase, and what the buyer
/// does with an accepted order.
async fn play_shopper(
    context: &RunContext,
    wave_index: usize,
    wave: &Wave,
    index: u64,
    intended_start: Instant,
    recorder: &mut Recorder,
    orders: &mut Vec<ObservedOrder>,
) {
    let user_number = wave.first_user + index;
    let user = format!("u{user_number:07}");
    let mut rng = StdRng::seed_from_u64(shopper_seed(context.seed, wave_index, user_number));
    let credential = context.api.shopper_header(&user);
    let mut started = intended_start;
    for attempt in 0..wave.attempts {
        let item = &context.items[context.pick_item(rng.random::<f64>())];
        let action = wave.after_purchase.pick(rng.random::<f64>());
        let item_path = format!("/promotions/{}/items/{}", context.promotion_id, item.sku);
        let request_id = format!(
            "{}-{}-{}-{}",
            context.run_tag, wave_index, user_number, attempt
        );
        let mut token = None;
        if context.require_token {
            match fetch_token(context, recorder, started, &item_path, &credential).await {
                Some(granted) => token = Some(granted),
                None => return,
            }
            started = Instant::now();
        }
        let Some((order, created)) = purchase(
            context,
            recorder,
            started,
            &item_path,
            &credential,
            &request_id,
            wave.quantity,
            token,
        )
        .await
        else {
            started = Instant::now();
            continue;
        };
        let outcome = act_on_order(context, recorder, &order, action, &credential).await;
        orders.push(ObservedOrder {
            pay_before_ms: order.pay_before.as_deref().and_then(parse_time_ms),
            order_id: order.order_id,
            user_id: user.clone(),
            sku: item.sku.clone(),
            quantity: wave.quantity,
            created,
            action,
            outcome,
        });
        started = Instant::now();
    }
}

async fn fetch_token(
    context: &RunContext,
    recorder: &mut Recorder,
    started: Instant,
    item_path: &str,
    credential: &(&'static str, String),
) -> Option<String> {
    #[derive(Deserialize)]
    struct Grant {
        token: String,
    }
    let path = format!("{item_path}/token");
    let reply = context
        .post(recorder, "token", started, &path, Some(credential), None)
        .await?;
    if reply.status != StatusCode::OK {
        return None;
    }
    reply.json::<Grant>().ok().map(|grant| grant.token)
}

/// The purchase, retried with the same request id when unanswered; a token lost with a
/// crashed server is replaced once. Returns the order and whether it was created (201).
#[allow(clippy::too_many_arguments)]
async fn purchase(
    context: &RunContext,
    recorder: &mut Recorder,
    started: Instant,
    item_path: &str,
    credential: &(&'static str, String),
    request_id: &str,
    quantity: u32,
    mut token: Option<String>,
) -> Option<(OrderBody, bool)> {
    let path = format!("{item_path}/purchase");
    let mut started = started;
    let mut token_replaced = false;
    loop {
        let mut body = json!({"request_id": request_id, "quantity": quantity});
        if let Some(token) = &token {
            body["token"] = json!(token);
        }
        let errors_before = recorder.transport_error_count();
        let reply = context
            .post(
                recorder,
                "purchase",
                started,
                &path,
                Some(credential),
                Some(&body),
            )
            .await?;
        let had_no_answer = recorder.transport_error_count() != errors_before;
        match reply.status {
            StatusCode::CREATED | StatusCode::OK => {
                let order = reply.json::<OrderBody>().ok()?;
                let created = reply.status == StatusCode::CREATED;
                if created {
                    recorder.order_accepted();
                }
                return Some((order, created));
            }
            StatusCode::FORBIDDEN
                if had_no_answer
                    && !token_replaced
                    && token.is_some()
                    && reply.error_code() == "token_invalid" =>
            {
                token_replaced = true;
                token = Some(
                    fetch_token(context, recorder, Instant::now(), item_path, credential).await?,
                );
                started = Instant::now();
            }
            _ => return None,
        }
    }
}

async fn act_on_order(
    context: &RunContext,
    recorder: &mut Recorder,
    order: &OrderBody,
    action: BuyerAction,
    credential: &(&'static str, String),
) -> ActionOutcome {
    let reply = match action {
        BuyerAction::Leave => return ActionOutcome::NotTried,
        BuyerAction::Pay => {
            let path = format!("/admin/orders/{}/pay", order.order_id);
            let body = json!({"payment_ref": format!("pay-{}", order.order_id)});
            context
                .post(recorder, "pay", Instant::now(), &path, None, Some(&body))
                .await
        }
        BuyerAction::Cancel => {
            let path = format!("/orders/{}/cancel", order.order_id);
            context
                .post(
                    recorder,
                    "cancel",
                    Instant::now(),
                    &path,
                    Some(credential),
                    None,
                )
                .await
        }
    };
    match reply {
        Some(reply) if reply.status == StatusCode::OK => ActionOutcome::Done,
        Some(_) => ActionOutcome::Refused,
        None => ActionOutcome::NoAnswer,
    }
}

/// The promotion's per-item stats; `None` when the server does not know the promotion
/// (lost in a crash: the checker reports it).
async fn admin_items(context: &RunContext) -> Result<Option<Vec<ItemState>>> {
    let path = format!("/admin/promotions/{}", context.promotion_id);
    let reply = context
        .api
        .admin(Method::GET, &path, None::<&()>)
        .await
        .context("reading the promotion's stats")?;
    if reply.status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if reply.status != StatusCode::OK {
        bail!("GET {path}: {}", reply.status);
    }
    let value: serde_json::Value = reply.json().context("promotion stats JSON")?;
    // Accept the promotion at the top level or wrapped as {"promotion": {...}}.
    let promotion = value.get("promotion").cloned().unwrap_or(value);
    let promotion: AdminPromotion =
        serde_json::from_value(promotion).context("promotion stats fields")?;
    Ok(Some(
        promotion
            .items
            .into_iter()
            .map(|item| ItemState {
                sku: item.sku,
                stock: item.stock,
                remaining: item.remaining,
                reserved: item.reserved,
                sold: item.sold,
                per_user_limit: item.per_user_limit,
            })
            .collect(),
    ))
}

/// Waits until no order is left pending (all paid, cancelled or expired).
async fn wait_for_expiries(
    context: &RunContext,
    scenario: &Scenario,
    options: &RunOptions,
) -> Result<()> {
    let timeout_s = u64::from(scenario.promotion.payment_timeout_s) + 15;
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    if !options.quiet {
        eprintln!("  waiting up to {timeout_s} s for unpaid orders to expire...");
    }
    loop {
        let items = admin_items(context).await?.unwrap_or_default();
        let reserved: u64 = items.iter().map(|item| item.reserved).sum();
        if reserved == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            // Not an error of the runner: the checker will report the pending orders.
            eprintln!("  {reserved} unit(s) still reserved after {timeout_s} s");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads an order as its owner; `None` for 404.
async fn engine_order(api: &Api, order_id: &str, user: &str) -> Result<Option<OrderView>> {
    let credential = api.shopper_header(user);
    let path = format!("/orders/{order_id}");
    let mut attempt = 0;
    let reply = loop {
        match api
            .shopper(Method::GET, &path, &credential, None::<&()>)
            .await
        {
            Ok(reply) if reply.status.is_server_error() && attempt < RETRIES_MAX => {}
            Ok(reply) => break reply,
            Err(error) if attempt >= RETRIES_MAX => {
                return Err(anyhow!("GET {path}: {error}"));
            }
            Err(_) => {}
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match reply.status {
        StatusCode::OK => {
            let order: OrderBody = reply.json().context("order JSON")?;
            Ok(Some(OrderView {
                order_id: order.order_id,
                user_id: order.user_id,
                sku: order.sku,
                quantity: order.quantity,
                status: order.status,
            }))
        }
        StatusCode::NOT_FOUND => Ok(None),
        other => bail!(
            "GET {path}: {other} {}",
            String::from_utf8_lossy(&reply.body)
        ),
    }
}

/// Fetches `(order_id, user)` pairs from the engine, a few at a time.
async fn engine_orders(
    api: &Api,
    wanted: Vec<(String, String)>,
) -> Result<HashMap<String, Option<OrderView>>> {
    let wanted = Arc::new(tokio::sync::Mutex::new(wanted));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CHECK_CONCURRENCY {
        let api = api.clone();
        let wanted = Arc::clone(&wanted);
        tasks.spawn(async move {
            let mut found = HashMap::new();
            loop {
                let next = wanted.lock().await.pop();
                let Some((order_id, user)) = next else {
                    return Ok::<_, anyhow::Error>(found);
                };
                let view = engine_order(&api, &order_id, &user).await?;
                found.insert(order_id, view);
            }
        });
    }
    let mut all = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("an order reader panicked")??);
    }
    Ok(all)
}

/// Gathers the world (stats, engine orders, SQL rows) and judges it; while only the SQL
/// comparison fails, polls for up to [`SQL_SETTLE_S`] (the flusher may lag 5 s).
async fn gather_and_check(
    context: &RunContext,
    scenario: &Scenario,
    target: &Target,
    observed: Vec<ObservedOrder>,
) -> Result<Vec<check::Verdict>> {
    let api = &target.api;
    let mut world = World {
        observed,
        expect: scenario.expect.clone(),
        ..World::default()
    };
    let wanted: Vec<(String, String)> = world
        .observed
        .iter()
        .map(|order| (order.order_id.clone(), order.user_id.clone()))
        .collect();
    world.now_ms = now_ms();
    world.engine_orders = engine_orders(api, wanted).await?;
    // The flusher's lag counts from now: the engine reads above may take a while.
    let deadline = Instant::now() + Duration::from_secs(SQL_SETTLE_S);
    loop {
        let items = admin_items(context).await?;
        world.promotion_missing = items.is_none();
        world.items = items.unwrap_or_default();
        if let Some(path) = &target.sqlite_path {
            let rows = crate::sql::sqlite_orders(path, &context.promotion_id).await?;
            // Look up in the engine every SQL row it has not been asked about, and re-read
            // those whose status differs (an expiry may have happened since).
            let recheck: Vec<(String, String)> = rows
                .iter()
                .filter(|row| match world.engine_orders.get(&row.order_id) {
                    None => true,
                    Some(Some(view)) => view.status != row.status,
                    Some(None) => true,
                })
                .map(|row| (row.order_id.clone(), row.user_id.clone()))
                .collect();
            if !recheck.is_empty() {
                world.now_ms = now_ms();
                let fresh = engine_orders(api, recheck).await?;
                world.engine_orders.extend(fresh);
            }
            world.sql_orders = Some(rows);
        }
        let verdicts = check::check(&world);
        let sql_ok = verdicts
            .iter()
            .all(|verdict| verdict.passed || verdict.name != "sql_matches_engine");
        if sql_ok || Instant::now() > deadline {
            return Ok(verdicts);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
