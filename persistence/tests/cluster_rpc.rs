//! The link between nodes (cluster plan, step 8) on a real NATS: a call handed to the owner
//! gets the owner's own answer (a retry the same order, a refusal the same error), many
//! calls share a frame, and a call nobody answers is "unknown" for a write and "not done"
//! for nothing else.
//!
//! Needs `SECKILL_TEST_NATS_URLS` (comma-separated `nats://` URLs); skipped without it.

mod jetstream_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jetstream_common::{client, nats_urls, unique_prefix};
use seckill_engine::{
    Engine, EngineConfig, Error, ItemSpec, ManualClock, MemoryJournal, NullSink, OrderStatus,
    Ports, PromotionSpec, PurchaseRequest, Recovery,
};
use seckill_persistence::cluster::rpc::{ForwardError, Forwarder, RpcServer};
use seckill_persistence::cluster::wire::{Answer, Op};

const T0_MS: i64 = 1_800_000_000_000;
/// A bound on a hang, not a performance figure.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The owner: a one-node engine selling `sku` (stock `stock`, one per user).
fn owner(stock: u64) -> Engine {
    owner_guarded(stock, Default::default())
}

/// [`owner`], its promotion guarded by `guard`.
fn owner_guarded(stock: u64, guard: seckill_engine::PromotionGuard) -> Engine {
    let ports = Ports {
        journal: MemoryJournal::new(),
        clock: ManualClock::new(T0_MS),
        sink: Arc::new(NullSink),
    };
    let config = EngineConfig {
        shards: 2,
        snapshot_every_events: 0,
        ..EngineConfig::default()
    };
    let engine = Engine::start(config, ports, Recovery::empty()).expect("starts");
    let spec = PromotionSpec {
        guard,
        id: Some("p".into()),
        name: "p".into(),
        starts_at_ms: T0_MS,
        ends_at_ms: T0_MS + 3_600_000,
        payment_timeout_s: 900,
        require_token: false,
        token_multiplier: 5,
        items: vec![ItemSpec {
            sku: "s".into(),
            title: None,
            stock,
            price_cents: 100,
            per_user_limit: 1,
        }],
    };
    futures::executor::block_on(engine.create_promotion(spec)).expect("created");
    engine
}

fn purchase(user: &str) -> Op {
    Op::Purchase {
        promotion_id: "p".into(),
        sku: "s".into(),
        user_id: user.into(),
        request: PurchaseRequest {
            request_id: format!("r-{user}"),
            quantity: 1,
            token: None,
        },
        claim: None,
    }
}

