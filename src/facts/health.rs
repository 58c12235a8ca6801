//! Whether the fact store can reach its database, and failing fast while it cannot.
//!
//! Every fact request needs the database. Left alone, each request during an outage would wait out the
//! pool's acquire timeout before its 503, and so would the health check. Instead one watcher probes the
//! store every refresh interval (the key ring's refresh: a revision poll bounded by [`poll_timeout`], and a
//! reload when the revision moved); a probe or a request that finds the database unreachable marks it so,
//! and until a probe succeeds again requests and the health check answer 503 at once, saying why.
//!
//! [`poll_timeout`]: crate::auth::poll_timeout

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::auth::{KeyRing, RefreshError};
use crate::store::{Store, StoreError};
use crate::telemetry::{Health, Readiness};

/// The message of every 503 the fact store gives because its database is unreachable.
pub const STORE_UNREACHABLE: &str = "the fact store cannot reach its database; retry later";

/// How long a request waits for a database connection by default (`orgkeeper facts --store-timeout`).
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// The last known state of the database connection, shared by the watcher and the handlers.
#[derive(Clone, Default)]
pub struct StoreHealth {
    outage: Arc<RwLock<Option<Outage>>>,
}

#[derive(Clone, Debug)]
struct Outage {
    since: Instant,
    reason: String,
}

impl StoreHealth {
    /// `Err` (how long it has been down) while the store is known to be unreachable.
    pub fn check(&self) -> Result<(), Duration> {
        match &*self.outage.read().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(outage) => Err(outage.since.elapsed()),
        }
    }

    /// Marks the store unreachable (keeping the start of an outage already known).
    pub fn unreachable(&self, reason: impl Into<String>) {
        let mut outage = self.outage.write().unwrap_or_else(|e| e.into_inner());
        if outage.is_none() {
            let reason = reason.into();
            tracing::warn!(reason = %reason, "the fact store cannot reach its database: answering 503 until it can");
            *outage = Some(Outage {
                since: Instant::now(),
                reason,
            });
        }
    }

    fn reachable(&self) {
        let mut outage = self.outage.write().unwrap_or_else(|e| e.into_inner());
        if let Some(ended) = outage.take() {
            tracing::info!(
                after_seconds = ended.since.elapsed().as_secs(),
                "the fact store reaches its database again"
            );
        }
    }

    /// What `/readyz` says.
    fn readiness(&self) -> Readiness {
        match &*self.outage.read().unwrap_or_else(|e| e.into_inner()) {
            None => Readiness::Ready,
            Some(outage) => Readiness::NotReady(format!(
                "cannot reach the store (for {} s): {}",
                outage.since.elapsed().as_secs(),
                outage.reason
            )),
        }
    }

    /// Notes what a store call found: an unreachable database marks the outage at once, so the requests
    /// after it do not wait for the next probe to fail fast.
    pub fn observe(&self, error: &StoreError) {
        if error.is_unreachable() {
            self.unreachable(error.to_string());
        }
    }
}

/// Probes the store every `interval` until `shutdown`: reloads the keys when they changed, and keeps
/// `health` (what requests check) and `readiness` (what `/readyz` says) up to date.
pub async fn watch_store(
    store: Store,
    keys: KeyRing,
    health: StoreHealth,
    readiness: Health,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match keys.refresh(&store).await {
            Ok(reloaded) => {
                health.reachable();
                if reloaded {
                    let status = keys.status();
                    tracing::info!(revision = status.revision, keys = status.keys, "reloaded keys");
                }
            }
            Err(e @ RefreshError::TimedOut { .. }) => health.unreachable(e.to_string()),
            Err(RefreshError::Store(e)) if e.is_unreachable() => health.unreachable(e.to_string()),
            // The database answered, so it is reachable; the keys stay as they were.
            Err(e) => {
                health.reachable();
                tracing::warn!(error = %e, "cannot reload keys from the store; serving the last known copy");
            }
        }
        readiness.set(health.readiness());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_until_it_ends_and_keeps_its_start() {
        let health = StoreHealth::default();
        assert!(health.check().is_ok());
        assert_eq!(health.readiness(), Readiness::Ready);
        health.unreachable("connection refused");
        std::thread::sleep(Duration::from_millis(20));
        health.unreachable("a later failure");
        let down_for = health.check().unwrap_err();
        assert!(
            down_for >= Duration::from_millis(20),
            "the outage started at the first failure"
        );
        let Readiness::NotReady(reason) = health.readiness() else {
            panic!("not ready while down")
        };
        assert!(reason.contains("connection refused"), "{reason}");
        health.reachable();
        assert!(health.check().is_ok());
    }
}
