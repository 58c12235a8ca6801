//! Schema migrations, embedded in the binary. SQLite and PostgreSQL differ only in column types, so each
//! migration exists once per backend with the same version and meaning.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::Backend;

/// (version, description, SQLite SQL, PostgreSQL SQL)
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "tenancy",
        include_str!("migrations/sqlite/0001_tenancy.sql"),
        include_str!("migrations/postgres/0001_tenancy.sql"),
    ),
    (
        2,
        "facts",
        include_str!("migrations/sqlite/0002_facts.sql"),
        include_str!("migrations/postgres/0002_facts.sql"),
    ),
    (
        3,
        "key last used",
        include_str!("migrations/sqlite/0003_key_last_used.sql"),
        include_str!("migrations/postgres/0003_key_last_used.sql"),
    ),
    (
        4,
        "key lifecycle",
        include_str!("migrations/sqlite/0004_key_lifecycle.sql"),
        include_str!("migrations/postgres/0004_key_lifecycle.sql"),
    ),
    (
        5,
        "key rotation",
        include_str!("migrations/sqlite/0005_key_rotation.sql"),
        include_str!("migrations/postgres/0005_key_rotation.sql"),
    ),
];

pub(super) fn migrator(backend: Backend) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sqlite, postgres)| {
            let sql = match backend {
                Backend::Sqlite => *sqlite,
                Backend::Postgres => *postgres,
            };
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}
