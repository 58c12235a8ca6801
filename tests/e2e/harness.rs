//! What the controller's end-to-end tests (and its benchmark) share: the test cluster, a namespace per test,
//! the controller binary run as a child process under the documented RBAC, a store per test, and polling
//! helpers that observe what a user would see.
//!
//! The cluster comes from `ORGKEEPER_TEST_KUBECONFIG` (start one with `tests/cluster/up.sh`); kubectl from
//! `ORGKEEPER_TEST_KUBECTL`, else the `bin/kubectl` next to the kubeconfig (as `up.sh` lays it out), else
//! `PATH`. Set `ORGKEEPER_E2E_DATABASE=postgres` (with `ORGKEEPER_TEST_POSTGRES_URL`) to run the store on
//! PostgreSQL instead of SQLite, `ORGKEEPER_E2E_LOG_DIR=DIR` to keep every controller's log (CI artifacts),
//! and `ORGKEEPER_E2E_KEEP=1` to keep the test namespaces for inspection.
#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::core::object::HasStatus;
use kube::{Api, Client, Config};
use orgkeeper::crd::KstatusFields;
use orgkeeper::store::Store;
use serde::de::DeserializeOwned;

/// The ServiceAccount the controller runs as.
const CONTROLLER_NAMESPACE: &str = "orgkeeper-e2e";
const CONTROLLER_ACCOUNT: &str = "orgkeeper-controller";

/// The OSO_URL every test controller writes into Secrets.
pub const OSO_URL: &str = "http://orgkeeper-sidecar.test:8080";

pub struct ClusterInfo {
    pub admin_kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    /// A kubeconfig that authenticates as the controller's ServiceAccount.
    pub controller_kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

/// The test cluster, prepared once per test process: CRDs installed, the controller's RBAC applied.
pub fn cluster() -> &'static ClusterInfo {
    static CLUSTER: OnceLock<ClusterInfo> = OnceLock::new();
    CLUSTER.get_or_init(prepare_cluster)
}

fn prepare_cluster() -> ClusterInfo {
    let admin_kubeconfig = PathBuf::from(std::env::var("ORGKEEPER_TEST_KUBECONFIG").unwrap_or_else(|_| {
        panic!(
            "ORGKEEPER_TEST_KUBECONFIG is not set: the controller's end-to-end tests need a real API server. Start the \
             test cluster with `export ORGKEEPER_TEST_KUBECONFIG=$(tests/cluster/up.sh | tail -1)` (see \
             tests/cluster/README.md), or run .ci/run"
        )
    }));
    assert!(
        admin_kubeconfig.is_file(),
        "ORGKEEPER_TEST_KUBECONFIG={} is not a file",
        admin_kubeconfig.display()
    );
    let kubectl = std::env::var("ORGKEEPER_TEST_KUBECTL")
        .map(PathBuf::from)
        .ok()
        .or_else(|| {
            let sibling = admin_kubeconfig.parent()?.join("bin/kubectl");
            sibling.exists().then_some(sibling)
        })
        .unwrap_or_else(|| PathBuf::from("kubectl"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut info = ClusterInfo {
        admin_kubeconfig,
        kubectl,
        controller_kubeconfig: dir.path().join("controller.kubeconfig"),
        _dir: dir,
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    info.kubectl_ok(&["apply", "-f", root.join("crds/orgkeeper.dev.yaml").to_str().unwrap()]);
    info.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/organizations.orgkeeper.dev",
        "crd/environments.orgkeeper.dev",
        "crd/users.orgkeeper.dev",
        "crd/apikeys.orgkeeper.dev",
    ]);
    info.kubectl_ok(&["apply", "-f", root.join("docs/controller-rbac.yaml").to_str().unwrap()]);
    info.apply_yaml(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {CONTROLLER_NAMESPACE}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {CONTROLLER_ACCOUNT}\n  namespace: {CONTROLLER_NAMESPACE}\n"
    ))
    .expect("creating the controller's ServiceAccount");
    info.write_controller_kubeconfig();
    info
}

