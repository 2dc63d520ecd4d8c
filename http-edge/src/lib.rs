//! # seckill-http-edge
//!
//! The HTTP face of seckill (the contract is api.md) and the `seckill` binary. Only this
//! crate knows HTTP and JSON; the engine decides, the persistence crate stores.
//!
//! Layout (each module one job; no two modules import each other):
//! - `config`: flags, `SECKILL_*` variables, the TOML file and defaults, in that order.
//! - `state`: what handlers share: the engine (once recovered), credentials, limiters,
//!   the metrics registry.
//! - `auth`: admin bearer key (constant-time), HS256 JWT (`exp`, `nbf`, optional `aud` /
//!   `iss`, a pinned algorithm), or the trusted `X-User-Id` header. Its extractors read the
//!   credentials through the `AuthSource` trait, which `state` implements.
//! - `claims`: a shopper's claims (JWT payload or `X-User-Claim-*`), read lazily, for the
//!   promotions with an eligibility rule.
//! - `human`: the human checks: stateless proof-of-work challenges (good once) and the
//!   captcha verifier (siteverify).
//! - `client_addr`: the client's address (the peer, or behind `--trusted-proxies` the
//!   rightmost untrusted `X-Forwarded-For` / `Forwarded` address).
//! - `error`: `AppError`, the one place where every failure gets its status and api.md code.
//! - `extract`: JSON body and path extractors whose rejections are `AppError`s (64 KiB limit,
//!   400 naming the field).
//! - `limit`: per-shopper, per-route rate limits and a per-address limit (governor), with
//!   bounded keyspaces.
//! - `views`: api.md's JSON shapes and the RFC 3339 conversions.
//! - `routes`: the router, its handlers, JSON 404/405, and the metrics/timeout/panic layers;
//!   the operator console's page, live stream and report, and `GET /openapi.json`.
//! - `live`: the live meters of watched promotions (orders, refusals by code, latency).
//! - `sale_report`: the sale report's JSON and `SqlReader`, the SQL side the storage gives
//!   the operator routes (flusher lag, report).
//! - `metric_docs`: every metric's name and help text, described at start-up.
//! - `storage`: with `config` (its `--events` parser) the only module naming the persistence
//!   crate: RocksDB journal + SQL flusher + events deliverers,
//!   or the development-only memory log.
//! - `start_error`: `StartError`, why the server did not start (exit 2).
//! - `listen`: the listening sockets (`SO_REUSEPORT`, one per worker) and each worker's
//!   HTTP/1.1 accept loop (hyper, `TCP_NODELAY`, graceful stop).
//! - `server`: start-up in order, `run(listener, app, shutdown)` (one single-threaded runtime
//!   per core, each accepting on its own socket), graceful shutdown;
//!   `serve_with_hook` hands in-process tests the engine once ready.

pub mod auth;
pub mod claims;
pub mod client_addr;
#[cfg(feature = "persistence")]
pub mod cluster_link;
pub mod config;
pub mod error;
pub mod extract;
pub mod human;
pub mod limit;
pub mod listen;
pub mod live;
mod metric_docs;
pub mod owner_calls;
pub mod routes;
pub mod sale_report;
pub mod server;
pub mod start_error;
pub mod state;
pub mod storage;
pub mod views;

pub use config::Config;
pub use error::AppError;
pub use metric_docs::METRIC_NAMES;
pub use routes::{app, dispatch, openapi_document, Dispatch};
pub use server::{run, serve, serve_with_hook};
pub use start_error::StartError;
pub use state::{AppState, Settings};
