//! Shared helpers for the integration tests: stores on both backends.
//!
//! PostgreSQL comes from `ORGKEEPER_TEST_POSTGRES_URL` (`.ci/run` starts one with `tests/postgres/up.sh`);
//! each test gets a fresh database so tests never see each other's data. Without the variable the
//! PostgreSQL half of a test fails with instructions instead of passing silently.
#![allow(dead_code)]

pub mod process;

use std::sync::atomic::{AtomicU32, Ordering};

use orgkeeper::store::Store;
use sqlx::Connection;

pub async fn sqlite() -> Store {
    Store::connect("sqlite::memory:").await.expect("in-memory SQLite")
}

pub fn postgres_admin_url() -> String {
    std::env::var("ORGKEEPER_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "ORGKEEPER_TEST_POSTGRES_URL is not set: start a throwaway server with \
             `export ORGKEEPER_TEST_POSTGRES_URL=$(tests/postgres/up.sh)` (or run .ci/run)"
        )
    })
}

/// A URL to a brand-new, empty PostgreSQL database.
pub async fn fresh_postgres_url() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    sqlx::any::install_default_drivers();
    let admin = postgres_admin_url();
    let name = format!(
        "orgkeeper_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = sqlx::AnyConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query::<sqlx::Any>(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let base = admin.rsplit_once('/').expect("a database URL has a path").0;
    format!("{base}/{name}")
}

pub async fn postgres() -> Store {
    Store::connect(&fresh_postgres_url().await)
        .await
        .expect("connect to the test database")
}

/// Runs each named `async fn(Store)` twice: once on SQLite, once on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$test($crate::support::sqlite().await).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$test($crate::support::postgres().await).await
                }
            }
        )*
    };
}
