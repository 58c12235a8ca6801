//! Write statements assembled from named columns, their placeholders numbered as values are bound.
//!
//! PostgreSQL wants `$1, $2, ...` and SQLite accepts them; sqlx's `QueryBuilder` writes `?` for the `Any`
//! driver, which PostgreSQL refuses. Naming each value's column where it is bound (instead of a column list
//! here and a bind list there) is what keeps a statement right when a column is added, such as a limit.

use sqlx::any::AnyArguments;
use sqlx::{Any, AssertSqlSafe};

use crate::domain::LimitOverrides;
use crate::domain::limits::LIMIT_FIELDS;

/// A value to bind: the store's columns are text or (nullable) integers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Value {
    Text(String),
    /// Nullable text.
    MaybeText(Option<String>),
    Int(Option<i64>),
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::Text(text)
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::Text(text.to_owned())
    }
}

impl From<Option<String>> for Value {
    fn from(text: Option<String>) -> Self {
        Value::MaybeText(text)
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Value::Int(Some(value))
    }
}

impl From<Option<i64>> for Value {
    fn from(value: Option<i64>) -> Self {
        Value::Int(value)
    }
}

impl From<bool> for Value {
    fn from(flag: bool) -> Self {
        Value::Int(Some(i64::from(flag)))
    }
}

/// A limit as the store keeps it: a BIGINT, absent when inherited.
fn limit_value(value: Option<u64>) -> Value {
    Value::Int(value.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
}

/// SQL text and its values, numbered together: for statements the builders below do not cover.
#[derive(Default)]
pub(super) struct Sql {
    text: String,
    values: Vec<Value>,
}

impl Sql {
    pub(super) fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    pub(super) fn bind(&mut self, value: impl Into<Value>) {
        self.values.push(value.into());
        self.text.push('$');
        self.text.push_str(&self.values.len().to_string());
    }

    pub(super) fn build(self) -> sqlx::query::Query<'static, Any, AnyArguments> {
        let query = sqlx::query(AssertSqlSafe(self.text));
        self.values.into_iter().fold(query, |query, value| match value {
            Value::Text(text) => query.bind(text),
            Value::MaybeText(text) => query.bind(text),
            Value::Int(number) => query.bind(number),
        })
    }
}

/// `UPDATE table SET column = value, ... WHERE column = value AND ...`.
pub(super) struct Update {
    sql: Sql,
    assignments: usize,
    conditions: usize,
}

impl Update {
    pub(super) fn table(table: &str) -> Self {
        let mut sql = Sql::default();
        sql.push("UPDATE ");
        sql.push(table);
        sql.push(" SET ");
        Update {
            sql,
            assignments: 0,
            conditions: 0,
        }
    }

    pub(super) fn set(mut self, column: &str, value: impl Into<Value>) -> Self {
        debug_assert_eq!(self.conditions, 0, "every SET comes before the WHERE");
        if self.assignments > 0 {
            self.sql.push(", ");
        }
        self.assignments += 1;
        self.sql.push(column);
        self.sql.push(" = ");
        self.sql.bind(value.into());
        self
    }

    /// Sets every limit column.
    pub(super) fn set_limits(self, limits: &LimitOverrides) -> Self {
        LIMIT_FIELDS
            .iter()
            .zip(limits.values())
            .fold(self, |update, (field, value)| {
                update.set(field.column, limit_value(value))
            })
    }

    /// `AND column = value`.
    pub(super) fn filter(mut self, column: &str, value: impl Into<Value>) -> Self {
        self.start_condition();
        self.sql.push(column);
        self.sql.push(" = ");
        self.sql.bind(value.into());
        self
    }

    /// `AND condition`, for a condition without values (`state <> 'revoked'`).
    pub(super) fn filter_sql(mut self, condition: &'static str) -> Self {
        self.start_condition();
        self.sql.push(condition);
        self
    }

    fn start_condition(&mut self) {
        self.sql.push(if self.conditions == 0 { " WHERE " } else { " AND " });
        self.conditions += 1;
    }

    pub(super) fn build(self) -> sqlx::query::Query<'static, Any, AnyArguments> {
        debug_assert!(self.conditions > 0, "an UPDATE of every row is never meant");
        self.sql.build()
    }
}

