//! Facts in the backing store, per environment (table `facts`, migration 0002).
//!
//! The first [`ARG_COLUMNS`] arguments of a fact have their own columns, indexed with the predicate so that
//! reads by leading arguments stay fast on millions of facts; later arguments are kept as JSON and filtered
//! in Rust. Each fact also carries a hash of itself (`fact_key`, unique per environment), so inserts are
//! `ON CONFLICT DO NOTHING` and concrete deletes are lookups: a batch replayed after a timeout leaves the
//! store exactly as the first delivery did.
//!
//! Wildcard deletes are bounded: the facts one request's wildcard deletes remove may not exceed
//! [`MAX_WILDCARD_DELETED`]. Each wildcard first counts its matches (reading at most one row past what is
//! still allowed, so refusing a huge match is cheap) and is refused before it deletes anything; the rows it
//! then deletes are checked again, so a concurrent insert cannot slip past the bound, and a refusal rolls
//! the whole transaction back. Every fact a write removed is reported ([`FactWrite::deleted`]) so that the
//! sidecar can charge what a wildcard cost.
//!
//! On PostgreSQL, a fact write first takes a transaction-scoped advisory lock on its environment, so the
//! writes of one environment run one after another. Without it, two batches inserting the same facts in
//! different orders wait on each other's uncommitted rows of the unique index: PostgreSQL notices the
//! deadlock only after `deadlock_timeout` (a second by default), aborts one, and eight such writers
//! exhausted the retries in CI. Inserts keep the client's order (reads return facts oldest first), so
//! sorting rows to get one lock order was not an option. Reads take no lock. SQLite already runs one
//! writer at a time.
//!
//! Fact writes do not bump `store_revision`: that revision tells the data plane to reload keys and limits,
//! which facts do not affect.

use sqlx::{Any, AssertSqlSafe, Row as _, Transaction};

use super::{Backend, QueryContext, Row, Store, StoreError};
use crate::domain::facts::{Arity, Fact, FactChange, FactFilter, Value};

/// Arguments stored in their own columns (`a0_type`, `a0_id`, ... `a3_id`).
pub const ARG_COLUMNS: usize = 4;
/// Rows per multi-row INSERT (13 parameters each) and keys per `IN (...)` delete. SQLite looks bound
/// parameters up by name in time linear in their number (quadratic per statement), so it gets short
/// statements; PostgreSQL pays a round trip per statement, so it gets long ones.
fn rows_per_statement(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 16,
        Backend::Postgres => 400,
    }
}
/// The most facts the wildcard deletes of one request may remove (Oso Cloud's bound).
pub const MAX_WILDCARD_DELETED: u64 = 10_000;

/// Attempts at a write transaction that hit a deadlock, a serialization failure or a busy SQLite database.
/// Retrying is safe because a batch is all or nothing and idempotent.
const WRITE_ATTEMPTS: usize = 5;

/// The first key of the advisory lock a PostgreSQL fact write takes on its environment (the second is the
/// hash of the environment's id). Any fixed number; this one spells "fact" in ASCII.
const FACT_WRITE_LOCK_CLASS: i32 = 0x6661_6374;

const COLUMNS: &str = "predicate, arity, a0_type, a0_id, a1_type, a1_id, a2_type, a2_id, a3_type, a3_id, rest";

