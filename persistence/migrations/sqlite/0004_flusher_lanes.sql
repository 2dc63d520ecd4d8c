-- One row per lane above 0: a log of its own with its own sequence numbers (the JetStream
-- journal has one per stream: lane 1 the catalog, lane 2 + p partition p), and the highest
-- of them whose events are in the tables. Written in the same transaction as the rows, as
-- flusher_cursor is. Lane 0 (a single log: RocksDB, the memory journal) keeps
-- flusher_cursor, so tables from before lanes go on unchanged. A lane's row is made at 0
-- the first time a flusher reads that lane.

CREATE TABLE flusher_lane_cursor (
    lane       INTEGER PRIMARY KEY CHECK (lane >= 1),
    seq        BIGINT NOT NULL CHECK (seq >= 0),
    updated_at TEXT NOT NULL
);
