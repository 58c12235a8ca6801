//! End-to-end tests of `orgkeeper controller` against a real kube-apiserver (and kube-controller-manager, for
//! garbage collection), driven the way users drive it: `kubectl apply` of YAML, then observe statuses,
//! Secrets and the store. The controller binary runs as a child process under the RBAC documented in
//! docs/controller-rbac.yaml, one controller, namespace and store per test.
//!
//! Needs `ORGKEEPER_TEST_KUBECONFIG` (see tests/e2e/harness.rs).

mod support;

#[path = "e2e/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};

use harness::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::{Api, ResourceExt};
use orgkeeper::crd::{ApiKey, Environment, Organization, User};
use orgkeeper::domain::{ApiKeyToken, KeyHash, OrgKey};
use orgkeeper::store::Store;

/// The examples of the repository, moved into the test's namespace.
fn examples(namespace: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/acme");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        // The namespace is the test's own; kustomization.yaml is for `kubectl apply -k`, not a resource.
        .filter(|p| !["namespace.yaml", "kustomization.yaml"].contains(&p.file_name().unwrap().to_str().unwrap()))
        .collect();
    files.sort();
    let yaml: Vec<String> = files.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    yaml.join("\n---\n")
        .replace("namespace: acme", &format!("namespace: {namespace}"))
}

const EXAMPLE_ACCOUNTS: [&str; 5] = [
    "github:alice-acme",
    "google:bob@acme.example",
    "github:carol-dev",
    "google:dave@acme.example",
    "github:erin-ops",
];

