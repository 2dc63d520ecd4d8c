//! CPU time per accepted purchase through the public API (in-memory journal).
//!
//! Wall-clock throughput on a shared 2-core machine moves with whatever else runs; the CPU
//! time the process spends per purchase does not, so this is the figure to compare between
//! two versions of the engine. Run:
//! `cargo run --release -p seckill-benches --example accept_cpu -- [purchases] [callers] [items]`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use seckill_benches::{buy_all, create_live, engine, runtime};
use seckill_engine::MemoryJournal;

fn cpu_time_s() -> f64 {
    // /proc/self/stat fields 14 and 15: user and system time in clock ticks (100 Hz here).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let purchases: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let callers: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let items: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let rt = runtime();
    rt.block_on(async {
        let engine = engine(MemoryJournal::discarding());
        let live = create_live(&engine, items).await;
        let per_caller = purchases / callers;
        let cpu_before_s = cpu_time_s();
        let started = Instant::now();
        buy_all(&engine, &live, callers, per_caller, "").await;
        let wall_s = started.elapsed().as_secs_f64();
        let cpu_s = cpu_time_s() - cpu_before_s;
        let done = (per_caller * callers) as f64;
        println!(
            "items: {items}  accepted purchases: {done:.0}  wall: {wall_s:.2} s ({:.0}/s)  cpu: {cpu_s:.2} s ({:.2} us cpu per purchase)",
            done / wall_s,
            cpu_s * 1e6 / done
        );
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let peak = status.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: ?");
        println!("peak resident memory {}", peak.trim_start_matches("VmHWM:").trim());
        engine.shutdown().await.expect("shutdown");
    });
}
