//! The help text of every metric seckill emits, and the series that exist from the start.
//!
//! The engine and the persistence crate record through the `metrics` facade and know no
//! recorder; their metrics are described here, next to the recorder that renders them, so
//! that every family of `/metrics` has its `# HELP` line (`promtool check metrics` flags a
//! family without one). A metric added anywhere in the three crates gets its entry in
//! [`METRICS`]: `tests/deploy_files.rs` scans the sources for names missing here, and checks
//! the Grafana dashboard and the alert rules of `deploy/` against [`METRIC_NAMES`].

use metrics::Unit;

/// How a metric is recorded. Which histograms are rendered with buckets and which as
/// summaries is the recorder's business (`state.rs`: buckets by name suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric's documentation.
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    pub name: &'static str,
    pub kind: MetricKind,
    pub unit: Option<Unit>,
    pub help: &'static str,
    /// Registered at zero by [`describe_all`]: an unlabelled counter or gauge that stays
    /// absent until something goes wrong would leave its alert and its panel without a
    /// series ("no data") exactly when everything is fine.
    pub zero_at_start: bool,
}

const fn counter(name: &'static str, help: &'static str, zero_at_start: bool) -> MetricDoc {
    MetricDoc {
        name,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        help,
        zero_at_start,
    }
}

const fn gauge(
    name: &'static str,
    unit: Unit,
    help: &'static str,
    zero_at_start: bool,
) -> MetricDoc {
    MetricDoc {
        name,
        kind: MetricKind::Gauge,
        unit: Some(unit),
        help,
        zero_at_start,
    }
}

const fn histogram(name: &'static str, unit: Unit, help: &'static str) -> MetricDoc {
    MetricDoc {
        name,
        kind: MetricKind::Histogram,
        unit: Some(unit),
        help,
        zero_at_start: false,
    }
}

/// How many metrics seckill emits.
const METRIC_COUNT: usize = 45;

