//! The controller's Prometheus metrics, served on `/metrics` by [`crate::telemetry`] with the `orgkeeper_`
//! prefix: reconciles, errors and durations per kind, status writes, keys issued and revoked, store
//! writes, whether this replica leads, and the live keys of each environment (the leader's view after it
//! last reconciled the organization), so that an alert can warn before an environment hits its 128 keys,
//! and those of them nobody used for `--unused-key-after` (from the sidecars' last-use records), so that an
//! alert or a dashboard lists cleanup candidates without anyone running `orgkeeper keys list`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::domain::{KeyState, Kind, OrgKey, StoredOrganization};
use crate::store::Store;
use crate::telemetry::Telemetry;

type KindLabel = [(&'static str, &'static str); 1];

fn label(kind: Kind) -> KindLabel {
    [("kind", kind.as_str())]
}

/// The same label as the sidecar's and the fact store's per-environment metrics, so that one query can join them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentLabels {
    /// `namespace/organization/environment`.
    environment: String,
}

#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<KindLabel, Counter>,
    errors: Family<KindLabel, Counter>,
    durations: Family<KindLabel, Histogram>,
    status_writes: Family<KindLabel, Counter>,
    keys_issued: Counter,
    keys_revoked: Counter,
    keys_rotated: Counter,
    store_writes: Counter,
    leader: Gauge,
    live_keys: Family<EnvironmentLabels, Gauge>,
    unused_keys: Family<EnvironmentLabels, Gauge>,
    /// The environments each organization has a `live_keys` series for, to drop the series of those gone.
    environments_shown: Arc<Mutex<HashMap<OrgKey, BTreeSet<String>>>>,
}

