//! `orgkeeper sidecar`: the rate-limiting proxy in front of the fact API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::duration::parse_duration;
use super::exit;
use crate::auth::KeyRing;
use crate::sidecar::{
    self, Fallback, Limiter, LocalLimiter, RedisLimiter, RedisMode, RedisModeName, RedisOptions, RunOptions, Settings,
    UpstreamProtocol,
};
use crate::store::DEFAULT_DATABASE_URL;
use crate::telemetry::shutdown_signal;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address clients (the official Oso clients, with OSO_URL) connect to.
    #[arg(long, env = "ORGKEEPER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The fact API requests are forwarded to: http://HOST:PORT[/PREFIX] (orgkeeper facts listens on 8081).
    #[arg(long, env = "ORGKEEPER_UPSTREAM", default_value = "http://127.0.0.1:8081")]
    pub upstream: String,
    /// The store holding keys and limits: sqlite://PATH or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, env = "ORGKEEPER_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Address of /healthz, /readyz and Prometheus /metrics.
    #[arg(long, env = "ORGKEEPER_METRICS_ADDR", default_value = "0.0.0.0:9091")]
    pub metrics_addr: SocketAddr,
    /// How often the store's revision is polled for key and limit changes (e.g. 1s, 500ms).
    #[arg(long, env = "ORGKEEPER_REFRESH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub refresh_interval: Duration,
    /// Time for a request's headers to arrive (408 after it); idle keep-alive connections close after it too.
    #[arg(long, env = "ORGKEEPER_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Time for a request's body to arrive once its headers have (408 after it).
    #[arg(long, env = "ORGKEEPER_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Time for the upstream's response headers to arrive (504 after it).
    #[arg(long, env = "ORGKEEPER_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// HTTP version to the upstream: http2 (h2c, prior knowledge: all requests share two connections per
    /// worker, the cheapest on loopback), http1 (keep-alive HTTP/1.1), or auto: http2 when the upstream
    /// speaks it (orgkeeper facts does), found out at the first connection and after the upstream was
    /// unreachable.
    #[arg(long, env = "ORGKEEPER_UPSTREAM_PROTOCOL", default_value_t = UpstreamProtocol::Auto)]
    pub upstream_protocol: UpstreamProtocol,
    /// Threads serving connections, each with its own upstream connection pool (0: one per CPU). One
    /// serves well over 10,000 requests/s and leaves the rest of the pod's CPU to the application.
    #[arg(long, env = "ORGKEEPER_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Once the keys were last read from the store longer ago than this (the store is unreachable), every
    /// request is refused with 503 instead of honouring keys that may have been revoked since: the bound on
    /// how long a revocation can go unenforced during an outage. `off`: serve the last known keys for as
    /// long as the outage lasts (availability over revocation).
    #[arg(long, env = "ORGKEEPER_MAX_KEY_STALENESS", default_value = "1m", value_parser = parse_staleness)]
    pub max_key_staleness: Staleness,
    /// Client connections open at once. At the cap a new connection first closes the one waiting longest
    /// for a request's headers; when every connection is busy with a request, it gets 503 and is closed.
    #[arg(long, env = "ORGKEEPER_MAX_CONNECTIONS", default_value_t = sidecar::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Client connections waiting for a request's headers at once (new, idle keep-alive, or part of a
    /// request sent). Beyond it the one waiting longest is closed (with a 503 if it had sent part of a
    /// request), so connections left half-sent cannot crowd out clients that send whole requests.
    #[arg(long, env = "ORGKEEPER_MAX_PENDING_HEADERS", default_value_t = sidecar::DEFAULT_MAX_PENDING_HEADERS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_pending_headers: usize,
    /// How often the time each key was last used is written to the store (gathered in memory meanwhile,
    /// and written once more at shutdown). The store keeps it to the minute, so a busy key costs one write
    /// per flush; shorter intervals are for tests. `off`: last use is not tracked at all (ApiKey status
    /// lastUsedTime and `keys list --unused-for` then see no use from this sidecar).
    #[arg(long, env = "ORGKEEPER_KEY_USE_FLUSH_INTERVAL", default_value = "1m", value_parser = parse_key_use_flush)]
    pub key_use_flush_interval: KeyUseFlush,
    /// Shares every environment's budgets and concurrency limit with every sidecar using this Redis (or
    /// Valkey): redis://[USER:PASSWORD@]HOST[:PORT][/DB], rediss://… for TLS; with --redis-mode cluster or
    /// sentinel, several separated by commas (nodes, or sentinels). Without it, each sidecar process
    /// enforces the limits on its own (N replicas admit up to N times an environment's budget).
    #[arg(long, env = "ORGKEEPER_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// A file holding the Redis password (e.g. a mounted Secret); it replaces a password in --redis-url.
    #[arg(long, env = "ORGKEEPER_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<std::path::PathBuf>,
    /// What the sidecar does while Redis does not answer within --redis-timeout: share (each replica
    /// enforces budget / replicas seen recently, so the total stays within the budget), deny (503), or
    /// allow (no limits). The switch is logged, shown on /readyz and in metrics; recovery is automatic.
    #[arg(long, env = "ORGKEEPER_REDIS_FALLBACK", default_value_t = Fallback::Share)]
    pub redis_fallback: Fallback,
    /// The longest a request waits for Redis before --redis-fallback decides it.
    #[arg(long, env = "ORGKEEPER_REDIS_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// How the Redis of --redis-url is deployed: standalone (one server, or a stable address in front of
    /// the primary), cluster (a Redis Cluster: one store's limits live in one hash slot), or sentinel
    /// (--redis-url lists the sentinels; the primary is the one they name --redis-sentinel-master).
    #[arg(long, env = "ORGKEEPER_REDIS_MODE", default_value_t = RedisModeName::Standalone)]
    pub redis_mode: RedisModeName,
    /// With --redis-mode sentinel: the name the sentinels monitor the primary under.
    #[arg(long, env = "ORGKEEPER_REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    pub redis_sentinel_master: String,
}

