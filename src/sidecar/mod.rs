//! The rate-limiting sidecar: an HTTP proxy in front of the fact API (Oso Cloud wire-compatible) that
//! authenticates API keys, enforces each environment's limits and forwards what it admits.
//!
//! - `classify`: which requests are writes and how many facts they carry;
//! - `limits`: the [`Limiter`] seam and its backends (the in-process GCRA limiter: limits per process);
//! - `handler`: one request through authentication, limits and forwarding;
//! - `proxy`: the client to the upstream (HTTP/2 when it speaks it, else pooled keep-alive HTTP/1.1);
//!   `body`: bounded and streamed bodies;
//! - `answers`: every answer the sidecar gives itself (a `Refusal`); `headers`: `Retry-After` and
//!   `RateLimit*`;
//! - `metrics`: Prometheus metrics; `read_mostly`: the per-environment maps workers share without a lock; `server`: connections, timeouts, graceful shutdown; `connections`: the
//!   caps on open connections and on connections waiting for headers.
//!
//! The sidecar never opens the store: it is handed a [`KeyRing`] (kept fresh by the auth module, which
//! polls the store's revision every second: [`KeyRing::follow`]) and a [`Limiter`] through
//! [`RunOptions`]. Polling was chosen over PostgreSQL LISTEN/NOTIFY because it works the same on
//! SQLite and PostgreSQL, needs no dedicated connection, and one cheap `SELECT revision` per second is
//! nothing; a change reaches the sidecar within about a second (well within the 5 s promised). When the
//! store cannot be reached, the ring keeps its last copy: known keys keep working, unknown keys are
//! refused, and readiness says `degraded`.

mod answers;
mod body;
pub mod classify;
mod connections;
mod handler;
pub mod headers;
pub mod limits;
mod metrics;
pub mod proxy;
mod read_mostly;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use limits::{
    BackendState, Clock, Fallback, Limiter, LocalLimiter, ManualClock, RedisLimiter, RedisMode, RedisModeName,
    RedisOptions, SystemClock,
};
pub use metrics::RefusalReason;
pub use proxy::UpstreamProtocol;

use crate::auth::KeyRing;
use crate::telemetry::{Health, Readiness, Telemetry};
use connections::{Caps, Connections};
use handler::Handler;
use metrics::SidecarMetrics;
use proxy::{Upstream, UpstreamUrlError};
use server::ConnectionLimits;

/// How the sidecar talks to clients and to its upstream.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `http://host:port[/prefix]` of the fact API.
    pub upstream: String,
    /// Time for a request's headers to arrive; also how long an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Time for a request's body to arrive, counted from the end of its headers.
    pub body_timeout: Duration,
    /// Time for the upstream's response headers to arrive.
    pub upstream_timeout: Duration,
    /// HTTP/2 (h2c) or HTTP/1.1 to the upstream, or whichever it speaks.
    pub upstream_protocol: UpstreamProtocol,
    /// Threads serving connections (each with its own upstream connection pool); 0: one per CPU.
    pub workers: usize,
    /// Once the keys were last read from the store longer ago than this, every request is refused (503):
    /// a key revoked during a store outage stops working after at most this long. `None`: never.
    pub max_key_staleness: Option<Duration>,
    /// Client connections open at once; beyond it (every connection busy with a request) a new one gets 503.
    pub max_connections: usize,
    /// Client connections waiting for a request's headers at once; beyond it the one waiting longest is
    /// closed.
    pub max_pending_headers: usize,
}

/// The default `max_key_staleness`: outages shorter than a minute go unnoticed by clients (the built-in
/// fact store needs the same store for every request anyway); a revocation is enforced within a minute
/// even when the store cannot be reached.
pub const DEFAULT_MAX_KEY_STALENESS: Duration = Duration::from_secs(60);

