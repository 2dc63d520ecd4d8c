//! The cluster's one catalog log on a real JetStream cluster (cluster plan, step 4):
//! conditional appends from two nodes land one at each position, the other hears "behind";
//! and two engines racing creates that share a SKU through it never both succeed, and end
//! with the same catalog.
//!
//! Needs `SECKILL_TEST_NATS_URLS` (comma-separated `nats://` URLs); skipped without it.

mod jetstream_common;

use std::sync::{Arc, Barrier};

use jetstream_common::{jetstream, nats_urls, runtime, unique_prefix};
use seckill_engine::{
    CatalogAppendError, CatalogLog, ClusterPorts, Engine, EngineConfig, Error, Event, ItemSpec,
    ManualClock, MemoryJournal, NullSink, Ports, PromotionSpec, PromotionStatus, Recovery,
    StaticOwnership,
};
use seckill_persistence::cluster::catalog_acks::{CatalogAcks, ACK_WAIT};
use seckill_persistence::cluster::catalog_tail::CatalogTail;
use seckill_persistence::jetstream::{JetStreamCatalogLog, Names, StreamSettings, CATALOG_LANE};

const T0_MS: i64 = 1_800_000_000_000;

/// What every test here runs on: the cluster, a runtime, a prefix of its own and two
/// nodes' catalog logs under it. `None` (the test is skipped) without a cluster.
struct Setup {
    urls: Vec<String>,
    runtime: tokio::runtime::Runtime,
    prefix: String,
    logs: [Arc<JetStreamCatalogLog>; 2],
}

impl Setup {
    fn new() -> Option<Setup> {
        let urls = nats_urls()?;
        let runtime = runtime();
        let prefix = unique_prefix();
        let logs = two_logs(&runtime, &urls, &prefix);
        Some(Setup {
            urls,
            runtime,
            prefix,
            logs,
        })
    }
}

/// Two nodes' catalog logs under `prefix`, each on its own connection and epoch.
fn two_logs(
    runtime: &tokio::runtime::Runtime,
    urls: &[String],
    prefix: &str,
) -> [Arc<JetStreamCatalogLog>; 2] {
    let names = Names::new(prefix);
    let settings = StreamSettings {
        replicas: urls.len().min(3),
        ..StreamSettings::default()
    };
    [1, 2].map(|epoch| {
        runtime.block_on(async {
            let js = jetstream(urls).await;
            let log =
                JetStreamCatalogLog::open(js, runtime.handle().clone(), &names, &settings, epoch)
                    .await
                    .expect("the catalog stream opens");
            Arc::new(log)
        })
    })
}

fn delete_catalog(runtime: &tokio::runtime::Runtime, urls: &[String], prefix: &str) {
    runtime.block_on(async {
        let js = jetstream(urls).await;
        // Best effort: what is left only takes space on the test cluster.
        let _ = js
            .delete_stream(Names::new(prefix).stream(CATALOG_LANE))
            .await;
    });
}

/// One catalog event naming `id` (what it says does not matter to the log).
fn change(id: &str) -> Vec<Event> {
    vec![Event::PromotionStarted {
        promotion_id: id.to_owned(),
        at_ms: T0_MS,
    }]
}

fn spec(id: &str, sku: &str) -> PromotionSpec {
    PromotionSpec {
        guard: Default::default(),
        id: Some(id.to_owned()),
        name: format!("promotion {id}"),
        starts_at_ms: T0_MS,
        ends_at_ms: T0_MS + 3_600_000,
        payment_timeout_s: 900,
        require_token: false,
        token_multiplier: 5,
        items: vec![ItemSpec {
            sku: sku.to_owned(),
            title: None,
            stock: 5,
            price_cents: 1_000,
            per_user_limit: 1,
        }],
    }
}

/// A cluster engine of two partitions on an in-memory journal, over the catalog `log`,
/// started with no catalog.
fn cluster_engine(log: &Arc<JetStreamCatalogLog>) -> Engine {
    cluster_engine_from(log, Recovery::empty())
}

/// [`cluster_engine`] started from `catalog`.
fn cluster_engine_from(log: &Arc<JetStreamCatalogLog>, catalog: Recovery) -> Engine {
    let ports = Ports {
        journal: MemoryJournal::with_partitions(2),
        clock: ManualClock::new(T0_MS),
        sink: Arc::new(NullSink),
    };
    let catalog_log: Arc<dyn CatalogLog> = log.clone();
    let cluster = ClusterPorts {
        ownership: StaticOwnership::all_held(2),
        catalog_log: Some(catalog_log),
    };
    let config = EngineConfig {
        shards: 2,
        snapshot_every_events: 0,
        ..EngineConfig::default()
    };
    Engine::start_cluster(config, ports, cluster, catalog).expect("starts")
}

