-- One row: the deployment (a data directory, from its journal) whose log the tables copy.
-- Order ids are unique within one deployment only, so the flusher refuses, at start, tables
-- that another deployment wrote (persistence/src/sql/deployment.rs).

CREATE TABLE seckill_deployment (
    id            SMALLINT PRIMARY KEY CHECK (id = 1),
    deployment_id TEXT NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL
);
