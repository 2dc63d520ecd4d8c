//! Fencing on a real three-server JetStream cluster (`.ci/nats-cluster start DIR`): a writer
//! that lost its partition can never append after the new owner's takeover record, and a
//! lease is held by one node at a time and lapses when not renewed.
//!
//! Needs `SECKILL_TEST_NATS_URLS` (comma-separated `nats://` URLs); skipped without it.

use std::time::Duration;

use async_nats::ServerAddr;
use bytes::Bytes;
use seckill_persistence::jetstream::{
    AppendError, Lease, LeaseError, PartitionLog, StreamSettings,
};

/// A bound on waiting for a lease to lapse; it means "never lapsed", not "slow".
const LAPSE_WAIT_MAX: Duration = Duration::from_secs(30);

async fn jetstream() -> Option<async_nats::jetstream::Context> {
    let Ok(urls) = std::env::var("SECKILL_TEST_NATS_URLS") else {
        eprintln!("skipped: SECKILL_TEST_NATS_URLS is not set");
        return None;
    };
    let servers: Vec<ServerAddr> = urls
        .split(',')
        .map(|url| url.trim().parse().expect("a NATS URL"))
        .collect();
    let client = async_nats::connect(servers).await.expect("NATS answers");
    Some(async_nats::jetstream::new(client))
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

#[tokio::test]
async fn a_replaced_writer_appends_nothing_after_the_takeover() {
    let Some(js) = jetstream().await else { return };
    let stream = unique("SECKILL_TEST_P");
    let subject = format!("seckill.test.{stream}");
    let settings = StreamSettings::default();
    let mut old = PartitionLog::open(js.clone(), &stream, &subject, &settings, 1)
        .await
        .expect("open");
    assert_eq!(old.append(Bytes::from_static(b"a1")).await, Ok(1));
    assert_eq!(old.append(Bytes::from_static(b"a2")).await, Ok(2));

    // The new owner replays to the tail and appends its takeover record on it.
    let mut new = PartitionLog::open(js.clone(), &stream, &subject, &settings, 2)
        .await
        .expect("open");
    assert_eq!(new.last_seq(), 2);
    assert_eq!(new.append(Bytes::from_static(b"takeover")).await, Ok(3));

    // The old writer still believes the stream is at 2: every append of its is refused.
    for attempt in 0..3 {
        let refused = old.append(Bytes::from(format!("late-{attempt}"))).await;
        assert!(
            matches!(refused, Err(AppendError::Fenced { expected: 2, .. })),
            "{refused:?}"
        );
    }
    assert_eq!(new.append(Bytes::from_static(b"n1")).await, Ok(4));
    for (seq, payload) in [(1, "a1"), (2, "a2"), (3, "takeover"), (4, "n1")] {
        assert_eq!(new.read(seq).await.expect("read"), Bytes::from(payload));
    }
    // Reading the tail tells the old writer the same thing.
    assert!(matches!(
        old.resolve().await,
        Err(AppendError::Fenced { .. })
    ));
    let _ = js.delete_stream(&stream).await;
}

#[tokio::test]
async fn a_lease_has_one_holder_and_lapses_when_not_renewed() {
    let Some(js) = jetstream().await else { return };
    let store = Lease::bucket(&js, Duration::from_secs(2), 3)
        .await
        .expect("lease bucket");
    let partition = rand::random::<u32>();
    let mut a = Lease::acquire(&store, partition, "node-a")
        .await
        .expect("a takes the free lease");
    match Lease::acquire(&store, partition, "node-b").await {
        Err(LeaseError::Held { holder, .. }) => assert_eq!(holder, "node-a"),
        other => panic!("b must be refused while a holds it: {other:?}"),
    }
    let first = a.revision();
    a.renew().await.expect("a renews");
    assert!(a.revision() > first, "a renewal is a new revision");

    // a stops renewing (a paused or dead node); b gets the lease once it lapses.
    let started = std::time::Instant::now();
    let b = loop {
        match Lease::acquire(&store, partition, "node-b").await {
            Ok(lease) => break lease,
            Err(LeaseError::Held { .. }) if started.elapsed() < LAPSE_WAIT_MAX => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("the lease never lapsed: {error}"),
        }
    };
    assert!(
        b.revision() > a.revision(),
        "the new owner's epoch is higher"
    );
    match a.renew().await {
        Err(LeaseError::Held { holder, .. }) => assert_eq!(holder, "node-b"),
        other => panic!("a's renewal must fail once b holds it: {other:?}"),
    }
    b.release().await.expect("b hands the lease back");
    Lease::acquire(&store, partition, "node-c")
        .await
        .expect("a released lease is free at once")
        .release()
        .await
        .expect("release");
}

#[tokio::test]
async fn a_replaced_pipelined_writer_lands_nothing_that_counts() {
    let Some(js) = jetstream().await else { return };
    let stream = unique("SECKILL_TEST_P");
    let subject = format!("seckill.test.{stream}");
    let settings = StreamSettings::default();
    let mut old = PartitionLog::open(js.clone(), &stream, &subject, &settings, 1)
        .await
        .expect("open");
    let payloads: Vec<Bytes> = (1..=200).map(|n| Bytes::from(format!("m{n}"))).collect();
    let seqs = old.append_pipelined(payloads).await.expect("appended");
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());

    let mut new = PartitionLog::open(js.clone(), &stream, &subject, &settings, 2)
        .await
        .expect("open");
    assert_eq!(new.append(Bytes::from_static(b"takeover")).await, Ok(201));
    // The old writer's next run: the first is refused, and some of the rest may land after
    // the takeover (they find the sequence they expect); none is acknowledged.
    let late: Vec<Bytes> = (0..50).map(|n| Bytes::from(format!("late{n}"))).collect();
    let refused = old.append_pipelined(late).await;
    assert!(
        matches!(refused, Err(AppendError::Fenced { .. })),
        "{refused:?}"
    );
    assert_eq!(
        old.last_seq(),
        200,
        "the old writer acknowledged nothing more"
    );

    // The new owner steps over whatever stale messages landed, and goes on.
    let after = match new.append(Bytes::from_static(b"after")).await {
        Ok(seq) => seq,
        Err(AppendError::Fenced { .. }) => {
            new.catch_up()
                .await
                .expect("only stale messages after the takeover");
            new.append(Bytes::from_static(b"after"))
                .await
                .expect("append")
        }
        Err(error) => panic!("{error}"),
    };
    assert!(old.catch_up().await.is_err(), "the old writer stays fenced");
    let kept = new.read_fenced(1, after).await.expect("read");
    let payloads: Vec<Bytes> = kept.into_iter().map(|(_, payload)| payload).collect();
    let mut expected: Vec<Bytes> = (1..=200).map(|n| Bytes::from(format!("m{n}"))).collect();
    expected.push(Bytes::from_static(b"takeover"));
    expected.push(Bytes::from_static(b"after"));
    assert_eq!(
        payloads, expected,
        "no message of the old writer counts after the takeover"
    );
    let _ = js.delete_stream(&stream).await;
}

