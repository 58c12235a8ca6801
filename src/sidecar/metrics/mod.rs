//! The sidecar's Prometheus metrics: requests forwarded and rejected (by reason) per environment, fact writes
//! admitted per environment, latency, requests in flight, and the state of the key copy (keys,
//! environments, store revision, whether the last refresh reached the store, seconds since it did), and
//! client connections (open, waiting for a request's headers, shed at the caps).
//!
//! Per-environment counters are looked up once per environment and cached, so the hot path touches only
//! atomics, and what every request updates (duration, in flight) is kept per worker (`per_worker.rs`). Environments are labelled `namespace/organization/environment`; requests without a valid key
//! are counted under `environment="unknown"`.

mod per_worker;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

pub use self::per_worker::InFlight;
use self::per_worker::{DurationHistogram, InFlightGauge, Shards, SpreadGauge, WorkerShard};
use super::read_mostly::ReadMostlyMap;
use crate::auth::RingStatus;
use crate::telemetry::Telemetry;

/// Why a request was not forwarded (or failed upstream), as the `reason` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    NotReady,
    KeysStale,
    Unauthenticated,
    Forbidden,
    BodyTooLarge,
    BatchTooLarge,
    RateLimitedRequests,
    RateLimitedFacts,
    ConcurrencyLimited,
    UnsupportedEncoding,
    BadRequest,
    Timeout,
    UpstreamUnreachable,
    UpstreamTimeout,
    LimitsUnavailable,
}

impl RefusalReason {
    const ALL: [RefusalReason; 15] = [
        RefusalReason::NotReady,
        RefusalReason::KeysStale,
        RefusalReason::Unauthenticated,
        RefusalReason::Forbidden,
        RefusalReason::BodyTooLarge,
        RefusalReason::BatchTooLarge,
        RefusalReason::RateLimitedRequests,
        RefusalReason::RateLimitedFacts,
        RefusalReason::ConcurrencyLimited,
        RefusalReason::UnsupportedEncoding,
        RefusalReason::BadRequest,
        RefusalReason::Timeout,
        RefusalReason::UpstreamUnreachable,
        RefusalReason::UpstreamTimeout,
        RefusalReason::LimitsUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NotReady => "not_ready",
            RefusalReason::KeysStale => "keys_stale",
            RefusalReason::Unauthenticated => "unauthenticated",
            RefusalReason::Forbidden => "forbidden",
            RefusalReason::BodyTooLarge => "body_too_large",
            RefusalReason::BatchTooLarge => "batch_too_large",
            RefusalReason::RateLimitedRequests => "rate_limited_requests",
            RefusalReason::RateLimitedFacts => "rate_limited_facts",
            RefusalReason::ConcurrencyLimited => "concurrency_limited",
            RefusalReason::UnsupportedEncoding => "unsupported_encoding",
            RefusalReason::BadRequest => "bad_request",
            RefusalReason::Timeout => "timeout",
            RefusalReason::UpstreamUnreachable => "upstream_unreachable",
            RefusalReason::UpstreamTimeout => "upstream_timeout",
            RefusalReason::LimitsUnavailable => "limits_unavailable",
        }
    }

    fn index(self) -> usize {
        RefusalReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    environment: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    environment: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentLabels {
    environment: String,
}

/// The label for requests that have no environment (no valid key).
pub const UNKNOWN_ENVIRONMENT: &str = "unknown";

#[derive(Clone)]
pub struct SidecarMetrics {
    requests: Family<RequestLabels, Counter>,
    rejections: Family<RefusalLabels, Counter>,
    fact_writes: Family<EnvironmentLabels, Counter>,
    /// Every worker's share of the request duration and requests in flight.
    shards: Shards,
    /// This worker's share.
    worker: Arc<WorkerShard>,
    keys: Gauge,
    environments: Gauge,
    revision: Gauge,
    store_up: Gauge,
    keys_stale: Gauge,
    since_refresh: Gauge<f64, AtomicU64>,
    cache: Arc<ReadMostlyMap<Arc<str>, EnvironmentCounters>>,
    pub connections: ConnectionMetrics,
}

/// Client connections: how many are open and waiting for headers, and how many were shed at the caps.
#[derive(Clone)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    /// Moved twice per request, by whichever worker serves it: spread so that workers do not share it.
    pub waiting: SpreadGauge,
    /// Closed to make room because they had waited longest for a request's headers.
    pub closed_waiting_longest: Counter,
    /// Refused at accept: every open connection was busy with a request.
    pub refused_at_capacity: Counter,
    shed: Family<ShedLabels, Counter>,
}