/// The default `max_connections`: far more than an application's connection pool needs (a few dozen),
/// and with at most `DEFAULT_MAX_PENDING_HEADERS` of them idle or half-sent, inside the chart's 128 Mi.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// The default `max_pending_headers`: a waiting connection holds up to a request head's worth of buffer
/// (`MAX_REQUEST_HEAD_BYTES`, 32 KiB). Measured: 15,000 half-sent requests against these defaults keep the
/// sidecar at 57 MiB (62 MiB peak, 23 MiB idle; debug build).
pub const DEFAULT_MAX_PENDING_HEADERS: usize = 1024;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            upstream: "http://127.0.0.1:8081".into(),
            header_read_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(30),
            upstream_protocol: UpstreamProtocol::Auto,
            workers: 1,
            max_key_staleness: Some(DEFAULT_MAX_KEY_STALENESS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_headers: DEFAULT_MAX_PENDING_HEADERS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error(transparent)]
    Upstream(#[from] UpstreamUrlError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the sidecar stopped serving: {0}")]
    Serve(#[from] std::io::Error),
}

/// A sidecar ready to serve: its request handler and what it reports.
#[derive(Clone)]
pub struct Sidecar {
    handler: Arc<Handler>,
    backend: BackendMetrics,
    connection: ConnectionLimits,
    connections: Arc<Connections>,
    workers: usize,
    health: Health,
}

impl Sidecar {
    /// A sidecar authenticating with `ring`, limiting with `limiter`, reporting to `telemetry`.
    pub fn new(
        settings: &Settings,
        ring: KeyRing,
        limiter: Arc<dyn Limiter>,
        telemetry: &Telemetry,
    ) -> Result<Self, SidecarError> {
        let handler = Handler {
            ring,
            limiter,
            upstream: Upstream::new(
                &settings.upstream,
                settings.upstream_protocol,
                settings.upstream_timeout,
            )?,
            metrics: SidecarMetrics::register(telemetry),
            body_timeout: settings.body_timeout,
            max_key_staleness: settings.max_key_staleness,
        };
        let connections = Connections::new(
            Caps {
                max_connections: settings.max_connections.max(1),
                max_pending_headers: settings.max_pending_headers.max(1),
            },
            handler.metrics.connections.clone(),
        );
        Ok(Sidecar {
            handler: Arc::new(handler),
            backend: BackendMetrics::register(telemetry),
            connections,
            connection: ConnectionLimits {
                header_read_timeout: settings.header_read_timeout,
            },
            workers: match settings.workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            health: telemetry.health.clone(),
        })
    }

    /// Serves clients on `listener` until `shutdown`, then lets requests in flight finish.
    pub async fn serve(&self, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
        let handler = &self.handler;
        server::serve(
            listener,
            || Arc::new(handler.for_worker()),
            self.connection,
            self.connections.clone(),
            self.workers,
            shutdown,
        )
        .await
    }

    /// The shared limiter's state (`None` for limits kept in this process).
    pub fn limits_backend(&self) -> Option<BackendState> {
        self.handler.limiter.backend()
    }

    /// Mirrors the key ring into readiness and metrics every `interval`, and forgets the limiter state of
    /// deleted environments, until `shutdown`.
    pub async fn watch(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        let mut revision = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let current = self.report();
            if revision != Some(current) {
                revision = Some(current);
                let ring = &self.handler.ring;
                let exists = |id: &str| ring.environment(id).is_some();
                self.handler.limiter.retain(&exists);
                self.handler.metrics.retain(&exists);
            }
        }
    }

    /// Sets readiness and the ring metrics from the key ring's state; returns the store revision.
    pub fn report(&self) -> i64 {
        let ring = &self.handler.ring;
        let status = ring.status();
        let since = ring.since_last_success();
        let stale = self.handler.stale();
        self.handler
            .metrics
            .ring(&status, since.map(|d| d.as_secs_f64()), stale.is_some());
        let backend = self.handler.limiter.backend();
        if let Some(state) = &backend {
            self.backend.set(state);
        }
        let readiness = match (&status.last_error, status.loaded) {
            _ if let Some(refusal) = &stale => Readiness::NotReady(refusal.message()),
            (None, true)
                if let Some(BackendState {
                    shared: false, detail, ..
                }) = &backend =>
            {
                Readiness::Degraded(format!(
                    "limits are not shared right now: {}",
                    detail.as_deref().unwrap_or("Redis is unavailable")
                ))
            }
            (why, false) => Readiness::Starting(match why {
                Some(e) => format!("cannot load API keys from the store yet: {e}"),
                None => "loading API keys from the store".into(),
            }),
            (None, true) => Readiness::Ready,
            (Some(e), true) => Readiness::Degraded(format!(
                "the store is unreachable ({e}); serving the {} keys and limits read {} s ago",
                status.keys,
                since.map_or(0, |d| d.as_secs())
            )),
        };
        self.health.set(readiness);
        status.revision
    }
}

