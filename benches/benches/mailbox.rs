//! Which mailbox should a shard have? Round trips per second of a trivial request (add one
//! to a counter the actor owns) from 256 concurrent callers on a tokio runtime, for:
//! - `thread+crossbeam`: an OS thread draining a bounded crossbeam channel (what shards use),
//! - `task+tokio-mpsc`: a tokio task draining a bounded tokio mpsc,
//! - `actix`: an actix actor on its own arbiter, `Addr::send`.
//!
//! Replies go back on a tokio oneshot (or actix's own). Run:
//! `cargo bench -p seckill-benches --bench mailbox`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use actix::{Actor, Context, Handler, Message};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use seckill_benches::runtime;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

const CALLERS: u64 = 256;
const MAILBOX_CAPACITY: usize = 65_536;

struct Add(oneshot::Sender<u64>);

fn spawn_thread_actor() -> crossbeam_channel::Sender<Add> {
    let (tx, rx) = crossbeam_channel::bounded::<Add>(MAILBOX_CAPACITY);
    std::thread::spawn(move || {
        let mut counter = 0u64;
        while let Ok(first) = rx.recv() {
            counter += 1;
            let _ = first.0.send(counter);
            while let Ok(next) = rx.try_recv() {
                counter += 1;
                let _ = next.0.send(counter);
            }
        }
    });
    tx
}

fn spawn_task_actor(rt: &tokio::runtime::Runtime) -> tokio::sync::mpsc::Sender<Add> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Add>(MAILBOX_CAPACITY);
    rt.spawn(async move {
        let mut counter = 0u64;
        while let Some(Add(reply)) = rx.recv().await {
            counter += 1;
            let _ = reply.send(counter);
        }
    });
    tx
}

struct Counter(u64);
impl Actor for Counter {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}
struct ActixAdd;
impl Message for ActixAdd {
    type Result = u64;
}
impl Handler<ActixAdd> for Counter {
    type Result = u64;
    fn handle(&mut self, _: ActixAdd, _: &mut Self::Context) -> u64 {
        self.0 += 1;
        self.0
    }
}

fn spawn_actix_actor() -> actix::Addr<Counter> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let system = actix::System::new();
        system.block_on(async move {
            let addr = Counter(0).start();
            let _ = tx.send(addr);
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("actix actor started")
}

async fn drive<F, Fut>(iters: u64, call: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let per_caller = iters.div_ceil(CALLERS);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..CALLERS {
        let call = call.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..per_caller {
                std::hint::black_box(call().await);
            }
        }));
    }
    for handle in handles {
        handle.await.expect("caller");
    }
    started.elapsed()
}

/// Benches round trips through a channel mailbox: `post` hands the request to the actor
/// without waiting (a request it drops answers 0), the reply comes back on a oneshot.
fn bench_channel<P>(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, post: P)
where
    P: Fn(Add) + Clone + Send + 'static,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let post = post.clone();
            rt.block_on(drive(iters, move || {
                let post = post.clone();
                async move {
                    let (reply, answer) = oneshot::channel();
                    post(Add(reply));
                    answer.await.unwrap_or(0)
                }
            }))
        })
    });
}

fn mailboxes(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("mailbox_round_trip");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(20);

    let thread_actor = spawn_thread_actor();
    bench_channel(&mut group, &rt, "thread+crossbeam", move |add| {
        let _ = thread_actor.try_send(add);
    });

    let task_actor = spawn_task_actor(&rt);
    bench_channel(&mut group, &rt, "task+tokio-mpsc", move |add| {
        let _ = task_actor.try_send(add);
    });

    let actix_actor = spawn_actix_actor();
    group.bench_function("actix", |b| {
        b.iter_custom(|iters| {
            let addr = actix_actor.clone();
            rt.block_on(drive(iters, move || {
                let addr = addr.clone();
                async move { addr.send(ActixAdd).await.unwrap_or(0) }
            }))
        })
    });
    group.finish();
}

criterion_group!(benches, mailboxes);
criterion_main!(benches);
