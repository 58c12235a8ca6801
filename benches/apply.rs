//! Benchmark of `orgkeeper apply` at scale: one organization with 100 environments, 12,800 API keys (128 per
//! environment, the most allowed) and 1,000 users. For SQLite and PostgreSQL it runs the release binary twice
//! (first apply, then a no-change apply) and prints wall time, store statements, writes and peak memory.
//!
//! Run: `cargo bench --bench apply` (PostgreSQL from ORGKEEPER_TEST_POSTGRES_URL, e.g.
//! `export ORGKEEPER_TEST_POSTGRES_URL=$(tests/postgres/up.sh)`; without it only SQLite runs).
//! Targets (2-core machine): first apply < 10 s on SQLite, no-change apply < 1 s with 0 writes, < 200 MiB.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ENVIRONMENTS: usize = 100;
const KEYS_PER_ENVIRONMENT: usize = 128;
const USERS: usize = 1_000;

fn main() {
    let dir = tempfile::TempDir::new().unwrap();
    let manifests = dir.path().join("manifests");
    generate(&manifests);
    println!(
        "apply benchmark: 1 organization, {ENVIRONMENTS} environments, {} API keys, {USERS} users",
        ENVIRONMENTS * KEYS_PER_ENVIRONMENT
    );
    println!(
        "{:<11} {:<16} {:>9} {:>11} {:>8} {:>12}",
        "store", "run", "wall (s)", "statements", "writes", "peak RSS MiB"
    );
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    bench("SQLite", &sqlite, &manifests, &dir.path().join("secrets-sqlite"));
    match std::env::var("ORGKEEPER_TEST_POSTGRES_URL") {
        Ok(admin) => {
            let url = fresh_database(&admin);
            bench("PostgreSQL", &url, &manifests, &dir.path().join("secrets-pg"));
        }
        Err(_) => println!("PostgreSQL: skipped (set ORGKEEPER_TEST_POSTGRES_URL, e.g. $(tests/postgres/up.sh))"),
    }
}

fn bench(store: &str, url: &str, manifests: &Path, secrets: &Path) {
    let accounts: Vec<String> = (0..USERS).map(|i| format!("github:user-{i:04}")).collect();
    let mut register = vec!["accounts", "add"];
    register.extend(accounts.iter().map(String::as_str));
    run(url, secrets, &register);
    for label in ["first apply", "no-change apply"] {
        let (wall, rss, doc) = run(
            url,
            secrets,
            &["apply", "-f", manifests.to_str().unwrap(), "-o", "json"],
        );
        println!(
            "{store:<11} {label:<16} {:>9.2} {:>11} {:>8} {:>12.1}",
            wall.as_secs_f64(),
            doc["store"]["statements"].as_u64().unwrap_or_default(),
            doc["store"]["writes"].as_u64().unwrap_or_default(),
            rss as f64 / 1024.0
        );
    }
}

/// Runs the release binary and returns its wall time, peak RSS (KiB) and JSON output. The child is reaped with
/// `wait4` (not `Child::wait`) because only `wait4` reports the child's own peak memory.
#[allow(clippy::zombie_processes)]
fn run(url: &str, secrets: &Path, args: &[&str]) -> (Duration, i64, serde_json::Value) {
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .args(args)
        .env("ORGKEEPER_DATABASE_URL", url)
        .env("ORGKEEPER_SECRETS_DIR", secrets)
        .env("ORGKEEPER_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child and both pointers are valid for the call.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "orgkeeper {args:?} failed"
    );
    let output = reader.join().unwrap();
    let doc = serde_json::from_str(&output).unwrap_or(serde_json::Value::Null);
    (wall, usage.ru_maxrss, doc)
}

fn generate(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let header = |kind: &str, name: &str| {
        format!(
            "---\napiVersion: orgkeeper.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: bench\n"
        )
    };
    let mut org = header("Organization", "bigcorp");
    org.push_str("spec:\n  displayName: Big Corp\n  plan: Growth\n");
    fs::write(dir.join("organization.yaml"), org).unwrap();
    let mut users = String::new();
    for i in 0..USERS {
        users.push_str(&header("User", &format!("user-{i:04}")));
        let role = if i % 10 == 0 { "Admin" } else { "Member" };
        writeln!(
            users,
            "spec:\n  organizationRef:\n    name: bigcorp\n  github: user-{i:04}\n  role: {role}"
        )
        .unwrap();
    }
    fs::write(dir.join("users.yaml"), users).unwrap();
    for e in 0..ENVIRONMENTS {
        let name = format!("env-{e:03}");
        let mut text = header("Environment", &name);
        writeln!(
            text,
            "spec:\n  organizationRef:\n    name: bigcorp\n  limits:\n    requestsPerMinute: {}",
            1000 + e
        )
        .unwrap();
        for k in 0..KEYS_PER_ENVIRONMENT {
            text.push_str(&header("ApiKey", &format!("{name}-key-{k:03}")));
            let access = if k % 4 == 0 { "ReadOnly" } else { "ReadWrite" };
            writeln!(
                text,
                "spec:\n  organizationRef:\n    name: bigcorp\n  environment: {name}\n  access: {access}"
            )
            .unwrap();
        }
        fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
    }
}

fn fresh_database(admin: &str) -> String {
    let name = format!("orgkeeper_bench_{}", std::process::id());
    let status = Command::new("psql")
        .args([admin, "-qc", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("psql is needed to create the benchmark database");
    assert!(status.success());
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}
