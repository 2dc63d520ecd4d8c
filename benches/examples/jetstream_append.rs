//! Conditional appends per second to replicated JetStream streams, one partition versus
//! several in parallel, in one run, on the cluster `.ci/nats-cluster start DIR` starts
//! (three servers on loopback, `sync_interval: always`, replicas 3).
//!
//! Each append stands for one shard batch for one partition, `events` purchase events of
//! about 150 bytes each; each writer has one append in flight (see `PartitionLog`).
//!
//! Run: `SECKILL_TEST_NATS_URLS=... cargo run --release -p seckill-benches --example jetstream_append -- [appends per partition] [events per append] [partitions]`.

use std::time::Instant;

use async_nats::ServerAddr;
use bytes::Bytes;
use seckill_benches::{env_u64, runtime, unique};
use seckill_persistence::jetstream::{PartitionLog, StreamSettings};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut next = |default: u64| args.next().and_then(|a| a.parse().ok()).unwrap_or(default);
    let appends = next(1_000);
    let events = next(64);
    let partitions = next(16).max(1);
    let urls =
        std::env::var("SECKILL_TEST_NATS_URLS").unwrap_or_else(|_| "nats://127.0.0.1:14222".into());
    let replicas = env_u64("SECKILL_BENCH_REPLICAS", 3) as usize;
    runtime().block_on(async {
        let servers: Vec<ServerAddr> = urls
            .split(',')
            .map(|url| url.trim().parse().expect("a NATS URL"))
            .collect();
        let client = async_nats::connect(servers).await.expect("NATS answers");
        let js = async_nats::jetstream::new(client);
        let payload = Bytes::from(vec![b'x'; (events * 150) as usize]);
        for parallel in [1, partitions] {
            let started = Instant::now();
            let mut writers = Vec::new();
            for _ in 0..parallel {
                let (js, payload) = (js.clone(), payload.clone());
                let settings = StreamSettings {
                    replicas,
                    ..StreamSettings::default()
                };
                writers.push(tokio::spawn(async move {
                    let stream = format!("SECKILL_BENCH_{}", unique());
                    let subject = format!("seckill.bench.{stream}");
                    let mut log = PartitionLog::open(js.clone(), &stream, &subject, &settings, 1)
                        .await
                        .expect("stream");
                    for _ in 0..appends {
                        log.append(payload.clone()).await.expect("appended");
                    }
                    let _ = js.delete_stream(&stream).await;
                }));
            }
            for writer in writers {
                writer.await.expect("writer");
            }
            let seconds = started.elapsed().as_secs_f64();
            let total = appends * parallel;
            println!(
                "{parallel:>3} partition(s): {total} appends of {events} events in {seconds:.2} s: {:.0} appends/s, {:.0} events/s (replicas {replicas})",
                total as f64 / seconds,
                (total * events) as f64 / seconds,
            );
        }
    });
}
