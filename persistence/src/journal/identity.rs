//! Who the data directory is, and how often it was started.
//!
//! - The deployment id: 128 random bits in hex, made at the first open of the directory and
//!   never changed. The SQL flusher records it beside the tables and refuses tables that
//!   another deployment wrote.
//! - The start counter (epoch): one more at every open, written with a synced write before
//!   recovery is handed to the engine, whatever the journal's durability mode. A power cut
//!   can only take back writes made after the counter was fsync'd, so every start's epoch is
//!   above every earlier start's, even after async mode lost its last acknowledged writes.

use rocksdb::{WriteBatch, WriteOptions, DB};

use super::error::{db_error, PersistenceError};
use super::layout::{
    decode_deployment_id, decode_u64, encode_u64, read_meta, META_DEPLOYMENT, META_EPOCH,
};

/// The identity of one start of a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) deployment_id: String,
    pub(super) epoch: u64,
}

/// Counts this start (and makes the deployment id on the first one), durably, and returns
/// the identity the engine and the flusher are given.
pub(super) fn record_start(db: &DB) -> Result<Identity, PersistenceError> {
    let previous = read_meta(db, META_EPOCH, "cannot read the start counter", |bytes| {
        decode_u64("start counter", bytes)
    })?
    .unwrap_or(0);
    let epoch = previous.checked_add(1).ok_or_else(|| {
        PersistenceError::Io("corrupt journal: the start counter is at its maximum".into())
    })?;
    let stored_id = read_meta(
        db,
        META_DEPLOYMENT,
        "cannot read the deployment id",
        decode_deployment_id,
    )?;
    let mut batch = WriteBatch::default();
    batch.put(META_EPOCH, encode_u64(epoch));
    let deployment_id = match stored_id {
        Some(id) => id,
        None => {
            let id = new_deployment_id();
            batch.put(META_DEPLOYMENT, id.as_bytes());
            id
        }
    };
    // Synced in every durability mode: see the module documentation.
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.write_opt(batch, &options)
        .map_err(|e| db_error("cannot record this start", e))?;
    Ok(Identity {
        deployment_id,
        epoch,
    })
}

/// 128 bits from the operating system's random source (through `rand`'s thread generator,
/// which it seeds), as fixed-width lower-case hex.
fn new_deployment_id() -> String {
    let bits: u128 = rand::random();
    // 32 digits: DEPLOYMENT_ID_HEX_LEN.
    format!("{bits:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_ids_are_fixed_width_hex_and_differ() {
        let first = new_deployment_id();
        let second = new_deployment_id();
        assert_ne!(first, second);
        for id in [&first, &second] {
            assert_eq!(id.len(), super::super::layout::DEPLOYMENT_ID_HEX_LEN);
            assert_eq!(
                decode_deployment_id(id.as_bytes()).expect("well formed"),
                *id
            );
        }
    }
}