/// Every metric the engine, the persistence crate and the edge emit, by subsystem.
pub const METRICS: [MetricDoc; METRIC_COUNT] = [
    // The HTTP edge (routes/layers.rs).
    counter(
        "seckill_http_requests_total",
        "HTTP requests answered, by route (the matched path), method, status and code (the api.md error code, ok for a success).",
        false,
    ),
    histogram(
        "seckill_http_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival to its answer, by route and method.",
    ),
    // The engine's shards (shard.rs, shards.rs).
    counter(
        "seckill_orders_accepted_total",
        "Purchases accepted (orders created), counted once their batch is durable.",
        true,
    ),
    gauge(
        "seckill_item_remaining",
        Unit::Count,
        "Units of an item free to buy now, by promotion and sku.",
        false,
    ),
    histogram(
        "seckill_shard_batch_requests",
        Unit::Count,
        "Requests a shard decided in one batch.",
    ),
    histogram(
        "seckill_journal_append_seconds",
        Unit::Seconds,
        "Time of one journal append of a shard batch, until it is durable (fsync'd, or on a JetStream quorum).",
    ),
    histogram(
        "seckill_journal_batch_events",
        Unit::Count,
        "Events in one durable shard batch.",
    ),
    counter(
        "seckill_journal_errors_total",
        "Journal appends that failed or were not answered in time; the shard is fenced or suspended.",
        true,
    ),
    counter(
        "seckill_shard_overloaded_total",
        "Requests refused because their shard's mailbox was full (answered 503 overloaded).",
        true,
    ),
    counter(
        "seckill_shard_panics_total",
        "Shard threads that died of a panic; their items answer 503 until a restart.",
        true,
    ),
    gauge(
        "seckill_shards_down",
        Unit::Count,
        "Shards whose thread died; their items answer 503 until a restart.",
        true,
    ),
    gauge(
        "seckill_shards_suspended",
        Unit::Count,
        "Shards waiting for a journal append to be answered: their writes wait, reads go on.",
        true,
    ),
    counter(
        "seckill_items_archived_total",
        "Ended items moved out of memory into the journal's archive.",
        true,
    ),
    // Snapshots (engine control.rs, snapshot.rs; persistence journal/rocks.rs).
    histogram(
        "seckill_snapshot_seconds",
        Unit::Seconds,
        "Time to save one snapshot of the engine, once the shards were copied.",
    ),
    histogram(
        "seckill_snapshot_bytes",
        Unit::Bytes,
        "Size of one saved snapshot of the engine.",
    ),
    counter(
        "seckill_snapshots_skipped_total",
        "Snapshots due but skipped because a shard is down; the log is kept whole.",
        true,
    ),
    counter(
        "seckill_snapshot_failures_total",
        "Snapshots that failed or were aborted; the log is kept whole.",
        true,
    ),
    // The RocksDB journal (persistence journal/).
    histogram(
        "seckill_log_fsync_seconds",
        Unit::Seconds,
        "Time of one fsync of the RocksDB log (group commit).",
    ),
    histogram(
        "seckill_log_batch_appends",
        Unit::Count,
        "Appends one fsync of the RocksDB log made durable.",
    ),
    histogram(
        "seckill_log_batch_events",
        Unit::Count,
        "Events one fsync of the RocksDB log made durable.",
    ),
    histogram(
        "seckill_recovery_seconds",
        Unit::Seconds,
        "Time from opening the journal to the end of its replay, at start.",
    ),
    gauge(
        "seckill_log_trimmed_through",
        Unit::Count,
        "Highest log sequence number trimmed away after a snapshot.",
        false,
    ),
    // A cluster node (persistence cluster/node.rs, cluster/rpc.rs; edge cluster_link.rs).
    gauge(
        "seckill_cluster_partitions_owned",
        Unit::Count,
        "Partitions this node's engine has installed (owns) now.",
        false,
    ),
    counter(
        "seckill_cluster_takeovers_total",
        "Partitions this node took and adopted (a join's share, a hand-over, or a dead node's).",
        false,
    ),
    counter(
        "seckill_cluster_handovers_total",
        "Partitions this node handed over cleanly (engine released, then the lease deleted).",
        false,
    ),
    counter(
        "seckill_cluster_partitions_lost_total",
        "Partition leases this node lost to another node (paused or cut off past the TTL).",
        false,
    ),
    counter(
        "seckill_cluster_views_total",
        "Partition views (an owner's gate figures, for the cheap refusals) this node sent \
         (`direction=\"sent\"`) and heard from other nodes (`\"heard\"`).",
        false,
    ),
    counter(
        "seckill_rpc_calls_served_total",
        "Calls other nodes handed to this one, as the owner of their items.",
        false,
    ),
    counter(
        "seckill_rpc_frames_refused_total",
        "Frames from other nodes refused unread (another wire version, or undecodable).",
        false,
    ),
    counter(
        "seckill_cluster_forward_timeouts_total",
        "Writes handed to another node that got no answer in time (answered outcome_unknown).",
        false,
    ),
    histogram(
        "seckill_cluster_forward_seconds",
        Unit::Seconds,
        "Time to get the owner's answer to a call handed to another node.",
    ),
    // The SQL flusher (persistence sql/flusher.rs).
    gauge(
        "seckill_flusher_lag_events",
        Unit::Count,
        "Journal events not in SQL yet (estimated for batches not read yet), over every lane.",
        false,
    ),
    gauge(
        "seckill_flusher_lag_seconds",
        Unit::Seconds,
        "Age of the oldest journal event not in SQL yet; 0 when caught up.",
        false,
    ),
    gauge(
        "seckill_flusher_lanes_behind",
        Unit::Count,
        "Journal lanes whose SQL cursor is behind their log.",
        false,
    ),
    gauge(
        "seckill_flusher_cursor_seq",
        Unit::Count,
        "Last journal sequence number written to SQL, by lane.",
        false,
    ),
    counter(
        "seckill_flusher_rows_written_total",
        "Order rows the SQL flusher wrote.",
        true,
    ),
    counter(
        "seckill_flusher_errors_total",
        "SQL flusher rounds that failed; each is retried with a backoff.",
        true,
    ),
    counter(
        "seckill_flusher_gaps_skipped_total",
        "Holes in the journal the SQL flusher passed after waiting for them.",
        true,
    ),
    // Order events (persistence events/).
    gauge(
        "seckill_events_up",
        Unit::Count,
        "1 while a target's delivery task runs; 0 after it stopped on an error it cannot retry, by target.",
        false,
    ),
    gauge(
        "seckill_events_lag_events",
        Unit::Count,
        "Events not delivered to a target yet, by target.",
        false,
    ),
    gauge(
        "seckill_events_lag_seconds",
        Unit::Seconds,
        "Age of the oldest event not delivered to a target yet (0 when caught up), by target.",
        false,
    ),
    counter(
        "seckill_events_delivered_total",
        "Events a target acknowledged, by target.",
        false,
    ),
    counter(
        "seckill_events_failures_total",
        "Failed attempts to read, deliver or checkpoint a target's events (each is retried), by target.",
        false,
    ),
    counter(
        "seckill_events_webhook_refused_total",
        "Webhook answers neither 2xx nor worth a retry by HTTP's rules (a broken endpoint, a wrong secret), retried all the same, by target.",
        false,
    ),
    counter(
        "seckill_events_gaps_skipped_total",
        "Holes in the journal a target's delivery passed after waiting for them, by target.",
        false,
    ),
];