impl Args {
    /// Every flag at its default (or its ORGKEEPER_* variable), for callers that start a sidecar in
    /// process and set a few fields (the demo): new flags need no change there.
    pub fn from_defaults() -> Result<Args, clap::Error> {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            args: Args,
        }
        <Only as clap::Parser>::try_parse_from(["sidecar"]).map(|only| only.args)
    }
}

/// `--max-key-staleness`: a duration, or `off`.
#[derive(Clone, Copy, Debug)]
pub struct Staleness(pub Option<Duration>);

fn parse_staleness(text: &str) -> Result<Staleness, String> {
    match text.trim() {
        "off" | "none" => Ok(Staleness(None)),
        text => parse_duration(text)
            .map(|d| Staleness(Some(d)))
            .map_err(|e| format!("{e} (or off)")),
    }
}

/// `--key-use-flush-interval`: a duration, or `off`.
#[derive(Clone, Copy, Debug)]
pub struct KeyUseFlush(pub Option<Duration>);

fn parse_key_use_flush(text: &str) -> Result<KeyUseFlush, String> {
    match text.trim() {
        "off" => Ok(KeyUseFlush(None)),
        text => parse_duration(text)
            .map(|d| KeyUseFlush(Some(d)))
            .map_err(|e| format!("{e} (or off)")),
    }
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    warn_if_few_descriptors(args.max_connections);
    let shutdown = shutdown_signal();
    let limiter = limiter(&args)?;
    let ring = match args.key_use_flush_interval {
        KeyUseFlush(Some(interval)) => KeyRing::default().with_key_use_flush_interval(interval),
        KeyUseFlush(None) => KeyRing::default().without_key_use(),
    };
    // The ring outlives the server by the draining requests, then writes the last key uses.
    let ring_shutdown = CancellationToken::new();
    let follow = tokio::spawn(
        ring.clone()
            .follow(args.database_url, args.refresh_interval, ring_shutdown.clone()),
    );
    let options = RunOptions {
        listen: args.listen,
        metrics_addr: args.metrics_addr,
        ring,
        limiter,
        settings: Settings {
            upstream: args.upstream,
            header_read_timeout: args.header_read_timeout,
            body_timeout: args.body_timeout,
            upstream_timeout: args.upstream_timeout,
            upstream_protocol: args.upstream_protocol,
            workers: args.workers,
            max_key_staleness: args.max_key_staleness.0,
            max_connections: args.max_connections,
            max_pending_headers: args.max_pending_headers,
        },
    };
    let served = sidecar::run(options, shutdown).await;
    ring_shutdown.cancel();
    if follow.await.is_err() {
        tracing::warn!("the key ring's task failed; the last key uses may not be recorded");
    }
    served.context("running the sidecar")?;
    Ok(exit::OK)
}

