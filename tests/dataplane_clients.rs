//! The whole data plane as a user runs it: `orgkeeper apply` issues keys, `orgkeeper facts` serves the fact
//! API, `orgkeeper sidecar` sits in front of it, and the official clients, unchanged, talk to the sidecar:
//! - Python oso-cloud 2.6.0 and 1.5.1 and Node oso-cloud 2.6.0 pass the functional harness (tests/clients/run.sh),
//!   the sidecar speaking HTTP/2 to the fact store;
//! - with the Python client: a read-only key's write raises 403, a 21-fact batch on the Developer plan 413,
//!   going past the write budget 429 with an honest Retry-After, a revoked key 401 within 5 s, and raising a
//!   limit in an Environment applies live (tests/clients/python/check_limits.py).
//!
//! Needs python3 (with venv), node and npm, and PyPI/npm reachable on the first run.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::process::{Running, free_port, key_from, wait_ready};

const BIN: &str = env!("CARGO_BIN_EXE_orgkeeper");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn apply(manifests: &Path, database_url: &str, secrets: &Path) {
    let output = Command::new(BIN)
        .args(["apply", "-f"])
        .arg(manifests)
        .args(["--database-url", database_url, "--secrets-dir"])
        .arg(secrets)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "orgkeeper apply failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts `orgkeeper <command>` with `args`, waits until it is ready, and returns it with its port.
fn serve(dir: &Path, command: &str, database_url: &str, args: &[&str]) -> (Running, u16) {
    let (port, metrics_port) = (free_port(), free_port());
    let log = dir.join(format!("{command}.log"));
    let child = Command::new(BIN)
        .args([command, "--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--database-url", database_url])
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    wait_ready(&format!("orgkeeper {command}"), metrics_port, &mut running.0, &log);
    (running, port)
}

/// Runs a harness command, echoes its output, and checks that no key leaked into it.
fn run_harness(mut command: Command, keys: &[&str]) -> Output {
    let output = command.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    println!("{stdout}");
    for key in keys {
        assert!(
            !stdout.contains(key) && !stderr.contains(key),
            "a key leaked into the output"
        );
    }
    assert!(
        output.status.success(),
        "the official client failed:\n{stdout}\n{stderr}"
    );
    output
}

fn data_plane_passes_with_official_clients(database_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (manifests, secrets) = (dir.path().join("manifests"), dir.path().join("secrets"));
    std::fs::create_dir(&manifests).unwrap();
    std::fs::copy(
        repo().join("tests/clients/manifests/harness.yaml"),
        manifests.join("harness.yaml"),
    )
    .unwrap();
    let limits_yaml = std::fs::read_to_string(repo().join("tests/clients/manifests-limits/limits.yaml")).unwrap();
    std::fs::write(manifests.join("limits.yaml"), &limits_yaml).unwrap();
    apply(&manifests, database_url, &secrets);

    let (_facts, facts_port) = serve(dir.path(), "facts", database_url, &[]);
    let upstream = format!("http://127.0.0.1:{facts_port}");
    let (_sidecar, sidecar_port) = serve(dir.path(), "sidecar", database_url, &["--upstream", &upstream]);
    let sidecar = format!("http://127.0.0.1:{sidecar_port}");

    // The functional harness, every official client, through the sidecar.
    let (writer, reader) = (
        key_from(&secrets.join("clients/writer-oso.yaml")),
        key_from(&secrets.join("clients/reader-oso.yaml")),
    );
    let mut harness = Command::new("bash");
    harness
        .arg(repo().join("tests/clients/run.sh"))
        .arg(&sidecar)
        .env("OSO_AUTH", &writer)
        .env("OSO_AUTH_READONLY", &reader);
    let output = run_harness(harness, &[&writer, &reader]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("== all official clients passed"));
    let log = std::fs::read_to_string(dir.path().join("sidecar.log")).unwrap();
    assert!(
        log.contains("found the upstream's protocol") && log.contains("HTTP/2 (h2c)"),
        "the sidecar speaks HTTP/2 to orgkeeper facts:\n{log}"
    );

    // The limits, with the Python client.
    let key = |name: &str| key_from(&secrets.join(format!("limits/{name}.yaml")));
    let (writer, reader, doomed) = (key("writer"), key("reader"), key("doomed"));
    let clients = String::from_utf8(
        Command::new("bash")
            .arg(repo().join("tests/clients/setup.sh"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let python = PathBuf::from(clients.trim()).join("py-2.6.0/bin/python");
    let limits = |phase: &str| {
        let mut command = Command::new(&python);
        command
            .arg(repo().join("tests/clients/python/check_limits.py"))
            .arg(phase)
            .env("OSO_URL", &sidecar)
            .env("OSO_AUTH", &writer)
            .env("OSO_AUTH_READONLY", &reader)
            .env("OSO_AUTH_DOOMED", &doomed);
        run_harness(command, &[&writer, &reader, &doomed])
    };
    limits("before");
    // Revoke one key and raise the environment's limits, the GitOps way: change the manifests, apply.
    let changed = limits_yaml
        .replace(
            "  name: doomed\n  namespace: limits\nspec:\n",
            "  name: doomed\n  namespace: limits\nspec:\n  revoked: true\n",
        )
        .replace(
            "    factWritesPerMinute: 6\n",
            "    factWritesPerMinute: 600\n    maxBatchFacts: 25\n",
        );
    assert_ne!(changed, limits_yaml);
    std::fs::write(manifests.join("limits.yaml"), changed).unwrap();
    apply(&manifests, database_url, &secrets);
    limits("after");
}

#[test]
fn official_clients_through_the_sidecar_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    data_plane_passes_with_official_clients(&format!("sqlite://{}", dir.path().join("store.db").display()));
}

#[tokio::test]
async fn official_clients_through_the_sidecar_on_postgres() {
    let url = support::fresh_postgres_url().await;
    tokio::task::spawn_blocking(move || data_plane_passes_with_official_clients(&url))
        .await
        .unwrap();
}
