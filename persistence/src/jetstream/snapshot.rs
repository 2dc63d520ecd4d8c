//! Snapshots in a JetStream object store: the engine's image and, for every lane, the last
//! sequence it holds. One object, replaced whole: the object store writes the new chunks
//! before it moves the name to them, so a crash half-way leaves the previous snapshot.

use async_nats::jetstream::context::Context;
use async_nats::jetstream::object_store::{Config, GetErrorKind, ObjectStore};
use async_nats::jetstream::stream::StorageType;
use seckill_engine::{EngineImage, EngineImageV2};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::error::{nats, ClusterError};
use crate::journal::layout::{decode_evolved, encode_versioned};

const OBJECT_NAME: &str = "engine";

/// What a snapshot holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub image: EngineImage,
    /// `(lane, last sequence in the image)` for every lane.
    pub lane_seqs: Vec<(u32, u64)>,
}

/// A snapshot as version 2 wrote it (an image without guards).
#[derive(Debug, Clone, Deserialize)]
struct SnapshotFileV2 {
    image: EngineImageV2,
    lane_seqs: Vec<(u32, u64)>,
}

impl From<SnapshotFileV2> for SnapshotFile {
    fn from(old: SnapshotFileV2) -> Self {
        SnapshotFile {
            image: old.image.into(),
            lane_seqs: old.lane_seqs,
        }
    }
}

impl SnapshotFile {
    /// The last sequence of `lane` the image holds (0: none).
    pub fn seq_of(&self, lane: u32) -> u64 {
        self.lane_seqs
            .iter()
            .find(|(l, _)| *l == lane)
            .map_or(0, |(_, seq)| *seq)
    }
}

pub async fn bucket(
    js: &Context,
    name: &str,
    replicas: usize,
) -> Result<ObjectStore, ClusterError> {
    let config = Config {
        bucket: name.to_owned(),
        storage: StorageType::File,
        num_replicas: replicas,
        ..Config::default()
    };
    js.create_object_store(config)
        .await
        .map_err(|e| nats("the snapshot bucket", e))
}

/// The latest snapshot, if any.
pub async fn load(store: &ObjectStore) -> Result<Option<SnapshotFile>, ClusterError> {
    let mut object = match store.get(OBJECT_NAME).await {
        Ok(object) => object,
        Err(error) if error.kind() == GetErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(nats("reading the snapshot", error)),
    };
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| nats("reading the snapshot", e))?;
    let file: SnapshotFile = decode_evolved::<SnapshotFile, SnapshotFileV2>("snapshot", &bytes)
        .map_err(|e| nats("decoding the snapshot", e))?;
    Ok(Some(file))
}

pub async fn save(store: &ObjectStore, file: &SnapshotFile) -> Result<(), ClusterError> {
    let bytes = encode_versioned("a snapshot", file).map_err(|e| nats("encoding", e))?;
    let mut reader: &[u8] = &bytes;
    store
        .put(OBJECT_NAME, &mut reader)
        .await
        .map_err(|e| nats("writing the snapshot", e))?;
    Ok(())
}
