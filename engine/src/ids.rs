//! Identifiers and the stable routing hash.
//!
//! Every identifier that crosses the API (promotion id, sku, user id, request id, order id,
//! payment ref) matches `[A-Za-z0-9_.:-]{1,64}`. Checking it once at the boundary means the
//! engine, the log and the SQL table never see anything else.

use xxhash_rust::xxh3::xxh3_64;

/// The longest identifier accepted, in bytes (all accepted bytes are ASCII).
pub const ID_LENGTH_MAX: usize = 64;

/// Returns true when `id` matches `[A-Za-z0-9_.:-]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_LENGTH_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// The stable 64-bit key of an item (promotion id + sku).
///
/// It routes the item to its shard and prefixes its order ids, so it must never change
/// between versions or restarts: xxh3 over the exact bytes, with a NUL separator that no
/// valid identifier contains.
pub fn item_key(promotion_id: &str, sku: &str) -> u64 {
    // On the hot path of every purchase: valid ids fit a stack buffer, no allocation.
    let length = promotion_id.len() + 1 + sku.len();
    if length <= 2 * ID_LENGTH_MAX + 1 {
        let mut buffer = [0u8; 2 * ID_LENGTH_MAX + 1];
        buffer[..promotion_id.len()].copy_from_slice(promotion_id.as_bytes());
        buffer[promotion_id.len() + 1..length].copy_from_slice(sku.as_bytes());
        return xxh3_64(&buffer[..length]);
    }
    let mut bytes = Vec::with_capacity(length);
    bytes.extend_from_slice(promotion_id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(sku.as_bytes());
    xxh3_64(&bytes)
}

/// The partition of the item with key `item_key` among `partitions` partitions: the unit a
/// cluster node owns (one lease, one journal lane). `partitions` 0 counts as 1, so a
/// one-node engine has every item in partition 0.
///
/// Stable for the same reason as [`item_key`]: the JetStream journal's lane of an item is
/// `2 + partition_of(key, partitions)`, and a change would move items between lanes.
pub fn partition_of(item_key: u64, partitions: u32) -> u32 {
    let partitions = u64::from(partitions.max(1));
    // The remainder is below `partitions`, which came from a u32.
    u32::try_from(item_key % partitions).unwrap_or(u32::MAX)
}

/// The stable key of a promotion: routes its catalog events to a home shard.
pub fn promotion_key(promotion_id: &str) -> u64 {
    xxh3_64(promotion_id.as_bytes())
}

/// Formats an order id: the item key in hex, the epoch of the engine start that made it,
/// then the item's order sequence number: `<16 hex>-<epoch>-<seq>`.
///
/// The item key inside the id lets any caller route `GET /orders/{id}` straight to the owning
/// shard, whatever the number of shards, with no global index. The epoch (a counter the
/// journal makes durable before the engine starts) keeps an id from being handed out twice
/// when an `async` crash took back the last acknowledged orders and their sequence numbers
/// are given again. Epoch 0 formats the version 1 ids, `<16 hex>-<seq>`, that older logs hold.
pub fn format_order_id(item_key: u64, epoch: u64, order_seq: u64) -> String {
    if epoch == 0 {
        format!("{item_key:016x}-{order_seq}")
    } else {
        format!("{item_key:016x}-{epoch}-{order_seq}")
    }
}

/// The parts of an order id made by [`format_order_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRef {
    pub item_key: u64,
    pub epoch: u64,
    pub order_seq: u64,
}

/// Parses an order id made by [`format_order_id`]; `None` for anything else.
pub fn parse_order_id(order_id: &str) -> Option<OrderRef> {
    let (key_hex, rest) = order_id.split_once('-')?;
    if key_hex.len() != 16 || !key_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let item_key = u64::from_str_radix(key_hex, 16).ok()?;
    let (epoch, seq) = match rest.split_once('-') {
        Some((epoch, seq)) => (parse_counter(epoch)?, seq),
        None => (0, rest),
    };
    Some(OrderRef {
        item_key,
        epoch,
        order_seq: parse_counter(seq)?,
    })
}