#[test]
fn appends_from_two_nodes_land_one_at_each_position() {
    let Some(t) = Setup::new() else { return };
    for round in 0..20u64 {
        let barrier = Arc::new(Barrier::new(2));
        let outcomes: Vec<Result<u64, CatalogAppendError>> = t
            .logs
            .iter()
            .enumerate()
            .map(|(node, log)| {
                let (log, barrier) = (Arc::clone(log), Arc::clone(&barrier));
                let events = change(&format!("r{round}-n{node}"));
                std::thread::spawn(move || {
                    barrier.wait();
                    log.append_if(round, &events)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().expect("the appender ends"))
            .collect();
        let landed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(landed, vec![&(round + 1)], "round {round}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Err(CatalogAppendError::Behind { .. }))),
            "round {round}: the other is behind: {outcomes:?}"
        );
    }
    let read = t
        .logs
        .each_ref()
        .map(|log| log.read_after(0).expect("reads"));
    assert_eq!(read[0].len(), 20);
    assert_eq!(read[0], read[1], "both nodes read one log");
    assert_eq!(
        t.logs[1].read_after(19).expect("reads").len(),
        1,
        "a read after a position starts there"
    );
    delete_catalog(&t.runtime, &t.urls, &t.prefix);
}

#[test]
fn two_engines_racing_creates_that_share_a_sku_never_both_succeed() {
    let Some(t) = Setup::new() else { return };
    let engines = t.logs.each_ref().map(cluster_engine);
    let driver = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    const ROUNDS: usize = 100;
    for round in 0..ROUNDS {
        let sku = format!("s{round}");
        let (a, b) = driver.block_on(async {
            tokio::join!(
                engines[0].create_promotion(spec(&format!("a{round}"), &sku)),
                engines[1].create_promotion(spec(&format!("b{round}"), &sku)),
            )
        });
        let outcomes = [a.map(|c| c.created), b.map(|c| c.created)];
        assert_eq!(
            outcomes.iter().filter(|o| **o == Ok(true)).count(),
            1,
            "round {round}: {outcomes:?}"
        );
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Err(Error::SkuInOtherPromotion { .. }))),
            "round {round}: {outcomes:?}"
        );
    }
    let ids = engines.each_ref().map(|engine| {
        driver
            .block_on(engine.catch_up_catalog())
            .expect("caught up");
        sorted_ids(engine)
    });
    assert_eq!(ids[0].len(), ROUNDS);
    assert_eq!(ids[0], ids[1], "both catalogs hold the same promotions");
    for engine in engines {
        driver.block_on(engine.shutdown()).expect("stops");
    }
    delete_catalog(&t.runtime, &t.urls, &t.prefix);
}

#[test]
fn a_change_made_on_one_node_is_applied_by_the_other_s_tail_without_asking() {
    let Some(t) = Setup::new() else { return };
    let names = Names::new(&t.prefix);
    let engines = t.logs.each_ref().map(cluster_engine);
    let tail = t.runtime.block_on(async {
        let client = jetstream_common::client(&t.urls).await;
        CatalogTail::start(
            &client,
            &names,
            Arc::clone(&t.logs[1]),
            engines[1].clone(),
            None,
        )
        .await
        .expect("the tail starts")
    });
    let mut later = spec("p1", "sku");
    later.starts_at_ms = T0_MS + 3_600_000;
    later.ends_at_ms = T0_MS + 7_200_000;
    t.runtime
        .block_on(engines[0].create_promotion(later))
        .expect("created on A");
    let status = || {
        engines[1]
            .public_promotion("p1")
            .ok()
            .map(|promotion| promotion.status)
    };
    let seen = eventually(|| status().is_some());
    println!("B applied A's create after {seen:?}");
    assert_eq!(status(), Some(PromotionStatus::Upcoming), "B knows p1");
    t.runtime
        .block_on(engines[0].start_promotion("p1"))
        .expect("started on A");
    let seen = eventually(|| status() == Some(PromotionStatus::Live));
    println!("B applied A's start after {seen:?}");
    assert_eq!(status(), Some(PromotionStatus::Live), "B knows the start");
    t.runtime.block_on(tail.stop());
    for engine in engines {
        t.runtime.block_on(engine.shutdown()).expect("stops");
    }
    delete_catalog(&t.runtime, &t.urls, &t.prefix);
}