/// Checks that a key's one Secret holds exactly the key the store has for it, and returns that Secret.
async fn assert_secret_holds_stored_key(secrets: &Api<Secret>, key: &ApiKey, rows: &[KeyRow]) -> Secret {
    let name = key.name_any();
    let found = secrets_of(secrets, &name).await;
    assert_eq!(found.len(), 1, "ApiKey {name} must have exactly one Secret");
    let secret = found.into_iter().next().unwrap();
    assert_eq!(secret.name_any(), key.secret_name());
    if key.spec.rotation.is_none() {
        assert_eq!(secret.immutable, Some(true), "key Secrets are immutable");
    } else {
        assert_ne!(
            secret.immutable,
            Some(true),
            "a rotating key's Secret is rewritten by each rotation"
        );
    }
    let owner = &secret.owner_references()[0];
    assert_eq!((owner.kind.as_str(), Some(owner.uid.clone())), ("ApiKey", key.uid()));
    let data = secret.data.as_ref().unwrap();
    assert_eq!(data["OSO_URL"].0, OSO_URL.as_bytes());
    let token = ApiKeyToken::parse(std::str::from_utf8(&data["OSO_AUTH"].0).unwrap()).expect("an orgkeeper key");
    let row = rows
        .iter()
        .find(|r| r.resource_name == name)
        .unwrap_or_else(|| panic!("no key record for {name}"));
    assert_eq!(token.key_id(), row.key_id);
    assert_eq!(
        KeyHash::of(token.expose()).to_hex(),
        row.secret_hash,
        "the Secret holds the stored key"
    );
    assert_eq!(secret.labels()["orgkeeper.dev/key-id"], row.key_id);
    let status = serde_json::to_string(&key.status).unwrap();
    assert!(!status.contains(token.expose()), "no key material in a status");
    secret
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_converge_to_ready_with_each_key_in_one_secret() {
    let ns = TestNamespace::create("examples");
    let store = TestStore::new().await;
    store.register(&EXAMPLE_ACCOUNTS);
    let _controller = ControllerProcess::start(&ns, &store, Options::default());
    ns.apply_ok(&examples(&ns.name));

    let client = ns.cluster.client().await;
    wait_all_ready::<Organization>(&ns.api(&client), 1).await;
    let environments = wait_all_ready::<Environment>(&ns.api(&client), 3).await;
    let users = wait_all_ready::<User>(&ns.api(&client), 5).await;
    let keys = wait_all_ready::<ApiKey>(&ns.api(&client), 4).await;

    let db = store.open().await;
    let rows = key_rows(&db, &ns.name).await;
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.state == "live"));
    let secrets: Api<Secret> = ns.api(&client);
    for key in &keys {
        let secret = assert_secret_holds_stored_key(&secrets, key, &rows).await;
        let status = key.status.as_ref().unwrap();
        assert_eq!(
            status.key_id.as_deref(),
            Some(secret.labels()["orgkeeper.dev/key-id"].as_str())
        );
        assert!(status.fingerprint.as_deref().unwrap().starts_with("sha256:"));
        assert!(status.environment_id.is_some() && status.issued_at.is_some());
    }
    let access: BTreeMap<&str, &str> = rows
        .iter()
        .map(|r| (r.resource_name.as_str(), r.access.as_str()))
        .collect();
    assert_eq!(
        access["analytics-production"], "ReadOnly",
        "a read-only key is stored read-only"
    );
    assert_eq!(access["backend-production"], "ReadWrite");
    let backend = secrets.get("backend-oso").await.unwrap();
    assert_eq!(
        backend.labels()["app.kubernetes.io/part-of"],
        "backend",
        "template labels are applied"
    );

    let production = environments.iter().find(|e| e.name_any() == "production").unwrap();
    let status = production.status.as_ref().unwrap();
    let limits = status.effective_limits.as_ref().unwrap();
    assert_eq!(limits.fact_writes_per_minute, Some(600), "environment override");
    assert_eq!(limits.max_concurrent_requests, Some(8), "organization override");
    assert_eq!(limits.requests_per_minute, Some(60_000), "plan default");
    assert_eq!((status.production, status.live_keys), (Some(true), Some(2)));
    let alice = users.iter().find(|u| u.name_any() == "alice").unwrap();
    assert_eq!(
        alice.status.as_ref().unwrap().account.as_deref(),
        Some("github:alice-acme")
    );

    // Each issuance is announced on its ApiKey.
    let events: Api<Event> = ns.api(&client);
    let issued = wait_event(&events, "Issued", "backend-production").await;
    assert_eq!(issued.reporting_controller.as_deref(), Some("orgkeeper-controller"));

    // `kubectl get orgkeeper` lists every kind (the plural names users and environments collide with
    // other CRDs in real clusters; the category and the short names do not).
    let everything = ns.kubectl_ok(&["get", "orgkeeper", "-o", "name"]);
    for object in [
        "organization.orgkeeper.dev/acme",
        "environment.orgkeeper.dev/production",
        "user.orgkeeper.dev/alice",
        "apikey.orgkeeper.dev/backend-production",
    ] {
        assert!(everything.lines().any(|l| l == object), "{object} in:\n{everything}");
    }
    assert_eq!(everything.lines().count(), 1 + 3 + 5 + 4);
    let short = ns.kubectl_ok(&["get", "okorg,okenv,okuser,okkey", "-o", "name"]);
    assert_eq!(
        short.lines().collect::<BTreeSet<_>>(),
        everything.lines().collect::<BTreeSet<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_129th_key_waits_for_a_free_slot_in_its_environment() {
    let ns = TestNamespace::create("limit");
    let store = TestStore::new().await;
    let mut manifests = vec![organization("acme", "Retain")];
    manifests.extend((0..=128).map(|i| api_key(&format!("k{i:03}"), "acme", "development")));
    ns.apply_ok(&documents(manifests));
    let _controller = ControllerProcess::start(&ns, &store, Options::default());

    let client = ns.cluster.client().await;
    let keys: Api<ApiKey> = ns.api(&client);
    let over = wait_reason(&keys, "k128", "KeyLimitReached").await;
    let message = &over.status.as_ref().unwrap().conditions[0].message;
    assert!(message.contains("128 live keys"), "{message}");
    let envs: Api<Environment> = ns.api(&client);
    eventually("128 live keys in development", WAIT, || async {
        let rows = key_rows(&store.open().await, &ns.name).await;
        (rows.iter().filter(|r| r.state == "live").count() == 128).then_some(())
    })
    .await;
    assert!(
        envs.get_opt("development").await.unwrap().is_none(),
        "a default environment needs no resource"
    );

    // Freeing a slot lets the waiting key through.
    ns.delete("apikey", "k000");
    wait_reason(&keys, "k128", "Issued").await;
    let rows = key_rows(&store.open().await, &ns.name).await;
    assert_eq!(rows.iter().filter(|r| r.state == "live").count(), 128);
    assert!(!rows.iter().any(|r| r.resource_name == "k000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_account_is_retried_until_it_is_registered() {
    let ns = TestNamespace::create("account");
    let store = TestStore::new().await;
    let _controller = ControllerProcess::start(&ns, &store, Options::default());
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        user("mallory", "acme", "mallory-dev"),
    ]));

    let client = ns.cluster.client().await;
    let users: Api<User> = ns.api(&client);
    let waiting = wait_reason(&users, "mallory", "UnknownAccount").await;
    let conditions = &waiting.status.as_ref().unwrap().conditions;
    assert!(
        conditions[0]
            .message
            .contains("orgkeeper accounts add github:mallory-dev")
    );
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Reconciling" && c.status == "True")
    );

    store.register(&["github:mallory-dev"]);
    wait_reason(&users, "mallory", "Reconciled").await;
    let org = store
        .open()
        .await
        .load_organizations(&[OrgKey::new(&ns.name, "acme")])
        .await
        .unwrap();
    assert_eq!(org.values().next().unwrap().users.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_waits_for_its_organization_and_environment() {
    let ns = TestNamespace::create("deps");
    let store = TestStore::new().await;
    let _controller = ControllerProcess::start(&ns, &store, Options::default());
    let client = ns.cluster.client().await;
    let keys: Api<ApiKey> = ns.api(&client);

    ns.apply_ok(&api_key("backend", "acme", "staging"));
    let waiting = wait_reason(&keys, "backend", "OrganizationNotFound").await;
    let message = &waiting.status.as_ref().unwrap().conditions[0].message;
    assert!(
        message.contains("create it") && message.contains("organizationRef cannot be changed"),
        "the remedy is one the API server accepts: {message}"
    );
    ns.apply_ok(&organization("acme", "Retain"));
    wait_reason(&keys, "backend", "EnvironmentNotFound").await;
    ns.apply_ok(&environment("staging", "acme", "Retain"));
    let ready = wait_reason(&keys, "backend", "Issued").await;
    let rows = key_rows(&store.open().await, &ns.name).await;
    assert_secret_holds_stored_key(&ns.api(&client), &ready, &rows).await;

    // Waiting for a dependency that shows up moments later (apply order) is normal, not a warning.
    let about_backend = events_about(&ns.api(&client), "backend").await;
    let type_of = |reason: &str| {
        about_backend
            .iter()
            .find(|e| e.reason.as_deref() == Some(reason))
            .and_then(|e| e.type_.clone())
    };
    assert_eq!(
        type_of("OrganizationNotFound").as_deref(),
        Some("Normal"),
        "{about_backend:?}"
    );
    assert_eq!(
        type_of("EnvironmentNotFound").as_deref(),
        Some("Normal"),
        "{about_backend:?}"
    );
    assert!(
        about_backend.iter().all(|e| e.type_.as_deref() == Some("Normal")),
        "no warning for a wait of seconds: {about_backend:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_lasts_is_announced_once_with_a_warning() {
    let ns = TestNamespace::create("lasting");
    let store = TestStore::new().await;
    let options = Options::default().with("--warn-after-waiting", "3s");
    let _controller = ControllerProcess::start(&ns, &store, options);
    let client = ns.cluster.client().await;
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        api_key("backend", "acme", "staging"),
    ]));
    let events: Api<Event> = ns.api(&client);
    let is_warning = |e: &Event| e.type_.as_deref() == Some("Warning");
    let warning = eventually("a Warning for the lasting wait", WAIT, || async {
        events_about(&events, "backend").await.into_iter().find(is_warning)
    })
    .await;
    assert_eq!(warning.reason.as_deref(), Some("EnvironmentNotFound"));
    let note = warning.note.unwrap_or_default();
    assert!(note.starts_with("still waiting after"), "{note}");
    assert!(note.contains("\"staging\""), "{note}");
    let all = events_about(&events, "backend").await;
    assert!(
        all.iter()
            .any(|e| e.reason.as_deref() == Some("EnvironmentNotFound") && !is_warning(e)),
        "the wait was announced as Normal first: {all:?}"
    );

    // Once: retries go on (every 2s at most here) without another warning.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let warnings: Vec<Event> = events_about(&events, "backend")
        .await
        .into_iter()
        .filter(is_warning)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].series, None, "recorded once, not repeated: {warnings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_fields_can_be_corrected_until_it_is_issued_and_not_after() {
    let ns = TestNamespace::create("mutable");
    let store = TestStore::new().await;
    let _controller = ControllerProcess::start(&ns, &store, Options::default());
    let client = ns.cluster.client().await;
    let keys: Api<ApiKey> = ns.api(&client);
    let secrets: Api<Secret> = ns.api(&client);
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        api_key("backend", "acme", "stagin"),
    ]));

    // A typo while nothing was issued: the API server takes the fix and the key is issued.
    wait_reason(&keys, "backend", "EnvironmentNotFound").await;
    assert!(key_rows(&store.open().await, &ns.name).await.is_empty());
    let fixed = format!(
        "{}  access: ReadOnly\n  secret:\n    name: backend-oso\n",
        api_key("backend", "acme", "development")
    );
    ns.apply(&fixed)
        .expect("a field of a key never issued can be corrected");
    let issued = wait_reason(&keys, "backend", "Issued").await;
    let rows = key_rows(&store.open().await, &ns.name).await;
    assert_eq!(rows[0].access, "ReadOnly");
    let secret = assert_secret_holds_stored_key(&secrets, &issued, &rows).await;
    assert_eq!(secret.name_any(), "backend-oso");

    // Once issued, a change is accepted by the API server but refused in status, and the key is untouched.
    let moved = format!(
        "{}  access: ReadOnly\n  secret:\n    name: backend-oso\n",
        api_key("backend", "acme", "production")
    );
    ns.apply(&moved)
        .expect("the API server cannot tell whether the key was issued");
    let refused = wait_reason(&keys, "backend", "ImmutableField").await;
    let status = refused.status.as_ref().unwrap();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        ready
            .message
            .contains("spec.environment cannot change after the key is issued"),
        "{}",
        ready.message
    );
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True")
    );
    assert_eq!(
        key_rows(&store.open().await, &ns.name).await,
        rows,
        "the issued key is left as it was"
    );
    let after = secrets.get("backend-oso").await.unwrap();
    assert_eq!(after.metadata.resource_version, secret.metadata.resource_version);

    // Undoing the change brings it back; organizationRef is refused by the API server outright.
    ns.apply_ok(&fixed);
    wait_reason(&keys, "backend", "Issued").await;
    let error = ns
        .apply(&format!(
            "{}  access: ReadOnly\n  secret:\n    name: backend-oso\n",
            api_key("backend", "beta", "development")
        ))
        .expect_err("organizationRef is immutable");
    assert!(error.contains("spec.organizationRef: Invalid value"), "{error}");
    assert!(error.contains("delete this ApiKey and create it again"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_written_for_another_organizations_key_is_never_taken_over() {
    let ns = TestNamespace::create("clash");
    let store = TestStore::new().await;
    let _controller = ControllerProcess::start(&ns, &store, Options::default());
    let client = ns.cluster.client().await;
    let keys: Api<ApiKey> = ns.api(&client);
    let secrets: Api<Secret> = ns.api(&client);
    let into_shared = |name: &str, organization: &str| {
        format!(
            "{}  secret:\n    name: shared\n",
            api_key(name, organization, "development")
        )
    };
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        organization("beta", "Retain"),
        into_shared("acme-key", "acme"),
    ]));
    let first = wait_reason(&keys, "acme-key", "Issued").await;
    let before = secrets.get("shared").await.unwrap();
    assert_eq!(before.labels()["orgkeeper.dev/organization"], "acme");

    // Another organization's key pointed at the same Secret: reported naming both, the Secret untouched.
    ns.apply_ok(&into_shared("beta-key", "beta"));
    let clash = wait_reason(&keys, "beta-key", "SecretConflict").await;
    let message = &clash.status.as_ref().unwrap().conditions[0].message;
    assert!(message.contains("ApiKey acme-key of organization acme"), "{message}");
    assert!(message.contains("ApiKey beta-key of organization beta"), "{message}");
    let rows = key_rows(&store.open().await, &ns.name).await;
    assert!(!rows.iter().any(|r| r.resource_name == "beta-key"), "{rows:?}");
    let after = secrets.get("shared").await.unwrap();
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version);
    assert_secret_holds_stored_key(&secrets, &first, &rows).await;

    // The same ApiKey name in the other organization, after the first was deleted without its Secret.
    ns.kubectl_ok(&["delete", "apikey", "acme-key", "--cascade=orphan", "--wait=true"]);
    let orphaned = eventually("the Secret orphaned", WAIT, || async {
        let secret = secrets.get_opt("shared").await.ok()??;
        secret.owner_references().is_empty().then_some(secret)
    })
    .await;
    ns.delete("apikey", "beta-key");
    ns.apply_ok(&into_shared("acme-key", "beta"));
    let clash = wait_reason(&keys, "acme-key", "SecretConflict").await;
    let message = &clash.status.as_ref().unwrap().conditions[0].message;
    assert!(message.contains("ApiKey acme-key of organization acme"), "{message}");
    assert!(message.contains("ApiKey acme-key of organization beta"), "{message}");
    let after = secrets.get("shared").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, orphaned.metadata.resource_version,
        "untouched"
    );
    let stored_beta = stored(&store.open().await, &ns.name, "beta").await.unwrap();
    assert!(
        stored_beta.api_keys.is_empty(),
        "no key is issued for beta: {:?}",
        stored_beta.api_keys
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_secret_of_the_same_name_is_never_touched() {
    let ns = TestNamespace::create("foreign");
    let store = TestStore::new().await;
    ns.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "taken",
        "--from-literal=OSO_AUTH=someone-elses",
    ]);
    let client = ns.cluster.client().await;
    let secrets: Api<Secret> = ns.api(&client);
    let before = secrets.get("taken").await.unwrap();
    let _controller = ControllerProcess::start(&ns, &store, Options::default());
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        format!(
            "{}  secret:\n    name: taken\n",
            api_key("backend", "acme", "production")
        ),
    ]));

    let keys: Api<ApiKey> = ns.api(&client);
    let conflict = wait_reason(&keys, "backend", "SecretConflict").await;
    let conditions = &conflict.status.as_ref().unwrap().conditions;
    assert!(conditions.iter().any(|c| c.type_ == "Stalled" && c.status == "True"));
    let after = secrets.get("taken").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "untouched"
    );
    assert_eq!(after.data, before.data);
    let rows = key_rows(&store.open().await, &ns.name).await;
    assert!(
        rows.is_empty(),
        "no key is issued without a Secret to hold it: {rows:?}"
    );

    // Once the name is free, the key is issued into a Secret of its own.
    ns.delete("secret", "taken");
    let ready = wait_reason(&keys, "backend", "Issued").await;
    let rows = key_rows(&store.open().await, &ns.name).await;
    assert_secret_holds_stored_key(&secrets, &ready, &rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_are_rejected_by_the_api_server() {
    let ns = TestNamespace::create("invalid");
    let rejected = |yaml: &str, expected: &str| {
        let error = ns.apply(yaml).expect_err("the API server must refuse it");
        assert!(error.contains(expected), "expected {expected:?} in: {error}");
    };
    let both = format!("{}  google: alice@acme.example\n", user("alice", "acme", "alice"));
    rejected(&both, "set exactly one of github or google");
    let bad_email = "apiVersion: orgkeeper.dev/v1alpha1\nkind: User\nmetadata:\n  name: bob\nspec:\n  organizationRef:\n    name: acme\n  google: not-an-email\n";
    rejected(bad_email, "spec.google");
    // Rules about the whole object name the field they are about.
    let not_production = format!("{}  production: false\n", environment("production", "acme", "Retain"));
    rejected(
        &not_production,
        "spec.production: Invalid value: production is a default environment and is always a production environment",
    );
    rejected(
        &environment("development", "acme", "Delete"),
        "spec.deletionPolicy: Invalid value: default environments can never be deleted",
    );
    rejected(
        &organization("a.b", "Retain"),
        "metadata.name: Invalid value: metadata.name must be a DNS label",
    );
    for yaml in [not_production, organization("a.b", "Retain")] {
        let error = ns.apply(&yaml).unwrap_err();
        assert!(!error.contains("<nil>"), "{error}");
    }

    ns.apply_ok(&api_key("backend", "acme", "production"));
    rejected(
        &api_key("backend", "beta", "production"),
        "organizationRef is immutable",
    );
    ns.apply_ok(&format!(
        "{}  revoked: true\n",
        api_key("backend", "acme", "production")
    ));
    rejected(
        &format!("{}  revoked: false\n", api_key("backend", "acme", "production")),
        "a revoked key cannot be un-revoked",
    );
}

async fn stored(store: &Store, namespace: &str, organization: &str) -> Option<orgkeeper::domain::StoredOrganization> {
    let key = OrgKey::new(namespace, organization);
    store
        .load_organizations(std::slice::from_ref(&key))
        .await
        .unwrap()
        .remove(&key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_resources_cleans_the_store_according_to_deletion_policy() {
    let ns = TestNamespace::create("delete");
    let store = TestStore::new().await;
    store.register(&["github:alice-acme"]);
    let _controller = ControllerProcess::start(&ns, &store, Options::default());
    let production = "apiVersion: orgkeeper.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: production\nspec:\n  organizationRef:\n    name: acme\n  displayName: Prod\n  limits:\n    maxBatchFacts: 5\n".to_owned();
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        environment("staging", "acme", "Delete"),
        environment("qa", "acme", "Retain"),
        production,
        user("alice", "acme", "alice-acme"),
        api_key("s1", "acme", "staging"),
        api_key("q1", "acme", "qa"),
        api_key("p1", "acme", "production"),
        api_key("d1", "acme", "development"),
        organization("beta", "Delete"),
        api_key("b1", "beta", "production"),
    ]));
    let client = ns.cluster.client().await;
    wait_all_ready::<ApiKey>(&ns.api(&client), 5).await;
    wait_all_ready::<User>(&ns.api(&client), 1).await;
    let db = store.open().await;
    let keys: Api<ApiKey> = ns.api(&client);
    let environments: Api<Environment> = ns.api(&client);
    let state_of = |name: &'static str| {
        let db = db.clone();
        let namespace = ns.name.clone();
        async move {
            key_rows(&db, &namespace)
                .await
                .into_iter()
                .find(|r| r.resource_name == name)
                .map(|r| r.state)
        }
    };

    // Delete: the environment, its facts and its keys are gone.
    ns.delete("environment", "staging");
    wait_reason(&keys, "s1", "EnvironmentNotFound").await;
    eventually("staging deleted from the store", WAIT, || async {
        let org = stored(&db, &ns.name, "acme").await?;
        (!org.environments.iter().any(|e| e.name == "staging")).then_some(())
    })
    .await;
    assert_eq!(state_of("s1").await, None);
    eventually("the Environment resource released", WAIT, || async {
        environments.get_opt("staging").await.ok()?.is_none().then_some(())
    })
    .await;

    // Retain: the environment stays (unmanaged) with its facts; its keys are revoked.
    ns.delete("environment", "qa");
    wait_reason(&keys, "q1", "EnvironmentNotFound").await;
    assert_eq!(state_of("q1").await.as_deref(), Some("revoked"));
    let org = stored(&db, &ns.name, "acme").await.unwrap();
    let qa = org
        .environments
        .iter()
        .find(|e| e.name == "qa")
        .expect("qa is retained");
    assert!(!qa.managed);

    // A default environment's resource is deleted: the environment goes back to its defaults.
    ns.delete("environment", "production");
    eventually("production reset to its defaults", WAIT, || async {
        let org = stored(&db, &ns.name, "acme").await?;
        let env = org.environments.iter().find(|e| e.name == "production")?;
        (env.settings.display_name == "Production" && env.settings.limits.max_batch_facts.is_none()).then_some(())
    })
    .await;
    assert_eq!(state_of("p1").await.as_deref(), Some("live"), "its keys keep working");
    let reset = wait_event(&ns.api(&client), "Reset", "production").await;
    let note = reset.note.unwrap_or_default();
    assert!(note.contains("displayName, limits.maxBatchFacts"), "{note}");
    assert_eq!(reset.type_.as_deref(), Some("Normal"));

    // An ApiKey: its key is revoked and forgotten, and Kubernetes collects its Secret.
    ns.delete("apikey", "p1");
    let secrets: Api<Secret> = ns.api(&client);
    eventually("p1's record and Secret gone", WAIT, || async {
        let gone = state_of("p1").await.is_none() && secrets.get_opt("p1").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;

    ns.delete("user", "alice");
    eventually("alice removed", WAIT, || async {
        stored(&db, &ns.name, "acme").await?.users.is_empty().then_some(())
    })
    .await;

    // Organization with Retain: kept, unmanaged, every key revoked.
    ns.delete("organization", "acme");
    wait_reason(&keys, "d1", "OrganizationNotFound").await;
    eventually("acme retained and released", WAIT, || async {
        let org = stored(&db, &ns.name, "acme").await?;
        (!org.managed
            && org
                .api_keys
                .iter()
                .all(|k| k.state == orgkeeper::domain::KeyState::Revoked))
        .then_some(())
    })
    .await;
    assert!(
        db.load_auth_snapshot().await.unwrap().keys.len() == 1,
        "only beta's key still works"
    );

    // Organization with Delete: gone with everything in it.
    ns.delete("organization", "beta");
    eventually("beta deleted", WAIT, || async {
        stored(&db, &ns.name, "beta").await.is_none().then_some(())
    })
    .await;
    assert!(db.load_auth_snapshot().await.unwrap().keys.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_is_final_and_a_lost_secret_is_reported_not_reissued() {
    let ns = TestNamespace::create("revoke");
    let store = TestStore::new().await;
    let _controller = ControllerProcess::start(&ns, &store, Options::default());
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        api_key("a", "acme", "development"),
        api_key("b", "acme", "development"),
    ]));
    let client = ns.cluster.client().await;
    let keys: Api<ApiKey> = ns.api(&client);
    let secrets: Api<Secret> = ns.api(&client);
    wait_all_ready::<ApiKey>(&keys, 2).await;
    let db = store.open().await;
    let before = key_rows(&db, &ns.name).await;

    ns.apply_ok(&format!("{}  revoked: true\n", api_key("a", "acme", "development")));
    let revoked = wait_reason(&keys, "a", "Revoked").await;
    assert!(revoked.status.as_ref().unwrap().revoked_at.is_some());
    assert_eq!(
        ready_of(&revoked),
        Some(("True".to_owned(), "Revoked".to_owned())),
        "revoked as declared: the desired state is reached"
    );
    ns.kubectl_ok(&["wait", "--for=condition=Ready", "apikey", "--all", "--timeout=60s"]);
    let rows = key_rows(&db, &ns.name).await;
    assert_eq!(rows[0].state, "revoked");
    assert_eq!(rows[0].key_id, before[0].key_id);
    let snapshot = db.load_auth_snapshot().await.unwrap();
    assert!(
        !snapshot.keys.contains_key(&rows[0].key_id),
        "a revoked key no longer authenticates"
    );

    // A deleted Secret is reported, and the key is not silently re-issued.
    ns.delete("secret", "b");
    let missing = wait_reason(&keys, "b", "SecretMissing").await;
    assert!(
        missing.status.as_ref().unwrap().conditions[0]
            .message
            .contains("spec.rotation.trigger")
    );
    assert!(secrets_of(&secrets, "b").await.is_empty());
    assert_eq!(key_rows(&db, &ns.name).await[1], before[1], "same key, still live");

    // The documented way out: rotate.
    ns.apply_ok(&api_key("b2", "acme", "development"));
    wait_reason(&keys, "b2", "Issued").await;
    ns.delete("apikey", "b");
    eventually("b forgotten", WAIT, || async {
        let rows = key_rows(&db, &ns.name).await;
        (!rows.iter().any(|r| r.resource_name == "b")).then_some(())
    })
    .await;
}