impl ClusterInfo {
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(&self.kubectl);
        command
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.kubectl.display()));
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args, None);
        assert!(
            output.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `kubectl apply -f -`; Err carries kubectl's error output (the API server's message).
    pub fn apply_yaml(&self, yaml: &str) -> Result<String, String> {
        let output = self.kubectl(&["apply", "-f", "-"], Some(yaml));
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    fn write_controller_kubeconfig(&mut self) {
        let server = self.kubectl_ok(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]);
        let ca = self.kubectl_ok(&[
            "config",
            "view",
            "--minify",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ]);
        let token = self.kubectl_ok(&[
            "create",
            "token",
            CONTROLLER_ACCOUNT,
            "-n",
            CONTROLLER_NAMESPACE,
            "--duration=6h",
        ]);
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {CONTROLLER_ACCOUNT}\n  user:\n    token: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {CONTROLLER_ACCOUNT}\ncurrent-context: test\n",
            token.trim()
        );
        std::fs::write(&self.controller_kubeconfig, kubeconfig).unwrap();
    }

    /// Binds the controller's ClusterRole to its ServiceAccount in `namespace` (or cluster-wide with `None`).
    pub fn grant_controller(&self, namespace: Option<&str>) {
        let binding = match namespace {
            Some(ns) => format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: orgkeeper-controller\n  namespace: {ns}\n"
            ),
            None => "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: orgkeeper-controller-e2e\n".to_owned(),
        };
        self.apply_yaml(&format!(
            "{binding}roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: orgkeeper-controller\nsubjects:\n- kind: ServiceAccount\n  name: {CONTROLLER_ACCOUNT}\n  namespace: {CONTROLLER_NAMESPACE}\n"
        ))
        .expect("binding the controller's role");
    }

    pub async fn client(&self) -> Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.admin_kubeconfig).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }
}

/// A namespace of its own for one test, deleted afterwards (finalizers released first, because the test's
/// controller is gone by then).
pub struct TestNamespace {
    pub name: String,
    pub cluster: &'static ClusterInfo,
}