/// The shared limiter when --redis-url is set, else limits kept in this process.
fn limiter(args: &Args) -> anyhow::Result<Arc<dyn Limiter>> {
    let Some(url) = &args.redis_url else {
        tracing::info!("no --redis-url: each sidecar process enforces the limits on its own");
        return Ok(Arc::new(LocalLimiter::default()));
    };
    let mut options = RedisOptions::new(url.clone());
    options.mode = match args.redis_mode {
        RedisModeName::Standalone => RedisMode::Standalone,
        RedisModeName::Cluster => RedisMode::Cluster,
        RedisModeName::Sentinel => RedisMode::Sentinel {
            master: args.redis_sentinel_master.clone(),
        },
    };
    options.fallback = args.redis_fallback;
    options.timeout = args.redis_timeout;
    if let Some(path) = &args.redis_password_file {
        let password = std::fs::read_to_string(path)
            .with_context(|| format!("reading --redis-password-file {}", path.display()))?;
        options.password = Some(password.trim_end_matches(['\r', '\n']).to_owned().into());
    }
    let limiter = RedisLimiter::connect(options)?;
    tracing::info!(
        replica = limiter.replica(),
        mode = %args.redis_mode,
        fallback = %args.redis_fallback,
        timeout_ms = args.redis_timeout.as_millis() as u64,
        "limits shared through Redis"
    );
    Ok(Arc::new(limiter))
}

/// Descriptors the sidecar needs besides its client connections (upstream and store connections, files).
const OTHER_DESCRIPTORS: u64 = 64;

/// Says so at start-up when the process may open fewer files than `--max-connections` needs: connections
/// beyond the limit wait in the listen queue instead of being served or refused with an answer.
fn warn_if_few_descriptors(max_connections: usize) {
    let Some(limit) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| open_files_limit(&limits))
    else {
        return;
    };
    let needed = max_connections as u64 + OTHER_DESCRIPTORS;
    if limit < needed {
        tracing::warn!(
            open_files_limit = limit,
            max_connections,
            "the process may open fewer files than --max-connections needs: raise the limit (ulimit -n) to at \
             least {needed} or lower --max-connections"
        );
    }
}

/// The soft `Max open files` of a `/proc/PID/limits` text (`None` when unlimited or absent).
fn open_files_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             96365                96365                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_limit(limits), Some(1024));
        assert_eq!(open_files_limit("Max open files  unlimited  unlimited  files"), None);
        assert_eq!(open_files_limit(""), None);
    }

    #[test]
    fn the_staleness_bound_is_a_duration_or_off() {
        assert_eq!(parse_staleness("90s").unwrap().0, Some(Duration::from_secs(90)));
        assert_eq!(parse_staleness("off").unwrap().0, None);
        let error = parse_staleness("forever").unwrap_err();
        assert!(error.ends_with("(or off)"), "{error}");
        let defaults = Args::from_defaults().unwrap();
        assert_eq!(defaults.max_key_staleness.0, Some(sidecar::DEFAULT_MAX_KEY_STALENESS));
    }
}