/// The owner's server as node "b" and a forwarder of node "a", under a fresh prefix.
async fn link(urls: &[String], engine: &Engine) -> (RpcServer, Forwarder) {
    let prefix = unique_prefix();
    let server = RpcServer::start(&client(urls).await, &prefix, "b", engine.clone())
        .await
        .expect("serves");
    let forwarder = Forwarder::start(&client(urls).await, &prefix, "a", || 0)
        .await
        .expect("forwards");
    (server, forwarder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_call_gets_the_owner_s_own_answer() {
    let Some(urls) = nats_urls() else { return };
    let engine = owner(2);
    let (_server, a) = link(&urls, &engine).await;
    let call = |op: Op| a.call("b", op, ANSWER_WITHIN);

    let Ok(Answer::Purchased(first)) = call(purchase("u1")).await else {
        panic!("u1 buys through the link");
    };
    assert!(first.created);
    let Ok(Answer::Purchased(again)) = call(purchase("u1")).await else {
        panic!("u1's retry");
    };
    assert_eq!(
        (again.order.clone(), again.created),
        (first.order.clone(), false),
        "a retry answers the same order"
    );
    let direct = engine
        .order(&first.order.order_id, None)
        .await
        .expect("read");
    let read = call(Op::ReadOrder {
        order_id: first.order.order_id.clone(),
        user_id: Some("u1".into()),
    })
    .await;
    assert_eq!(
        read,
        Ok(Answer::Order(direct)),
        "a forwarded read is the owner's read"
    );

    assert!(matches!(
        call(purchase("u2")).await,
        Ok(Answer::Purchased(_))
    ));
    assert_eq!(
        call(purchase("u3")).await,
        Ok(Answer::Refused(Error::SoldOut)),
        "a refusal travels as the owner's error"
    );
    let Ok(Answer::Order(cancelled)) = call(Op::Cancel {
        order_id: first.order.order_id.clone(),
        user_id: Some("u1".into()),
    })
    .await
    else {
        panic!("u1 cancels through the link");
    };
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert!(
        matches!(call(purchase("u3")).await, Ok(Answer::Purchased(_))),
        "the cancelled unit sells again"
    );
    assert_eq!(
        call(Op::ReadOrder {
            order_id: "nonsense".into(),
            user_id: None,
        })
        .await,
        Ok(Answer::Refused(Error::NotFound))
    );
    engine.shutdown().await.expect("stops");
}

// One thread: every call task runs (and queues its call) before the link task that the
// first of them starts, so the calls are queued together for certain. On two worker
// threads the link could take each call as it came, one a frame, on a busy machine.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_calls_share_frames_and_never_oversell() {
    let Some(urls) = nats_urls() else { return };
    const STOCK: u64 = 100;
    const BUYERS: usize = 400;
    let engine = owner(STOCK);
    let (_server, a) = link(&urls, &engine).await;
    let a = Arc::new(a);
    let started = Instant::now();
    let calls: Vec<_> = (0..BUYERS)
        .map(|n| {
            let a = Arc::clone(&a);
            tokio::spawn(
                async move { a.call("b", purchase(&format!("u{n}")), ANSWER_WITHIN).await },
            )
        })
        .collect();
    let (mut bought, mut sold_out) = (0, 0);
    for call in calls {
        match call.await.expect("the call task ends") {
            Ok(Answer::Purchased(_)) => bought += 1,
            Ok(Answer::Refused(Error::SoldOut)) => sold_out += 1,
            other => panic!("a buyer hears a purchase or sold out: {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    let stats = a.stats();
    println!(
        "{BUYERS} forwarded purchases in {elapsed:?}: {} frames ({:.1} calls a frame), {} late answers",
        stats.frames_sent,
        stats.calls_sent as f64 / stats.frames_sent.max(1) as f64,
        stats.late_answers
    );
    assert_eq!(bought, STOCK, "exactly the stock is sold");
    assert_eq!(sold_out, BUYERS as u64 - STOCK);
    assert_eq!(stats.calls_sent, BUYERS as u64);
    assert!(
        stats.frames_sent < stats.calls_sent,
        "calls queued together share a frame: {stats:?}"
    );
    engine.shutdown().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_nobody_answers_is_unknown_for_a_write_and_harmless_for_a_read() {
    let Some(urls) = nats_urls() else { return };
    let a = Forwarder::start(&client(&urls).await, &unique_prefix(), "a", || 0)
        .await
        .expect("forwards");
    let within = Duration::from_millis(300);
    assert_eq!(
        a.call("nobody", purchase("u1"), within).await,
        Err(ForwardError::Timeout {
            owner: "nobody".into(),
            write: true
        })
    );
    assert_eq!(
        a.call(
            "nobody",
            Op::ReadOrder {
                order_id: "x".into(),
                user_id: None
            },
            within
        )
        .await,
        Err(ForwardError::Timeout {
            owner: "nobody".into(),
            write: false
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_call_carries_the_claim_its_rule_reads_and_the_owner_decides_on_it() {
    let Some(urls) = nats_urls() else { return };
    let guard = seckill_engine::PromotionGuard {
        human_check: seckill_engine::HumanCheck::None,
        eligibility: Some(seckill_engine::Eligibility {
            claim: "level".into(),
            rule: seckill_engine::EligibilityRule::Min(3),
        }),
    };
    let engine = owner_guarded(5, guard);
    let (_server, a) = link(&urls, &engine).await;
    let buy = |user: &str, level: Option<f64>| {
        let mut op = purchase(user);
        if let Op::Purchase { claim, .. } = &mut op {
            *claim = level.map(|l| ("level".to_owned(), seckill_engine::ClaimValue::Number(l)));
        }
        a.call("b", op, ANSWER_WITHIN)
    };
    assert!(
        matches!(buy("senior", Some(5.0)).await, Ok(Answer::Purchased(_))),
        "an eligible shopper's claim travels with the call"
    );
    assert_eq!(
        buy("junior", Some(1.0)).await,
        Ok(Answer::Refused(Error::NotEligible))
    );
    assert_eq!(
        buy("anonymous", None).await,
        Ok(Answer::Refused(Error::NotEligible)),
        "no claim, no sale, as on the owner itself"
    );
    engine.shutdown().await.expect("stops");
}
