//! The cluster's own record in NATS: its partition count (fixed at its first start), its
//! deployment id, and the epoch counter that numbers every start of a node.

use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::{Config, CreateErrorKind, Store, UpdateErrorKind};
use async_nats::jetstream::stream::StorageType;
use seckill_engine::EVENT_VERSION;
use serde::{Deserialize, Serialize};

use super::error::{nats, ClusterError};
use super::options::DEFAULT_PARTITIONS;

const CLUSTER_KEY: &str = "cluster";
const EPOCH_KEY: &str = "epoch";

/// What the cluster was created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The event version of the build that created it (a newer one is refused).
    pub version: u32,
    pub partitions: u32,
    /// 32 lower-case hex digits, made at the first start: the SQL flusher refuses tables
    /// that another deployment wrote.
    pub deployment_id: String,
}

/// The meta bucket (created if absent), kept as long as the cluster.
pub async fn bucket(js: &Context, name: &str, replicas: usize) -> Result<Store, ClusterError> {
    let config = Config {
        bucket: name.to_owned(),
        history: 1,
        storage: StorageType::File,
        num_replicas: replicas,
        ..Config::default()
    };
    js.create_key_value(config)
        .await
        .map_err(|e| nats("the cluster's meta bucket", e))
}

/// The cluster's record: the stored one, checked against `partitions` and this build, or a
/// new one when this is the cluster's first start.
pub async fn settle(store: &Store, partitions: Option<u32>) -> Result<ClusterRecord, ClusterError> {
    loop {
        if let Some(bytes) = store
            .get(CLUSTER_KEY)
            .await
            .map_err(|e| nats("reading the cluster record", e))?
        {
            let record: ClusterRecord = serde_json::from_slice(&bytes)
                .map_err(|e| nats("the cluster record is unreadable", e))?;
            return check(record, partitions);
        }
        let record = ClusterRecord {
            version: EVENT_VERSION,
            partitions: partitions.unwrap_or(DEFAULT_PARTITIONS),
            deployment_id: format!("{:032x}", rand::random::<u128>()),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| nats("encoding", e))?;
        match store.create(CLUSTER_KEY, bytes.into()).await {
            Ok(_) => return Ok(record),
            // Another node created it first: read theirs.
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => continue,
            Err(error) => return Err(nats("creating the cluster record", error)),
        }
    }
}

fn check(record: ClusterRecord, partitions: Option<u32>) -> Result<ClusterRecord, ClusterError> {
    if record.version > EVENT_VERSION {
        return Err(ClusterError::NewerVersion {
            found: record.version,
            supported: EVENT_VERSION,
        });
    }
    match partitions {
        Some(given) if given != record.partitions => Err(ClusterError::PartitionsMismatch {
            stored: record.partitions,
            given,
        }),
        _ => Ok(record),
    }
}

/// The next start's epoch: one more than any earlier start's, by compare-and-set, durable
/// (on a quorum) before it is returned.
pub async fn next_epoch(store: &Store) -> Result<u64, ClusterError> {
    loop {
        let entry = store
            .entry(EPOCH_KEY)
            .await
            .map_err(|e| nats("reading the epoch", e))?;
        let (next, revision) = match entry {
            Some(entry) => {
                let text = std::str::from_utf8(&entry.value).unwrap_or_default();
                let current: u64 = text
                    .parse()
                    .map_err(|e| nats("the stored epoch is unreadable", e))?;
                (current + 1, Some(entry.revision))
            }
            None => (1, None),
        };
        let value = next.to_string().into_bytes().into();
        let written = match revision {
            Some(revision) => match store.update(EPOCH_KEY, value, revision).await {
                Ok(_) => true,
                Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => false,
                Err(error) => return Err(nats("moving the epoch", error)),
            },
            None => match store.create(EPOCH_KEY, value).await {
                Ok(_) => true,
                Err(error) if error.kind() == CreateErrorKind::AlreadyExists => false,
                Err(error) => return Err(nats("creating the epoch", error)),
            },
        };
        if written {
            return Ok(next);
        }
    }
}
