//! Membership and the lease view on a real JetStream cluster (cluster plan, step 7): nodes
//! see each other live within 3 s of joining and dead 3 s after their heartbeats stop, a
//! second process with a running node's id is refused (and allowed once that node is gone),
//! and the lease view names each partition's holder and how long each unheld one has been
//! unheld.
//!
//! Needs `SECKILL_TEST_NATS_URLS` (comma-separated `nats://` URLs); skipped without it.

mod jetstream_common;

use std::time::{Duration, Instant};

use jetstream_common::{jetstream, nats_urls, unique_prefix};
use seckill_persistence::cluster::owners::Owners;
use seckill_persistence::cluster::registry::{
    nodes_bucket, MembershipError, Registry, LIVE_WITHIN,
};
use seckill_persistence::jetstream::{ClusterOptions, Lease, Names};

const PARTITIONS: u32 = 4;
/// Short, so a lease left alone lapses within the test; long enough that the one taken
/// before the lease view starts is still held at its first read.
const LEASE_TTL: Duration = Duration::from_secs(4);
/// Slack on top of a bound the plan promises, for a loaded machine: waits end as soon as
/// the condition holds, so this only matters when something is wrong.
const SLACK: Duration = Duration::from_millis(1_500);

fn options(urls: &[String], prefix: &str, node_id: &str) -> ClusterOptions {
    ClusterOptions {
        urls: urls.to_vec(),
        node_id: node_id.to_owned(),
        partitions: Some(PARTITIONS),
        replicas: 3,
        prefix: prefix.to_owned(),
        lease_ttl: LEASE_TTL,
        ..ClusterOptions::default()
    }
}

async fn start(
    js: &async_nats::jetstream::Context,
    urls: &[String],
    prefix: &str,
    node_id: &str,
) -> Registry {
    let advertise = format!("127.0.0.1:{}", 7000 + node_id.len());
    match Registry::start(js, &options(urls, prefix, node_id), &advertise).await {
        Ok(registry) => registry,
        Err(error) => panic!("{node_id} could not join under {prefix}: {error}"),
    }
}

