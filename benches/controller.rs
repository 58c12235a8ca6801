//! Benchmark of `orgkeeper controller` (prints numbers; not a test):
//!
//! 1. 1,000 ApiKeys over 10 environments of one organization, applied at once with `kubectl apply`:
//!    time until every ApiKey is Ready with its Secret;
//! 2. then 60 s idle: reconciles, store writes and status writes in that minute (target: no writes);
//! 3. the controller's peak memory (VmHWM).
//!
//! Run: `ORGKEEPER_TEST_KUBECONFIG=$(tests/cluster/up.sh | tail -1) cargo bench --bench controller`
//! (`ORGKEEPER_E2E_DATABASE=postgres` with `ORGKEEPER_TEST_POSTGRES_URL` for PostgreSQL;
//! `ORGKEEPER_BENCH_KEYS` and `ORGKEEPER_BENCH_IDLE_SECONDS` to change the sizes).

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../tests/e2e/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;
use orgkeeper::crd::ApiKey;

const ENVIRONMENTS: usize = 10;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn manifests(keys: usize) -> String {
    let mut docs = vec![organization("bench", "Delete")];
    docs.extend((0..ENVIRONMENTS).map(|e| environment(&format!("env{e:02}"), "bench", "Delete")));
    docs.extend((0..keys).map(|k| api_key(&format!("key{k:04}"), "bench", &format!("env{:02}", k % ENVIRONMENTS))));
    documents(docs)
}

/// Peak and current resident memory of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let keys = env_number("ORGKEEPER_BENCH_KEYS", 1000) as usize;
    let idle = Duration::from_secs(env_number("ORGKEEPER_BENCH_IDLE_SECONDS", 60));
    let ns = TestNamespace::create("bench");
    let store = TestStore::new().await;
    let backend = if store.url.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    // The production defaults: resync every 5m, retries up to 60s, leader election on.
    let controller = ControllerProcess::start(
        &ns,
        &store,
        Options {
            extra_args: vec![],
            ..Options::default()
        },
    );
    let client = ns.cluster.client().await;
    eventually("the controller to serve metrics", WAIT, || async {
        (controller.metric("orgkeeper_controller_leader") == 1.0).then_some(())
    })
    .await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), manifests(keys)).unwrap();

    println!("orgkeeper controller benchmark: {keys} ApiKeys over {ENVIRONMENTS} environments, store {backend}");
    let started = Instant::now();
    ns.kubectl_ok(&["apply", "--server-side", "-f", file.path().to_str().unwrap()]);
    let applied = started.elapsed();
    let api_keys: Api<ApiKey> = ns.api(&client);
    let secrets: Api<Secret> = ns.api(&client);
    let within = Duration::from_secs(600);
    eventually("every ApiKey Ready with its Secret", within, || async {
        let list = api_keys.list(&ListParams::default()).await.ok()?.items;
        let ready = list
            .iter()
            .filter(|k| ready_of(*k).is_some_and(|(status, _)| status == "True"))
            .count();
        if ready < keys {
            return None;
        }
        let written = secrets
            .list_metadata(&ListParams::default().labels("app.kubernetes.io/managed-by=orgkeeper"))
            .await
            .ok()?
            .items
            .len();
        (written == keys).then_some(())
    })
    .await;
    let ready = started.elapsed();
    let (peak_busy, _) = memory_mib(controller.pid());
    let cpu_busy = cpu_seconds(controller.pid());
    println!(
        "  kubectl apply --server-side of {} objects: {:.1} s",
        keys + ENVIRONMENTS + 1,
        applied.as_secs_f64()
    );
    println!(
        "  all {keys} ApiKeys Ready with their Secrets: {:.1} s after the apply started",
        ready.as_secs_f64()
    );
    println!(
        "  while converging: {cpu_busy:.1} s of controller CPU, {} reconciles, {} store writes, {} status writes, {} keys issued",
        controller.metric("orgkeeper_controller_reconciles_total"),
        controller.metric("orgkeeper_controller_store_writes_total"),
        controller.metric("orgkeeper_controller_status_writes_total"),
        controller.metric("orgkeeper_controller_keys_issued_total"),
    );

    let reconciles = controller.metric("orgkeeper_controller_reconciles_total");
    let writes = controller.metric("orgkeeper_controller_store_writes_total");
    let statuses = controller.metric("orgkeeper_controller_status_writes_total");
    tokio::time::sleep(idle).await;
    println!(
        "  {} s idle: {:.2} s of controller CPU, {} reconciles, {} store writes, {} status writes",
        idle.as_secs(),
        cpu_seconds(controller.pid()) - cpu_busy,
        controller.metric("orgkeeper_controller_reconciles_total") - reconciles,
        controller.metric("orgkeeper_controller_store_writes_total") - writes,
        controller.metric("orgkeeper_controller_status_writes_total") - statuses,
    );
    let (peak, now) = memory_mib(controller.pid());
    println!("  controller memory: peak {peak:.1} MiB (at Ready: {peak_busy:.1} MiB), now {now:.1} MiB");

    // Leave the cluster as it was: deleting the organization (deletionPolicy Delete) cleans everything.
    ns.kubectl_ok(&["delete", "organization", "bench", "--wait=false"]);
}
