//! Reads the `orders` table that seckill's flusher keeps (api.md "Orders in SQL"), read-only,
//! so that the checker can compare it with the engine.

use std::path::Path;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

use crate::check::OrderView;

/// Why the table could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct SqlReadError {
    path: String,
    source: sqlx::Error,
}

/// Every order of `promotion_id` in the SQLite file at `path`. A file or table that does
/// not exist yet reads as no orders: the flusher may not have started writing.
pub async fn sqlite_orders(
    path: &Path,
    promotion_id: &str,
) -> Result<Vec<OrderView>, SqlReadError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let error = |source| SqlReadError {
        path: path.display().to_string(),
        source,
    };
    let mut connection = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .map_err(error)?;
    let rows = sqlx::query(
        "SELECT order_id, user_id, sku, quantity, status FROM orders WHERE promotion_id = ?",
    )
    .bind(promotion_id)
    .fetch_all(&mut connection)
    .await;
    let _ = connection.close().await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(sqlx::Error::Database(db)) if db.message().contains("no such table") => {
            return Ok(Vec::new())
        }
        Err(source) => return Err(error(source)),
    };
    rows.iter()
        .map(|row| {
            let quantity: i64 = row.try_get("quantity")?;
            Ok(OrderView {
                order_id: row.try_get("order_id")?,
                user_id: row.try_get("user_id")?,
                sku: row.try_get("sku")?,
                quantity: u32::try_from(quantity).unwrap_or(u32::MAX),
                status: row.try_get("status")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(error)
}