/// The names of [`METRICS`], in the same order.
pub const METRIC_NAMES: &[&str] = &names(&METRICS);

const fn names(metrics: &[MetricDoc; METRIC_COUNT]) -> [&'static str; METRIC_COUNT] {
    let mut names = [""; METRIC_COUNT];
    let mut i = 0;
    while i < METRIC_COUNT {
        names[i] = metrics[i].name;
        i += 1;
    }
    names
}

/// Describes every metric to the installed recorder and registers the unlabelled counters
/// and gauges marked `zero_at_start`. Call it once the recorder is installed (a description
/// given to no recorder is lost). Safe to call again: a description is replaced by the same
/// one, and registering adds 0 to a value that may already have moved.
pub fn describe_all() {
    for doc in &METRICS {
        describe(doc);
    }
    for doc in METRICS.iter().filter(|doc| doc.zero_at_start) {
        register_at_zero(doc);
    }
}

fn describe(doc: &MetricDoc) {
    match (doc.kind, doc.unit) {
        (MetricKind::Counter, Some(unit)) => metrics::describe_counter!(doc.name, unit, doc.help),
        (MetricKind::Counter, None) => metrics::describe_counter!(doc.name, doc.help),
        (MetricKind::Gauge, Some(unit)) => metrics::describe_gauge!(doc.name, unit, doc.help),
        (MetricKind::Gauge, None) => metrics::describe_gauge!(doc.name, doc.help),
        (MetricKind::Histogram, Some(unit)) => {
            metrics::describe_histogram!(doc.name, unit, doc.help)
        }
        (MetricKind::Histogram, None) => metrics::describe_histogram!(doc.name, doc.help),
    }
}

/// Adding zero creates the series without changing a value another thread already set: a
/// shard that died before this call keeps its count.
fn register_at_zero(doc: &MetricDoc) {
    match doc.kind {
        MetricKind::Counter => metrics::counter!(doc.name).increment(0),
        MetricKind::Gauge => metrics::gauge!(doc.name).increment(0.0),
        // A histogram has no neutral sample: it appears with its first one.
        MetricKind::Histogram => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_starts_with_seckill_and_is_listed_once() {
        for (i, name) in METRIC_NAMES.iter().enumerate() {
            assert!(name.starts_with("seckill_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert!(!METRIC_NAMES[..i].contains(name), "{name} listed twice");
        }
        assert_eq!(METRIC_NAMES.len(), METRICS.len());
    }

    #[test]
    fn names_follow_the_prometheus_conventions_promtool_checks() {
        for doc in &METRICS {
            let total = doc.name.ends_with("_total");
            assert_eq!(
                total,
                doc.kind == MetricKind::Counter,
                "{}: counters, and only they, end in _total",
                doc.name
            );
            for reserved in ["_bucket", "_sum", "_count"] {
                assert!(!doc.name.ends_with(reserved), "{}", doc.name);
            }
            assert!(!doc.help.is_empty(), "{}", doc.name);
            assert!(!doc.help.contains('\n'), "{}", doc.name);
        }
    }

    #[test]
    fn only_unlabelled_counters_and_gauges_start_at_zero() {
        // The labelled ones (route, promotion, target, lane) have no series to register
        // before their first label values are known.
        let labelled = [
            "seckill_http_requests_total",
            "seckill_item_remaining",
            "seckill_flusher_cursor_seq",
        ];
        for doc in METRICS.iter().filter(|doc| doc.zero_at_start) {
            assert_ne!(doc.kind, MetricKind::Histogram, "{}", doc.name);
            assert!(!labelled.contains(&doc.name), "{}", doc.name);
            assert!(!doc.name.starts_with("seckill_events_"), "{}", doc.name);
        }
    }
}