/// Polls `check` every 50 ms until it holds or `within` passed; how long it took.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if check() {
            return Some(started.elapsed());
        }
        if started.elapsed() >= within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn delete_buckets(js: &async_nats::jetstream::Context, prefix: &str) {
    let names = Names::new(prefix);
    for stream in [
        format!("KV_{}", nodes_bucket(prefix)),
        format!("KV_{}", names.lease_bucket()),
    ] {
        // Best effort: what is left only takes space on the test cluster.
        let _ = js.delete_stream(&stream).await;
    }
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_see_each_other_live_within_three_seconds() {
    let Some(urls) = nats_urls() else { return };
    let prefix = unique_prefix();
    let js = jetstream(&urls).await;
    let a = start(&js, &urls, &prefix, "node-a").await;
    let b = start(&js, &urls, &prefix, "node-b").await;
    let joined = Instant::now();

    let both = ids(&["node-a", "node-b"]);
    let took = eventually(LIVE_WITHIN, || a.live() == both && b.live() == both).await;
    assert!(
        took.is_some(),
        "after {:?}: a sees {:?}, b sees {:?}",
        joined.elapsed(),
        a.live(),
        b.live()
    );

    let records = a.records();
    let of_b = records
        .iter()
        .find(|status| status.record.node_id == "node-b")
        .expect("a lists b's record");
    assert!(of_b.live);
    assert!(!of_b.record.draining);
    assert_eq!(of_b.record.advertise, "127.0.0.1:7006");
    assert!(of_b.last_seen_ms > 0, "the server's timestamp is shown");

    // Draining: b stays in the records but is no longer live, for itself and for a.
    b.set_draining().await.expect("the draining record lands");
    assert_eq!(b.live(), ids(&["node-a"]));
    let gone = eventually(Duration::from_secs(2), || a.live() == ids(&["node-a"])).await;
    assert!(gone.is_some(), "a still sees {:?}", a.live());
    assert!(a
        .records()
        .iter()
        .any(|status| status.record.node_id == "node-b" && status.record.draining));

    a.stop();
    b.stop();
    delete_buckets(&js, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_heartbeats_stop_is_not_live_three_seconds_later() {
    let Some(urls) = nats_urls() else { return };
    let prefix = unique_prefix();
    let js = jetstream(&urls).await;
    let a = start(&js, &urls, &prefix, "node-a").await;
    let b = start(&js, &urls, &prefix, "node-b").await;
    let both = ids(&["node-a", "node-b"]);
    assert!(eventually(LIVE_WITHIN, || a.live() == both).await.is_some());

    // As a crash: no more heartbeats, the record left behind.
    b.stop();
    let stopped = Instant::now();
    let dead_after = eventually(LIVE_WITHIN + SLACK, || a.live() == ids(&["node-a"])).await;
    assert!(
        dead_after.is_some(),
        "{:?} after the stop a still sees {:?}",
        stopped.elapsed(),
        a.live()
    );
    let status = a
        .records()
        .into_iter()
        .find(|status| status.record.node_id == "node-b")
        .expect("the dead node's record is still listed until it ages out");
    assert!(!status.live);

    a.stop();
    delete_buckets(&js, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_with_a_running_nodes_id_is_refused() {
    let Some(urls) = nats_urls() else { return };
    let prefix = unique_prefix();
    let js = jetstream(&urls).await;
    let first = start(&js, &urls, &prefix, "node-a").await;

    let second = Registry::start(&js, &options(&urls, &prefix, "node-a"), "127.0.0.1:9").await;
    match second {
        Err(MembershipError::NodeIdInUse { node_id, .. }) => assert_eq!(node_id, "node-a"),
        Err(error) => panic!("refused for the wrong reason: {error}"),
        Ok(_) => panic!("a second process with a running node's id was let in"),
    }
    assert_eq!(
        first.live(),
        ids(&["node-a"]),
        "the first one is undisturbed"
    );

    // Once the first one is gone (silent for the window), its id can be used again.
    first.stop();
    tokio::time::sleep(LIVE_WITHIN).await;
    let again = Registry::start(&js, &options(&urls, &prefix, "node-a"), "127.0.0.1:9")
        .await
        .unwrap_or_else(|error| panic!("the id of a dead node is refused: {error}"));
    assert_eq!(again.live(), ids(&["node-a"]));

    again.stop();
    delete_buckets(&js, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_view_names_holders_and_since_when_a_partition_is_unheld() {
    let Some(urls) = nats_urls() else { return };
    let prefix = unique_prefix();
    let js = jetstream(&urls).await;
    let options = options(&urls, &prefix, "viewer");
    let bucket = Names::new(&prefix).lease_bucket();
    let store = Lease::bucket(&js, &bucket, LEASE_TTL, options.replicas)
        .await
        .expect("the lease bucket");
    let held = Lease::acquire(&store, 1, "node-x", LEASE_TTL)
        .await
        .expect("partition 1's lease");

    let owners = Owners::start(&js, &options, PARTITIONS)
        .await
        .expect("the lease view starts");
    let view = owners.view().expect("fresh after its first read");
    assert_eq!(view.holders[1].as_deref(), Some("node-x"));
    assert_eq!(view.unheld_since_ms[1], None);
    assert_eq!(view.holders[0], None);
    let since_ms = view.unheld_since_ms[0].expect("an unheld partition has a since");
    assert!(since_ms <= view.now_ms);

    // A take shows up with its holder; a clean release shows the partition unheld again.
    let taken = Lease::acquire(&store, 0, "node-y", LEASE_TTL)
        .await
        .expect("partition 0's lease");
    let seen = eventually(Duration::from_secs(2), || {
        owners.holders()[0].as_deref() == Some("node-y")
    })
    .await;
    assert!(seen.is_some(), "holders {:?}", owners.holders());
    let released_at_ms = owners.now_ms();
    taken.release().await.expect("released");
    let seen = eventually(Duration::from_secs(2), || owners.holders()[0].is_none()).await;
    assert!(seen.is_some(), "holders {:?}", owners.holders());
    let view = owners.view().expect("fresh");
    let since_ms = view.unheld_since_ms[0].expect("unheld since the release");
    assert!(
        since_ms >= released_at_ms && since_ms <= view.now_ms,
        "unheld since {since_ms}, released at {released_at_ms}, now {}",
        view.now_ms
    );

    // A lease nobody renews lapses without any report; the poll finds it gone.
    drop(held);
    let lapsed = eventually(LEASE_TTL + SLACK + SLACK, || owners.holders()[1].is_none()).await;
    assert!(lapsed.is_some(), "holders {:?}", owners.holders());

    owners.stop();
    delete_buckets(&js, &prefix).await;
}
