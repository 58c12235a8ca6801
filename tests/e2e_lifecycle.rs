//! End-to-end tests of a key's life outside issuance, against a real kube-apiserver with the controller, the
//! store and a sidecar as child processes: the pause annotation, a key revoked by id outside Git
//! (`orgkeeper keys revoke`) and the last-used time the sidecar records showing in the ApiKey's status.
//!
//! Needs `ORGKEEPER_TEST_KUBECONFIG` (see tests/e2e/harness.rs).

mod sidecar_support;
mod support;

#[path = "e2e/harness.rs"]
mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use harness::*;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use orgkeeper::crd::{ApiKey, KstatusFields};
use sidecar_support::{Http, Upstream};

/// Resyncs this often, so that what the sidecars and `keys revoke` write behind the controller's back
/// shows in statuses within seconds.
const RESYNC: &str = "3s";

fn paused_key(name: &str, organization: &str) -> String {
    api_key(name, organization, "production").replace(
        &format!("  name: {name}\n"),
        &format!("  name: {name}\n  annotations:\n    orgkeeper.dev/paused: \"true\"\n"),
    )
}

fn revoked(manifest: String) -> String {
    manifest + "  revoked: true\n"
}

async fn key_state(ns: &TestNamespace, store: &TestStore, name: &str) -> Option<String> {
    let rows = key_rows(&store.open().await, &ns.name).await;
    rows.into_iter().find(|r| r.resource_name == name).map(|r| r.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_resource_is_left_alone_until_resumed_and_can_still_be_deleted() {
    let ns = TestNamespace::create("pause");
    let store = TestStore::new().await;
    let _controller = ControllerProcess::start(&ns, &store, Options::default().with("--resync-interval", RESYNC));
    ns.apply_ok(&documents([
        organization("acme", "Delete"),
        api_key("backend", "acme", "production"),
    ]));
    let client = ns.cluster.client().await;
    let keys: Api<ApiKey> = ns.api(&client);
    wait_reason(&keys, "backend", "Issued").await;

    // Paused, then revoked in Git: the status says Paused and the key stays live.
    ns.kubectl_ok(&["annotate", "apikey", "backend", "orgkeeper.dev/paused=true"]);
    wait_reason(&keys, "backend", "Paused").await;
    ns.apply_ok(&documents([revoked(api_key("backend", "acme", "production"))]));
    // A new ApiKey created paused gets no key, no Secret and not even a finalizer.
    ns.apply_ok(&paused_key("frozen", "acme"));
    let frozen = wait_reason(&keys, "frozen", "Paused").await;
    let paused = wait_reason(&keys, "backend", "Paused").await;
    let message = &paused.status.as_ref().unwrap().condition("Ready").unwrap().message;
    assert!(message.contains("orgkeeper.dev/paused"), "{message}");
    // Two resyncs: had the controller acted on the revocation, it would have by now.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(key_state(&ns, &store, "backend").await.as_deref(), Some("live"));
    assert_eq!(
        key_state(&ns, &store, "frozen").await,
        None,
        "no key for a paused ApiKey"
    );
    assert!(frozen.finalizers().is_empty(), "{:?}", frozen.finalizers());
    let secrets: Api<Secret> = ns.api(&client);
    assert!(secrets.get_opt("frozen").await.unwrap().is_none());

    // Resumed: the revocation declared meanwhile is carried out.
    ns.kubectl_ok(&["annotate", "apikey", "backend", "orgkeeper.dev/paused-"]);
    wait_reason(&keys, "backend", "Revoked").await;
    assert_eq!(key_state(&ns, &store, "backend").await.as_deref(), Some("revoked"));

    // Deleting paused resources works, with or without the finalizer (the store forgets the key).
    ns.kubectl_ok(&["annotate", "apikey", "backend", "orgkeeper.dev/paused=true"]);
    wait_reason(&keys, "backend", "Paused").await;
    ns.kubectl_ok(&["delete", "apikey", "backend", "frozen", "--wait=true", "--timeout=60s"]);
    assert!(keys.get_opt("backend").await.unwrap().is_none());
    assert!(keys.get_opt("frozen").await.unwrap().is_none());
    assert_eq!(key_state(&ns, &store, "backend").await, None, "its record is removed");
}

/// An `orgkeeper sidecar` child process in front of an in-process upstream, reading `store`.
struct SidecarProcess {
    _child: support::process::Running,
    _upstream: Upstream,
    http: Http,
    _dir: tempfile::TempDir,
}

impl SidecarProcess {
    async fn start(store: &TestStore) -> Self {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (listen, metrics) = (support::process::free_port(), support::process::free_port());
        let log = dir.path().join("sidecar.log");
        let mut child = support::process::Running(
            Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
                .args(["sidecar", "--listen", &format!("127.0.0.1:{listen}")])
                .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
                .args(["--upstream", &upstream.url, "--database-url", &store.url])
                .args(["--key-use-flush-interval", "1s"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        support::process::wait_ready("the sidecar", metrics, &mut child.0, &log);
        SidecarProcess {
            _child: child,
            _upstream: upstream,
            http: Http::to(&format!("http://127.0.0.1:{listen}")),
            _dir: dir,
        }
    }

    async fn status_for(&self, key: &str) -> StatusCode {
        self.http.get("/api/facts?predicate=has_role", Some(key)).await.status
    }
}

async fn secret_key(secrets: &Api<Secret>, name: &str) -> String {
    let secret = secrets.get(name).await.unwrap();
    String::from_utf8(secret.data.unwrap()["OSO_AUTH"].0.clone()).unwrap()
}

fn last_used(key: &ApiKey) -> Option<String> {
    key.status.as_ref().and_then(|s| s.last_used_time.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_time_follows_traffic_and_a_key_revoked_outside_git_stays_revoked() {
    let ns = TestNamespace::create("lifecycle");
    let store = TestStore::new().await;
    let _controller = ControllerProcess::start(&ns, &store, Options::default().with("--resync-interval", RESYNC));
    // As Argo CD applies it: its tracking annotation, and the revision stamped at render time.
    let busy_manifest = api_key("busy", "acme", "production").replace(
        "  name: busy\n",
        "  name: busy\n  annotations:\n    orgkeeper.dev/git-revision: 3f2c1ab\n    argocd.argoproj.io/tracking-id: tenants:orgkeeper.dev/ApiKey:x/busy\n",
    );
    let declared = [
        organization("acme", "Delete"),
        busy_manifest,
        api_key("idle", "acme", "production"),
        api_key("leaked", "acme", "production"),
    ];
    ns.apply_ok(&documents(declared.clone()));
    let client = ns.cluster.client().await;
    let keys: Api<ApiKey> = ns.api(&client);
    let secrets: Api<Secret> = ns.api(&client);
    for name in ["busy", "idle", "leaked"] {
        wait_reason(&keys, name, "Issued").await;
    }
    let history = store.open().await.key_history(None).await.unwrap();
    let issued = |name: &str| history.iter().find(|e| e.api_key == name).unwrap().clone();
    let busy_issued = issued("busy");
    assert_eq!(busy_issued.git_revision.as_deref(), Some("3f2c1ab"));
    assert!(
        busy_issued.actor.starts_with("orgkeeper controller ")
            && busy_issued.actor.ends_with("(applied by Argo CD application tenants)"),
        "{}",
        busy_issued.actor
    );
    let idle_issued = issued("idle");
    assert!(
        idle_issued.actor.starts_with("orgkeeper controller ") && !idle_issued.actor.contains("applied by"),
        "kubectl leaves no mark: {}",
        idle_issued.actor
    );
    let sidecar = SidecarProcess::start(&store).await;
    let (busy, leaked) = (secret_key(&secrets, "busy").await, secret_key(&secrets, "leaked").await);

    // No traffic, no last use (two resyncs later).
    tokio::time::sleep(Duration::from_secs(7)).await;
    for name in ["busy", "idle"] {
        assert_eq!(last_used(&keys.get(name).await.unwrap()), None, "{name}");
    }
    let started = k8s_openapi::jiff::Timestamp::now();
    for _ in 0..20 {
        assert_eq!(sidecar.status_for(&busy).await, StatusCode::OK);
    }
    let used = eventually("busy's lastUsedTime", WAIT, || async {
        last_used(&keys.get("busy").await.ok()?)
    })
    .await;
    let used: k8s_openapi::jiff::Timestamp = used.parse().unwrap();
    assert!(
        used.as_second() >= started.as_second() - 1,
        "{used} is from this traffic"
    );
    assert_eq!(
        last_used(&keys.get("idle").await.unwrap()),
        None,
        "idle stays never used"
    );
    let column = ns.kubectl_ok(&["get", "apikey", "busy"]);
    assert!(column.contains("LAST USED"), "{column}");

    // Revoked by id while Git says revoked: false: refused within 5 s, and the status says why.
    let key_id = keys.get("leaked").await.unwrap().status.unwrap().key_id.unwrap();
    let revoke = Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .args([
            "keys",
            "--database-url",
            &store.url,
            "--actor",
            "alice",
            "revoke",
            &key_id,
        ])
        .args(["--reason", "leaked in a CI log"])
        .output()
        .unwrap();
    assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
    let revoked_at = Instant::now();
    eventually(
        "the sidecar to refuse the leaked key",
        Duration::from_secs(5),
        || async { (sidecar.status_for(&leaked).await == StatusCode::UNAUTHORIZED).then_some(()) },
    )
    .await;
    println!("revoked by id: refused after {:?}", revoked_at.elapsed());
    let shown = wait_reason(&keys, "leaked", "RevokedOutsideGit").await;
    let status = shown.status.as_ref().unwrap();
    let message = &status.condition("Ready").unwrap().message;
    for part in [
        "revoked outside Git",
        "\"alice\"",
        "leaked in a CI log",
        "revoked: true",
        "another name",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message}");
    }
    assert_eq!(status.condition("Stalled").unwrap().status, "True", "a person must act");
    assert!(status.revoked_at.is_some());

    // Final: re-applying Git as it was, and `orgkeeper apply` of it, never bring the key back.
    ns.apply_ok(&documents(declared.clone()));
    tokio::time::sleep(Duration::from_secs(7)).await;
    wait_reason(&keys, "leaked", "RevokedOutsideGit").await;
    assert_eq!(key_state(&ns, &store, "leaked").await.as_deref(), Some("revoked"));
    assert_eq!(sidecar.status_for(&leaked).await, StatusCode::UNAUTHORIZED);
    let dir = tempfile::tempdir().unwrap();
    let manifests = documents(declared.clone()).replace(
        "metadata:\n  name: ",
        &format!("metadata:\n  namespace: {}\n  name: ", ns.name),
    );
    std::fs::write(dir.path().join("acme.yaml"), manifests).unwrap();
    let apply = Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .args(["apply", "-f", dir.path().join("acme.yaml").to_str().unwrap()])
        .args(["--database-url", &store.url])
        .args(["--secrets-dir", dir.path().join("secrets").to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&apply.stderr).into_owned() + &String::from_utf8_lossy(&apply.stdout);
    assert!(!apply.status.success(), "apply must refuse: {said}");
    assert!(
        said.contains("RevokedOutsideGit") && said.contains("leaked in a CI log"),
        "{said}"
    );
    assert_eq!(key_state(&ns, &store, "leaked").await.as_deref(), Some("revoked"));

    // Git brought in line: Revoked, and it still says who revoked it and why.
    let mut in_line = declared.to_vec();
    in_line[3] = revoked(api_key("leaked", "acme", "production"));
    ns.apply_ok(&documents(in_line));
    let shown = wait_reason(&keys, "leaked", "Revoked").await;
    let message = &shown.status.as_ref().unwrap().condition("Ready").unwrap().message;
    assert!(message.contains("outside Git by \"alice\""), "{message}");
    assert_eq!(
        sidecar.status_for(&busy).await,
        StatusCode::OK,
        "the other keys never stopped"
    );
}
