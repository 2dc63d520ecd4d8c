//! seckill-scenarios: named flash-sale scenarios, a runner that plays them against a
//! server and checks the invariants afterwards, the side-by-side comparison with the Redis +
//! Lua baseline (crate `seckill-baseline`), and the bounded-memory soak.
//!
//! Layout:
//! - `scenario`: the TOML scenario file (promotion + waves of shoppers), parsed and validated.
//! - `client`: a keep-alive HTTP/1.1 client speaking api.md, shoppers in header or JWT mode.
//! - `server`: starts `seckill serve` (or the baseline) on a free port in a temp directory,
//!   SIGKILLs and restarts it for restart scenarios.
//! - `run`: plays the waves (closed or open loop) and gathers the state for the checks.
//! - `check`: the pure invariant checker (no oversell, per-user limit, acknowledged orders
//!   exist, stock balance, SQL equals engine).
//! - `sql`: reads the SQLite `orders` table read-only.
//! - `report`: latency histograms, refusals, timeline; text, JSON and SVG.
//! - `compare`: plays the same scenario against seckill and the baseline, side by side.
//! - `soak`: millions of distinct shoppers refused (sold out, ended, rate limited) while the
//!   server's resident memory is sampled; fails when it grows past a bound.

pub mod check;
pub mod client;
pub mod compare;
pub mod report;
pub mod run;
pub mod scenario;
pub mod server;
pub mod soak;
pub mod sql;