/// After a crash: no key is live without a Secret holding it, and every key Secret holds a key the store
/// knows for its ApiKey. Returns the Secrets' uids by ApiKey.
async fn assert_consistent_after_crash(ns: &TestNamespace, store: &TestStore) -> BTreeMap<String, String> {
    let client = ns.cluster.client().await;
    let secrets: Api<Secret> = ns.api(&client);
    let rows = key_rows(&store.open().await, &ns.name).await;
    let listed = secrets
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=orgkeeper"))
        .await
        .unwrap()
        .items;
    let by_key: BTreeMap<String, &Secret> = listed
        .iter()
        .map(|s| (s.labels()["orgkeeper.dev/api-key"].clone(), s))
        .collect();
    assert_eq!(by_key.len(), listed.len(), "at most one Secret per ApiKey");
    for row in rows.iter().filter(|r| r.state == "live") {
        let secret = by_key
            .get(&row.resource_name)
            .unwrap_or_else(|| panic!("key {} of {} is live without its Secret", row.key_id, row.resource_name));
        assert_eq!(secret.labels()["orgkeeper.dev/key-id"], row.key_id);
    }
    for (api_key, secret) in &by_key {
        let token =
            ApiKeyToken::parse(std::str::from_utf8(&secret.data.as_ref().unwrap()["OSO_AUTH"].0).unwrap()).unwrap();
        let row = rows
            .iter()
            .find(|r| &r.resource_name == api_key)
            .unwrap_or_else(|| panic!("the Secret of {api_key} holds a key the store does not know"));
        assert_eq!(
            row.key_id,
            token.key_id(),
            "the Secret of {api_key} holds its stored (pending or live) key"
        );
        assert_eq!(row.secret_hash, KeyHash::of(token.expose()).to_hex());
    }
    by_key.into_iter().map(|(k, s)| (k, s.uid().unwrap())).collect()
}

