//! [`Lease`]: which node may write a partition, as a key in a JetStream KV bucket.
//!
//! The bucket keeps one revision per key and forgets a key `ttl` after its last write, so a
//! lease that is not renewed lapses by itself. Taking one is a create (refused while the key
//! exists), renewing one a compare-and-set on the revision held (refused once someone else
//! wrote it), releasing one a delete conditional on it. The revision a node took or renewed
//! the lease at is its fencing epoch: it goes into the takeover record it appends.

use std::time::{Duration, Instant};

use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::{Config, CreateErrorKind, Store, UpdateErrorKind};
use async_nats::jetstream::stream::StorageType;
use serde::{Deserialize, Serialize};

use super::error::{is_wrong_last_sequence, LeaseError};

/// The KV bucket of the partition leases.
pub const LEASE_BUCKET: &str = "SECKILL_LEASES";

/// What a lease says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The node that holds it.
    pub node: String,
    /// Drawn at each take: tells this holder's own writes from anyone else's, so a renewal
    /// whose answer was lost (it went through) is recognised, not taken for a loss.
    #[serde(default)]
    pub nonce: u64,
}

/// A lease this node holds.
#[derive(Debug)]
pub struct Lease {
    store: Store,
    key: String,
    record: LeaseRecord,
    revision: u64,
    /// The revision it was taken at: the owner's fencing epoch, fixed for this ownership.
    epoch: u64,
    ttl: Duration,
    /// Until when this node may act as the owner: the TTL, less a margin, counted from
    /// before the write that took or renewed it (the bucket counts from when it stored
    /// it, later). Past it, another node may hold the lease already.
    valid_until: Instant,
}

/// The share of the TTL a holder relies on: the rest covers clock rates and delays.
const VALID_SHARE_OF_TTL: f64 = 0.75;

impl Lease {
    /// The lease bucket (created if absent): leases lapse `ttl` after their last renewal. A
    /// bucket made with another TTL or history is refused (its revisions are the epochs, so
    /// it is never recreated behind the streams' backs).
    pub async fn bucket(
        js: &Context,
        name: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Store, LeaseError> {
        let config = Config {
            bucket: name.to_owned(),
            history: 1,
            max_age: ttl,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Config::default()
        };
        // Creating a stream that exists with the same settings answers the existing one.
        js.create_key_value(config)
            .await
            .map_err(|e| unavailable(name, e))
    }

    /// The key of partition `partition`'s lease.
    pub fn key(partition: u32) -> String {
        format!("partition.{partition}")
    }

    /// Takes partition `partition`'s lease for `node`, if nobody holds it; `ttl` is the
    /// bucket's.
    pub async fn acquire(
        store: &Store,
        partition: u32,
        node: &str,
        ttl: Duration,
    ) -> Result<Lease, LeaseError> {
        Lease::acquire_key(store, Lease::key(partition), node, ttl).await
    }

    /// Takes the lease under `key` (a partition's, or the catalog's) for `node`.
    pub async fn acquire_key(
        store: &Store,
        key: String,
        node: &str,
        ttl: Duration,
    ) -> Result<Lease, LeaseError> {
        let record = LeaseRecord {
            node: node.to_owned(),
            nonce: rand::random(),
        };
        let mut attempt = 1;
        loop {
            let sent = Instant::now();
            let refused = match store.create(&key, encode(&record)).await {
                Ok(revision) => {
                    return Ok(Lease {
                        store: store.clone(),
                        key,
                        record,
                        revision,
                        epoch: revision,
                        ttl,
                        valid_until: sent + ttl.mul_f64(VALID_SHARE_OF_TTL),
                    })
                }
                Err(error)
                    if error.kind() == CreateErrorKind::AlreadyExists
                        || is_wrong_last_sequence(&error) =>
                {
                    held(store, &key).await
                }
                Err(error) => return Err(unavailable(&key, error)),
            };
            // Refused, yet nobody holds it: the create's own read of the key (a direct get,
            // which a replica may answer) had not seen the delete or the lapse yet. Asking
            // again is safe: the create itself is the one compare-and-set that decides.
            let nobody = matches!(&refused, LeaseError::Held { holder, .. } if holder == NOBODY);
            if !nobody || attempt >= CREATE_ATTEMPTS_MAX {
                return Err(refused);
            }
            attempt += 1;
            tokio::time::sleep(CREATE_RETRY_PAUSE).await;
        }
    }

    /// The revision this lease was taken at: the owner's fencing epoch, above every earlier
    /// owner's (revisions of one bucket only grow).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The revision of the last take or renewal (what the next renewal expects).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether this node may still act as the owner (see `valid_until`); past it, stop
    /// answering writes for the partition until a renewal succeeds.
    pub fn is_current(&self) -> bool {
        Instant::now() < self.valid_until
    }

    pub fn partition_key(&self) -> &str {
        &self.key
    }

    /// Until when this node may act as the owner (see [`Lease::is_current`]).
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// How often to renew: a third of the TTL, so two renewals can fail before it lapses.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Renews the lease; [`LeaseError::Held`] once another node has taken it (it lapsed).
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        let sent = Instant::now();
        match self.update(sent).await {
            Ok(()) => Ok(()),
            // 10071, or 10164 when another conditional write of the key is in flight.
            Err(Refused::Revision) => {
                self.adopt_own_write().await?;
                // Ours after all: renew on the revision found, so the validity moves on. A
                // refusal now leaves it ours but not renewed: the keeper tries again.
                self.update(sent).await.map_err(|refused| match refused {
                    Refused::Revision => unavailable(&self.key, "our own record keeps moving"),
                    Refused::Other(error) => error,
                })
            }
            Err(Refused::Other(error)) => Err(error),
        }
    }

