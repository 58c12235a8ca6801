//! Prometheus metrics of the fact store: requests by endpoint, method and status, their latency, and facts
//! written per environment.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `namespace/organization/environment`.
    pub environment: String,
    /// `insert` or `delete`.
    pub operation: String,
}

#[derive(Clone)]
pub struct FactsMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<EndpointLabels, Histogram>,
    pub written: Family<WriteLabels, Counter>,
}

impl FactsMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = FactsMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            written: Family::default(),
        };
        registry.register(
            "facts_requests",
            "Fact API requests by endpoint, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "facts_request_duration_seconds",
            "Fact API request latency by endpoint",
            metrics.duration.clone(),
        );
        registry.register(
            "facts_written",
            "Facts inserted or deleted, by environment (rows actually changed)",
            metrics.written.clone(),
        );
        metrics
    }
}
