//! The newcomer's command: `orgkeeper demo` on a fresh folder reconciles the examples into SQLite, serves
//! the fact store and the sidecar on loopback, and the official Python client works against what it prints.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::process::{Running, free_port, key_from};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_demo_serves_the_examples_to_the_official_client() {
    let dir = tempfile::tempdir().unwrap();
    let (sidecar, facts) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .arg("demo")
        .arg("-f")
        .arg(repo().join("examples"))
        .args([
            "--sidecar-listen",
            &format!("127.0.0.1:{sidecar}"),
            "--facts-listen",
            &format!("127.0.0.1:{facts}"),
        ])
        .env("ORGKEEPER_LOG_LEVEL", "warn")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read what the demo prints until it says it is serving.
    let stdout = child.stdout.take().unwrap();
    let demo = Running(child);
    let (lines, printed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut output = String::new();
    while !output.contains("== Ctrl-C to stop.") {
        let line = printed
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the demo did not start serving:\n{output}"));
        output.push_str(&line);
        output.push('\n');
    }
    println!("{output}");
    assert!(output.contains("Applied: 13 to add"), "it reconciled the examples");
    assert!(output.contains("No changes"), "and a second run changes nothing");
    assert!(output.contains(&format!("sidecar     http://127.0.0.1:{sidecar}")));
    let secrets = dir.path().join("orgkeeper-secrets/acme");
    assert!(output.contains("orgkeeper-secrets/acme/backend-oso.yaml"));

    let clients = String::from_utf8(
        Command::new("bash")
            .arg(repo().join("tests/clients/setup.sh"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let python = PathBuf::from(clients.trim()).join("py-2.6.0/bin/python");
    let script = r#"
import os
from oso_cloud import Oso, OsoException, Value
url = os.environ["OSO_URL"]
writer = Oso(url=url, api_key=os.environ["OSO_AUTH"])
reader = Oso(url=url, api_key=os.environ["OSO_AUTH_READONLY"])
writer.insert(("has_role", Value("User", "alice"), "admin", Value("Organization", "acme")))
assert reader.get(("has_role", Value("User", "alice"))) == [("has_role", Value("User", "alice"), Value("String", "admin"), Value("Organization", "acme"))]
try:
    reader.insert(("has_role", Value("User", "mallory"), "admin", Value("Organization", "acme")))
    raise SystemExit("a read-only key wrote")
except OsoException as e:
    assert e.status_code == 403, e
print("official client ok")
"#;
    let run = Command::new(python)
        .args(["-c", script])
        .env("OSO_URL", format!("http://127.0.0.1:{sidecar}"))
        .env("OSO_AUTH", key_from(&secrets.join("backend-oso.yaml")))
        .env("OSO_AUTH_READONLY", key_from(&secrets.join("analytics-oso.yaml")))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    drop(demo);
}
