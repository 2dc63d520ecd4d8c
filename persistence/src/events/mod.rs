//! Order events for the shop's other systems (api.md, "v2: order events for the shop's other
//! systems"): CloudEvents 1.0 sent to NATS JetStream, RabbitMQ and signed webhooks, read from
//! the engine's journal.
//!
//! The journal is the outbox: there is no second store and no dual write. Each `--events`
//! target has its own delivery task and its own durable cursor (a file per target in the
//! data directory), so a slow or dead target holds back only itself. A target gets every
//! event at least once, each order's events in the order they were decided, and none
//! skipped: its cursor moves only after the target acknowledged, and the journal is not
//! trimmed past the lowest cursor of all its readers (the SQL flusher and every target).
//!
//! Layout (each module imports only modules above it in this list):
//! - `sink`: [`Sink`], one target's transport, and [`OutEvent`], one CloudEvent ready to
//!   send.
//! - `nats`, `amqp`, `webhook`: the three sinks (JetStream, RabbitMQ, HTTP POST).
//! - `target`: [`EventTarget`], one `--events` value parsed and checked, with the stable key
//!   of its cursor.
//! - `cloudevent`: journal events to CloudEvents, pure: the envelope, the stable ids, the
//!   `data` as api.md shows orders and promotions, and the item events derived from stock
//!   (`sold_out`, `back_in_stock`).
//! - `cursor`: [`CursorRecord`] (where a target stands in each lane, with the derived item
//!   state that goes with it) and [`FileCursorStore`], which replaces it atomically on disk.
//! - `floors`: [`SharedFloors`], several readers of one journal: the log trims only below
//!   the lowest of their floors.
//! - `deliver`: the task of one target: rounds over the lanes, chunks, retries with backoff
//!   forever, the cursor saved after each acknowledgement, lag metrics, shutdown.
//!
//! Metrics, each with the label `target` (the sink's label): `seckill_events_lag_events`,
//! `seckill_events_lag_seconds` (gauges), `seckill_events_delivered_total`,
//! `seckill_events_failures_total`, `seckill_events_gaps_skipped_total` (counters).

pub mod sink;

pub mod amqp;
pub mod nats;
pub mod webhook;

pub mod cloudevent;
pub mod cursor;
pub mod deliver;
pub mod floors;
pub mod target;

pub use cloudevent::{CloudEventError, DerivedState, EventMaker, EVENT_TYPES};
pub use cursor::{CursorError, CursorRecord, CursorStore, FileCursorStore};
pub use deliver::{
    start_events, DeliverOptions, EventsError, EventsHandle, EventsStatus, DEFAULT_BACKOFF_MAX,
    DEFAULT_BACKOFF_MIN, DEFAULT_CHUNK_EVENTS_MAX, DEFAULT_DELIVER_TIMEOUT, DEFAULT_GAP_WAIT,
    DEFAULT_POLL_INTERVAL, DEFAULT_READ_BATCHES_MAX, DEFAULT_SAVE_INTERVAL,
};
pub use floors::{ConsumerSource, SharedFloors};
pub use sink::{OutEvent, Sink, SinkError, SinkSetupError};
pub use target::{split_env_list, EventTarget, EventsConfigError, TargetKind};
