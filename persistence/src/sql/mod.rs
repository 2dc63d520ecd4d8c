//! The SQL flusher (being written).
