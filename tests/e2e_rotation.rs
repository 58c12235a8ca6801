//! Key rotation and expiry end to end: `orgkeeper controller` against a real kube-apiserver, and a real
//! `orgkeeper sidecar` process reading the same store, driven with `kubectl apply` as users drive it.
//!
//! - a new `spec.rotation.trigger` rotates: the Secret holds the new key, the sidecar accepts both keys
//!   during the overlap and only the new one after it (with no reconcile needed at that moment);
//! - `spec.rotation.every` rotates by the clock; overlap 0s revokes the old key at once;
//! - a crash at each rotation step leaves the Secret holding exactly one key, a live one, and the
//!   previous key still honoured; the restarted controller finishes the rotation;
//! - a declared expiry is refused by the sidecar within 5 s, with the controller down;
//! - bad input (overlap longer than every, a malformed duration, both expiries, a past expiry) is refused
//!   and changes nothing.
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
use k8s_openapi::api::events::v1::Event;
use kube::{Api, ResourceExt};
use orgkeeper::controller::FailpointStep;
use orgkeeper::crd::ApiKey;
use orgkeeper::domain::ApiKeyToken;
use orgkeeper::domain::rotation::format_rfc3339;
use orgkeeper::domain::unix_now;
use sidecar_support::{Http, Upstream};

/// An ApiKey `backend` of organization acme in production, with extra `spec` lines.
fn backend(spec: &str) -> String {
    format!("{}{spec}", api_key("backend", "acme", "production"))
}

fn rotation(trigger: &str, every: Option<&str>, overlap: &str) -> String {
    let every = every.map(|e| format!("    every: {e}\n")).unwrap_or_default();
    format!("  rotation:\n    trigger: \"{trigger}\"\n{every}    overlap: {overlap}\n")
}

/// The key the Secret `backend` holds now.
async fn held(secrets: &Api<Secret>) -> (Secret, String) {
    let secret = secrets.get("backend").await.unwrap();
    let data = secret.data.as_ref().unwrap();
    let key = String::from_utf8(data["OSO_AUTH"].0.clone()).unwrap();
    ApiKeyToken::parse(&key).expect("an orgkeeper key");
    (secret, key)
}

fn key_id(key: &str) -> String {
    ApiKeyToken::parse(key).unwrap().key_id().to_owned()
}

