//! Roles through the Kubernetes API, end to end: the controller's generated Roles and RoleBindings plus the
//! chart's ValidatingAdmissionPolicies (rendered from charts/orgkeeper with helm), on the real test API server
//! (RBAC authorization on), acting as the mapped users through impersonation (`kubectl --as github:...`).
//!
//! Needs `ORGKEEPER_TEST_KUBECONFIG` (see tests/e2e/harness.rs).

mod support;

#[path = "e2e/harness.rs"]
mod harness;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use harness::*;

/// The label that limits the test's policies to the test's namespaces (the policies are cluster-wide objects).
const SCOPE_LABEL: &str = "orgkeeper-e2e-roles";

/// Demoting or removing a User must take effect within this long.
const WITHIN: Duration = Duration::from_secs(10);

/// The chart's admission policies, scoped to namespaces labelled for this test.
fn install_policies(ns: &TestNamespace) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join("tests/chart/helm.sh"))
        .args([
            "template",
            "e2e",
            "charts/orgkeeper",
            "--show-only",
            "templates/admission-policy.yaml",
        ])
        .args(["--set", "fullnameOverride=orgkeeper-e2e-roles"])
        .args([
            "--set-string",
            &format!("admissionPolicy.namespaceSelector.matchLabels.{SCOPE_LABEL}=true"),
        ])
        .current_dir(root)
        .output()
        .expect("running tests/chart/helm.sh");
    assert!(
        output.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The policies are cluster-wide and every test installs them, in parallel: server-side apply is one
    // idempotent request, where a client-side apply's get-then-create races into AlreadyExists.
    let policies = String::from_utf8_lossy(&output.stdout);
    let install = ns.cluster.kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=e2e-roles",
            "-f",
            "-",
        ],
        Some(&policies),
    );
    assert!(
        install.status.success(),
        "installing the admission policies: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    ns.kubectl_ok(&["label", "namespace", &ns.name, &format!("{SCOPE_LABEL}=true")]);
}

/// `kubectl --as USER -n NS ARGS...` with YAML on stdin.
fn kubectl_as(ns: &TestNamespace, user: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut all = vec!["--as", user, "-n", ns.name.as_str()];
    all.extend_from_slice(args);
    ns.cluster.kubectl(&all, stdin)
}