/// `DELETE FROM table WHERE column = value AND ...`.
pub(super) struct Delete(Update);

impl Delete {
    pub(super) fn from(table: &str) -> Self {
        let mut sql = Sql::default();
        sql.push("DELETE FROM ");
        sql.push(table);
        Delete(Update {
            sql,
            assignments: 0,
            conditions: 0,
        })
    }

    pub(super) fn filter(self, column: &str, value: impl Into<Value>) -> Self {
        Delete(self.0.filter(column, value))
    }

    pub(super) fn build(self) -> sqlx::query::Query<'static, Any, AnyArguments> {
        self.0.build()
    }
}

/// One row to insert: each column with its value.
#[derive(Default)]
pub(super) struct NewRow(Vec<(&'static str, Value)>);

impl NewRow {
    pub(super) fn with(mut self, column: &'static str, value: impl Into<Value>) -> Self {
        self.0.push((column, value.into()));
        self
    }

    /// Every limit column.
    pub(super) fn with_limits(self, limits: &LimitOverrides) -> Self {
        LIMIT_FIELDS
            .iter()
            .zip(limits.values())
            .fold(self, |row, (field, value)| row.with(field.column, limit_value(value)))
    }
}

/// `INSERT INTO table (columns) VALUES (...), (...)` for rows that all have the columns of the first.
pub(super) fn insert(table: &str, rows: Vec<NewRow>) -> sqlx::query::Query<'static, Any, AnyArguments> {
    let mut sql = Sql::default();
    let columns: Vec<&str> = rows
        .first()
        .map(|row| row.0.iter().map(|(c, _)| *c).collect())
        .unwrap_or_default();
    sql.push("INSERT INTO ");
    sql.push(table);
    sql.push(" (");
    sql.push(&columns.join(", "));
    sql.push(") VALUES ");
    for (i, row) in rows.into_iter().enumerate() {
        debug_assert!(
            row.0.iter().map(|(c, _)| *c).eq(columns.iter().copied()),
            "rows differ in columns"
        );
        sql.push(if i == 0 { "(" } else { ", (" });
        for (j, (_, value)) in row.0.into_iter().enumerate() {
            if j > 0 {
                sql.push(", ");
            }
            sql.bind(value);
        }
        sql.push(")");
    }
    sql.build()
}

#[cfg(test)]
mod tests {
    use sqlx::Execute as _;

    use super::*;

    #[test]
    fn placeholders_are_numbered_in_the_order_values_are_bound() {
        let query = Update::table("environments")
            .set("display_name", "Staging")
            .set("managed", true)
            .filter("id", "e1")
            .filter_sql("state <> 'revoked'")
            .build();
        assert_eq!(
            query.sql().as_str(),
            "UPDATE environments SET display_name = $1, managed = $2 WHERE id = $3 AND state <> 'revoked'"
        );
    }

    #[test]
    fn every_limit_has_its_column() {
        let limits = LimitOverrides {
            max_batch_facts: Some(5),
            ..Default::default()
        };
        let query = Update::table("organizations")
            .set_limits(&limits)
            .filter("id", "o1")
            .build();
        let expected = LIMIT_FIELDS
            .iter()
            .enumerate()
            .map(|(i, field)| format!("{} = ${}", field.column, i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(
            query.sql().as_str(),
            format!(
                "UPDATE organizations SET {expected} WHERE id = ${}",
                LIMIT_FIELDS.len() + 1
            )
        );
    }

    #[test]
    fn rows_insert_with_numbered_placeholders() {
        let row = |id: &str| NewRow::default().with("id", id).with("created_at", 7);
        let query = insert("users", vec![row("a"), row("b")]);
        assert_eq!(
            query.sql().as_str(),
            "INSERT INTO users (id, created_at) VALUES ($1, $2), ($3, $4)"
        );
    }

    #[test]
    fn deletes_are_filtered() {
        let query = Delete::from("users")
            .filter("organization_id", "o1")
            .filter("account", "github:a")
            .build();
        assert_eq!(
            query.sql().as_str(),
            "DELETE FROM users WHERE organization_id = $1 AND account = $2"
        );
    }
}
