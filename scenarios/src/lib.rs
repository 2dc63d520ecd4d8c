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
//! - `pow`: proof-of-work answers as a shopper's page computes them, on a thread of the
//!   shopper's own or on one shared by every shopper behind an address.
//! - `bots`: a bot farm and people compete for one item under each setting of the checks
//!   against bots (per-address limit, proof of work); who got the stock, and the invariants.

pub mod bots;
pub mod check;
pub mod client;
pub mod cluster;
pub mod compare;
pub mod pow;
pub mod report;
pub mod run;
pub mod scenario;
pub mod server;
pub mod soak;
pub mod sql;
