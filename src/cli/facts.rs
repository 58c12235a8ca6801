//! `orgkeeper facts`: the built-in upstream. Serves the fact endpoints the official Oso clients use, storing
//! facts per environment in the backing store, and authenticates every request with the same keys the
//! sidecar checks (reloaded from the store when they change). It speaks HTTP/1.1 (the official clients) and
//! HTTP/2 without TLS (h2c, prior knowledge: the sidecar in front of it, which multiplexes its requests).

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use super::duration::parse_duration;
use super::exit;
use crate::auth::KeyRing;
use crate::facts::{DEFAULT_MAX_BODY_BYTES, FactsApp, FactsConfig, FactsMetrics, router, watch_store};
use crate::store::{DEFAULT_DATABASE_URL, Store, StoreOptions};
use crate::telemetry::{Readiness, Telemetry, shutdown_signal};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address the fact API listens on.
    #[arg(long, env = "ORGKEEPER_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// The store: sqlite://PATH (created if missing) or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, env = "ORGKEEPER_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "ORGKEEPER_METRICS_ADDR", default_value = "0.0.0.0:9092")]
    pub metrics_addr: SocketAddr,
    /// Largest request body accepted, in bytes (larger ones get 413 before they are read).
    #[arg(long, env = "ORGKEEPER_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Time a client has to send its whole request body once its headers have arrived (then 408).
    /// Units: ms, s, m.
    #[arg(long, env = "ORGKEEPER_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// How often the store's revision is polled for new, revoked or changed keys (e.g. 1s, 500ms; at least 50ms).
    #[arg(long, env = "ORGKEEPER_REFRESH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub refresh_interval: Duration,
    /// How long a request waits for a database connection before it answers 503 (units: ms, s, m). A
    /// database outage is noticed within one refresh interval; until it ends, requests get 503 at once.
    #[arg(long, env = "ORGKEEPER_STORE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub store_timeout: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let options = StoreOptions {
        acquire_timeout: args.store_timeout,
        ..StoreOptions::default()
    };
    let store = Store::connect_with(&args.database_url, &options)
        .await
        .context("opening the store")?;
    if store.backend() == crate::store::Backend::Sqlite {
        // Keeps SQLite's query planner statistics fresh enough to pick the right fact index.
        let _ = sqlx::query::<sqlx::Any>("PRAGMA optimize").execute(store.pool()).await;
    }
    let keys = KeyRing::default();
    keys.refresh(&store).await.context("loading API keys from the store")?;
    let telemetry = Telemetry::new("orgkeeper");
    let metrics = {
        let mut registry = telemetry.registry.lock().unwrap_or_else(|e| e.into_inner());
        FactsMetrics::new(&mut registry)
    };
    let shutdown = shutdown_signal();
    let config = FactsConfig {
        max_body_bytes: args.max_body_bytes,
        body_timeout: args.body_timeout,
    };
    let app = FactsApp::new(store.clone(), keys.clone(), config, metrics);

    let refresh = args.refresh_interval.max(Duration::from_millis(50));
    tokio::spawn(watch_store(
        store.clone(),
        keys.clone(),
        app.store_health(),
        telemetry.health.clone(),
        refresh,
        shutdown.clone(),
    ));
    let telemetry_server = {
        let telemetry = telemetry.clone();
        let shutdown = shutdown.clone();
        let addr = args.metrics_addr;
        tokio::spawn(async move { telemetry.serve(addr, shutdown).await })
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let status = keys.status();
    tracing::info!(
        addr = %listener.local_addr().unwrap_or(args.listen),
        keys = status.keys,
        environments = status.environments,
        "fact store listening"
    );
    telemetry.health.set(Readiness::Ready);
    // Each connection is HTTP/1.1 or h2c, told apart by its first bytes (axum's `http2` feature).
    let api = axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    tokio::pin!(api);
    // A metrics port that cannot be served is fatal; a metrics server that stopped for the shutdown is not.
    let result = tokio::select! {
        served = &mut api => served.context("serving the fact API"),
        telemetry = telemetry_server => match telemetry {
            Ok(Err(e)) => Err(e).with_context(|| format!("serving /metrics on {}", args.metrics_addr)),
            _ => (&mut api).await.context("serving the fact API"),
        },
    };
    shutdown.cancel();
    store.close().await;
    result.map(|()| exit::OK)
}
