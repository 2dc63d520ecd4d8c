//! The RocksDB journal (being written).
