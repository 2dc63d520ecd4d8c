//! The one seam between the two databases for every statement but the orders upsert.
//!
//! A [`Statement`] is written once: SQL that both SQLite and PostgreSQL accept, with `?` for
//! each parameter, and its parameters as dialect-free [`Value`]s. Only here does it become
//! one database's query: SQLite takes `?` and times as RFC 3339 text; PostgreSQL takes `$1`,
//! `$2`, ... and times as `TIMESTAMPTZ`.

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Postgres, Sqlite};

use super::rows::{rfc3339_from_ms, utc_from_ms};

/// One parameter of a statement, in no database's types yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Text(String),
    /// `BIGINT`.
    Int(i64),
    /// `INTEGER` (PostgreSQL's `int4`).
    Int32(i32),
    Bool(bool),
    /// A unix-millisecond time: RFC 3339 text on SQLite, `TIMESTAMPTZ` on PostgreSQL.
    Time(i64),
}

impl Value {
    pub fn text(text: &str) -> Value {
        Value::Text(text.to_owned())
    }

    /// Counts of at most 1e11 (stock times token multiplier) in `BIGINT`; the saturation only
    /// keeps one impossible value from stalling the flusher.
    pub fn count(count: u64) -> Value {
        Value::Int(i64::try_from(count).unwrap_or(i64::MAX))
    }

    /// Small settings (seconds, multipliers, limits within api.md's bounds) in `INTEGER`.
    pub fn small(number: u32) -> Value {
        Value::Int32(i32::try_from(number).unwrap_or(i32::MAX))
    }
}

/// SQL with `?` placeholders and the values that go into them, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    sql: String,
    values: Vec<Value>,
}

impl Statement {
    /// `sql` must have one `?` per value and no other `?` (none of the flusher's statements
    /// has a string literal with one).
    pub fn new(sql: impl Into<String>, values: Vec<Value>) -> Statement {
        let sql = sql.into();
        debug_assert_eq!(
            sql.matches('?').count(),
            values.len(),
            "placeholders and values of {sql}"
        );
        Statement { sql, values }
    }

    /// A statement without parameters.
    pub fn plain(sql: impl Into<String>) -> Statement {
        Statement::new(sql, Vec::new())
    }

    /// The statement as SQLite runs it.
    pub fn sqlite(&self) -> Query<'_, Sqlite, SqliteArguments<'_>> {
        self.values.iter().fold(
            sqlx::query::<Sqlite>(&self.sql),
            |query, value| match value {
                Value::Text(text) => query.bind(text.as_str()),
                Value::Int(number) => query.bind(*number),
                Value::Int32(number) => query.bind(*number),
                Value::Bool(flag) => query.bind(*flag),
                Value::Time(at_ms) => query.bind(rfc3339_from_ms(*at_ms)),
            },
        )
    }

    /// The statement as PostgreSQL runs it; `sql` is [`Statement::postgres_sql`].
    pub fn postgres<'q>(&'q self, sql: &'q str) -> Query<'q, Postgres, PgArguments> {
        self.values
            .iter()
            .fold(sqlx::query::<Postgres>(sql), |query, value| match value {
                Value::Text(text) => query.bind(text.as_str()),
                Value::Int(number) => query.bind(*number),
                Value::Int32(number) => query.bind(*number),
                Value::Bool(flag) => query.bind(*flag),
                Value::Time(at_ms) => query.bind(utc_from_ms(*at_ms)),
            })
    }

    /// The SQL with PostgreSQL's numbered placeholders.
    pub fn postgres_sql(&self) -> String {
        let mut sql = String::with_capacity(self.sql.len() + 2 * self.values.len());
        let mut number = 0;
        for ch in self.sql.chars() {
            if ch == '?' {
                number += 1;
                sql.push('$');
                sql.push_str(&number.to_string());
            } else {
                sql.push(ch);
            }
        }
        sql
    }
}

/// `rows` groups of `columns` placeholders each, for a multi-row `VALUES`.
pub(crate) fn placeholder_rows(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_numbers_the_placeholders_in_order() {
        let statement = Statement::new(
            "UPDATE t SET a = ?, b = ? WHERE c = ?",
            vec![Value::Int(1), Value::Time(0), Value::text("x")],
        );
        assert_eq!(statement.sql, "UPDATE t SET a = ?, b = ? WHERE c = ?");
        assert_eq!(
            statement.postgres_sql(),
            "UPDATE t SET a = $1, b = $2 WHERE c = $3"
        );
    }

    #[test]
    fn placeholder_rows_have_the_shape_asked_for() {
        assert_eq!(placeholder_rows(2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(placeholder_rows(1, 1), "(?)");
    }

    #[test]
    fn counts_and_settings_saturate_instead_of_wrapping() {
        assert_eq!(Value::count(u64::MAX), Value::Int(i64::MAX));
        assert_eq!(Value::count(7), Value::Int(7));
        assert_eq!(Value::small(u32::MAX), Value::Int32(i32::MAX));
    }
}
