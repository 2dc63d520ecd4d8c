//! [`Lease`]: which node may write a partition, as a key in a JetStream KV bucket.
//!
//! The bucket keeps one revision per key and forgets a key `ttl` after its last write, so a
//! lease that is not renewed lapses by itself. Taking one is a create (refused while the key
//! exists), renewing one a compare-and-set on the revision held (refused once someone else
//! wrote it), releasing one a delete conditional on it. The revision a node took or renewed
//! the lease at is its fencing epoch: it goes into the takeover record it appends.

use std::time::Duration;

use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::{Config, CreateErrorKind, Store, UpdateErrorKind};
use async_nats::jetstream::stream::StorageType;
use serde::{Deserialize, Serialize};

use super::error::LeaseError;

/// The KV bucket of the partition leases.
pub const LEASE_BUCKET: &str = "SECKILL_LEASES";

/// What a lease says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The node that holds it.
    pub node: String,
}

/// A lease this node holds.
#[derive(Debug)]
pub struct Lease {
    store: Store,
    key: String,
    record: LeaseRecord,
    revision: u64,
}

impl Lease {
    /// The lease bucket (created if absent): leases lapse `ttl` after their last renewal.
    pub async fn bucket(js: &Context, ttl: Duration, replicas: usize) -> Result<Store, LeaseError> {
        let config = Config {
            bucket: LEASE_BUCKET.to_owned(),
            history: 1,
            max_age: ttl,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Config::default()
        };
        match js.get_key_value(LEASE_BUCKET).await {
            Ok(store) => Ok(store),
            Err(_) => js
                .create_key_value(config)
                .await
                .map_err(|e| unavailable(LEASE_BUCKET, e)),
        }
    }

    /// The key of partition `partition`'s lease.
    pub fn key(partition: u32) -> String {
        format!("partition.{partition}")
    }

    /// Takes partition `partition`'s lease for `node`, if nobody holds it.
    pub async fn acquire(store: &Store, partition: u32, node: &str) -> Result<Lease, LeaseError> {
        let key = Lease::key(partition);
        let record = LeaseRecord {
            node: node.to_owned(),
        };
        match store.create(&key, encode(&record)).await {
            Ok(revision) => Ok(Lease {
                store: store.clone(),
                key,
                record,
                revision,
            }),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                Err(held(store, &key).await)
            }
            Err(error) => Err(unavailable(&key, error)),
        }
    }

    /// The revision this lease was last taken or renewed at: the owner's fencing epoch.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn partition_key(&self) -> &str {
        &self.key
    }

    /// Renews the lease; [`LeaseError::Held`] once another node has taken it (it lapsed).
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        match self
            .store
            .update(&self.key, encode(&self.record), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                Err(held(&self.store, &self.key).await)
            }
            Err(error) => Err(unavailable(&self.key, error)),
        }
    }

    /// Gives the lease up (a clean hand-over), if it is still ours.
    pub async fn release(self) -> Result<(), LeaseError> {
        self.store
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
            .map_err(|e| unavailable(&self.key, e))
    }
}

fn encode(record: &LeaseRecord) -> bytes::Bytes {
    // A struct of one string always encodes.
    serde_json::to_vec(record).unwrap_or_default().into()
}

/// Who holds `key` now, as an error for the caller who wanted it.
async fn held(store: &Store, key: &str) -> LeaseError {
    let holder = match store.get(key).await {
        Ok(Some(bytes)) => serde_json::from_slice::<LeaseRecord>(&bytes)
            .map(|record| record.node)
            .unwrap_or_else(|_| "an unreadable record".into()),
        Ok(None) => "nobody now (it just lapsed)".into(),
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
