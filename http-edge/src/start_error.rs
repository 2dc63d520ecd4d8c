//! Why the server did not start: one line for a person each, and the binary exits 2.
//!
//! Its own module because both start-up (`server`) and the storage backends (`storage`)
//! return it; neither has to import the other for it.

use thiserror::Error;

/// Why the server did not start; each is one line for a person, and the binary exits 2.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot write data directory {path}: {reason}")]
    DataDirUnwritable { path: String, reason: String },
    #[error(
        "data directory {path} is in use by another running seckill server; stop it or choose \
         another --data-dir"
    )]
    DataDirLocked { path: String },
    /// Also every failure of the JetStream journal's open (NATS unreachable, a partition
    /// still held, a cluster written by a newer build): the message says which.
    #[error("cannot open the journal: {0}")]
    Journal(String),
    /// `--partitions` differs from the count the cluster was created with; nothing changed.
    #[error(
        "the cluster was created with {stored} partitions, and this node was started with \
         --partitions {given}: the count is fixed when a cluster is first started; start with \
         --partitions {stored} or without --partitions"
    )]
    PartitionsMismatch { stored: u32, given: u32 },
    #[error(
        "this build has no durable journal (built without the `persistence` feature); \
         --unsafe-memory-journal runs without durability, for development only"
    )]
    NoDurableJournal,
    /// The orders database refused or did not answer (the message says which).
    #[error("orders database: {0}")]
    Database(String),
    #[error("recovery from the journal failed: {0}")]
    Recovery(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    /// A setting that passed the config checks but could not be put to use (the captcha
    /// verifier's HTTP client).
    #[error("{0}")]
    Config(String),
    /// An `--events` target that cannot run: its sink cannot be made, or its cursor file
    /// cannot be read (damaged, or written by a newer build). An unreachable target is not
    /// one of these: the server starts and its events wait in the journal.
    #[error("order events: {0}")]
    Events(String),
    #[error("the HTTP server failed: {0}")]
    Serve(String),
}