/// What a write did, counted in rows (a fact inserted twice counts once; a wildcard delete counts every
/// fact it removed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FactWrite {
    pub inserted: u64,
    pub deleted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FactStoreError {
    /// The environment was deleted (its facts with it) between authentication and the write.
    #[error("the environment no longer exists")]
    EnvironmentGone,
    /// The request's wildcard deletes match more than [`MAX_WILDCARD_DELETED`] facts; nothing was changed.
    #[error("the wildcard deletes of this request match more than {limit} facts")]
    WildcardTooLarge { limit: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
enum Bind {
    Text(String),
    Int(i64),
}

impl Store {
    /// Applies `changes` in order, in one transaction: all of them or none.
    pub async fn write_facts(&self, environment_id: &str, changes: &[FactChange]) -> Result<FactWrite, FactStoreError> {
        let mut attempt = 1;
        loop {
            match self.try_write_facts(environment_id, changes).await {
                Err(FactStoreError::Store(e)) if attempt < WRITE_ATTEMPTS && is_transient(self.backend(), &e) => {
                    tracing::debug!(attempt, error = %e, "retrying a fact write");
                    tokio::time::sleep(std::time::Duration::from_millis(10 << attempt)).await;
                    attempt += 1;
                }
                Err(FactStoreError::Store(e)) => return Err(classify(e)),
                result => return result,
            }
        }
    }

    /// One attempt; a refusal drops `tx`, which rolls back everything the attempt did.
    async fn try_write_facts(&self, environment_id: &str, changes: &[FactChange]) -> Result<FactWrite, FactStoreError> {
        let mut tx = self.pool().begin().await.context("starting a fact transaction")?;
        if self.backend() == Backend::Postgres {
            // The two-key form, so that the lock never shares a key with the migrator's (one bigint).
            sqlx::query::<Any>("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(FACT_WRITE_LOCK_CLASS)
                .bind(environment_id.to_owned())
                .execute(&mut *tx)
                .await
                .context("locking the environment's facts")?;
        }
        let mut outcome = FactWrite::default();
        let mut wildcard_allowance = MAX_WILDCARD_DELETED;
        for change in changes {
            match change {
                FactChange::Insert(facts) => {
                    outcome.inserted += self.insert_facts(&mut tx, environment_id, facts).await?
                }
                FactChange::Delete(filters) => {
                    outcome.deleted += self
                        .delete_facts(&mut tx, environment_id, filters, &mut wildcard_allowance)
                        .await?
                }
            }
        }
        tx.commit().await.context("committing facts")?;
        Ok(outcome)
    }

    async fn insert_facts(
        &self,
        tx: &mut Transaction<'static, Any>,
        environment_id: &str,
        facts: &[Fact],
    ) -> Result<u64, StoreError> {
        // One row per fact, in the client's order (reads return facts oldest first): a statement never
        // proposes the same row twice. Writers inserting the same facts in different orders do not
        // deadlock, as the environment's lock (see the module's docs) admits one at a time.
        let mut seen = std::collections::HashSet::with_capacity(facts.len());
        let rows: Vec<(String, &Fact)> = facts
            .iter()
            .map(|f| (f.key(), f))
            .filter(|(key, _)| seen.insert(key.clone()))
            .collect();
        let mut inserted = 0;
        for chunk in rows.chunks(rows_per_statement(self.backend())) {
            let mut sql = String::from(
                "INSERT INTO facts (environment_id, fact_key, predicate, arity, a0_type, a0_id, a1_type, a1_id, \
                 a2_type, a2_id, a3_type, a3_id, rest) VALUES ",
            );
            for i in 0..chunk.len() {
                sql.push_str(if i == 0 { "(" } else { ", (" });
                sql.push_str(&placeholders(i * 13 + 1, 13));
                sql.push(')');
            }
            sql.push_str(" ON CONFLICT (environment_id, fact_key) DO NOTHING");
            let mut query = sqlx::query::<Any>(AssertSqlSafe(sql));
            for (key, fact) in chunk {
                let [cells @ .., rest] = fact_cells(fact);
                query = query
                    .bind(environment_id.to_owned())
                    .bind(key.clone())
                    .bind(fact.predicate.clone())
                    .bind(fact.args.len() as i64);
                for cell in cells {
                    query = query.bind(cell);
                }
                query = query.bind(rest);
            }
            inserted += self.execute_write(tx, query, "inserting facts").await?;
        }
        Ok(inserted)
    }

    async fn delete_facts(
        &self,
        tx: &mut Transaction<'static, Any>,
        environment_id: &str,
        filters: &[FactFilter],
        wildcard_allowance: &mut u64,
    ) -> Result<u64, FactStoreError> {
        let mut keys: Vec<String> = Vec::new();
        let mut deleted = 0;
        for filter in filters {
            match filter.concrete() {
                Some(fact) => keys.push(fact.key()),
                None => {
                    let removed = self
                        .delete_matching(tx, environment_id, filter, *wildcard_allowance)
                        .await?;
                    *wildcard_allowance -= removed;
                    deleted += removed;
                }
            }
        }
        keys.sort();
        keys.dedup();
        for chunk in keys.chunks(rows_per_statement(self.backend())) {
            let sql = format!(
                "DELETE FROM facts WHERE environment_id = $1 AND fact_key IN ({})",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query::<Any>(AssertSqlSafe(sql)).bind(environment_id.to_owned());
            for key in chunk {
                query = query.bind(key.clone());
            }
            deleted += self.execute_write(tx, query, "deleting facts").await?;
        }
        Ok(deleted)
    }

    /// Runs one write statement of a fact batch, counted for the store's statistics; returns the rows it changed.
    async fn execute_write(
        &self,
        tx: &mut Transaction<'static, Any>,
        query: sqlx::query::Query<'_, Any, sqlx::any::AnyArguments>,
        context: &'static str,
    ) -> Result<u64, StoreError> {
        self.count_write(1);
        Ok(query.execute(&mut **tx).await.context(context)?.rows_affected())
    }

    /// Deletes what a wildcard pattern matches, at most `allowance` facts (more refuses the request): in SQL
    /// when the pattern constrains only indexed columns, otherwise by selecting candidates, filtering them
    /// in Rust and deleting those rows.
    async fn delete_matching(
        &self,
        tx: &mut Transaction<'static, Any>,
        environment_id: &str,
        filter: &FactFilter,
        allowance: u64,
    ) -> Result<u64, FactStoreError> {
        let too_large = FactStoreError::WildcardTooLarge {
            limit: MAX_WILDCARD_DELETED,
        };
        let (conditions, mut binds) = conditions(environment_id, filter);
        if !needs_rust_filter(filter) {
            // Counted first, reading at most one row past the allowance: a refusal deletes nothing.
            let delete = bind_all(format!("DELETE FROM facts WHERE {conditions}"), binds.clone());
            binds.push(Bind::Int(i64::try_from(allowance + 1).unwrap_or(i64::MAX)));
            let count = bind_all(
                format!(
                    "SELECT COUNT(*) AS n FROM (SELECT 1 FROM facts WHERE {conditions} LIMIT ${}) AS matched",
                    binds.len()
                ),
                binds,
            );
            self.count(1);
            let matched: i64 = count
                .fetch_one(&mut **tx)
                .await
                .context("counting facts to delete")?
                .try_get("n")
                .context("counting facts to delete")?;
            if matched.max(0) as u64 > allowance {
                return Err(too_large);
            }
            let deleted = self.execute_write(tx, delete, "deleting facts").await?;
            // Facts inserted since the count by a concurrent writer: the transaction is dropped, rolled back.
            if deleted > allowance {
                return Err(too_large);
            }
            return Ok(deleted);
        }
        let select = bind_all(format!("SELECT id, {COLUMNS} FROM facts WHERE {conditions}"), binds);
        self.count(1);
        let rows = select.fetch_all(&mut **tx).await.context("finding facts to delete")?;
        let mut ids = Vec::new();
        for row in &rows {
            if decode(row)?.matches(filter) {
                ids.push(row.try_get::<i64, _>("id").context("finding facts to delete")?);
            }
        }
        if ids.len() as u64 > allowance {
            return Err(too_large);
        }
        let mut deleted = 0;
        for chunk in ids.chunks(rows_per_statement(self.backend())) {
            let sql = format!("DELETE FROM facts WHERE id IN ({})", placeholders(1, chunk.len()));
            let mut query = sqlx::query::<Any>(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            deleted += self.execute_write(tx, query, "deleting facts").await?;
        }
        Ok(deleted)
    }

    /// The environment's facts that match `filter`, oldest first.
    pub async fn query_facts(&self, environment_id: &str, filter: &FactFilter) -> Result<Vec<Fact>, StoreError> {
        let (conditions, binds) = conditions(environment_id, filter);
        let query = bind_all(
            format!("SELECT {COLUMNS} FROM facts WHERE {conditions} ORDER BY id"),
            binds,
        );
        self.count(1);
        let rows = match &self.readers {
            Some(readers) => readers.fetch_all(query).await,
            None => query.fetch_all(self.pool()).await,
        }
        .context("reading facts")?;
        let post_filter = needs_rust_filter(filter);
        let mut facts = Vec::with_capacity(rows.len());
        for row in &rows {
            let fact = decode(row)?;
            if !post_filter || fact.matches(filter) {
                facts.push(fact);
            }
        }
        Ok(facts)
    }

    /// Deletes every fact of the environment; returns how many there were.
    pub async fn clear_facts(&self, environment_id: &str) -> Result<u64, StoreError> {
        self.count_write(1);
        Ok(sqlx::query::<Any>("DELETE FROM facts WHERE environment_id = $1")
            .bind(environment_id.to_owned())
            .execute(self.pool())
            .await
            .context("clearing facts")?
            .rows_affected())
    }

    /// How many facts the environment holds.
    pub async fn count_facts(&self, environment_id: &str) -> Result<u64, StoreError> {
        self.count(1);
        let n: i64 = sqlx::query_scalar::<Any, i64>("SELECT COUNT(*) FROM facts WHERE environment_id = $1")
            .bind(environment_id.to_owned())
            .fetch_one(self.pool())
            .await
            .context("counting facts")?;
        Ok(n.max(0) as u64)
    }
}

/// `$first, $first+1, ...` (`count` of them).
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The type/id cells of the indexed argument columns, then `rest`.
fn fact_cells(fact: &Fact) -> [String; 2 * ARG_COLUMNS + 1] {
    let mut cells: [String; 2 * ARG_COLUMNS + 1] = Default::default();
    for (i, arg) in fact.args.iter().take(ARG_COLUMNS).enumerate() {
        cells[2 * i] = arg.type_.clone();
        cells[2 * i + 1] = arg.id.clone();
    }
    if fact.args.len() > ARG_COLUMNS {
        let rest: Vec<(&str, &str)> = fact.args[ARG_COLUMNS..]
            .iter()
            .map(|a| (a.type_.as_str(), a.id.as_str()))
            .collect();
        cells[2 * ARG_COLUMNS] = serde_json::to_string(&rest).unwrap_or_default();
    }
    cells
}

fn decode(row: &Row) -> Result<Fact, StoreError> {
    let get = |column: &'static str| row.try_get::<String, _>(column).context("reading facts");
    let arity = row.try_get::<i64, _>("arity").context("reading facts")?;
    let arity = usize::try_from(arity).map_err(|_| StoreError::Corrupt(format!("a fact with arity {arity}")))?;
    let mut args = Vec::with_capacity(arity);
    const NAMES: [(&str, &str); ARG_COLUMNS] = [
        ("a0_type", "a0_id"),
        ("a1_type", "a1_id"),
        ("a2_type", "a2_id"),
        ("a3_type", "a3_id"),
    ];
    for (type_column, id_column) in NAMES.iter().take(arity) {
        args.push(Value {
            type_: get(type_column)?,
            id: get(id_column)?,
        });
    }
    if arity > ARG_COLUMNS {
        let rest: Vec<(String, String)> = serde_json::from_str(&get("rest")?)
            .map_err(|e| StoreError::Corrupt(format!("a fact's arguments beyond the fourth ({e})")))?;
        if rest.len() != arity - ARG_COLUMNS {
            return Err(StoreError::Corrupt(
                "a fact whose arity does not match its arguments".into(),
            ));
        }
        args.extend(rest.into_iter().map(|(type_, id)| Value { type_, id }));
    }
    Ok(Fact {
        predicate: get("predicate")?,
        args,
    })
}

/// Whether the filter constrains arguments that have no column of their own.
fn needs_rust_filter(filter: &FactFilter) -> bool {
    filter
        .args
        .iter()
        .skip(ARG_COLUMNS)
        .any(|p| p.type_.is_some() || p.id.is_some())
}

/// The WHERE clause for a filter over the indexed columns (wider constraints are checked in Rust).
fn conditions(environment_id: &str, filter: &FactFilter) -> (String, Vec<Bind>) {
    let mut sql = String::from("environment_id = $1 AND predicate = $2");
    let mut binds = vec![
        Bind::Text(environment_id.to_owned()),
        Bind::Text(filter.predicate.clone()),
    ];
    let mut push = |sql: &mut String, condition: String, bind: Bind| {
        binds.push(bind);
        sql.push_str(&format!(" AND {condition}${}", binds.len()));
    };
    match filter.arity {
        Arity::Exact(n) => push(&mut sql, "arity = ".into(), Bind::Int(n as i64)),
        Arity::AtLeast(0) => {}
        Arity::AtLeast(n) => push(&mut sql, "arity >= ".into(), Bind::Int(n as i64)),
    }
    for (i, pattern) in filter.args.iter().take(ARG_COLUMNS).enumerate() {
        if let Some(type_) = &pattern.type_ {
            push(&mut sql, format!("a{i}_type = "), Bind::Text(type_.clone()));
        }
        if let Some(id) = &pattern.id {
            push(&mut sql, format!("a{i}_id = "), Bind::Text(id.clone()));
        }
    }
    (sql, binds)
}

fn bind_all(sql: String, binds: Vec<Bind>) -> sqlx::query::Query<'static, Any, sqlx::any::AnyArguments> {
    let mut query = sqlx::query::<Any>(AssertSqlSafe(sql));
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text),
            Bind::Int(n) => query.bind(n),
        };
    }
    query
}

/// Deadlocks and serialization failures (PostgreSQL), a busy or locked database (SQLite).
fn is_transient(backend: Backend, error: &StoreError) -> bool {
    let StoreError::Query {
        source: sqlx::Error::Database(db),
        ..
    } = error
    else {
        return false;
    };
    let code = db.code().unwrap_or_default();
    match backend {
        Backend::Postgres => matches!(code.as_ref(), "40P01" | "40001"),
        // SQLITE_BUSY and SQLITE_LOCKED, with their extended codes.
        Backend::Sqlite => code.parse::<i32>().is_ok_and(|c| c & 0xff == 5 || c & 0xff == 6),
    }
}

fn classify(error: StoreError) -> FactStoreError {
    match &error {
        StoreError::Query {
            source: sqlx::Error::Database(db),
            ..
        } if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation => FactStoreError::EnvironmentGone,
        _ => FactStoreError::Store(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::facts::ValuePattern;

    #[test]
    fn filters_become_indexed_conditions() {
        let filter = FactFilter::pattern(
            "has_role".into(),
            vec![
                ValuePattern {
                    type_: Some("User".into()),
                    id: Some("alice".into()),
                },
                ValuePattern::any(),
                ValuePattern {
                    type_: Some("Organization".into()),
                    id: None,
                },
            ],
        );
        let (sql, binds) = conditions("env", &filter);
        assert_eq!(
            sql,
            "environment_id = $1 AND predicate = $2 AND arity = $3 AND a0_type = $4 AND a0_id = $5 AND a2_type = $6"
        );
        assert_eq!(binds.len(), 6);
        assert!(!needs_rust_filter(&filter));
    }

    #[test]
    fn arguments_beyond_the_columns_go_to_rest_and_back() {
        let fact = Fact {
            predicate: "p".into(),
            args: (0..6)
                .map(|i| Value {
                    type_: format!("T{i}"),
                    id: format!("id \"{i}\""),
                })
                .collect(),
        };
        let cells = fact_cells(&fact);
        assert_eq!(cells[0], "T0");
        assert_eq!(cells[7], "id \"3\"");
        assert_eq!(cells[8], r#"[["T4","id \"4\""],["T5","id \"5\""]]"#);
        let short = Fact {
            predicate: "p".into(),
            args: vec![],
        };
        assert!(fact_cells(&short).iter().all(String::is_empty));
    }
}
