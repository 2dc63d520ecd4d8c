//! What can go wrong between the flusher and its database.

/// What can go wrong between the flusher and its database.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    #[error("cannot reach the database: {0}")]
    Connect(String),
    #[error(
        "the database schema is newer than this build knows (migration {found} applied, this \
         build knows up to {supported}): run a newer seckill or use another database"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("database migration failed: {0}")]
    Migrate(String),
    /// The tables hold what another deployment (another data directory, or another cluster)
    /// wrote: its order ids may be the ones this deployment makes, so writing here would mix
    /// two deployments' orders. Nothing was written.
    #[error(
        "the database holds the orders of another seckill deployment ({found}; this data \
         directory is {ours}): give each deployment its own database (--database-url), or \
         start this one with the data directory that wrote them"
    )]
    OtherDeployment { found: String, ours: String },
    #[error("database error: {0}")]
    Database(String),
    #[error("the database did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error(
        "the flusher cursor of lane {lane} is no longer at {expected}: another flusher writes \
         to this database"
    )]
    CursorMoved { lane: u32, expected: u64 },
    #[error("cannot read the journal: {0}")]
    Source(String),
    /// `lane` is the first lane (in reading order) that was still behind.
    #[error(
        "shut down with the SQL tables behind the log (lane {lane}: cursor {cursor_seq}, log \
         {last_seq}); the rest is written at the next start"
    )]
    NotDrained {
        lane: u32,
        cursor_seq: u64,
        last_seq: u64,
    },
    #[error("the flusher task failed: {0}")]
    Task(String),
}

impl From<sqlx::Error> for SqlError {
    fn from(error: sqlx::Error) -> Self {
        SqlError::Database(error.to_string())
    }
}
