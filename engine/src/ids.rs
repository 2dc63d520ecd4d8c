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
