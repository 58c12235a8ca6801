//! `orgkeeper sidecar` as a process: configured by flags and ORGKEEPER_* variables, it loads keys from a
//! SQLite file, forwards, serves health and metrics on its own port, waits for a store that is not there
//! yet (503 and a reason), and stops cleanly on SIGTERM.

mod sidecar_support;
mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use orgkeeper::domain::Access;
use orgkeeper::store::Store;
use sidecar_support::*;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sidecar(database_url: &str, upstream: &str, listen: SocketAddr, metrics: SocketAddr) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .args(["sidecar", "--listen", &listen.to_string(), "--upstream", upstream])
        .env("ORGKEEPER_DATABASE_URL", database_url)
        .env("ORGKEEPER_METRICS_ADDR", metrics.to_string())
        .env("ORGKEEPER_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the orgkeeper binary starts");
    Process(child)
}

async fn wait_until_ready(metrics: SocketAddr) -> Reply {
    let http = Http::to(&format!("http://{metrics}"));
    for _ in 0..300 {
        if let Some(reply) = http.try_get("/readyz").await
            && reply.status == StatusCode::OK
        {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sidecar at {metrics} never became ready");
}

/// A sidecar process on a SQLite store with one read-write key `rw`, ready, and what it needs.
struct Launched {
    _dir: tempfile::TempDir,
    tenancy: Tenancy,
    /// Kept for the test's length: it serves the forwarded requests.
    _upstream: Upstream,
    listen: SocketAddr,
    metrics: SocketAddr,
    process: Process,
    ready: Reply,
}

async fn launch() -> Launched {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("orgkeeper.db").display());
    let tenancy = Tenancy::new(
        Store::connect(&url).await.unwrap(),
        &[Env("staging", limits())],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let (listen, metrics) = (free_addr(), free_addr());
    let process = sidecar(&url, &upstream.url, listen, metrics);
    let ready = wait_until_ready(metrics).await;
    Launched {
        _dir: dir,
        tenancy,
        _upstream: upstream,
        listen,
        metrics,
        process,
        ready,
    }
}

async fn metrics_text(metrics: SocketAddr) -> String {
    let reply = Http::to(&format!("http://{metrics}")).get("/metrics", None).await;
    String::from_utf8(reply.body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_keys_from_its_store_and_stops_on_sigterm() {
    let launched = launch().await;
    let (listen, metrics) = (launched.listen, launched.metrics);
    let (tenancy, ready) = (&launched.tenancy, &launched.ready);
    assert_eq!(ready.message(), "ready");

    let http = Http::to(&format!("http://{listen}"));
    assert_eq!(http.batch(tenancy.key("rw"), 2).await.status, StatusCode::OK);
    assert_eq!(http.get("/api/facts", None).await.status, StatusCode::UNAUTHORIZED);
    let text = metrics_text(metrics).await;
    assert!(
        text.contains(r#"orgkeeper_sidecar_fact_writes_total{environment="team/acme/staging"} 2"#),
        "{text}"
    );
    assert_eq!(
        Http::to(&format!("http://{metrics}"))
            .get("/healthz", None)
            .await
            .status,
        StatusCode::OK
    );

    let pid = launched.process.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut process = launched.process;
    let status = tokio::task::spawn_blocking(move || process.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status}");
}

/// Log collectors go away: with stderr a closed pipe, SIGTERM still stops the process (it used to be ignored,
/// because reporting the failed log write panicked in the task that waits for the signal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stderr_a_closed_pipe_sigterm_still_stops_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("orgkeeper.db").display());
    let _tenancy = Tenancy::new(
        Store::connect(&url).await.unwrap(),
        &[Env("staging", limits())],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let (listen, metrics) = (free_addr(), free_addr());
    let mut child = Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .args(["sidecar", "--listen", &listen.to_string(), "--upstream", &upstream.url])
        .env("ORGKEEPER_DATABASE_URL", &url)
        .env("ORGKEEPER_METRICS_ADDR", metrics.to_string())
        .env("ORGKEEPER_LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the orgkeeper binary starts");
    wait_until_ready(metrics).await;
    drop(child.stderr.take()); // the reader goes away: every later log line meets a broken pipe

    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let mut process = Process(child);
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..300 {
            if let Some(status) = process.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    })
    .await
    .unwrap();
    let status = status.expect("the sidecar stops on SIGTERM even when it cannot write its logs");
    assert!(status.success(), "a graceful stop exits 0: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_store_the_binary_answers_503_and_says_why() {
    let nothing = free_addr(); // nobody listens there
    let upstream = Upstream::start().await;
    let (listen, metrics) = (free_addr(), free_addr());
    let _process = sidecar(
        &format!("postgres://orgkeeper:secret-password@{nothing}/orgkeeper"),
        &upstream.url,
        listen,
        metrics,
    );
    let http = Http::to(&format!("http://{metrics}"));
    let mut readiness = None;
    for _ in 0..300 {
        if let Some(reply) = http.try_get("/readyz").await
            && reply.message().contains("cannot load API keys")
        {
            readiness = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let readiness = readiness.expect("readiness explains the store is unreachable");
    assert_eq!(readiness.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !readiness.message().contains("secret-password"),
        "{}",
        readiness.message()
    );
    let reply = Http::to(&format!("http://{listen}"))
        .get("/api/facts", Some(&format!("e_env_key_{}", "A".repeat(32))))
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.count(), 0);
}

#[test]
fn help_explains_every_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .args(["sidecar", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--listen",
        "--upstream",
        "--database-url",
        "--metrics-addr",
        "--refresh-interval",
        "--header-read-timeout",
        "--body-timeout",
        "--upstream-timeout",
        "--max-key-staleness",
        "--max-connections",
        "--max-pending-headers",
        "ORGKEEPER_MAX_KEY_STALENESS",
        "ORGKEEPER_UPSTREAM",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

/// `VmHWM` (peak) and `VmRSS` of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_sent_requests_stays_within_memory_and_real_clients_are_served() {
    // The defaults: --max-connections 4096, --max-pending-headers 1024.
    let launched = launch().await;
    let (listen, metrics, tenancy) = (launched.listen, launched.metrics, &launched.tenancy);
    let pid = launched.process.0.id();
    let (_, before) = memory_mib(pid);

    // 15,000 connections, each with a request whose headers never end (no key needed for that).
    let mut flood = Vec::with_capacity(15_000);
    for i in 0..15_000 {
        let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
        let head = format!("GET /api/facts HTTP/1.1\r\nhost: sidecar\r\nx-flood: {i}\r\nx-more: ");
        // A connection the sidecar already closed to make room may refuse the bytes: that is the point.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await;
        flood.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (peak, now) = memory_mib(pid);
    eprintln!("sidecar memory: {before:.1} MiB idle, {now:.1} MiB with the flood open, peak {peak:.1} MiB");
    assert!(peak < 100.0, "peak RSS {peak:.1} MiB under 15,000 half-sent requests");

    let http = Http::to(&format!("http://{listen}"));
    let reply = http.get("/api/facts", Some(tenancy.key("rw"))).await;
    assert_eq!(reply.status, StatusCode::OK, "a real client is served during the flood");

    // The oldest half-sent requests made room, each told why.
    let answer = read_until_close(&mut flood[0], Duration::from_secs(5)).await;
    assert_eq!(raw_status(&answer), 503, "{answer}");
    assert!(
        raw_json(&answer)["message"]
            .as_str()
            .unwrap()
            .contains("--max-pending-headers"),
        "{answer}"
    );
    let text = metrics_text(metrics).await;
    let waiting = metric(&text, "orgkeeper_sidecar_connections_waiting_for_headers");
    assert!(waiting <= 1024.0, "{waiting} connections waiting for headers");
    let shed = metric(
        &text,
        r#"orgkeeper_sidecar_connections_shed_total{reason="waited_longest"}"#,
    );
    assert!(shed >= 13_000.0, "{shed} connections closed to make room");
}