#[tokio::test]
async fn what_an_old_writer_landed_before_the_takeover_is_never_stepped_over() {
    let Some(js) = jetstream().await else { return };
    let stream = unique("SECKILL_TEST_P");
    let subject = format!("seckill.test.{stream}");
    let settings = StreamSettings::default();
    let mut old = PartitionLog::open(js.clone(), &stream, &subject, &settings, 1)
        .await
        .expect("open");
    old.append(Bytes::from_static(b"m1")).await.expect("append");
    // The new owner has replayed through 1; the old writer lands one more meanwhile (it may
    // have told its caller yes).
    let mut new = PartitionLog::open(js.clone(), &stream, &subject, &settings, 2)
        .await
        .expect("open");
    assert_eq!(old.append(Bytes::from_static(b"m2")).await, Ok(2));
    let takeover = new.append(Bytes::from_static(b"takeover")).await;
    assert!(
        matches!(takeover, Err(AppendError::Fenced { .. })),
        "{takeover:?}"
    );
    assert!(
        matches!(
            new.catch_up().await,
            Err(AppendError::Behind { after: 1, .. })
        ),
        "m2 counts: the new owner must replay it, not step over it"
    );
    let kept = new.read_fenced(1, 2).await.expect("read");
    assert_eq!(kept.len(), 2);
    let _ = js.delete_stream(&stream).await;
}