fn apply_as(ns: &TestNamespace, user: &str, yaml: &str) -> Result<(), String> {
    let output = kubectl_as(ns, user, &["apply", "-f", "-"], Some(yaml));
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn ok_as(ns: &TestNamespace, user: &str, args: &[&str]) {
    let output = kubectl_as(ns, user, args, None);
    assert!(
        output.status.success(),
        "{user}: kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn can_i(ns: &TestNamespace, user: &str, verb: &str, resource: &str) -> bool {
    let output = ns
        .cluster
        .kubectl(&["auth", "can-i", verb, resource, "-n", &ns.name, "--as", user], None);
    String::from_utf8_lossy(&output.stdout).trim() == "yes"
}

fn production_key(name: &str, environment: &str) -> String {
    api_key(name, "acme", environment)
}

fn user_with_role(name: &str, github: &str, role: &str) -> String {
    format!("{}  role: {role}\n", user(name, "acme", github))
}

fn production_environment(name: &str) -> String {
    format!(
        "apiVersion: orgkeeper.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: {name}\nspec:\n  organizationRef:\n    name: acme\n  production: true\n"
    )
}

/// Waits until `user` may (or may not) `verb` `resource` in the namespace, as RBAC says.
async fn wait_can_i(ns: &TestNamespace, user: &str, verb: &str, resource: &str, expected: bool, within: Duration) {
    let what = format!("{user} can-i {verb} {resource} = {expected}");
    eventually(&what, within, || async {
        (can_i(ns, user, verb, resource) == expected).then_some(())
    })
    .await;
}

/// Retries while the freshly installed policy is not yet enforced (policies load asynchronously).
async fn refused_as(ns: &TestNamespace, user: &str, yaml: &str, within: Duration) -> String {
    refused(ns, || apply_as(ns, user, yaml), yaml, within).await
}

async fn refused(ns: &TestNamespace, apply: impl Fn() -> Result<(), String>, yaml: &str, within: Duration) -> String {
    eventually("the admission policy to refuse", within, || async {
        match apply() {
            Err(message) => Some(message),
            Ok(()) => {
                // Undo the change that should not have passed, so the next try is the same request.
                let _ = ns
                    .cluster
                    .kubectl(&["delete", "-n", &ns.name, "-f", "-", "--wait=false"], Some(yaml));
                None
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_manage_non_production_admins_everything_and_changes_take_effect_within_seconds() {
    let ns = TestNamespace::create("roles");
    install_policies(&ns);
    let store = TestStore::new().await;
    store.register(&["github:ada", "github:mel", "github:newbie"]);
    let options = Options::default().with("--resync-interval", "5s");
    let _controller = ControllerProcess::start(&ns, &store, options);
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        user_with_role("ada", "ada", "Admin"),
        user_with_role("mel", "mel", "Member"),
        environment("staging", "acme", "Retain"),
    ]));
    wait_can_i(
        &ns,
        "github:ada",
        "manage-production",
        "environments.orgkeeper.dev",
        true,
        WAIT,
    )
    .await;
    wait_can_i(&ns, "github:mel", "create", "environments.orgkeeper.dev", true, WAIT).await;
    assert!(!can_i(
        &ns,
        "github:mel",
        "manage-production",
        "environments.orgkeeper.dev"
    ));
    assert!(!can_i(&ns, "github:mel", "update", "users.orgkeeper.dev"));
    assert!(
        !can_i(&ns, "github:stranger", "get", "environments.orgkeeper.dev"),
        "a non-User gets nothing"
    );

    // A Member creates, edits and deletes a non-production Environment and its keys.
    let preview = environment("preview", "acme", "Delete");
    apply_as(
        &ns,
        "github:mel",
        &documents([preview.clone(), api_key("preview-ci", "acme", "preview")]),
    )
    .unwrap();
    apply_as(&ns, "github:mel", &format!("{preview}  displayName: Preview\n")).unwrap();
    ok_as(&ns, "github:mel", &["delete", "apikey", "preview-ci", "--wait=false"]);
    ok_as(&ns, "github:mel", &["delete", "environment", "preview", "--wait=false"]);

    // ... and is refused production, with the policy's message.
    let refused = refused_as(&ns, "github:mel", &production_key("backend", "production"), WAIT).await;
    assert!(
        refused.contains("manage-production: github:mel may not create, change or delete ApiKey backend in production Environment production of organization acme"),
        "{refused}"
    );
    let refused = refused_as(&ns, "github:mel", &production_environment("production"), WITHIN).await;
    assert!(
        refused.contains("manage-production: github:mel may not create, change or delete production Environment production of organization acme"),
        "{refused}"
    );
    let refused = refused_as(&ns, "github:mel", &production_environment("staging"), WITHIN).await;
    assert!(
        refused.contains("production Environment staging"),
        "making staging production: {refused}"
    );
    // Their own role: RBAC refuses it first (Members only read Users).
    let promote = user_with_role("mel", "mel", "Admin");
    let refused = apply_as(&ns, "github:mel", &promote).unwrap_err();
    assert!(refused.contains("forbidden"), "{refused}");

    // An Admin may do all of it.
    apply_as(&ns, "github:ada", &production_key("backend", "production")).unwrap();
    apply_as(&ns, "github:ada", &production_environment("eu")).unwrap();
    apply_as(&ns, "github:ada", &user_with_role("newbie", "newbie", "Member")).unwrap();

    // A production environment other than `production` is known from the controller's parameters.
    let client = ns.cluster.client().await;
    let configmaps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = ns.api(&client);
    eventually("the admission parameters to list eu as production", WAIT, || async {
        let params = configmaps.get_opt("orgkeeper-admission.acme").await.ok()??;
        params.data?.contains_key("production.eu").then_some(())
    })
    .await;
    let refused = refused_as(&ns, "github:mel", &production_key("eu-backend", "eu"), WITHIN).await;
    assert!(
        refused.contains("ApiKey eu-backend in production Environment eu of organization acme"),
        "{refused}"
    );

    // With namespace-wide edit rights (the aggregated `edit` role), the policy still keeps a Member out.
    ns.cluster
        .apply_yaml(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: orgkeeper-e2e-roles-edit\nrules:\n- apiGroups: [orgkeeper.dev]\n  resources: [organizations, environments, users, apikeys]\n  verbs: [get, list, watch, create, update, patch, delete]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: mel-edit\n  namespace: {}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: orgkeeper-e2e-roles-edit\nsubjects:\n- kind: User\n  apiGroup: rbac.authorization.k8s.io\n  name: github:mel\n",
            ns.name
        ))
        .unwrap();
    wait_can_i(&ns, "github:mel", "update", "users.orgkeeper.dev", true, WITHIN).await;
    let refused = refused_as(&ns, "github:mel", &promote, WITHIN).await;
    assert!(
        refused.contains("manage-users: github:mel may not create, change or delete User mel of organization acme"),
        "{refused}"
    );
    let refused = refused_as(&ns, "github:mel", &organization("acme", "Delete"), WITHIN).await;
    assert!(refused.contains("manage-organization: github:mel"), "{refused}");
    ns.kubectl_ok(&["delete", "rolebinding", "mel-edit"]);

    // Demoting an Admin removes their production rights within 10 s.
    ns.apply_ok(&user_with_role("ada", "ada", "Member"));
    wait_can_i(
        &ns,
        "github:ada",
        "manage-production",
        "environments.orgkeeper.dev",
        false,
        WITHIN,
    )
    .await;
    let refused = refused_as(&ns, "github:ada", &production_key("backend-2", "production"), WITHIN).await;
    assert!(refused.contains("manage-production: github:ada"), "{refused}");
    // A removed User loses every right.
    ns.delete("user", "mel");
    wait_can_i(&ns, "github:mel", "get", "environments.orgkeeper.dev", false, WITHIN).await;
    assert!(!can_i(&ns, "github:mel", "create", "apikeys.orgkeeper.dev"));

    // A binding deleted by hand is put back within the resync interval.
    ns.kubectl_ok(&["delete", "rolebinding", "orgkeeper:acme:member"]);
    assert!(!can_i(&ns, "github:ada", "get", "environments.orgkeeper.dev"));
    wait_can_i(&ns, "github:ada", "get", "environments.orgkeeper.dev", true, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_holds_what_it_grants_and_cannot_escalate() {
    let ns = TestNamespace::create("roles-rbac");
    let controller = "system:serviceaccount:orgkeeper-e2e:orgkeeper-controller";
    for (verb, resource, expected) in [
        ("create", "roles.rbac.authorization.k8s.io", true),
        ("patch", "rolebindings.rbac.authorization.k8s.io", true),
        ("manage-production", "environments.orgkeeper.dev", true),
        ("manage-users", "users.orgkeeper.dev", true),
        ("escalate", "roles.rbac.authorization.k8s.io", false),
        ("bind", "roles.rbac.authorization.k8s.io", false),
        ("bind", "clusterroles.rbac.authorization.k8s.io", false),
        ("delete", "roles.rbac.authorization.k8s.io", false),
        ("delete", "secrets", false),
        ("create", "pods", false),
    ] {
        assert_eq!(
            can_i(&ns, controller, verb, resource),
            expected,
            "controller can-i {verb} {resource}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_on_one_kubernetes_name_leave_the_bindings_and_say_why() {
    let ns = TestNamespace::create("roles-collision");
    let store = TestStore::new().await;
    store.register(&["github:gus", "google:gus@acme.example"]);
    let options = Options::default()
        .with("--kubernetes-user-github", "{login}@acme.example")
        .with("--kubernetes-user-google", "{email}");
    let _controller = ControllerProcess::start(&ns, &store, options);
    ns.apply_ok(&documents([
        organization("acme", "Retain"),
        user_with_role("gus", "gus", "Member"),
        "apiVersion: orgkeeper.dev/v1alpha1\nkind: User\nmetadata:\n  name: gus-work\nspec:\n  organizationRef:\n    name: acme\n  google: gus@acme.example\n  role: Admin\n".to_owned(),
    ]));
    let message = eventually("a KubernetesUserCollision event", WAIT, || async {
        let notes = ns.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=KubernetesUserCollision",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert!(
        message.contains("Users gus (github:gus) and gus-work (google:gus@acme.example) both map to the Kubernetes user \"gus@acme.example\""),
        "{message}"
    );
    // The bindings are left as they were: depending on which User the controller saw first, gus may already be
    // a Member, but the shared name never receives gus-work's Admin role.
    let admins = ns.cluster.kubectl(
        &[
            "get",
            "rolebinding",
            "orgkeeper:acme:admin",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.subjects[*].name}",
        ],
        None,
    );
    assert!(!String::from_utf8_lossy(&admins.stdout).contains("gus@acme.example"));
    assert!(!can_i(&ns, "gus@acme.example", "manage-users", "users.orgkeeper.dev"));
    assert!(!can_i(
        &ns,
        "gus@acme.example",
        "manage-production",
        "environments.orgkeeper.dev"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_129th_key_is_refused_at_admission() {
    let ns = TestNamespace::create("roles-limit");
    install_policies(&ns);
    let store = TestStore::new().await;
    let _controller = ControllerProcess::start(&ns, &store, Options::default());
    let keys = (0..128).map(|i| api_key(&format!("key-{i:03}"), "acme", "development"));
    ns.apply_ok(&documents(std::iter::once(organization("acme", "Retain")).chain(keys)));
    let client = ns.cluster.client().await;
    let configmaps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = ns.api(&client);
    eventually("the admission parameters to count 128 live keys", WAIT, || async {
        let params = configmaps.get_opt("orgkeeper-admission.acme").await.ok()??;
        (params.data?.get("liveKeys.development")? == "128").then_some(())
    })
    .await;
    let key = api_key("key-128", "acme", "development");
    // As the cluster admin: the limit holds for everyone.
    let refused = refused(&ns, || ns.apply(&key).map(drop), &key, WITHIN).await;
    assert!(
        refused.contains("KeyLimitReached: environment development of organization acme already has 128 live keys"),
        "{refused}"
    );
    // A revoked key takes no slot, so it is admitted.
    let revoked = format!("{}  revoked: true\n", api_key("key-revoked", "acme", "development"));
    ns.apply_ok(&revoked);
}
