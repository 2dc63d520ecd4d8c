//! The keys of the journal's database and the encoding of the values under them.
//!
//! One RocksDB database, one column family, three key spaces told apart by their first byte:
//! - `l` + seq (u64 big-endian): one appended batch, so iteration order is sequence order.
//! - `m:...`: metadata: the format version, the latest snapshot's header, the trim point,
//!   the deployment id and the start counter (epoch). Trimming deletes only `l` keys and
//!   snapshots only `s` keys, so the metadata outlives both.
//! - `s` + through_seq (u64 big-endian) + chunk (u32 big-endian): the pieces of a snapshot.
//!
//! Every value that holds engine data starts with the [`EVENT_VERSION`] that wrote it, so a
//! newer entry is refused by its version before anything tries to decode it.

use rocksdb::DB;
use serde::{Deserialize, Serialize};

use seckill_engine::{EngineImage, EngineImageV2, Event, EVENT_VERSION};

use super::error::{db_error, PersistenceError};

pub const LOG_PREFIX: u8 = b'l';
pub const SNAPSHOT_PREFIX: u8 = b's';
/// The key that orders right after every log key: iteration over the log stops here.
pub const LOG_END: &[u8] = b"m";
pub const META_VERSION: &[u8] = b"m:version";
pub const META_SNAPSHOT: &[u8] = b"m:snapshot";
pub const META_TRIMMED: &[u8] = b"m:trimmed";
/// The deployment id: [`DEPLOYMENT_ID_HEX_LEN`] lower-case hex digits, written once.
pub const META_DEPLOYMENT: &[u8] = b"m:deployment";
/// The start counter: the epoch of the latest start, a u64 big-endian.
pub const META_EPOCH: &[u8] = b"m:epoch";

/// A deployment id is 128 bits written as hex.
pub const DEPLOYMENT_ID_HEX_LEN: usize = 32;

/// A generous size of one encoded order event (ids, user, request id, times, amounts).
const BATCH_BYTES_PER_EVENT: usize = 192;

/// Snapshots are stored in pieces of this size so that no single write holds up the log.
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

pub fn log_key(seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = LOG_PREFIX;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The sequence number of a log key; `None` for any other key.
pub fn log_seq(key: &[u8]) -> Option<u64> {
    if key.len() != 9 || key[0] != LOG_PREFIX {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&key[1..]);
    Some(u64::from_be_bytes(seq))
}

pub fn snapshot_chunk_key(through_seq: u64, chunk: u32) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = SNAPSHOT_PREFIX;
    key[1..9].copy_from_slice(&through_seq.to_be_bytes());
    key[9..].copy_from_slice(&chunk.to_be_bytes());
    key
}

/// The metadata value under `key`, decoded by `decode`; None when there is none. `reading`
/// says what failed when the database cannot be read ("cannot read the trim point").
pub fn read_meta<T>(
    db: &DB,
    key: &[u8],
    reading: &str,
    decode: impl FnOnce(&[u8]) -> Result<T, PersistenceError>,
) -> Result<Option<T>, PersistenceError> {
    match db.get(key).map_err(|e| db_error(reading, e))? {
        Some(bytes) => decode(&bytes).map(Some),
        None => Ok(None),
    }
}

