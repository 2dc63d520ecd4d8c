//! Purchase decisions per second through the public async API, with the in-memory journal
//! (so the figure is the engine's, not the disk's): the accept path with one hot item and
//! with 1,000 items, and the sold-out storm. Run: `cargo bench -p seckill-benches --bench engine`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seckill_benches::{buy_all, create_live, engine, live_promotion, one_unit, runtime, unique};
use seckill_engine::{Engine, MemoryJournal};

/// Concurrent callers on the accept path: enough to keep every shard's mailbox non-empty so
/// batches form, as under a real storm.
const ACCEPT_CALLERS: u64 = 512;
/// Callers on the sold-out path: one per core; a refusal never waits.
const SOLD_OUT_CALLERS: u64 = 2;

async fn accept(engine: &Engine, items: usize, iters: u64) -> Duration {
    let live = create_live(engine, items).await;
    let users = format!("{}-", unique());
    let per_caller = iters.div_ceil(ACCEPT_CALLERS);
    let started = Instant::now();
    buy_all(engine, &live, ACCEPT_CALLERS, per_caller, &users).await;
    started.elapsed()
}

async fn sold_out(engine: &Engine, promotion_id: &str, sku: &str, iters: u64) -> Duration {
    let users: Vec<String> = (0..1024).map(|n| format!("storm-{n}")).collect();
    let per_caller = iters.div_ceil(SOLD_OUT_CALLERS);
    let started = Instant::now();
    let mut handles = Vec::new();
    for caller in 0..SOLD_OUT_CALLERS {
        let engine = engine.clone();
        let promotion_id = promotion_id.to_owned();
        let sku = sku.to_owned();
        let users = users.clone();
        handles.push(tokio::spawn(async move {
            for n in 0..per_caller {
                let user = &users[(n as usize + caller as usize) & 1023];
                let refused = engine
                    .purchase(&promotion_id, &sku, user, one_unit("r1"))
                    .await;
                debug_assert!(refused.is_err());
                std::hint::black_box(refused).ok();
            }
        }));
    }
    for handle in handles {
        handle.await.expect("caller");
    }
    started.elapsed()
}

fn purchase(c: &mut Criterion) {
    let rt = runtime();
    let engine = rt.block_on(async { engine(MemoryJournal::discarding()) });
    let mut group = c.benchmark_group("purchase");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    group.bench_function("accept/1-hot-item", |b| {
        b.iter_custom(|iters| rt.block_on(accept(&engine, 1, iters)))
    });
    group.bench_function("accept/1000-items", |b| {
        b.iter_custom(|iters| rt.block_on(accept(&engine, 1_000, iters)))
    });

    let spec = live_promotion(1, 0);
    let promotion_id = spec.id.clone().unwrap_or_default();
    let sku = spec.items[0].sku.clone();
    rt.block_on(engine.create_promotion(spec)).expect("created");
    group.bench_function("sold_out", |b| {
        b.iter_custom(|iters| rt.block_on(sold_out(&engine, &promotion_id, &sku, iters)))
    });
    group.finish();
    rt.block_on(engine.shutdown()).expect("shutdown");
}

criterion_group!(benches, purchase);
criterion_main!(benches);