impl TestNamespace {
    pub fn create(prefix: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let cluster = cluster();
        let name = format!(
            "e2e-{prefix}-{}-{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        cluster.kubectl_ok(&["create", "namespace", &name]);
        cluster.grant_controller(Some(&name));
        TestNamespace { name, cluster }
    }

    /// `kubectl apply -n NS -f -`.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        let output = self
            .cluster
            .kubectl(&["apply", "-n", &self.name, "-f", "-"], Some(yaml));
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    pub fn apply_ok(&self, yaml: &str) {
        if let Err(e) = self.apply(yaml) {
            panic!("kubectl apply failed: {e}");
        }
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        self.cluster.kubectl_ok(&all)
    }

    /// `kubectl delete -n NS KIND NAME --wait=false`.
    pub fn delete(&self, kind: &str, name: &str) {
        self.kubectl_ok(&["delete", kind, name, "--wait=false"]);
    }

    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("ORGKEEPER_E2E_KEEP").is_some() {
            eprintln!("keeping namespace {} (ORGKEEPER_E2E_KEEP)", self.name);
            return;
        }
        let names = self.cluster.kubectl(
            &[
                "get",
                "-n",
                &self.name,
                "organizations,environments,users,apikeys",
                "-o",
                "name",
            ],
            None,
        );
        for object in String::from_utf8_lossy(&names.stdout).lines() {
            self.cluster.kubectl(
                &[
                    "patch",
                    "-n",
                    &self.name,
                    object,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ],
                None,
            );
        }
        self.cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// A store of its own for one test: a SQLite file, or a fresh PostgreSQL database.
pub struct TestStore {
    pub url: String,
    _dir: tempfile::TempDir,
}

impl TestStore {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = if std::env::var("ORGKEEPER_E2E_DATABASE").as_deref() == Ok("postgres") {
            crate::support::fresh_postgres_url().await
        } else {
            format!("sqlite://{}", dir.path().join("store.db").display())
        };
        TestStore { url, _dir: dir }
    }

    pub async fn open(&self) -> Store {
        Store::connect(&self.url).await.expect("opening the test store")
    }

    /// `orgkeeper accounts add`, as an operator would run it.
    pub fn register(&self, accounts: &[&str]) {
        let output = Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
            .args(["accounts", "--database-url", &self.url, "add"])
            .args(accounts)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "orgkeeper accounts add: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// How to start a controller.
#[derive(Clone, Debug)]
pub struct Options {
    pub extra_args: Vec<String>,
    pub failpoint: Option<String>,
    pub identity: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub namespace: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            // A crashed controller keeps its lease until it expires: short leases keep restarts quick.
            extra_args: [
                "--resync-interval",
                "60s",
                "--max-retry-interval",
                "2s",
                "--lease-duration",
                "5s",
                "--lease-renew-deadline",
                "4s",
                "--lease-retry-period",
                "1s",
            ]
            .map(String::from)
            .to_vec(),
            failpoint: None,
            identity: None,
            kubeconfig: None,
            namespace: None,
        }
    }
}

impl Options {
    /// Sets a flag, replacing its default.
    pub fn with(mut self, flag: &str, value: &str) -> Self {
        match self.extra_args.iter().position(|a| a == flag) {
            Some(i) => self.extra_args[i + 1] = value.to_owned(),
            None => self.extra_args.extend([flag.to_owned(), value.to_owned()]),
        }
        self
    }
}

/// The controller binary, running as a child process.
pub struct ControllerProcess {
    child: Child,
    pub log: PathBuf,
    pub metrics_port: u16,
    pub identity: String,
    _dir: tempfile::TempDir,
    exited: Option<ExitStatus>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl ControllerProcess {
    /// Starts a controller watching `namespace` (its Lease lives there too).
    pub fn start(namespace: &TestNamespace, store: &TestStore, options: Options) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let identity = options
            .identity
            .clone()
            .unwrap_or_else(|| format!("e2e-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        // ORGKEEPER_E2E_LOG_DIR keeps every controller's log (for CI artifacts); otherwise they go with the test.
        let log = match std::env::var_os("ORGKEEPER_E2E_LOG_DIR") {
            Some(logs) => {
                std::fs::create_dir_all(&logs).unwrap();
                PathBuf::from(logs).join(format!("{}-{identity}-{port}.log", namespace.name))
            }
            None => dir.path().join("controller.log"),
        };
        let kubeconfig = options
            .kubeconfig
            .clone()
            .unwrap_or_else(|| namespace.cluster.controller_kubeconfig.clone());
        let watched = options.namespace.clone().unwrap_or_else(|| namespace.name.clone());
        let mut command = Command::new(env!("CARGO_BIN_EXE_orgkeeper"));
        command
            .arg("controller")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--namespace", &watched])
            .args(["--database-url", &store.url])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--lease-namespace", &namespace.name])
            .args(["--identity", &identity])
            .args(["--oso-url", OSO_URL])
            .args(&options.extra_args)
            .env("ORGKEEPER_LOG_LEVEL", "info,orgkeeper=debug")
            .env_remove(orgkeeper::controller::FAILPOINT_ENV)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        if let Some(failpoint) = &options.failpoint {
            command.env(orgkeeper::controller::FAILPOINT_ENV, failpoint);
        }
        let child = command.spawn().expect("starting the controller");
        ControllerProcess {
            child,
            log,
            metrics_port: port,
            identity,
            _dir: dir,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `/metrics` text, or None while the server is not up (or the process is gone).
    pub fn metrics(&self) -> Option<String> {
        http_get(self.metrics_port, "/metrics")
    }

    /// The sum of a metric's samples over all labels (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics().map_or(0.0, |text| metric_sum(&text, name))
    }

    pub fn is_running(&mut self) -> bool {
        self.exited.is_none() && self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit on its own.
    pub async fn exited(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited.or_else(|| self.child.try_wait().unwrap()) {
                self.exited = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the controller did not exit within {within:?}; log:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: a crash, no cleanup.
    pub async fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = Some(self.child.wait().unwrap());
        }
    }

    /// SIGTERM, then waits for a graceful exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.exited(Duration::from_secs(30)).await
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- controller {} log (last 60 lines) -----\n{}",
                self.identity,
                self.log_tail(60)
            );
        }
    }
}

pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_owned()))
}

/// Sums the samples of `name` (all label sets) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Polls `probe` until it returns Some, failing the test with `what` after `within`. Bounds are generous:
/// they only turn a hang into a failure and never judge speed.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The default bound for waits in the tests.
pub const WAIT: Duration = Duration::from_secs(120);

/// An orgkeeper resource, whose status carries kstatus conditions.
pub trait Conditions:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + HasStatus<Status: KstatusFields>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Conditions for K where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + HasStatus<Status: KstatusFields>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
{
}

