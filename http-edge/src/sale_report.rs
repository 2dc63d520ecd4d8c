//! What the operator routes read from SQL (the sale report) and from the SQL flusher (its
//! lag), behind one small trait: the storage implements it when it runs a flusher, so the
//! edge compiles (and its tests run) without the persistence crate.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use utoipa::ToSchema;

/// A future of the report, boxed: the trait is used as `dyn`.
pub type ReportFuture<'a> = Pin<Box<dyn Future<Output = Result<ReportView, String>> + Send + 'a>>;

/// The SQL side of the operator console: the flusher's lag and the sale report.
pub trait SqlReader: Send + Sync + Debug {
    /// The SQL flusher's lag in seconds (the oldest event not in SQL yet).
    fn flusher_lag_s(&self) -> f64;
    /// `promotion_id`'s report from the SQL views; `Err` says why the database did not
    /// answer.
    fn report<'a>(&'a self, promotion_id: &'a str) -> ReportFuture<'a>;
}

/// `GET /admin/promotions/{id}/report`: the sale as SQL holds it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ReportView {
    #[schema(example = "double11-0001")]
    pub promotion_id: String,
    /// Always the four statuses, in the order `pending_payment`, `paid`, `cancelled`,
    /// `expired` (zeros where there are none).
    pub by_status: Vec<StatusLine>,
    pub funnel: Funnel,
    /// Orders made per minute of the sale (by `created_at`), oldest first.
    pub orders_per_minute: Vec<MinuteLine>,
    /// How far SQL trails the engine: the flusher's lag, in seconds.
    pub sql_lag_s: Option<f64>,
}

/// One order status's orders, units and revenue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct StatusLine {
    #[schema(value_type = String, example = "paid")]
    pub status: &'static str,
    pub orders: u64,
    pub units: u64,
    /// Sum of `amount_cents`.
    pub revenue_cents: i64,
}

/// Tokens issued, orders made, orders paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Funnel {
    pub tokens_issued: u64,
    pub orders: u64,
    pub paid_orders: u64,
}

/// Orders made in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct MinuteLine {
    /// The minute's start, RFC 3339 UTC.
    #[schema(format = DateTime, example = "2026-11-11T00:01:00Z")]
    pub minute: String,
    pub orders: u64,
    pub units: u64,
}
