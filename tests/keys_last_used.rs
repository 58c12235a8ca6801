//! Last-used tracking through a real sidecar: a key's last-used time moves after traffic and not without,
//! the store gets one write for a key however busy it is within the minute, the last uses are written when
//! the sidecar stops, and `keys list --unused-for` lists exactly the idle keys.

mod keys_support;
mod sidecar_support;
mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use keys_support::{now, record};
use orgkeeper::auth::KeyRing;
use orgkeeper::domain::Access;
use orgkeeper::sidecar::{LocalLimiter, Settings, Sidecar};
use orgkeeper::store::Store;
use orgkeeper::telemetry::Telemetry;
use sidecar_support::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A sidecar in this process whose ring flushes key uses every `flush`; stopped when `shutdown` fires.
async fn sidecar(store: &Store, upstream: &Upstream, flush: Duration, shutdown: &CancellationToken) -> Http {
    serve(
        store,
        upstream,
        KeyRing::default().with_key_use_flush_interval(flush),
        shutdown,
    )
    .await
}

async fn serve(store: &Store, upstream: &Upstream, ring: KeyRing, shutdown: &CancellationToken) -> Http {
    let settings = Settings {
        upstream: upstream.url.clone(),
        ..Settings::default()
    };
    let sidecar = Sidecar::new(
        &settings,
        ring.clone(),
        Arc::new(LocalLimiter::default()),
        &Telemetry::new("orgkeeper"),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = shutdown.clone();
    tokio::spawn(async move { sidecar.serve(listener, stop).await.unwrap() });
    tokio::spawn(
        ring.clone()
            .keep_fresh(store.clone(), Duration::from_millis(200), shutdown.clone()),
    );
    wait_for("the keys to load", Duration::from_secs(20), || ring.status().loaded).await;
    Http::to(&url)
}

async fn last_used_moves_with_traffic_and_only_then(store: Store) {
    let tenancy = Tenancy::new(
        store.clone(),
        &[Env("staging", limits())],
        &[
            Key("busy", "staging", Access::ReadWrite),
            Key("idle", "staging", Access::ReadOnly),
        ],
    )
    .await;
    let upstream = Upstream::start().await;
    let shutdown = CancellationToken::new();
    let http = sidecar(&store, &upstream, Duration::from_millis(200), &shutdown).await;

    let quiet = store.writes();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.writes(), quiet, "no traffic, no writes");
    assert_eq!(record(&store, "busy").await.last_used_at, None);

    let started = now();
    // Traffic across many flushes: the key's row is written once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut requests = 0;
    while tokio::time::Instant::now() < deadline {
        let reply = http
            .get("/api/facts?predicate=has_role", Some(tenancy.key("busy")))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        requests += 1;
    }
    wait_for_last_use(&store, "busy").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let writes = store.writes() - quiet;
    println!("{requests} requests over 2 s through 10 flushes: {writes} store write(s)");
    assert_eq!(writes, 1, "one write for one busy key within the minute");

    let busy = record(&store, "busy").await;
    let used = busy.last_used_at.expect("recorded");
    assert!(used >= started && used <= now(), "{used}");
    assert_eq!(
        record(&store, "idle").await.last_used_at,
        None,
        "never used, never recorded"
    );
    let revision = store.revision().await.unwrap();
    shutdown.cancel();
    assert_eq!(
        store.revision().await.unwrap(),
        revision,
        "recording use is not a tenancy change: sidecars do not reload for it"
    );
}

/// `--key-use-flush-interval off`: traffic leaves no trace in the store (the benchmark's comparison row).
async fn with_tracking_off_traffic_writes_nothing(store: Store) {
    let tenancy = Tenancy::new(
        store.clone(),
        &[Env("staging", limits())],
        &[Key("busy", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let shutdown = CancellationToken::new();
    let ring = KeyRing::default()
        .with_key_use_flush_interval(Duration::from_millis(100))
        .without_key_use();
    let http = serve(&store, &upstream, ring.clone(), &shutdown).await;
    let quiet = store.writes();
    for _ in 0..50 {
        let reply = http
            .get("/api/facts?predicate=has_role", Some(tenancy.key("busy")))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(ring.key_uses().pending(), 0, "nothing gathered");
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store.writes(),
        quiet,
        "five flush intervals and a shutdown later: no write"
    );
    assert_eq!(record(&store, "busy").await.last_used_at, None);
}

on_both_backends!(with_tracking_off_traffic_writes_nothing);

async fn wait_for_last_use(store: &Store, api_key: &str) {
    for _ in 0..100 {
        if record(store, api_key).await.last_used_at.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{api_key}'s last use was never recorded");
}

on_both_backends!(last_used_moves_with_traffic_and_only_then);

/// `orgkeeper keys` on a store, as JSON.
fn keys_json(database_url: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .args(["keys", "list", "-o", "json"])
        .args(args)
        .env("ORGKEEPER_DATABASE_URL", database_url)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "keys list failed");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn names(keys: &serde_json::Value) -> Vec<&str> {
    keys.as_array()
        .unwrap()
        .iter()
        .map(|key| key["apiKey"].as_str().unwrap())
        .collect()
}

/// The process flushes once an hour here: what it gathered reaches the store when it stops (SIGTERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_writes_the_last_uses_when_it_stops_and_unused_for_lists_the_idle_keys() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("orgkeeper.db").display());
    let tenancy = Tenancy::new(
        Store::connect(&url).await.unwrap(),
        &[Env("staging", limits())],
        &[
            Key("busy", "staging", Access::ReadWrite),
            Key("idle", "staging", Access::ReadOnly),
        ],
    )
    .await;
    let upstream = Upstream::start().await;
    let listen = support::process::free_port();
    let metrics = support::process::free_port();
    let log = dir.path().join("sidecar.log");
    let mut child = support::process::Running(
        Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
            .args(["sidecar", "--listen", &format!("127.0.0.1:{listen}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .args(["--upstream", &upstream.url, "--key-use-flush-interval", "1h"])
            .env("ORGKEEPER_DATABASE_URL", &url)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    support::process::wait_ready("the sidecar", metrics, &mut child.0, &log);
    // Idle for longer than --unused-for below before the busy key is used.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let http = Http::to(&format!("http://127.0.0.1:{listen}"));
    for _ in 0..20 {
        let reply = http
            .get("/api/facts?predicate=has_role", Some(tenancy.key("busy")))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        names(&keys_json(&url, &["--unused-for", "3s"])),
        ["busy", "idle"],
        "nothing written before the hour or the shutdown"
    );
    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}: {}", std::fs::read_to_string(&log).unwrap());

    let keys = keys_json(&url, &[]);
    let by_name = |name: &str| {
        keys.as_array()
            .unwrap()
            .iter()
            .find(|key| key["apiKey"] == name)
            .unwrap()
            .clone()
    };
    assert!(by_name("busy")["lastUsed"].is_string(), "{keys}");
    assert!(by_name("idle")["lastUsed"].is_null(), "{keys}");
    assert_eq!(names(&keys_json(&url, &["--unused-for", "3s"])), ["idle"]);
}