/// `(status, reason)` of the Ready condition, once the status reflects the current generation.
pub fn ready_of<K: Conditions>(object: &K) -> Option<(String, String)> {
    let status = object.status()?;
    if status.observed_generation() != object.meta().generation {
        return None;
    }
    status.condition("Ready").map(|c| (c.status.clone(), c.reason.clone()))
}

/// Waits until the object's Ready condition has `reason` (for the current generation); returns the object.
pub async fn wait_reason<K: Conditions>(api: &Api<K>, name: &str, reason: &str) -> K {
    let what = format!("{} {name} to report {reason}", K::kind(&()));
    eventually(&what, WAIT, || async {
        let object = api.get_opt(name).await.ok()??;
        (ready_of(&object)?.1 == reason).then_some(object)
    })
    .await
}

/// Waits until every object of the kind in the namespace is Ready=True; returns them.
pub async fn wait_all_ready<K: Conditions>(api: &Api<K>, expected: usize) -> Vec<K> {
    let what = format!("{expected} {} to be Ready", K::kind(&()));
    eventually(&what, WAIT, || async {
        let list = api.list(&Default::default()).await.ok()?.items;
        let ready = list
            .iter()
            .filter(|o| ready_of(*o).is_some_and(|(status, _)| status == "True"))
            .count();
        (list.len() == expected && ready == expected).then_some(list)
    })
    .await
}

/// The events recorded about the object named `name` (of any kind).
pub async fn events_about(api: &Api<Event>, name: &str) -> Vec<Event> {
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// Waits for an event of `reason` about the object named `name`; returns it.
pub async fn wait_event(api: &Api<Event>, reason: &str, name: &str) -> Event {
    let what = format!("a {reason} event about {name}");
    eventually(&what, WAIT, || async {
        events_about(api, name)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
    })
    .await
}

/// The Secrets labelled for an ApiKey.
pub async fn secrets_of(api: &Api<Secret>, api_key: &str) -> Vec<Secret> {
    api.list(&kube::api::ListParams::default().labels(&format!("orgkeeper.dev/api-key={api_key}")))
        .await
        .unwrap()
        .items
}

/// One key record, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub key_id: String,
    pub resource_name: String,
    pub state: String,
    pub access: String,
    pub secret_hash: String,
}

/// Every key record of a namespace's organizations.
pub async fn key_rows(store: &Store, namespace: &str) -> Vec<KeyRow> {
    use sqlx::Row;
    sqlx::query::<sqlx::Any>(
        "SELECT k.key_id, k.resource_name, k.state, k.access, k.secret_hash FROM api_keys k \
         JOIN organizations o ON o.id = k.organization_id WHERE o.namespace = $1 ORDER BY k.resource_name",
    )
    .bind(namespace.to_owned())
    .fetch_all(store.pool())
    .await
    .unwrap()
    .iter()
    .map(|row| KeyRow {
        key_id: row.get(0),
        resource_name: row.get(1),
        state: row.get(2),
        access: row.get(3),
        secret_hash: row.get(4),
    })
    .collect()
}

// ----- manifests -----

pub fn organization(name: &str, deletion_policy: &str) -> String {
    format!(
        "apiVersion: orgkeeper.dev/v1alpha1\nkind: Organization\nmetadata:\n  name: {name}\nspec:\n  displayName: {name}\n  deletionPolicy: {deletion_policy}\n"
    )
}

pub fn environment(name: &str, organization: &str, deletion_policy: &str) -> String {
    format!(
        "apiVersion: orgkeeper.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: {name}\nspec:\n  organizationRef:\n    name: {organization}\n  deletionPolicy: {deletion_policy}\n"
    )
}

pub fn user(name: &str, organization: &str, github: &str) -> String {
    format!(
        "apiVersion: orgkeeper.dev/v1alpha1\nkind: User\nmetadata:\n  name: {name}\nspec:\n  organizationRef:\n    name: {organization}\n  github: {github}\n"
    )
}

pub fn api_key(name: &str, organization: &str, environment: &str) -> String {
    format!(
        "apiVersion: orgkeeper.dev/v1alpha1\nkind: ApiKey\nmetadata:\n  name: {name}\nspec:\n  organizationRef:\n    name: {organization}\n  environment: {environment}\n"
    )
}

/// Several manifests as one multi-document YAML.
pub fn documents(manifests: impl IntoIterator<Item = String>) -> String {
    manifests.into_iter().collect::<Vec<_>>().join("---\n")
}
