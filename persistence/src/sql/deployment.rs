//! Which deployment the tables belong to.
//!
//! Order ids are unique within one deployment (one data directory, or one cluster) only, so
//! tables that copy two deployments' logs could get two different orders under one id. The
//! table `seckill_deployment` holds the id of the deployment whose log the tables copy, and
//! the flusher settles it at start, before it writes anything:
//! - no id recorded: it records its own. Tables that already hold rows then were written
//!   before ids were recorded (an older build, or a log without an id); they are kept, with
//!   a warning.
//! - its own id: it goes on.
//! - another id over tables that hold nothing yet (no order, no promotion, every lane's
//!   cursor at 0): it records its own in its place.
//! - another id over tables that hold something: it refuses to start
//!   ([`SqlError::OtherDeployment`]) and changes nothing.

use super::db::Database;
use super::error::SqlError;
use super::queries;

/// Settles that the tables of `database` belong to the deployment `ours` (see the module
/// documentation), in one transaction.
pub(crate) async fn claim(database: &Database, ours: &str, now_ms: i64) -> Result<(), SqlError> {
    let mut tx = database.begin().await?;
    // The write first: on SQLite it takes the write lock for the whole decision.
    let recorded = tx
        .execute(&queries::record_deployment(ours, now_ms))
        .await?
        == 1;
    let written = tx
        .fetch_i64(&queries::tables_written())
        .await?
        .is_some_and(|count| count > 0);
    if recorded {
        if written {
            tracing::warn!(
                deployment_id = ours,
                "the SQL tables hold rows from before deployments were recorded; they are \
                 taken to be this deployment's"
            );
        }
        return tx.commit().await;
    }
    let found = tx
        .fetch_text(&queries::read_deployment())
        .await?
        .unwrap_or_default();
    if found == ours {
        return tx.commit().await;
    }
    if written {
        return Err(SqlError::OtherDeployment {
            found,
            ours: ours.to_owned(),
        });
    }
    tx.execute(&queries::replace_deployment(&found, ours, now_ms))
        .await?;
    tracing::info!(
        previous = %found,
        deployment_id = ours,
        "the SQL tables were empty; this deployment takes them over"
    );
    tx.commit().await
}