/// The shared limiter's state as metrics (registered even without Redis: then they stay absent-valued 0).
#[derive(Clone, Default)]
struct BackendMetrics {
    shared: prometheus_client::metrics::gauge::Gauge,
    replicas: prometheus_client::metrics::gauge::Gauge,
    fallbacks: prometheus_client::metrics::gauge::Gauge,
}

impl BackendMetrics {
    fn register(telemetry: &Telemetry) -> Self {
        let metrics = BackendMetrics::default();
        let mut registry = telemetry.registry.lock().unwrap_or_else(|e| e.into_inner());
        registry.register(
            "sidecar_limits_shared",
            "1 while limits are decided in Redis (shared by every replica), 0 while the --redis-fallback decides",
            metrics.shared.clone(),
        );
        registry.register(
            "sidecar_limits_replicas",
            "Sidecar replicas seen announcing themselves in Redis recently (the share fallback divides by it)",
            metrics.replicas.clone(),
        );
        registry.register(
            "sidecar_limits_fallbacks",
            "Times the shared limits became unavailable and the --redis-fallback took over, since start",
            metrics.fallbacks.clone(),
        );
        metrics
    }

    fn set(&self, state: &BackendState) {
        self.shared.set(i64::from(state.shared));
        self.replicas.set(state.replicas as i64);
        self.fallbacks.set(state.fallbacks as i64);
    }
}

/// Where `orgkeeper sidecar` listens, and the key ring and limiter it serves with.
#[derive(Clone)]
pub struct RunOptions {
    pub listen: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The keys and limits, kept fresh by whoever made it (see [`KeyRing::follow`]).
    pub ring: KeyRing,
    pub limiter: Arc<dyn Limiter>,
    pub settings: Settings,
}

/// Runs the sidecar until `shutdown`: serves at once (503 until the ring has keys), keeps readiness and
/// metrics in step with the ring, and lets requests in flight finish on shutdown.
pub async fn run(options: RunOptions, shutdown: CancellationToken) -> Result<(), SidecarError> {
    let telemetry = Telemetry::new("orgkeeper");
    let sidecar = Sidecar::new(&options.settings, options.ring, options.limiter, &telemetry)?;
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| SidecarError::Bind {
            addr: options.listen,
            source,
        })?;
    let metrics_listener = TcpListener::bind(options.metrics_addr)
        .await
        .map_err(|source| SidecarError::Bind {
            addr: options.metrics_addr,
            source,
        })?;
    tracing::info!(
        listen = %options.listen,
        metrics = %options.metrics_addr,
        upstream = %options.settings.upstream,
        "sidecar serving"
    );
    let router = telemetry.router();
    let metrics_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(metrics_listener, router)
            .with_graceful_shutdown(metrics_shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    tokio::spawn(sidecar.clone().watch(Duration::from_secs(1), shutdown.clone()));
    sidecar.serve(listener, shutdown).await?;
    Ok(())
}
