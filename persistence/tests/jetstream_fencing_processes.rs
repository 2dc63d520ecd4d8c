//! Fencing between processes on the JetStream journal: one writer at a time per prefix,
//! and a writer paused past its lease never acknowledges again.
//!
//! (a) Two children started together on one prefix: only one of them becomes ready and
//! sells; when it is killed the other takes over, and the acknowledgements of both survive.
//! (b) A child is SIGSTOPped past its lease; this process takes over and sells; the child
//! is let go again: it acknowledges nothing new, and no message of its lands in any stream
//! after this process's takeover record.
//!
//! Needs `SECKILL_TEST_NATS_URLS`; skipped without it. Each test prints its seed;
//! `SECKILL_JETSTREAM_SEED=<seed>` repeats its timings.

mod jetstream_common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::header::NATS_MESSAGE_ID;
use jetstream_common::{
    check_reopened, delete_everything, is_ack, jetstream, nats_urls, open, options, runtime, seed,
    start_engine, stop_node, unique_prefix, verify, Acked, ChildProcess, Ledger, Line,
    CHECKER_LEASE_WAIT, LEASE_TTL, PARTITIONS, PLENTY_SKU, PROMOTION_ID,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seckill_engine::{Engine, OrderStatus, PurchaseRequest, SystemClock};
use seckill_persistence::jetstream::{all_lanes, Names, TAKEOVER_HEADER};

/// How long the standby may take to become ready once the first node died: its leases
/// lapse, then it replays. A bound on a hang, not a performance figure.
const TAKEOVER_MAX: Duration = Duration::from_secs(30);
/// How long each node sells, in ms (drawn from the seed).
const SELL_MS_MIN: u64 = 500;
const SELL_MS_MAX: u64 = 1_500;
/// How long the paused child stays stopped, in lease TTLs.
const PAUSE_TTLS: u32 = 3;
/// How long the paused child runs again before it is killed.
const AFTER_CONTINUE: Duration = Duration::from_secs(3);
/// Answers the child had before it was stopped reach its stdout only once it runs again
/// (a task woken, not yet run); they come at once. Anything later was decided after.
const LATE_PRINT_GRACE: Duration = Duration::from_secs(2);
/// A stopped process prints nothing; lines already in the pipe are read within this.
const PIPE_DRAIN_MAX: Duration = Duration::from_secs(1);
/// Tasks this process sells with once it took over.
const TAKEOVER_SELLERS: usize = 4;

#[test]
fn two_nodes_started_together_sell_one_at_a_time() {
    let Some(urls) = nats_urls() else { return };
    let seed = seed("two nodes at once");
    let prefix = unique_prefix();
    let mut rng = StdRng::seed_from_u64(seed);
    let runtime = runtime();
    // Rounds 0 and 1: their request ids and round-only shoppers differ.
    let mut children = [
        ChildProcess::sell(&urls, &prefix, "node-a", seed, 0),
        ChildProcess::sell(&urls, &prefix, "node-b", seed, 1),
    ];
    let first = first_ready(&mut children, seed);
    let second = 1 - first;
    println!(
        "{} became ready first; {} waits",
        children[first].name(),
        children[second].name()
    );

    std::thread::sleep(Duration::from_millis(
        rng.random_range(SELL_MS_MIN..=SELL_MS_MAX),
    ));
    let killed_at = Instant::now();
    let first_lines = children[first].kill(seed);
    let standby_early: Vec<String> = children[second]
        .lines_so_far()
        .iter()
        .filter(|line| line.at < killed_at)
        .map(|line| line.text.clone())
        .collect();
    assert!(
        standby_early.is_empty(),
        "seed {seed}: the standby spoke while the first node held the leases: {standby_early:?}"
    );

    let Some(ready_at) = children[second].wait_line("READY", LEASE_TTL + TAKEOVER_MAX) else {
        panic!(
            "seed {seed}: {} did not take over within {:?} of the kill",
            children[second].name(),
            LEASE_TTL + TAKEOVER_MAX
        );
    };
    println!(
        "{} took over {:?} after the kill",
        children[second].name(),
        ready_at - killed_at
    );
    std::thread::sleep(Duration::from_millis(
        rng.random_range(SELL_MS_MIN..=SELL_MS_MAX),
    ));
    let second_lines = children[second].kill(seed);
    assert!(
        second_lines.iter().all(|line| line.at >= killed_at),
        "seed {seed}: the standby printed before the first node died"
    );

    let first_ids = purchase_ids(&first_lines);
    let second_ids = purchase_ids(&second_lines);
    let both: Vec<&String> = first_ids.intersection(&second_ids).collect();
    assert!(
        both.is_empty(),
        "seed {seed}: orders acknowledged by both nodes: {both:?}"
    );
    let mut ledger = Ledger::default();
    let first_acks = ledger.read(&first_lines);
    let second_acks = ledger.read(&second_lines);
    println!("acknowledged purchases: {first_acks} by the first node, {second_acks} by the second");
    assert!(
        first_acks > 0 && second_acks > 0,
        "seed {seed}: each node must have sold something"
    );
    check_reopened(&runtime, &urls, &prefix, "node-c", &mut ledger, seed, 2);
    drop(children);
    delete_everything(&runtime, &urls, &prefix);
}

/// Which child printed `READY` first; panics if neither did in time or one died.
fn first_ready(children: &mut [ChildProcess; 2], seed: u64) -> usize {
    let deadline = Instant::now() + jetstream_common::READY_WAIT_MAX;
    loop {
        for (index, child) in children.iter_mut().enumerate() {
            if child
                .wait_line("READY", Duration::from_millis(50))
                .is_some()
            {
                return index;
            }
            if let Some(status) = child.exited() {
                panic!(
                    "seed {seed}: {} ended before it was ready: {status:?}",
                    child.name()
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: neither node became ready"
        );
    }
}

fn purchase_ids(lines: &[Line]) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|line| line.text.strip_prefix("P "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_paused_writer_acknowledges_nothing_after_it_was_replaced() {
    let Some(urls) = nats_urls() else { return };
    let seed = seed("paused writer");
    let prefix = unique_prefix();
    let mut rng = StdRng::seed_from_u64(seed);
    let runtime = runtime();
    let mut paused = ChildProcess::sell(&urls, &prefix, "node-a", seed, 0);
    paused.wait_ready(seed);
    std::thread::sleep(Duration::from_millis(
        rng.random_range(SELL_MS_MIN..=SELL_MS_MAX),
    ));

    paused.signal("STOP");
    let stopped_at = Instant::now();
    // What the child wrote before the stop may still be in the pipe, and on a loaded
    // machine the reader thread can take a while to get it: from the moment the reader
    // has gone quiet, any line is one the child wrote while stopped.
    let drained_at = wait_until_quiet(&mut paused, stopped_at);
    // This process is the new owner: it waits for the stopped child's leases to lapse.
    let (journal, recovery) = open(&options(&urls, &prefix, "node-b", Some(CHECKER_LEASE_WAIT)));
    println!(
        "node-b took over {:?} after the SIGSTOP",
        stopped_at.elapsed()
    );
    let engine = start_engine(&journal, recovery, Arc::new(SystemClock));
    let stop_selling = Arc::new(AtomicBool::new(false));
    let sellers: Vec<_> = (0..TAKEOVER_SELLERS)
        .map(|task| runtime.spawn(sell(engine.clone(), task, Arc::clone(&stop_selling))))
        .collect();

    let continue_at = stopped_at + LEASE_TTL * PAUSE_TTLS;
    if let Some(left) = continue_at.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
    // Taken before the signal: the child runs (and may print) as soon as it is delivered,
    // before `kill` returns.
    let continued_at = Instant::now();
    paused.signal("CONT");
    std::thread::sleep(AFTER_CONTINUE);
    stop_selling.store(true, Ordering::Relaxed);
    let mut ours = Vec::new();
    for seller in sellers {
        ours.extend(runtime.block_on(seller).expect("a seller task"));
    }
    let lines = paused.kill(seed);

    let while_stopped: Vec<&Line> = lines
        .iter()
        .filter(|line| line.at >= drained_at && line.at < continued_at)
        .collect();
    assert!(
        while_stopped.is_empty(),
        "seed {seed}: the child printed while it was stopped: {while_stopped:?}"
    );
    let late: Vec<&Line> = lines
        .iter()
        .filter(|line| line.at >= continued_at && is_ack(&line.text))
        .collect();
    println!(
        "node-a: {} lines, {} acknowledgements printed after SIGCONT; node-b: {} purchases",
        lines.len(),
        late.len(),
        ours.len()
    );
    runtime.block_on(late_acks_were_decided_before(
        &engine,
        &late,
        continued_at,
        seed,
    ));

    let mut ledger = Ledger::default();
    let theirs = ledger.read(&lines);
    assert!(
        theirs > 0,
        "seed {seed}: node-a sold nothing before it was stopped"
    );
    assert!(
        !ours.is_empty(),
        "seed {seed}: node-b sold nothing after its takeover"
    );
    ledger.orders.extend(ours);
    runtime.block_on(verify(&engine, &mut ledger, seed, 100));
    runtime.block_on(only_the_owner_wrote_after_its_takeover(
        &urls, &prefix, "node-b", seed,
    ));
    stop_node(&runtime, engine, journal);
    check_reopened(&runtime, &urls, &prefix, "node-c", &mut ledger, seed, 101);
    delete_everything(&runtime, &urls, &prefix);
}

/// Sells `plenty-a` one unit to a new shopper at a time until `stop`; the acknowledged
/// purchases.
async fn sell(engine: Engine, task: usize, stop: Arc<AtomicBool>) -> Vec<(String, Acked)> {
    let mut acked = Vec::new();
    let mut attempt = 0u64;
    while !stop.load(Ordering::Relaxed) {
        attempt += 1;
        let user = format!("b{task}-{attempt}");
        let request_id = format!("rb{task}-{attempt}");
        let request = PurchaseRequest {
            request_id: request_id.clone(),
            quantity: 1,
            token: None,
        };
        match engine
            .purchase(PROMOTION_ID, PLENTY_SKU, &user, request)
            .await
        {
            Ok(bought) if bought.created => acked.push((
                bought.order.order_id,
                Acked::purchase(&user, PLENTY_SKU, &request_id),
            )),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    acked
}

/// The paused child may print, once it runs again, answers it had before it was stopped:
/// each must come at once and be in the new owner's recovered state (which holds only what
/// the log had before its takeover record). An acknowledgement of a write decided after
/// the takeover would be neither.
async fn late_acks_were_decided_before(
    engine: &Engine,
    late: &[&Line],
    continued_at: Instant,
    seed: u64,
) {
    for line in late {
        let after = line.at - continued_at;
        assert!(
            after <= LATE_PRINT_GRACE,
            "seed {seed}: the replaced child acknowledged {:?} {after:?} after it ran again",
            line.text
        );
        let fields: Vec<&str> = line.text.split(' ').collect();
        let (order_id, expected) = match fields.as_slice() {
            ["P", id, user, ..] => (*id, Expect::Placed(user)),
            ["C", id] => (*id, Expect::Status(OrderStatus::Cancelled)),
            ["Y", id, _] => (*id, Expect::Status(OrderStatus::Paid)),
            _ => panic!(
                "seed {seed}: an acknowledgement that does not parse: {:?}",
                line.text
            ),
        };
        let order = engine.order(order_id, None).await.unwrap_or_else(|e| {
            panic!(
                "seed {seed}: the replaced child acknowledged {:?}, which the new owner does not have: {e}",
                line.text
            )
        });
        match expected {
            Expect::Placed(user) => assert_eq!(order.user_id, user, "seed {seed}: {}", line.text),
            Expect::Status(status) => assert_eq!(
                order.status, status,
                "seed {seed}: the replaced child acknowledged {:?}, the new owner has it {:?}",
                line.text, order.status
            ),
        }
    }
}

enum Expect<'a> {
    Placed(&'a str),
    Status(OrderStatus),
}

/// Reads every lane's stream whole: after the last takeover record of `owner`, every
/// message's id carries that ownership's epoch (`e<epoch>-...`). A message of the replaced
/// writer there would mean it appended after it was fenced.
async fn only_the_owner_wrote_after_its_takeover(
    urls: &[String],
    prefix: &str,
    owner: &str,
    seed: u64,
) {
    let js = jetstream(urls).await;
    let names = Names::new(prefix);
    for lane in all_lanes(PARTITIONS) {
        let name = names.stream(lane);
        let mut stream = js
            .get_stream(&name)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: stream {name}: {e}"));
        let (first, last) = {
            let info = stream
                .info()
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: stream {name}: {e}"));
            (info.state.first_sequence.max(1), info.state.last_sequence)
        };
        // (sequence of the owner's last takeover record, the id prefix of its ownership)
        let mut takeover: Option<(u64, String)> = None;
        let mut after: Vec<(u64, String)> = Vec::new();
        for seq in first..=last {
            let message = stream
                .get_raw_message(seq)
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: {name} message {seq}: {e}"));
            let id = message
                .headers
                .get(NATS_MESSAGE_ID)
                .map(|value| value.as_str().to_owned())
                .unwrap_or_default();
            let holder = message
                .headers
                .get(TAKEOVER_HEADER)
                .and_then(|value| value.as_str().rsplit_once('/'))
                .filter(|(node, _)| *node == owner)
                .map(|(_, epoch)| format!("e{epoch}-"));
            if let Some(epoch_prefix) = holder {
                takeover = Some((seq, epoch_prefix));
                after.clear();
            } else if takeover.is_some() {
                after.push((seq, id));
            }
        }
        let Some((takeover_seq, epoch_prefix)) = takeover else {
            panic!(
                "seed {seed}: {name} (messages {first}..={last}) has no takeover record of {owner}"
            );
        };
        let foreign: Vec<&(u64, String)> = after
            .iter()
            .filter(|(_, id)| !id.starts_with(&epoch_prefix))
            .collect();
        assert!(
            foreign.is_empty(),
            "seed {seed}: {name}: after {owner}'s takeover at {takeover_seq} ({epoch_prefix}...), messages of another writer: {foreign:?}"
        );
        println!(
            "  {name}: {} messages before {owner}'s takeover at {takeover_seq}, {} of its own after",
            takeover_seq - first,
            after.len()
        );
    }
}

/// Waits until the stopped child's pipe has been read to its end: no new line for
/// [`QUIET_FOR`] (bounded by [`PIPE_DRAIN_MAX`] after the first quiet moment is missed).
fn wait_until_quiet(child: &mut ChildProcess, stopped_at: Instant) -> Instant {
    // First: the kernel says every thread of it is stopped (state T), so nothing more can
    // be written after this point; only the pipe's backlog can still arrive.
    let stat = format!("/proc/{}/stat", child.pid());
    while stopped_at.elapsed() < PIPE_DRAIN_MAX * 10 {
        let state = std::fs::read_to_string(&stat).unwrap_or_default();
        // The state follows the command name in parentheses: "pid (name) T ...".
        if state
            .rsplit(") ")
            .next()
            .is_some_and(|rest| rest.starts_with('T'))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut seen = child.lines_so_far().len();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < QUIET_FOR && stopped_at.elapsed() < PIPE_DRAIN_MAX * 10 {
        std::thread::sleep(Duration::from_millis(20));
        let now_seen = child.lines_so_far().len();
        if now_seen != seen {
            seen = now_seen;
            quiet_since = Instant::now();
        }
    }
    Instant::now()
}

/// How long the reader must stay without a line before the pipe counts as drained.
const QUIET_FOR: Duration = Duration::from_millis(1_000);