/// A real sidecar process on the test's store, in front of a recording upstream.
struct Sidecar {
    _child: support::process::Running,
    http: Http,
    _upstream: Upstream,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    async fn start(store: &TestStore) -> Sidecar {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (listen, metrics) = (support::process::free_port(), support::process::free_port());
        let log = dir.path().join("sidecar.log");
        let mut child = support::process::Running(
            Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
                .args(["sidecar", "--listen", &format!("127.0.0.1:{listen}")])
                .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
                .args(["--upstream", &upstream.url])
                .env("ORGKEEPER_DATABASE_URL", &store.url)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        support::process::wait_ready("the sidecar", metrics, &mut child.0, &log);
        Sidecar {
            _child: child,
            http: Http::to(&format!("http://127.0.0.1:{listen}")),
            _upstream: upstream,
            _dir: dir,
        }
    }

    async fn accepts(&self, key: &str) -> bool {
        let reply = self.http.get("/api/facts?predicate=has_role", Some(key)).await;
        match reply.status {
            StatusCode::OK => true,
            StatusCode::UNAUTHORIZED => false,
            other => panic!("unexpected answer {other}"),
        }
    }

    /// Waits (up to `within`) until the sidecar answers `accepted` for `key`; returns how long it took.
    async fn until(&self, key: &str, accepted: bool, within: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.accepts(key).await == accepted {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the sidecar did not {} the key within {within:?}",
            if accepted { "accept" } else { "refuse" }
        );
    }
}

/// Waits until the ApiKey's status says the current key is not `old` (a rotation finished).
async fn wait_rotated(keys: &Api<ApiKey>, old: &str, within: Duration) -> ApiKey {
    eventually("the rotation", within, || async {
        let key = keys.get("backend").await.ok()?;
        let status = key.status.as_ref()?;
        (status.key_id.as_deref().is_some_and(|id| id != old) && status.previous_key_id.as_deref() == Some(old))
            .then_some(key)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_trigger_rotates_and_the_old_key_works_for_the_overlap_only() {
    let ns = TestNamespace::create("rot-trigger");
    let store = TestStore::new().await;
    let controller = ControllerProcess::start(&ns, &store, Options::default());
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        backend(&rotation("1", None, "15s")),
    ]));
    let client = ns.cluster.client().await;
    let keys: Api<ApiKey> = ns.api(&client);
    let secrets: Api<Secret> = ns.api(&client);
    wait_reason(&keys, "backend", "Issued").await;
    let (first_secret, old) = held(&secrets).await;
    assert_ne!(
        first_secret.immutable,
        Some(true),
        "a rotating key's Secret is rewritten in place"
    );
    let sidecar = Sidecar::start(&store).await;
    sidecar.until(&old, true, Duration::from_secs(10)).await;

    ns.apply_ok(&backend(&rotation("2", None, "15s")));
    let rotated = wait_rotated(&keys, &key_id(&old), WAIT).await;
    let (secret, new) = held(&secrets).await;
    assert_ne!(new, old);
    assert_eq!(
        secret.uid(),
        first_secret.uid(),
        "the same Secret, rewritten: apps keep their reference"
    );
    assert_eq!(
        secret.labels()["orgkeeper.dev/key-id"],
        key_id(&new),
        "the hook for rollouts follows the key"
    );
    assert_ne!(
        secret.annotations()["orgkeeper.dev/fingerprint"],
        first_secret.annotations()["orgkeeper.dev/fingerprint"]
    );
    let status = rotated.status.clone().unwrap();
    assert_eq!(status.key_id.as_deref(), Some(key_id(&new).as_str()));
    assert!(
        status.last_rotation_time.is_some() && status.previous_key_expires_at.is_some(),
        "{status:?}"
    );
    let status_text = serde_json::to_string(&status).unwrap();
    assert!(
        !status_text.contains(&new) && !status_text.contains(&old),
        "no key material in a status"
    );
    let events: Api<Event> = ns.api(&client);
    let event = wait_event(&events, "Rotated", "backend").await;
    assert!(event.note.as_deref().unwrap_or_default().contains(&key_id(&old)));
    assert_eq!(controller.metric("orgkeeper_controller_keys_rotated_total"), 1.0);

    // During the overlap both keys work; from its end only the new one, with no reconcile needed then.
    sidecar.until(&new, true, Duration::from_secs(5)).await;
    assert!(sidecar.accepts(&old).await, "the old key works during the overlap");
    let ends = orgkeeper::domain::rotation::parse_rfc3339(status.previous_key_expires_at.as_deref().unwrap()).unwrap();
    assert!(ends - unix_now() > 5, "the overlap of 15s is still running");
    let waited = sidecar.until(&old, false, Duration::from_secs(30)).await;
    assert!(
        unix_now() >= ends,
        "refused only from the end of the overlap ({waited:?})"
    );
    assert!(unix_now() - ends <= 5, "and within 5 s of it");
    assert!(sidecar.accepts(&new).await);
    let again = held(&secrets).await.1;
    assert_eq!(again, new, "one rotation per trigger change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rotates_by_the_clock_and_overlap_zero_revokes_at_once() {
    let ns = TestNamespace::create("rot-every");
    let store = TestStore::new().await;
    let _controller = ControllerProcess::start(&ns, &store, Options::default());
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        backend(&rotation("1", Some("20s"), "0s")),
    ]));
    let client = ns.cluster.client().await;
    let keys: Api<ApiKey> = ns.api(&client);
    let secrets: Api<Secret> = ns.api(&client);
    let issued = wait_reason(&keys, "backend", "Issued").await;
    let next = issued
        .status
        .as_ref()
        .unwrap()
        .next_rotation_time
        .clone()
        .expect("the next rotation is shown");
    let (_, old) = held(&secrets).await;
    let sidecar = Sidecar::start(&store).await;
    sidecar.until(&old, true, Duration::from_secs(10)).await;

    // No kubectl at all: the controller wakes up at the next rotation time (the resync is 60s).
    let rotated = wait_rotated(&keys, &key_id(&old), Duration::from_secs(45)).await;
    let at = orgkeeper::domain::rotation::parse_rfc3339(&next).unwrap();
    assert!(unix_now() >= at, "not before {next}");
    let (_, new) = held(&secrets).await;
    assert_eq!(
        rotated.status.as_ref().unwrap().key_id.as_deref(),
        Some(key_id(&new).as_str())
    );
    sidecar.until(&new, true, Duration::from_secs(5)).await;
    let refused_after = sidecar.until(&old, false, Duration::from_secs(5)).await;
    assert!(
        refused_after <= Duration::from_secs(5),
        "overlap 0s: the old key stops at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_rotation_keeps_one_live_key_in_the_secret() {
    for step in FailpointStep::ROTATION {
        let ns = TestNamespace::create(&format!("rot-crash-{}", &step.as_str()[9..]));
        let store = TestStore::new().await;
        let client = ns.cluster.client().await;
        let keys: Api<ApiKey> = ns.api(&client);
        let secrets: Api<Secret> = ns.api(&client);
        ns.apply_ok(&documents([
            organization("acme", "Retain"),
            backend(&rotation("1", None, "1h")),
        ]));
        let mut first = ControllerProcess::start(&ns, &store, Options::default());
        wait_reason(&keys, "backend", "Issued").await;
        let (_, old) = held(&secrets).await;
        first.terminate().await;

        ns.apply_ok(&backend(&rotation("2", None, "1h")));
        let mut crashing = ControllerProcess::start(
            &ns,
            &store,
            Options {
                failpoint: Some(step.as_str().to_owned()),
                ..Options::default()
            },
        );
        let status = crashing.exited(WAIT).await;
        assert!(!status.success(), "{}: the failpoint aborts the process", step.as_str());
        assert!(crashing.log_text().contains("failpoint"), "{}", crashing.log_tail(20));

        // Whatever the step: the Secret holds one key, and it is live; the old key is still honoured.
        let db = store.open().await;
        let live = db.load_auth_snapshot().await.unwrap().keys;
        let (_, inside) = held(&secrets).await;
        assert!(
            live.contains_key(&key_id(&inside)),
            "{}: the Secret holds a live key",
            step.as_str()
        );
        assert!(
            live.contains_key(&key_id(&old)),
            "{}: the previous key still works",
            step.as_str()
        );
        match step {
            FailpointStep::RotationAfterRecord => assert_eq!(inside, old, "the Secret is not written yet"),
            _ => assert_ne!(inside, old, "{}: the Secret holds the new key", step.as_str()),
        }

        let _restarted = ControllerProcess::start(&ns, &store, Options::default());
        let rotated = wait_rotated(&keys, &key_id(&old), WAIT).await;
        let (_, now_held) = held(&secrets).await;
        assert_eq!(
            rotated.status.as_ref().unwrap().key_id.as_deref(),
            Some(key_id(&now_held).as_str())
        );
        if step != FailpointStep::RotationAfterRecord {
            assert_eq!(
                now_held,
                inside,
                "{}: the key written before the crash is kept",
                step.as_str()
            );
        }
        let live = db.load_auth_snapshot().await.unwrap().keys;
        assert!(live.contains_key(&key_id(&now_held)) && live.contains_key(&key_id(&old)));
        let rows = key_rows(&db, &ns.name).await;
        assert_eq!(
            rows.len(),
            2,
            "{}: the current and the previous key, nothing lost or doubled: {rows:?}",
            step.as_str()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_expiry_is_refused_within_5_seconds_even_with_the_controller_down() {
    let ns = TestNamespace::create("rot-expiry");
    let store = TestStore::new().await;
    let mut controller = ControllerProcess::start(&ns, &store, Options::default());
    let expires = unix_now() + 12;
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        backend(&format!("  expiresAt: \"{}\"\n", format_rfc3339(expires))),
    ]));
    let client = ns.cluster.client().await;
    let keys: Api<ApiKey> = ns.api(&client);
    let secrets: Api<Secret> = ns.api(&client);
    let issued = wait_reason(&keys, "backend", "Issued").await;
    assert_eq!(
        issued.status.as_ref().unwrap().expires_at.as_deref(),
        Some(format_rfc3339(expires).as_str())
    );
    let (_, key) = held(&secrets).await;
    let sidecar = Sidecar::start(&store).await;
    sidecar.until(&key, true, Duration::from_secs(10)).await;
    assert!(unix_now() < expires, "the test is slower than the expiry it sets");
    controller.terminate().await;

    sidecar.until(&key, false, Duration::from_secs(30)).await;
    let late = unix_now() - expires;
    assert!((0..=5).contains(&late), "refused {late}s after the expiry");

    let _restarted = ControllerProcess::start(&ns, &store, Options::default());
    let expired = wait_reason(&keys, "backend", "Expired").await;
    let message = &expired.status.as_ref().unwrap().conditions[0].message;
    assert!(message.contains(&format_rfc3339(expires)), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rotation_and_expiry_input_is_refused_and_changes_nothing() {
    let ns = TestNamespace::create("rot-bad");
    let store = TestStore::new().await;
    let _controller = ControllerProcess::start(&ns, &store, Options::default());
    ns.apply_ok(&organization("acme", "Retain"));
    for (spec, expected) in [
        (
            rotation("1", Some("1h"), "2h"),
            "must not be longer than rotation.every",
        ),
        ("  rotation:\n    every: 30days\n".to_owned(), "spec.rotation.every"),
        ("  expireAfter: soon\n".to_owned(), "spec.expireAfter"),
        (
            "  expiresAt: \"2030-01-01T00:00:00Z\"\n  expireAfter: 1h\n".to_owned(),
            "at most one of expiresAt and expireAfter",
        ),
    ] {
        let refused = ns.apply(&backend(&spec)).expect_err("refused by the API server");
        assert!(refused.contains(expected), "{spec}: {refused}");
    }
    let client = ns.cluster.client().await;
    let keys: Api<ApiKey> = ns.api(&client);
    assert!(keys.get_opt("backend").await.unwrap().is_none(), "nothing was created");

    // A past expiry passes the schema (CEL cannot compare with now) and is refused at reconcile.
    ns.apply_ok(&backend("  expiresAt: \"2020-01-01T00:00:00Z\"\n"));
    let refused = wait_reason(&keys, "backend", "InvalidSpec").await;
    let message = &refused.status.as_ref().unwrap().conditions[0].message;
    assert!(message.contains("in the past"), "{message}");
    let db = store.open().await;
    assert!(key_rows(&db, &ns.name).await.is_empty(), "no key issued");
    let secrets: Api<Secret> = ns.api(&client);
    assert!(secrets.get_opt("backend").await.unwrap().is_none(), "no Secret written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_secret_from_before_rotation_is_refused_until_deleted_once() {
    let ns = TestNamespace::create("rot-immutable");
    let store = TestStore::new().await;
    let _controller = ControllerProcess::start(&ns, &store, Options::default());
    ns.apply_ok(&documents([organization("acme", "Retain"), backend("")]));
    let client = ns.cluster.client().await;
    let keys: Api<ApiKey> = ns.api(&client);
    let secrets: Api<Secret> = ns.api(&client);
    wait_reason(&keys, "backend", "Issued").await;
    let (secret, old) = held(&secrets).await;
    assert_eq!(
        secret.immutable,
        Some(true),
        "no spec.rotation: written once, immutable"
    );

    ns.apply_ok(&backend(&rotation("1", None, "1h")));
    let refused = wait_reason(&keys, "backend", "SecretConflict").await;
    let message = &refused.status.as_ref().unwrap().conditions[0].message;
    assert!(
        message.contains("written immutable") && message.contains("kubectl delete secret backend"),
        "{message}"
    );
    assert_eq!(held(&secrets).await.1, old, "nothing changed");
    let db = store.open().await;
    assert_eq!(
        key_rows(&db, &ns.name).await.len(),
        1,
        "no key left behind by the refused rotation"
    );

    ns.delete("secret", "backend");
    wait_rotated(&keys, &key_id(&old), WAIT).await;
    let (secret, new) = held(&secrets).await;
    assert_ne!(new, old);
    assert_ne!(secret.immutable, Some(true));
    let live = db.load_auth_snapshot().await.unwrap().keys;
    assert!(
        live.contains_key(&key_id(&new)) && live.contains_key(&key_id(&old)),
        "the old key keeps its overlap"
    );
}