/// Polls `check` every 20 ms for at most 10 s (a bound on a hang, not a target); how long
/// it took to hold.
fn eventually(check: impl Fn() -> bool) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !check() && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    started.elapsed()
}

#[test]
fn a_node_that_starts_later_starts_from_the_whole_catalog_log() {
    let Some(t) = Setup::new() else { return };
    let early = cluster_engine(&t.logs[0]);
    for n in 0..3 {
        t.runtime
            .block_on(early.create_promotion(spec(&format!("p{n}"), &format!("s{n}"))))
            .expect("created");
    }
    t.runtime
        .block_on(early.stop_promotion("p1"))
        .expect("stopped");
    let catalog = t.runtime.block_on(t.logs[1].recovery(7)).expect("read");
    let late = cluster_engine_from(&t.logs[1], catalog);
    assert_eq!(late.catalog_seq(), 4, "the catalog starts at the log's end");
    let status = |id: &str| late.public_promotion(id).map(|p| p.status);
    assert_eq!(status("p0"), Ok(PromotionStatus::Live));
    assert_eq!(
        status("p1"),
        Ok(PromotionStatus::Ended),
        "the stop is applied"
    );
    // It validates against what it read: a SKU of a live promotion is refused at once.
    let taken = t.runtime.block_on(late.create_promotion(spec("q0", "s0")));
    assert!(
        matches!(taken, Err(Error::SkuInOtherPromotion { .. })),
        "{taken:?}"
    );
    t.runtime
        .block_on(late.create_promotion(spec("q9", "s9")))
        .expect("created at the log's end");
    t.runtime
        .block_on(early.catch_up_catalog())
        .expect("caught up");
    assert_eq!(sorted_ids(&early), sorted_ids(&late));
    for engine in [early, late] {
        t.runtime.block_on(engine.shutdown()).expect("stops");
    }
    delete_catalog(&t.runtime, &t.urls, &t.prefix);
}

/// The ids of the promotions `engine` knows, sorted.
fn sorted_ids(engine: &Engine) -> Vec<String> {
    let mut ids: Vec<String> = engine
        .public_promotions()
        .into_iter()
        .map(|p| p.id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_change_waits_until_every_live_node_applied_it_and_names_the_late_ones() {
    let Some(t) = Setup::new() else { return };
    let names = Names::new(&t.prefix);
    let engines = t.logs.each_ref().map(cluster_engine);
    let nodes = vec!["a".to_owned(), "b".to_owned()];
    let (acks_a, tail_b) = t.runtime.block_on(async {
        let client = jetstream_common::client(&t.urls).await;
        let acks_a = CatalogAcks::start(&client, &t.prefix, "a")
            .await
            .expect("listens");
        let acks_b = CatalogAcks::start(&client, &t.prefix, "b")
            .await
            .expect("listens");
        let tail_b = CatalogTail::start(
            &client,
            &names,
            Arc::clone(&t.logs[1]),
            engines[1].clone(),
            Some(Arc::new(acks_b)),
        )
        .await
        .expect("the tail starts");
        (acks_a, tail_b)
    });
    let wait_for_b = |seq: u64| {
        let started = std::time::Instant::now();
        let late = t
            .runtime
            .block_on(acks_a.wait_applied(seq, &nodes, ACK_WAIT));
        (late, started.elapsed())
    };
    t.runtime
        .block_on(engines[0].create_promotion(spec("p1", "s1")))
        .expect("created on A");
    let (late, waited) = wait_for_b(engines[0].catalog_seq());
    println!("B acknowledged A's create after {waited:?}");
    assert!(late.is_empty(), "B applies and announces: {late:?}");
    assert!(
        engines[1].public_promotion("p1").is_ok(),
        "B knows p1 once acknowledged"
    );

    // B's tail stops: A's next change is not acknowledged, and A hears who is late.
    t.runtime.block_on(tail_b.stop());
    t.runtime
        .block_on(engines[0].create_promotion(spec("p2", "s2")))
        .expect("created on A");
    let (late, waited) = wait_for_b(engines[0].catalog_seq());
    assert_eq!(late, vec!["b".to_owned()]);
    assert!(waited >= ACK_WAIT, "waited its whole bound: {waited:?}");
    acks_a.stop();
    for engine in engines {
        t.runtime.block_on(engine.shutdown()).expect("stops");
    }
    delete_catalog(&t.runtime, &t.urls, &t.prefix);
}