pub fn encode_u64(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

pub fn decode_u64(what: &str, bytes: &[u8]) -> Result<u64, PersistenceError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(what, format!("{} bytes, expected 8", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

pub fn encode_version(version: u32) -> [u8; 4] {
    version.to_be_bytes()
}

pub fn decode_version(bytes: &[u8]) -> Result<u32, PersistenceError> {
    let array: [u8; 4] = bytes.try_into().map_err(|_| {
        corrupt(
            "format version",
            format!("{} bytes, expected 4", bytes.len()),
        )
    })?;
    Ok(u32::from_be_bytes(array))
}

/// The stored deployment id, checked to be what [`META_DEPLOYMENT`] holds.
pub fn decode_deployment_id(bytes: &[u8]) -> Result<String, PersistenceError> {
    let well_formed = bytes.len() == DEPLOYMENT_ID_HEX_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    if !well_formed {
        return Err(corrupt(
            "deployment id",
            format!("{bytes:02x?} is not {DEPLOYMENT_ID_HEX_LEN} hex digits"),
        ));
    }
    // All ASCII, checked above.
    Ok(bytes.iter().map(|&b| char::from(b)).collect())
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> PersistenceError {
    PersistenceError::Io(format!("corrupt {what}: {detail}"))
}

/// Refuses what a newer build wrote.
pub fn check_version(found: u32) -> Result<(), PersistenceError> {
    if found > EVENT_VERSION {
        return Err(PersistenceError::NewerVersion {
            found,
            supported: EVENT_VERSION,
        });
    }
    Ok(())
}

/// One batch as stored: `EVENT_VERSION` then the events, in postcard.
pub fn encode_batch(events: &[Event]) -> Result<Vec<u8>, PersistenceError> {
    // Sized for a typical order event up front: a batch of thousands of events would
    // otherwise be copied a dozen times while the vector doubles.
    let buffer = Vec::with_capacity(events.len().saturating_mul(BATCH_BYTES_PER_EVENT));
    postcard::to_extend(&(EVENT_VERSION, events), buffer).map_err(|e| cannot_encode("a batch", e))
}

pub fn decode_batch(seq: u64, bytes: &[u8]) -> Result<Vec<Event>, PersistenceError> {
    let (version, rest) = postcard::take_from_bytes::<u32>(bytes)
        .map_err(|e| corrupt(&format!("log entry {seq}"), e))?;
    check_version(version)?;
    let events: Vec<Event> =
        postcard::from_bytes(rest).map_err(|e| corrupt(&format!("log entry {seq}"), e))?;
    if events.is_empty() {
        return Err(corrupt(
            &format!("log entry {seq}"),
            "a batch without events",
        ));
    }
    Ok(events)
}

/// The header of the latest snapshot; written last, in the same durable write as nothing
/// else, so a snapshot counts only once all its chunks are on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub version: u32,
    pub through_seq: u64,
    pub chunks: u32,
    pub bytes_total: u64,
}

pub fn encode_header(header: &SnapshotHeader) -> Result<Vec<u8>, PersistenceError> {
    postcard::to_allocvec(header).map_err(|e| cannot_encode("a snapshot header", e))
}

pub fn decode_header(bytes: &[u8]) -> Result<SnapshotHeader, PersistenceError> {
    // The version leads the header, so a newer header is refused before its other fields
    // (which a newer build may have changed) are trusted.
    after_version("snapshot header", bytes)?;
    postcard::from_bytes(bytes).map_err(|e| corrupt("snapshot header", e))
}

pub fn encode_image(image: &EngineImage) -> Result<Vec<u8>, PersistenceError> {
    encode_versioned("a snapshot", image)
}

pub fn decode_image(bytes: &[u8]) -> Result<EngineImage, PersistenceError> {
    decode_evolved::<EngineImage, EngineImageV2>("snapshot", bytes)
}

/// The first version whose snapshot image carries the promotions' guards.
pub const GUARDED_IMAGE_VERSION: u32 = 3;

/// Like [`decode_versioned`], for a value whose encoding changed in
/// [`GUARDED_IMAGE_VERSION`]: older bytes decode as `Old` and are converted.
pub fn decode_evolved<'a, New, Old>(what: &str, bytes: &'a [u8]) -> Result<New, PersistenceError>
where
    New: Deserialize<'a>,
    Old: Deserialize<'a> + Into<New>,
{
    let (version, rest) = postcard::take_from_bytes::<u32>(bytes).map_err(|e| corrupt(what, e))?;
    check_version(version)?;
    if version < GUARDED_IMAGE_VERSION {
        let old: Old = postcard::from_bytes(rest).map_err(|e| corrupt(what, e))?;
        return Ok(old.into());
    }
    postcard::from_bytes(rest).map_err(|e| corrupt(what, e))
}

/// `EVENT_VERSION` then `value`, in postcard; `what` names the value in the error.
pub fn encode_versioned<T: Serialize + ?Sized>(
    what: &str,
    value: &T,
) -> Result<Vec<u8>, PersistenceError> {
    postcard::to_allocvec(&(EVENT_VERSION, value)).map_err(|e| cannot_encode(what, e))
}

/// The value that follows the version leading `bytes` (see [`encode_versioned`]); `what`
/// names it in the error.
pub fn decode_versioned<'a, T: Deserialize<'a>>(
    what: &str,
    bytes: &'a [u8],
) -> Result<T, PersistenceError> {
    let rest = after_version(what, bytes)?;
    postcard::from_bytes(rest).map_err(|e| corrupt(what, e))
}

/// What follows the version leading `bytes`, once that version is known to be one this build
/// reads.
fn after_version<'a>(what: &str, bytes: &'a [u8]) -> Result<&'a [u8], PersistenceError> {
    let (version, rest) = postcard::take_from_bytes::<u32>(bytes).map_err(|e| corrupt(what, e))?;
    check_version(version)?;
    Ok(rest)
}