    /// One compare-and-set of our record on the revision we hold; on success the validity
    /// runs from `sent`.
    async fn update(&mut self, sent: Instant) -> Result<(), Refused> {
        match self
            .store
            .update(&self.key, encode(&self.record), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.valid_until = sent + self.ttl.mul_f64(VALID_SHARE_OF_TTL);
                Ok(())
            }
            Err(error)
                if error.kind() == UpdateErrorKind::WrongLastRevision
                    || is_wrong_last_sequence(&error) =>
            {
                Err(Refused::Revision)
            }
            Err(error) => Err(Refused::Other(unavailable(&self.key, error))),
        }
    }

    /// After a refused renewal: if the key holds our own record (an earlier renewal went
    /// through but its answer was lost), takes its revision and stays the holder; the
    /// validity is not extended (the next renewal does that). Otherwise it is held by
    /// someone else, or lapsed.
    async fn adopt_own_write(&mut self) -> Result<(), LeaseError> {
        match self.store.entry(&self.key).await {
            Ok(Some(entry)) => {
                let ours = serde_json::from_slice::<LeaseRecord>(&entry.value)
                    .is_ok_and(|record| record == self.record);
                if ours {
                    // Our own earlier write (its answer lost, or still in flight).
                    self.revision = self.revision.max(entry.revision);
                    return Ok(());
                }
                Err(held(&self.store, &self.key).await)
            }
            Ok(None) => Err(held(&self.store, &self.key).await),
            Err(error) => Err(unavailable(&self.key, error)),
        }
    }

    /// Takes the same key again after this lease lapsed, if nobody else holds it now: a new
    /// ownership with a new epoch, which must append its own takeover record before any
    /// write (conditional on the stream's tail as this node knows it, so it fails if
    /// anyone else wrote meanwhile).
    pub async fn reacquire(&self) -> Result<Lease, LeaseError> {
        Lease::acquire_key(&self.store, self.key.clone(), &self.record.node, self.ttl).await
    }

    /// Gives the lease up (a clean hand-over), if it is still ours.
    pub async fn release(self) -> Result<(), LeaseError> {
        self.store
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
            .map_err(|e| unavailable(&self.key, e))
    }
}

/// Why one compare-and-set of a lease did not go through.
enum Refused {
    /// The key is not at the revision we hold.
    Revision,
    Other(LeaseError),
}

fn encode(record: &LeaseRecord) -> bytes::Bytes {
    // A struct of one string always encodes.
    serde_json::to_vec(record).unwrap_or_default().into()
}

/// The holder [`held`] names when the key is gone by the time it looks.
const NOBODY: &str = "nobody now (it just lapsed)";
/// Creates of a lease that nobody holds, in a row, before the refusal is believed: a
/// replica's read can trail the delete or the lapse by a moment.
const CREATE_ATTEMPTS_MAX: u32 = 5;
const CREATE_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Who holds `key` now, as an error for the caller who wanted it.
async fn held(store: &Store, key: &str) -> LeaseError {
    let holder = match store.get(key).await {
        Ok(Some(bytes)) => serde_json::from_slice::<LeaseRecord>(&bytes)
            .map(|record| record.node)
            .unwrap_or_else(|_| "an unreadable record".into()),
        Ok(None) => NOBODY.into(),
        Err(error) => format!("unknown ({error})"),
    };
    LeaseError::Held {
        key: key.to_owned(),
        holder,
    }
}

fn unavailable(key: &str, error: impl std::fmt::Display) -> LeaseError {
    LeaseError::Unavailable {
        key: key.to_owned(),
        reason: error.to_string(),
    }
}
