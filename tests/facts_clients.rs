//! The official Oso clients, unchanged (Python oso-cloud 2.6.0 and 1.5.1, Node oso-cloud 2.6.0), against
//! `orgkeeper facts` started as a user would: `orgkeeper apply -f tests/clients/manifests` issues the keys,
//! then the fact store serves them. The checks themselves are `tests/clients/run.sh` (which the sidecar's
//! tests point at the sidecar); the clients are installed on first use under ~/.cache/orgkeeper/clients.
//!
//! Needs python3 (with venv), node and npm, and PyPI/npm reachable on the first run.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use support::process::{Running, free_port, key_from, wait_ready};

const BIN: &str = env!("CARGO_BIN_EXE_orgkeeper");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn official_clients_pass_against(database_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    let apply = Command::new(BIN)
        .args(["apply", "-f"])
        .arg(repo().join("tests/clients/manifests"))
        .args(["--database-url", database_url, "--secrets-dir"])
        .arg(&secrets)
        .output()
        .unwrap();
    assert!(
        apply.status.success(),
        "orgkeeper apply failed:\n{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    let writer = key_from(&secrets.join("clients/writer-oso.yaml"));
    let reader = key_from(&secrets.join("clients/reader-oso.yaml"));

    let (port, metrics_port) = (free_port(), free_port());
    let log = dir.path().join("facts.log");
    let child = Command::new(BIN)
        .args(["facts", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--database-url", database_url])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    wait_ready("orgkeeper facts", metrics_port, &mut running.0, &log);

    let harness = Command::new("bash")
        .arg(repo().join("tests/clients/run.sh"))
        .arg(format!("http://127.0.0.1:{port}"))
        .env("OSO_AUTH", &writer)
        .env("OSO_AUTH_READONLY", &reader)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&harness.stdout);
    let stderr = String::from_utf8_lossy(&harness.stderr);
    println!("{stdout}");
    for secret in [&writer, &reader] {
        assert!(
            !stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()),
            "a key leaked into the output"
        );
    }
    assert!(
        harness.status.success(),
        "the official clients failed:\n{stdout}\n{stderr}\n--- orgkeeper facts log ---\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(stdout.contains("== all official clients passed"));
    // The Python 2.6.0 and Node clients each asked /api/authorize once: the 404 was not retried.
    let metrics = get(metrics_port, "/metrics");
    let asked: Vec<&str> = metrics
        .lines()
        .filter(|line| {
            line.starts_with("orgkeeper_facts_requests_total{") && line.contains("endpoint=\"/api/authorize\"")
        })
        .collect();
    assert_eq!(asked.len(), 1, "one method and status: {asked:?}");
    assert!(
        asked[0].contains("status=\"404\"") && asked[0].ends_with(" 2"),
        "{asked:?}"
    );
    drop(running);
    let log = std::fs::read(&log).unwrap();
    assert!(!log.contains(&0x1b), "a log written to a file carries no colour codes");
}

/// `GET path` on a local port; the whole answer, headers and body.
fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Logs to a pipe (a log collector, `| tee`) are plain text: no ANSI escape codes.
#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args(["facts", "--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.path().join("store.db").display()))
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let mut stderr = BufReader::new(running.0.stderr.take().unwrap());
    let mut logged = Vec::new();
    while !String::from_utf8_lossy(&logged).contains("fact store listening") {
        let before = logged.len();
        stderr.read_until(b'\n', &mut logged).unwrap();
        assert!(
            logged.len() > before,
            "exited before listening:\n{}",
            String::from_utf8_lossy(&logged)
        );
    }
    drop(running);
    let text = String::from_utf8_lossy(&logged);
    assert!(text.contains("INFO"), "{text}");
    assert!(!logged.contains(&0x1b), "escape codes in a piped log: {text:?}");
}

#[test]
fn official_clients_pass_against_the_fact_store_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    official_clients_pass_against(&format!("sqlite://{}", dir.path().join("store.db").display()));
}

#[tokio::test]
async fn official_clients_pass_against_the_fact_store_on_postgres() {
    let url = support::fresh_postgres_url().await;
    tokio::task::spawn_blocking(move || official_clients_pass_against(&url))
        .await
        .unwrap();
}
