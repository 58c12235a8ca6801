//! Connections lent to one read statement at a time, on a SQLite file, outside sqlx's pool.
//!
//! sqlx's pool pings every connection it gets back (a round trip to the connection's own thread, plus a
//! spawned task) to find connections left mid-transaction by a cancelled caller. On SQLite that ping is
//! as expensive as the fact read itself, and it is never needed here: a connection comes back only after
//! one autocommit `SELECT` ran to its end, and a read cancelled half-way drops (closes) its connection
//! instead of coming back. Readers are detached from the pool, so they never take a writer's place in it.

use std::sync::Mutex;

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool};
use tokio::sync::Semaphore;

pub(crate) struct Readers {
    pool: AnyPool,
    idle: Mutex<Vec<AnyConnection>>,
    /// Bounds the readers open at once (each SQLite connection is a thread).
    permits: Semaphore,
}

impl Readers {
    pub(crate) fn new(pool: AnyPool, max: usize) -> Readers {
        Readers {
            pool,
            idle: Mutex::new(Vec::with_capacity(max)),
            permits: Semaphore::new(max),
        }
    }

    /// Runs one read statement to its end on a lent connection.
    pub(crate) async fn fetch_all(&self, query: Query<'_, Any, AnyArguments>) -> Result<Vec<AnyRow>, sqlx::Error> {
        let _permit = self.permits.acquire().await.map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut connection = match idle {
            Some(connection) => connection,
            // A new connection, set up by the pool's after-connect hook (pragmas), then detached.
            None => self.pool.acquire().await?.detach(),
        };
        let rows = query.fetch_all(&mut connection).await;
        if rows.is_ok() {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(connection);
        }
        rows
    }
}
