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

/// A fresh partition stream's name and subject.
fn fresh_stream() -> (String, String) {
    let stream = unique("SECKILL_TEST_P");
    let subject = format!("seckill.test.{stream}");
    (stream, subject)
}

/// The writer of epoch `epoch` on `stream`, as an owner opens it after its replay.
async fn writer(
    js: &async_nats::jetstream::Context,
    (stream, subject): &(String, String),
    epoch: u64,
) -> PartitionLog {
    PartitionLog::open(
        js.clone(),
        stream,
        subject,
        &StreamSettings::default(),
        epoch,
    )
    .await
    .expect("the stream opens")
}

#[tokio::test]
async fn a_replaced_writer_appends_nothing_after_the_takeover() {
    let Some(js) = jetstream().await else { return };
    let names = fresh_stream();
    let mut old = writer(&js, &names, 1).await;
    assert_eq!(old.append(Bytes::from_static(b"a1")).await, Ok(1));
    assert_eq!(old.append(Bytes::from_static(b"a2")).await, Ok(2));

    // The new owner replays to the tail and appends its takeover record on it.
    let mut new = writer(&js, &names, 2).await;
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
    let _ = js.delete_stream(&names.0).await;
}

#[tokio::test]
async fn a_lease_has_one_holder_and_lapses_when_not_renewed() {
    let Some(js) = jetstream().await else { return };
    let ttl = Duration::from_secs(2);
    let bucket = format!("TLEASES{:016X}", rand::random::<u64>());
    let store = Lease::bucket(&js, &bucket, ttl, 3)
        .await
        .expect("lease bucket");
    let partition = rand::random::<u32>();
    let mut a = Lease::acquire(&store, partition, "node-a", ttl)
        .await
        .expect("a takes the free lease");
    match Lease::acquire(&store, partition, "node-b", ttl).await {
        Err(LeaseError::Held { holder, .. }) => assert_eq!(holder, "node-a"),
        other => panic!("b must be refused while a holds it: {other:?}"),
    }
    let first = a.revision();
    assert!(a.is_current());
    a.renew().await.expect("a renews");
    assert!(a.revision() > first, "a renewal is a new revision");
    assert_eq!(a.epoch(), first, "the epoch stays the one it was taken at");

    // a stops renewing (a paused or dead node); b gets the lease once it lapses.
    let started = std::time::Instant::now();
    let b = loop {
        match Lease::acquire(&store, partition, "node-b", ttl).await {
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
    Lease::acquire(&store, partition, "node-c", ttl)
        .await
        .expect("a released lease is free at once")
        .release()
        .await
        .expect("release");
}

#[tokio::test]
async fn what_an_old_writer_landed_before_the_takeover_is_replayed_not_skipped() {
    let Some(js) = jetstream().await else { return };
    let names = fresh_stream();
    let mut old = writer(&js, &names, 1).await;
    old.append(Bytes::from_static(b"m1")).await.expect("append");
    // The new owner has replayed through 1; the old writer lands one more meanwhile (it may
    // have told its caller yes).
    let mut new = writer(&js, &names, 2).await;
    assert_eq!(old.append(Bytes::from_static(b"m2")).await, Ok(2));
    let takeover = new.append(Bytes::from_static(b"takeover")).await;
    assert!(
        matches!(takeover, Err(AppendError::Fenced { expected: 1, .. })),
        "{takeover:?}"
    );
    assert!(
        matches!(new.resolve().await, Err(AppendError::Fenced { .. })),
        "a message that is not the new owner's follows what it replayed"
    );
    // So the new owner replays again (m2 counts), then takes over after it.
    let mut new = writer(&js, &names, 2).await;
    assert_eq!(new.last_seq(), 2);
    assert_eq!(new.read(2).await.expect("read"), Bytes::from_static(b"m2"));
    assert_eq!(new.append(Bytes::from_static(b"takeover")).await, Ok(3));
    assert!(old.append(Bytes::from_static(b"m3")).await.is_err());
    let _ = js.delete_stream(&names.0).await;
}
