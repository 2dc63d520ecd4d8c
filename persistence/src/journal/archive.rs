//! The archive: items of ended promotions that the engine dropped from memory, with their
//! final stats and every order, read back by item, by order and by request id.
//!
//! Keys, under the prefix `a` that neither trimming (`l`) nor snapshots (`s`) touch:
//! - `a` + item key (u64 big-endian) + `i`: the [`ArchivedItem`];
//! - `a` + item key + `o` + order seq (u64 big-endian): one order;
//! - `a` + item key + `r` + user id + NUL + request id: the order seq that purchase placed
//!   (identifiers never hold a NUL).
//!
//! Values start with the `EVENT_VERSION` that wrote them, like every value holding engine
//! data. One item is archived in one synced write, so it is there whole or not at all.

use rocksdb::{WriteBatch, WriteOptions, DB};
use seckill_engine::{ArchivedItem, Order};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{db_error, PersistenceError};
use super::layout::{decode_u64, decode_versioned, encode_u64, encode_versioned};

const ARCHIVE_PREFIX: u8 = b'a';

fn item_prefix(item_key: u64, kind: u8) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + 2 * seckill_engine::ID_LENGTH_MAX + 1);
    key.push(ARCHIVE_PREFIX);
    key.extend_from_slice(&item_key.to_be_bytes());
    key.push(kind);
    key
}

fn order_key(item_key: u64, order_seq: u64) -> Vec<u8> {
    let mut key = item_prefix(item_key, b'o');
    key.extend_from_slice(&order_seq.to_be_bytes());
    key
}

fn request_key(item_key: u64, user_id: &str, request_id: &str) -> Vec<u8> {
    let mut key = item_prefix(item_key, b'r');
    key.extend_from_slice(user_id.as_bytes());
    key.push(0);
    key.extend_from_slice(request_id.as_bytes());
    key
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PersistenceError> {
    encode_versioned("an archived record", value)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PersistenceError> {
    decode_versioned("archive", bytes)
}

/// Writes an item and all its orders in one synced write.
pub(super) fn put_item(
    db: &DB,
    item: &ArchivedItem,
    orders: &[Order],
) -> Result<(), PersistenceError> {
    let mut batch = WriteBatch::default();
    for (index, order) in orders.iter().enumerate() {
        let seq = index as u64 + 1;
        batch.put(order_key(item.key, seq), encode(order)?);
        batch.put(
            request_key(item.key, &order.user_id, &order.request_id),
            encode_u64(seq),
        );
    }
    // The item record last in the batch; the batch is atomic anyway.
    batch.put(item_prefix(item.key, b'i'), encode(item)?);
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    db.write_opt(batch, &synced)
        .map_err(|e| db_error("cannot write to the archive", e))
}

pub(super) fn get_item(db: &DB, item_key: u64) -> Result<Option<ArchivedItem>, PersistenceError> {
    get(db, &item_prefix(item_key, b'i'))?
        .map(|bytes| decode(&bytes))
        .transpose()
}

pub(super) fn get_order(
    db: &DB,
    item_key: u64,
    order_seq: u64,
) -> Result<Option<Order>, PersistenceError> {
    get(db, &order_key(item_key, order_seq))?
        .map(|bytes| decode(&bytes))
        .transpose()
}

pub(super) fn get_request(
    db: &DB,
    item_key: u64,
    user_id: &str,
    request_id: &str,
) -> Result<Option<u64>, PersistenceError> {
    get(db, &request_key(item_key, user_id, request_id))?
        .map(|bytes| decode_u64("archived request", &bytes))
        .transpose()
}

fn get(db: &DB, key: &[u8]) -> Result<Option<Vec<u8>>, PersistenceError> {
    db.get(key)
        .map_err(|e| db_error("cannot read the archive", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_keys_stay_out_of_the_log_and_snapshot_ranges() {
        let key = order_key(u64::MAX, u64::MAX);
        assert!(key.as_slice() < super::super::layout::log_key(0).as_slice());
        assert_eq!(request_key(1, "u", "r")[..10], item_prefix(1, b'r')[..]);
        assert_ne!(request_key(1, "ab", "c"), request_key(1, "a", "bc"));
    }
}
