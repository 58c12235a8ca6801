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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_keys_from_its_store_and_stops_on_sigterm() {
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
    let mut process = sidecar(&url, &upstream.url, listen, metrics);
    let ready = wait_until_ready(metrics).await;
    assert_eq!(ready.message(), "ready");

    let http = Http::to(&format!("http://{listen}"));
    assert_eq!(http.batch(tenancy.key("rw"), 2).await.status, StatusCode::OK);
    assert_eq!(http.get("/api/facts", None).await.status, StatusCode::UNAUTHORIZED);
    let text = String::from_utf8(
        Http::to(&format!("http://{metrics}"))
            .get("/metrics", None)
            .await
            .body
            .to_vec(),
    )
    .unwrap();
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

    let pid = process.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || process.0.wait())
        .await
        .unwrap()
        .unwrap();
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
        "ORGKEEPER_MAX_KEY_STALENESS",
        "ORGKEEPER_UPSTREAM",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}
