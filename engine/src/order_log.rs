//! One item's orders by sequence number, in chunks that never move.

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize};

use crate::model::Order;

/// Orders in one chunk of an [`OrderLog`].
const ORDER_CHUNK_LEN: usize = 4096;

/// One item's orders by position (sequence number - 1), kept in fixed-size chunks.
///
/// A sale of a million orders on one item must never copy the whole list to grow it: a
/// doubling `Vec` did, touching twice the memory and spending a third of the accept path's
/// time in page faults. Chunks are allocated once and never move.
#[derive(Debug, Clone, Default)]
pub struct OrderLog {
    chunks: Vec<Vec<Order>>,
    len: usize,
}

impl OrderLog {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, index: usize) -> Option<&Order> {
        self.chunks
            .get(index / ORDER_CHUNK_LEN)?
            .get(index % ORDER_CHUNK_LEN)
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut Order> {
        self.chunks
            .get_mut(index / ORDER_CHUNK_LEN)?
            .get_mut(index % ORDER_CHUNK_LEN)
    }

    pub fn push(&mut self, order: Order) {
        if self.len.is_multiple_of(ORDER_CHUNK_LEN) {
            // The first chunk grows as a Vec does (most items sell few orders); later ones
            // are allocated whole.
            let capacity = if self.chunks.is_empty() {
                0
            } else {
                ORDER_CHUNK_LEN
            };
            self.chunks.push(Vec::with_capacity(capacity));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(order);
            self.len += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Order> {
        self.chunks.iter().flatten()
    }
}

impl PartialEq for OrderLog {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for OrderLog {}

impl Serialize for OrderLog {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The length up front: compact formats (postcard on disk) need it, and a flattened
        // iterator does not report it exactly.
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for order in self.iter() {
            seq.serialize_element(order)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for OrderLog {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let orders = Vec::<Order>::deserialize(deserializer)?;
        let mut log = OrderLog::default();
        for order in orders {
            log.push(order);
        }
        Ok(log)
    }
}