impl Metrics {
    /// Creates the metrics and registers them with the telemetry registry.
    pub fn register(telemetry: &Telemetry) -> Self {
        let metrics = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
            status_writes: Family::default(),
            keys_issued: Counter::default(),
            keys_revoked: Counter::default(),
            keys_rotated: Counter::default(),
            store_writes: Counter::default(),
            leader: Gauge::default(),
            live_keys: Family::default(),
            unused_keys: Family::default(),
            environments_shown: Arc::default(),
        };
        let mut registry = telemetry.registry.lock().unwrap_or_else(|e| e.into_inner());
        let registry = registry.sub_registry_with_prefix("controller");
        registry.register(
            "reconciles",
            "Reconciles run, by kind (resyncs included)",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and will be retried, by kind",
            metrics.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile took, by kind",
            metrics.durations.clone(),
        );
        registry.register(
            "status_writes",
            "Status updates written to the API server, by kind",
            metrics.status_writes.clone(),
        );
        registry.register(
            "keys_issued",
            "API keys issued (live, with their Secret)",
            metrics.keys_issued.clone(),
        );
        registry.register("keys_revoked", "API keys revoked", metrics.keys_revoked.clone());
        registry.register(
            "keys_rotated",
            "API keys rotated (the new key in its Secret, the previous one in its overlap)",
            metrics.keys_rotated.clone(),
        );
        registry.register(
            "store_writes",
            "Write statements issued to the backing store",
            metrics.store_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease (or runs without leader election)",
            metrics.leader.clone(),
        );
        registry.register(
            "environment_live_keys",
            "Live API keys of each environment (at most 128), as of the organization's last reconcile",
            metrics.live_keys.clone(),
        );
        registry.register(
            "environment_unused_keys",
            "Live API keys of each environment no sidecar used for --unused-key-after (a never used key counts from its issuance): cleanup candidates, as of the organization's last reconcile",
            metrics.unused_keys.clone(),
        );
        metrics
    }

    /// Records one finished reconcile.
    pub fn reconciled(&self, kind: Kind, started: Instant, ok: bool) {
        self.reconciles.get_or_create(&label(kind)).inc();
        if !ok {
            self.errors.get_or_create(&label(kind)).inc();
        }
        self.durations
            .get_or_create(&label(kind))
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn status_written(&self, kind: Kind) {
        self.status_writes.get_or_create(&label(kind)).inc();
    }

    pub fn keys_issued(&self, n: usize) {
        self.keys_issued.inc_by(n as u64);
    }

    pub fn keys_revoked(&self, n: usize) {
        self.keys_revoked.inc_by(n as u64);
    }

    pub fn keys_rotated(&self, n: usize) {
        self.keys_rotated.inc_by(n as u64);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Shows the live keys, and those of them unused for `unused_after`, of every environment of an
    /// organization as the store now holds it; the series of an environment (or organization) no longer in
    /// the store are removed.
    pub fn organization_keys(&self, key: &OrgKey, stored: Option<&StoredOrganization>, unused_after: Duration) {
        let idle_since = crate::store::now().saturating_sub(i64::try_from(unused_after.as_secs()).unwrap_or(i64::MAX));
        let mut counts: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        if let Some(org) = stored {
            for env in &org.environments {
                counts.insert(&env.name, (0, 0));
            }
            for api_key in org.api_keys.iter().filter(|k| k.state == KeyState::Live) {
                let (live, unused) = counts.entry(&api_key.environment).or_default();
                *live += 1;
                if api_key.last_used_at.unwrap_or(api_key.issued_at) <= idle_since {
                    *unused += 1;
                }
            }
        }
        let labels = |environment: &str| EnvironmentLabels {
            environment: format!("{}/{}/{environment}", key.namespace, key.name),
        };
        let mut shown = self.environments_shown.lock().unwrap_or_else(|e| e.into_inner());
        let previous = shown.remove(key).unwrap_or_default();
        for gone in previous.iter().filter(|env| !counts.contains_key(env.as_str())) {
            self.live_keys.remove(&labels(gone));
            self.unused_keys.remove(&labels(gone));
        }
        for (environment, (live, unused)) in &counts {
            self.live_keys.get_or_create(&labels(environment)).set(*live);
            self.unused_keys.get_or_create(&labels(environment)).set(*unused);
        }
        if !counts.is_empty() {
            shown.insert(key.clone(), counts.keys().map(|env| (*env).to_owned()).collect());
        }
    }
}

/// Follows the store's write counter into the `store_writes` metric.
pub struct StoreWrites {
    seen: AtomicU64,
}

impl StoreWrites {
    pub fn new(store: &Store) -> Self {
        StoreWrites {
            seen: AtomicU64::new(store.writes()),
        }
    }

    pub fn update(&self, store: &Store, metrics: &Metrics) {
        let now = store.writes();
        let before = self.seen.swap(now, Ordering::Relaxed);
        metrics.store_writes.inc_by(now.saturating_sub(before));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{StoredApiKey, fixtures};

    fn series(metrics: &Metrics) -> String {
        let telemetry = Telemetry::new("test");
        let mut registry = telemetry.registry.lock().unwrap();
        registry.register("unused", "", metrics.unused_keys.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn keys_nobody_used_for_long_are_counted_per_environment() {
        let metrics = Metrics::register(&Telemetry::new("test"));
        let now = crate::store::now();
        let day = 86_400;
        let key = |name: &str, issued_at: i64, last_used_at: Option<i64>, state| StoredApiKey {
            issued_at,
            last_used_at,
            ..fixtures::api_key(name, name, state)
        };
        let stored = StoredOrganization {
            environments: vec![fixtures::production("env1")],
            api_keys: vec![
                key("used-today", now - 90 * day, Some(now - 60), KeyState::Live),
                key("idle", now - 90 * day, Some(now - 40 * day), KeyState::Live),
                key("never-used-old", now - 31 * day, None, KeyState::Live),
                key("never-used-new", now - day, None, KeyState::Live),
                key("revoked-idle", now - 90 * day, None, KeyState::Revoked),
            ],
            ..fixtures::organization()
        };
        metrics.organization_keys(
            &fixtures::org_key(),
            Some(&stored),
            Duration::from_secs(30 * day as u64),
        );
        let text = series(&metrics);
        assert!(
            text.contains("unused{environment=\"team/acme/production\"} 2"),
            "{text}"
        );
        metrics.organization_keys(&fixtures::org_key(), None, Duration::from_secs(30 * day as u64));
        assert!(
            !series(&metrics).contains("team/acme"),
            "the organization is gone: so is its series"
        );
    }
}