/// A decimal counter of at least 1 with no leading zero (so each value has one spelling).
fn parse_counter(digits: &str) -> Option<u64> {
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_contract_pattern() {
        assert!(is_valid_id("double11-0001"));
        assert!(is_valid_id("a.b:c_d-E9"));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id("with space"));
        assert!(!is_valid_id("ünïcode"));
        assert!(!is_valid_id("slash/no"));
    }

    #[test]
    fn item_key_is_stable_and_separates_fields() {
        // Pinned: a change here would re-route every item and orphan every order id on disk.
        assert_eq!(item_key("p", "s"), item_key("p", "s"));
        assert_ne!(item_key("ab", "c"), item_key("a", "bc"));
        let long = "x".repeat(100);
        let mut joined = long.clone().into_bytes();
        joined.push(0);
        joined.extend_from_slice(b"s");
        assert_eq!(
            item_key(&long, "s"),
            xxh3_64(&joined),
            "both paths hash the same bytes"
        );
        let mut joined = b"p".to_vec();
        joined.push(0);
        joined.extend_from_slice(b"s");
        assert_eq!(item_key("p", "s"), xxh3_64(&joined));
    }

    #[test]
    fn partition_of_is_the_key_modulo_the_count() {
        // Pinned: the JetStream lanes of every stored item depend on these numbers.
        assert_eq!(partition_of(0, 12), 0);
        assert_eq!(partition_of(13, 12), 1);
        assert_eq!(partition_of(u64::MAX, 64), 63);
        assert_eq!(
            partition_of(u64::MAX, u32::MAX),
            (u64::MAX % u64::from(u32::MAX)) as u32
        );
        // No partitions given is one partition: a one-node engine.
        assert_eq!(partition_of(12_345, 0), 0);
        assert_eq!(partition_of(12_345, 1), 0);
    }

    proptest::proptest! {
        #[test]
        fn every_key_falls_in_one_of_the_partitions(
            key in proptest::prelude::any::<u64>(),
            partitions in proptest::prelude::any::<u32>(),
        ) {
            let partition = partition_of(key, partitions);
            proptest::prop_assert!(partition < partitions.max(1));
            proptest::prop_assert_eq!(u64::from(partition), key % u64::from(partitions.max(1)));
            // Keys one count apart share their partition: the split is by remainder only.
            if let Some(next) = key.checked_add(u64::from(partitions.max(1))) {
                proptest::prop_assert_eq!(partition_of(next, partitions), partition);
            }
        }
    }

    #[test]
    fn order_ids_round_trip_and_reject_garbage() {
        let id = format_order_id(0xdead_beef, 3, 42);
        assert!(is_valid_id(&id));
        let parsed = OrderRef {
            item_key: 0xdead_beef,
            epoch: 3,
            order_seq: 42,
        };
        assert_eq!(parse_order_id(&id), Some(parsed));
        let legacy = format_order_id(0xdead_beef, 0, 42);
        assert_eq!(legacy, "00000000deadbeef-42");
        assert_eq!(
            parse_order_id(&legacy),
            Some(OrderRef { epoch: 0, ..parsed })
        );
        assert_ne!(format_order_id(7, 1, 5), format_order_id(7, 2, 5));
        assert_eq!(parse_order_id("00000000deadbeef-0-1"), None);
        assert_eq!(parse_order_id("00000000deadbeef-1-2-3"), None);
        assert_eq!(parse_order_id("nope"), None);
        assert_eq!(parse_order_id("00000000deadbeef-"), None);
        assert_eq!(parse_order_id("00000000deadbeef-042"), None);
        assert_eq!(parse_order_id("deadbeef-1"), None);
        assert_eq!(parse_order_id("zzzzzzzzzzzzzzzz-1"), None);
    }
}