/// After the restart: every key live exactly once, each in its one Secret, and the Secrets written before
/// the crash are the very same objects (never rewritten).
async fn assert_converged_after_restart(
    ns: &TestNamespace,
    store: &TestStore,
    count: usize,
    before: &BTreeMap<String, String>,
) {
    let client = ns.cluster.client().await;
    let keys = wait_all_ready::<ApiKey>(&ns.api(&client), count).await;
    let rows = key_rows(&store.open().await, &ns.name).await;
    assert_eq!(rows.len(), count, "one key record per ApiKey");
    assert!(rows.iter().all(|r| r.state == "live"), "{rows:?}");
    let secrets: Api<Secret> = ns.api(&client);
    for key in &keys {
        let secret = assert_secret_holds_stored_key(&secrets, key, &rows).await;
        if let Some(uid) = before.get(&key.name_any()) {
            assert_eq!(
                &secret.uid().unwrap(),
                uid,
                "the Secret of {} was rewritten",
                key.name_any()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_issuance_loses_duplicates_and_exposes_nothing() {
    for step in orgkeeper::controller::FailpointStep::ISSUANCE {
        let ns = TestNamespace::create(&format!("crash-{}", &step.as_str()[6..]));
        let store = TestStore::new().await;
        let mut manifests = vec![organization("acme", "Retain")];
        manifests.extend((0..5).map(|i| api_key(&format!("key{i}"), "acme", "production")));
        ns.apply_ok(&documents(manifests));

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
        let before = assert_consistent_after_crash(&ns, &store).await;
        let rows = key_rows(&store.open().await, &ns.name).await;
        match step.as_str() {
            "after-pending-commit" => assert!(before.is_empty() && rows.iter().all(|r| r.state == "pending")),
            // Secret writes run concurrently: the ones already sent when the first completes may land too.
            "after-secret-create" => assert!(!before.is_empty() && rows.iter().all(|r| r.state == "pending")),
            _ => assert!(before.len() == 5 && rows.iter().all(|r| r.state == "live")),
        }

        let _restarted = ControllerProcess::start(&ns, &store, Options::default());
        assert_converged_after_restart(&ns, &store, 5, &before).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_batch_of_100_keys_loses_and_duplicates_nothing() {
    let ns = TestNamespace::create("batch");
    let store = TestStore::new().await;
    let mut manifests = vec![organization("acme", "Retain")];
    for env in ["production", "development"] {
        manifests.extend((0..50).map(|n| api_key(&format!("{env}-{n:02}"), "acme", env)));
    }
    ns.apply_ok(&documents(manifests));
    let mut first = ControllerProcess::start(
        &ns,
        &store,
        Options {
            failpoint: Some("after-secret-create:50".into()),
            ..Options::default()
        },
    );
    first.exited(WAIT).await;
    let before = assert_consistent_after_crash(&ns, &store).await;
    assert!(
        (50..100).contains(&before.len()),
        "crashed in the middle: {} Secrets written",
        before.len()
    );
    let _second = ControllerProcess::start(&ns, &store, Options::default());
    assert_converged_after_restart(&ns, &store, 100, &before).await;
}

fn lease_options(identity: &str) -> Options {
    Options {
        identity: Some(identity.into()),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_a_standby_takes_over() {
    let ns = TestNamespace::create("leader");
    let store = TestStore::new().await;
    let client = ns.cluster.client().await;
    let leases: Api<Lease> = ns.api(&client);
    let mut replicas = vec![
        ControllerProcess::start(&ns, &store, lease_options("replica-a")),
        ControllerProcess::start(&ns, &store, lease_options("replica-b")),
    ];
    let holder = |leases: Api<Lease>| async move {
        let lease = leases.get_opt("orgkeeper-controller").await.ok()??;
        lease.spec?.holder_identity.filter(|h| !h.is_empty())
    };
    let first = eventually("a leader", WAIT, || holder(leases.clone())).await;
    let (leader, standby) = if first == "replica-a" { (0, 1) } else { (1, 0) };
    eventually("the leader to report it", WAIT, || async {
        (replicas[leader].metric("orgkeeper_controller_leader") == 1.0).then_some(())
    })
    .await;
    eventually("the standby to serve metrics", WAIT, || async {
        replicas[standby].metrics().map(|_| ())
    })
    .await;

    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        api_key("k1", "acme", "production"),
    ]));
    let keys: Api<ApiKey> = ns.api(&client);
    wait_reason(&keys, "k1", "Issued").await;
    assert!(replicas[leader].metric("orgkeeper_controller_reconciles_total") > 0.0);
    assert_eq!(replicas[standby].metric("orgkeeper_controller_leader"), 0.0);
    assert_eq!(
        replicas[standby].metric("orgkeeper_controller_reconciles_total"),
        0.0,
        "a standby never reconciles"
    );

    // The leader dies without a word: the standby takes over once the lease expires.
    replicas[leader].kill().await;
    let next = eventually("the standby to take over", WAIT, || async {
        holder(leases.clone()).await.filter(|h| h != &first)
    })
    .await;
    assert_eq!(next, replicas[standby].identity);
    ns.apply_ok(&api_key("k2", "acme", "production"));
    wait_reason(&keys, "k2", "Issued").await;
    assert!(replicas[standby].metric("orgkeeper_controller_reconciles_total") > 0.0);

    // A graceful stop hands the lease over at once.
    replicas.push(ControllerProcess::start(&ns, &store, lease_options("replica-c")));
    eventually("replica-c to stand by", WAIT, || async {
        replicas[2].metrics().map(|_| ())
    })
    .await;
    let status = replicas[standby].terminate().await;
    assert!(status.success(), "SIGTERM stops the controller cleanly");
    assert!(replicas[standby].log_text().contains("released the lease"));
    eventually("replica-c to lead", WAIT, || async {
        holder(leases.clone()).await.filter(|h| h == "replica-c")
    })
    .await;
    ns.apply_ok(&api_key("k3", "acme", "production"));
    wait_reason(&keys, "k3", "Issued").await;
    let rows = key_rows(&store.open().await, &ns.name).await;
    let names: BTreeSet<&str> = rows.iter().map(|r| r.resource_name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["k1", "k2", "k3"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_undone_within_the_resync_interval_and_an_idle_cluster_writes_nothing() {
    let ns = TestNamespace::create("drift");
    let store = TestStore::new().await;
    store.register(&["github:alice-acme"]);
    let options = Options::default().with("--resync-interval", "3s");
    let controller = ControllerProcess::start(&ns, &store, options);
    let staging = format!(
        "{}  limits:\n    requestsPerMinute: 100\n",
        environment("staging", "acme", "Retain")
    );
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        staging,
        user("alice", "acme", "alice-acme"),
        api_key("k1", "acme", "staging"),
    ]));
    let client = ns.cluster.client().await;
    wait_all_ready::<ApiKey>(&ns.api(&client), 1).await;
    wait_all_ready::<User>(&ns.api(&client), 1).await;
    wait_all_ready::<Environment>(&ns.api(&client), 1).await;
    wait_all_ready::<Organization>(&ns.api(&client), 1).await;

    // Idle: resyncs happen, and write nothing to the store or to statuses.
    let reconciles = || controller.metric("orgkeeper_controller_reconciles_total");
    let after_resyncs = |n: f64| {
        let start = reconciles();
        eventually("resyncs", WAIT, move || async move {
            (reconciles() >= start + n).then_some(())
        })
    };
    after_resyncs(4.0).await;
    let writes = controller.metric("orgkeeper_controller_store_writes_total");
    let statuses = controller.metric("orgkeeper_controller_status_writes_total");
    after_resyncs(8.0).await;
    assert_eq!(
        controller.metric("orgkeeper_controller_store_writes_total"),
        writes,
        "an idle resync writes nothing"
    );
    assert_eq!(
        controller.metric("orgkeeper_controller_status_writes_total"),
        statuses,
        "nor any status"
    );

    // Drift: changes made to the store behind the controller's back are put back.
    let db = store.open().await;
    sqlx::query::<sqlx::Any>("UPDATE environments SET requests_per_minute = 5 WHERE name = 'staging'")
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query::<sqlx::Any>("DELETE FROM users")
        .execute(db.pool())
        .await
        .unwrap();
    eventually("the drift undone", WAIT, || async {
        let org = stored(&db, &ns.name, "acme").await?;
        let env = org.environments.iter().find(|e| e.name == "staging")?;
        (env.settings.limits.requests_per_minute == Some(100) && org.users.len() == 1).then_some(())
    })
    .await;
}