fn cannot_encode(what: &str, error: postcard::Error) -> PersistenceError {
    PersistenceError::Io(format!("cannot encode {what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_sequence_and_round_trip() {
        let seqs = [0u64, 1, 255, 256, 1 << 40, u64::MAX];
        for pair in seqs.windows(2) {
            assert!(log_key(pair[0]) < log_key(pair[1]));
        }
        for seq in seqs {
            assert_eq!(log_seq(&log_key(seq)), Some(seq));
            assert!(log_key(seq).as_slice() < LOG_END);
        }
        assert_eq!(log_seq(META_VERSION), None);
        // Trimming deletes log keys, snapshots delete chunk keys: neither range holds the
        // identity of the data directory.
        for meta in [META_DEPLOYMENT, META_EPOCH] {
            assert_eq!(log_seq(meta), None);
            assert!(meta > LOG_END);
            assert!(meta < &[SNAPSHOT_PREFIX][..]);
        }
    }

    #[test]
    fn a_batch_from_a_newer_version_is_refused_before_decoding() {
        let bytes = postcard::to_allocvec(&(EVENT_VERSION + 1, 42u8)).expect("encode");
        assert_eq!(
            decode_batch(7, &bytes),
            Err(PersistenceError::NewerVersion {
                found: EVENT_VERSION + 1,
                supported: EVENT_VERSION
            })
        );
    }

    fn order(seq: u64) -> seckill_engine::Order {
        seckill_engine::Order {
            // Any text: the round trip does not depend on the engine's id format.
            order_id: format!("0000000000000007-{seq}"),
            promotion_id: "p".into(),
            sku: "s".into(),
            user_id: format!("u{seq}"),
            request_id: "r".into(),
            quantity: 1,
            price_cents: 100,
            amount_cents: 100,
            status: seckill_engine::OrderStatus::PendingPayment,
            created_at_ms: 1,
            pay_before_ms: 2,
            paid_at_ms: None,
            payment_ref: None,
            closed_at_ms: None,
        }
    }

    /// Postcard needs every sequence's length up front: an engine type that serialises a
    /// sequence without one (an iterator of unknown size) would make every snapshot fail.
    #[test]
    fn an_engine_image_with_orders_round_trips() {
        let record = seckill_engine::ItemRecord {
            sku: "s".into(),
            title: "s".into(),
            stock: 10_000,
            price_cents: 100,
            per_user_limit: 1,
        };
        let mut item = seckill_engine::ItemState::new(7, "p", record, 900, false, 1, 60_000);
        for seq in 1..=5_000 {
            item.apply(&Event::OrderPlaced {
                item_key: 7,
                order_seq: seq,
                order: order(seq),
                token: None,
            });
        }
        let image = EngineImage {
            version: EVENT_VERSION,
            through_seq: 42,
            promotions: Vec::new(),
            items: vec![item],
            guards: Vec::new(),
        };
        let bytes = encode_image(&image).expect("an image encodes");
        assert_eq!(decode_image(&bytes).expect("and decodes"), image);
        // A snapshot written by version 2 (no guards) still reads, as one without guards.
        let old = seckill_engine::EngineImageV2 {
            version: 2,
            through_seq: image.through_seq,
            promotions: Vec::new(),
            items: image.items.clone(),
        };
        let old_bytes = postcard::to_allocvec(&(2u32, &old)).expect("a v2 image encodes");
        let read = decode_image(&old_bytes).expect("a v2 image decodes");
        assert_eq!(read.items, image.items);
        assert!(read.guards.is_empty());
        let batch = [Event::OrderPlaced {
            item_key: 7,
            order_seq: 1,
            order: order(1),
            token: Some("t".into()),
        }];
        let bytes = encode_batch(&batch).expect("a batch encodes");
        assert_eq!(decode_batch(1, &bytes).expect("and decodes"), batch);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_batch(1, &[]).is_err());
        assert!(decode_batch(1, &[1, 200, 200, 200]).is_err());
        assert!(decode_image(&[1, 9]).is_err());
        assert!(decode_header(&[]).is_err());
        assert!(decode_u64("x", &[1, 2]).is_err());
        assert!(decode_deployment_id(b"0123").is_err());
        assert!(decode_deployment_id(&[b'G'; DEPLOYMENT_ID_HEX_LEN]).is_err());
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            decode_deployment_id(id.as_bytes()).expect("well formed"),
            id
        );
    }
}
