//! What every long-running command exposes on its own port: `/healthz` (the process is alive), `/readyz`
//! (it can do its job; 503 with a JSON reason when not), and Prometheus `/metrics`. Plus the shutdown signal
//! (SIGTERM or Ctrl-C) that starts a graceful stop. And the logs (`logs.rs`).

pub mod logs;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Readiness, shared between the component that knows and the endpoint that tells.
#[derive(Clone)]
pub struct Health {
    state: Arc<Mutex<Readiness>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Starting up; not ready yet.
    Starting(String),
    Ready,
    /// Serving, but degraded: still ready (for example the sidecar serving from its last known keys while the
    /// store is down), and the reason is reported.
    Degraded(String),
    /// Not able to serve.
    NotReady(String),
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: Arc::new(Mutex::new(Readiness::Starting("starting".into()))),
        }
    }
}

impl Health {
    pub fn set(&self, readiness: Readiness) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = readiness;
    }

    pub fn get(&self) -> Readiness {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The registry every component adds its metrics to, and the readiness it reports.
#[derive(Clone, Default)]
pub struct Telemetry {
    pub health: Health,
    pub registry: Arc<Mutex<Registry>>,
}

impl Telemetry {
    pub fn new(prefix: &str) -> Self {
        Telemetry {
            health: Health::default(),
            registry: Arc::new(Mutex::new(Registry::with_prefix(prefix))),
        }
    }

    /// The router serving `/healthz`, `/readyz` and `/metrics`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { json(StatusCode::OK, "ok") }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }

    /// Serves the telemetry router on `addr` until `shutdown` is cancelled.
    pub async fn serve(&self, addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

fn json(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response()
}

async fn readyz(State(telemetry): State<Telemetry>) -> Response {
    match telemetry.health.get() {
        Readiness::Ready => json(StatusCode::OK, "ready"),
        Readiness::Degraded(reason) => json(StatusCode::OK, &format!("degraded: {reason}")),
        Readiness::Starting(reason) | Readiness::NotReady(reason) => json(StatusCode::SERVICE_UNAVAILABLE, &reason),
    }
}

async fn metrics(State(telemetry): State<Telemetry>) -> Response {
    let mut body = String::new();
    let encoded = {
        let registry = telemetry.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut body, &registry)
    };
    match encoded {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode metrics: {e}"),
        ),
    }
}

/// A token cancelled on SIGTERM (what Kubernetes sends) or Ctrl-C, so every task can stop gracefully.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("interrupted: shutting down"),
            _ = term => tracing::info!("SIGTERM: shutting down"),
        }
        trigger.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    async fn get(telemetry: &Telemetry, path: &str) -> (StatusCode, String) {
        let response = telemetry
            .router()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readiness_follows_the_component_and_explains_itself() {
        let telemetry = Telemetry::new("orgkeeper");
        assert_eq!(get(&telemetry, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(&telemetry, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        telemetry.health.set(Readiness::Ready);
        assert_eq!(get(&telemetry, "/readyz").await.0, StatusCode::OK);
        telemetry.health.set(Readiness::Degraded("store unreachable".into()));
        let (status, body) = get(&telemetry, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("store unreachable"));
        telemetry.health.set(Readiness::NotReady("no leader".into()));
        assert_eq!(
            get(&telemetry, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, r#"{"message":"no leader"}"#.into())
        );
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_prometheus_text_format() {
        let telemetry = Telemetry::new("orgkeeper");
        let counter: Counter = Counter::default();
        telemetry
            .registry
            .lock()
            .unwrap()
            .register("test_events", "Events seen by the test", counter.clone());
        counter.inc();
        let (status, body) = get(&telemetry, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("orgkeeper_test_events_total 1"), "{body}");
    }
}