impl Default for ConnectionMetrics {
    fn default() -> Self {
        let shed = Family::<ShedLabels, Counter>::default();
        let counter = |reason| shed.get_or_create_owned(&ShedLabels { reason });
        ConnectionMetrics {
            open: Gauge::default(),
            waiting: SpreadGauge::default(),
            closed_waiting_longest: counter("waited_longest"),
            refused_at_capacity: counter("at_capacity"),
            shed,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    reason: &'static str,
}

/// One environment's counters, cached.
pub struct EnvironmentCounters {
    pub reads: Counter,
    pub writes: Counter,
    pub facts: Counter,
    label: String,
    rejections: [OnceLock<Counter>; RefusalReason::ALL.len()],
    family: Family<RefusalLabels, Counter>,
}

impl EnvironmentCounters {
    pub fn reject(&self, reason: RefusalReason) {
        self.rejections[reason.index()]
            .get_or_init(|| {
                self.family.get_or_create_owned(&RefusalLabels {
                    environment: self.label.clone(),
                    reason: reason.as_str(),
                })
            })
            .inc();
    }
}

impl SidecarMetrics {
    pub fn register(telemetry: &Telemetry) -> Self {
        let shards = Shards::default();
        let metrics = SidecarMetrics {
            requests: Family::default(),
            rejections: Family::default(),
            fact_writes: Family::default(),
            worker: shards.add(),
            shards,
            keys: Gauge::default(),
            environments: Gauge::default(),
            revision: Gauge::default(),
            store_up: Gauge::default(),
            keys_stale: Gauge::default(),
            since_refresh: Gauge::default(),
            cache: Arc::default(),
            connections: ConnectionMetrics::default(),
        };
        let mut registry = telemetry.registry.lock().unwrap_or_else(|e| e.into_inner());
        registry.register(
            "sidecar_requests",
            "Requests forwarded to the upstream, by environment and class (read or write)",
            metrics.requests.clone(),
        );
        registry.register(
            "sidecar_rejections",
            "Requests answered by the sidecar itself with an error, by environment and reason",
            metrics.rejections.clone(),
        );
        registry.register(
            "sidecar_fact_writes",
            "Facts inserted or deleted by admitted writes, by environment",
            metrics.fact_writes.clone(),
        );
        registry.register(
            "sidecar_request_duration_seconds",
            "Time from a request's headers to the response's headers",
            DurationHistogram(metrics.shards.clone()),
        );
        registry.register(
            "sidecar_in_flight_requests",
            "Requests being served now",
            InFlightGauge(metrics.shards.clone()),
        );
        registry.register(
            "sidecar_keys",
            "Live API keys known to the sidecar",
            metrics.keys.clone(),
        );
        registry.register(
            "sidecar_environments",
            "Environments known to the sidecar",
            metrics.environments.clone(),
        );
        registry.register(
            "sidecar_store_revision",
            "The store revision the keys and limits were loaded at",
            metrics.revision.clone(),
        );
        registry.register(
            "sidecar_store_up",
            "1 when the last refresh reached the store, 0 when the sidecar serves its last known copy",
            metrics.store_up.clone(),
        );
        registry.register(
            "sidecar_keys_stale",
            "1 while the keys were read from the store longer ago than --max-key-staleness and every request is refused",
            metrics.keys_stale.clone(),
        );
        registry.register(
            "sidecar_seconds_since_store_refresh",
            "Seconds since keys and limits were last read from the store successfully",
            metrics.since_refresh.clone(),
        );
        registry.register(
            "sidecar_connections",
            "Client connections open",
            metrics.connections.open.clone(),
        );
        registry.register(
            "sidecar_connections_waiting_for_headers",
            "Client connections waiting for a request's headers (new, idle keep-alive, or part of a request sent)",
            metrics.connections.waiting.clone(),
        );
        registry.register(
            "sidecar_connections_shed",
            "Client connections closed at --max-pending-headers or --max-connections (waited_longest: it had \
             waited longest for headers; at_capacity: refused at accept, every connection being busy)",
            metrics.connections.shed.clone(),
        );
        metrics
    }

    /// The same metrics, with a share of its own for the duration and in-flight figures: for one worker.
    pub fn for_worker(&self) -> SidecarMetrics {
        SidecarMetrics {
            worker: self.shards.add(),
            ..self.clone()
        }
    }

    /// The counters of an environment (created on first use).
    pub fn environment(&self, environment_id: &str, label: &str) -> Arc<EnvironmentCounters> {
        self.cache.get_or_insert_with(environment_id, || EnvironmentCounters {
            reads: self.requests.get_or_create_owned(&RequestLabels {
                environment: label.to_owned(),
                class: "read",
            }),
            writes: self.requests.get_or_create_owned(&RequestLabels {
                environment: label.to_owned(),
                class: "write",
            }),
            facts: self.fact_writes.get_or_create_owned(&EnvironmentLabels {
                environment: label.to_owned(),
            }),
            label: label.to_owned(),
            rejections: Default::default(),
            family: self.rejections.clone(),
        })
    }

    /// Counters for requests without an environment.
    pub fn unknown(&self) -> Arc<EnvironmentCounters> {
        self.environment("", UNKNOWN_ENVIRONMENT)
    }

    pub fn observe(&self, seconds: f64) {
        self.worker.observe(seconds);
    }

    pub fn enter(&self) -> InFlight {
        self.worker.enter()
    }

    /// Mirrors the key ring's state.
    pub fn ring(&self, status: &RingStatus, since_refresh: Option<f64>, stale: bool) {
        self.keys_stale.set(i64::from(stale));
        self.keys.set(status.keys as i64);
        self.environments.set(status.environments as i64);
        self.revision.set(status.revision);
        self.store_up
            .set(i64::from(status.loaded && status.last_error.is_none()));
        if let Some(seconds) = since_refresh {
            self.since_refresh.set(seconds);
        }
    }

    /// Forgets the cached counters of environments that no longer exist (their series stay exported).
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        self.cache.retain(|id| id.is_empty() || keep(id));
    }
}
