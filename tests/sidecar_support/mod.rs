//! What the sidecar tests share: a tenancy reconciled into a real store (SQLite or PostgreSQL), a small
//! recording upstream (below the level these tests are about: it stands in for the fact store), an
//! in-process sidecar on a loopback port, and HTTP helpers (a pooled client and raw sockets).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, Version};
use axum::response::Response;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use orgkeeper::auth::KeyRing;
use orgkeeper::domain::*;
use orgkeeper::sidecar::{Clock, LocalLimiter, Settings, Sidecar};
use orgkeeper::store::Store;
use orgkeeper::telemetry::{Readiness, Telemetry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub const NS: &str = "team";
pub const ORG: &str = "acme";

/// One environment to declare: name and limit overrides.
pub struct Env(pub &'static str, pub LimitOverrides);

/// One key to declare: name, environment, access.
pub struct Key(pub &'static str, pub &'static str, pub Access);

/// An organization reconciled into a store, with its issued keys.
pub struct Tenancy {
    pub store: Store,
    declarations: Declarations,
    keys: HashMap<String, String>,
    environment_ids: HashMap<String, String>,
}

impl Tenancy {
    /// Declares `environments` and `keys` in one Developer-plan organization and reconciles them.
    pub async fn new(store: Store, environments: &[Env], keys: &[Key]) -> Tenancy {
        let declarations = Declarations {
            organizations: vec![OrganizationDecl {
                namespace: NS.into(),
                name: ORG.into(),
                settings: OrganizationSettings {
                    display_name: "Acme".into(),
                    plan: PlanTier::Developer,
                    limits: LimitOverrides::default(),
                    deletion_policy: DeletionPolicy::Delete,
                },
            }],
            environments: environments
                .iter()
                .map(|Env(name, limits)| EnvironmentDecl {
                    namespace: NS.into(),
                    name: (*name).into(),
                    organization: ORG.into(),
                    display_name: None,
                    production: None,
                    limits: *limits,
                    deletion_policy: DeletionPolicy::Delete,
                })
                .collect(),
            users: vec![],
            api_keys: keys
                .iter()
                .map(|Key(name, environment, access)| ApiKeyDecl {
                    namespace: NS.into(),
                    name: (*name).into(),
                    organization: ORG.into(),
                    environment: (*environment).into(),
                    access: *access,
                    secret_name: format!("{name}-key"),
                    revoked: false,
                    rotation: None,
                    expiry: None,
                })
                .collect(),
        };
        let mut tenancy = Tenancy {
            store,
            declarations,
            keys: HashMap::new(),
            environment_ids: HashMap::new(),
        };
        tenancy.reconcile().await;
        tenancy
    }

    async fn reconcile(&mut self) {
        let stored = self
            .store
            .load_organizations(&[OrgKey::new(NS, ORG)])
            .await
            .expect("load");
        let plan = plan(&self.declarations, &stored, &KnownAccounts::default());
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        let mut tx = self.store.begin().await.expect("begin");
        let outcome = tx.apply(&plan.changes, KeyState::Live).await.expect("apply");
        tx.commit().await.expect("commit");
        for key in outcome.issued {
            self.environment_ids
                .insert(key.environment.clone(), key.environment_id.clone());
            self.keys.insert(key.api_key, key.token.expose().to_owned());
        }
    }

    /// What the tenancy declares (as Git would).
    pub fn declarations(&self) -> &Declarations {
        &self.declarations
    }

    /// The plaintext of a key declared by name.
    pub fn key(&self, name: &str) -> &str {
        &self.keys[name]
    }

    pub fn environment_id(&self, environment: &str) -> &str {
        &self.environment_ids[environment]
    }

    /// Changes an environment's limit overrides in the store.
    pub async fn set_limits(&mut self, environment: &str, limits: LimitOverrides) {
        let env = self
            .declarations
            .environments
            .iter_mut()
            .find(|e| e.name == environment)
            .expect("declared environment");
        env.limits = limits;
        self.reconcile().await;
    }

    /// Revokes a key in the store.
    pub async fn revoke(&mut self, key: &str) {
        let decl = self
            .declarations
            .api_keys
            .iter_mut()
            .find(|k| k.name == key)
            .expect("declared key");
        decl.revoked = true;
        self.reconcile().await;
    }
}

/// Limits with every field unlimited except the ones set: tests start from a clean slate.
pub fn limits() -> LimitOverrides {
    LimitOverrides {
        requests_per_minute: Some(1_000_000_000),
        fact_writes_per_minute: Some(1_000_000_000),
        max_concurrent_requests: Some(1_000_000),
        max_batch_facts: Some(1_000_000),
        max_write_body_bytes: Some(orgkeeper::domain::limits::MAX_WRITE_BODY_BYTES),
    }
}

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// HTTP/2 or HTTP/1.1: how the sidecar spoke to the upstream.
    pub version: Version,
    pub method: Method,
    /// Path and query, exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A recording upstream. Requests may steer it with headers: `x-test-status` (answer with that status),
/// `x-test-delay-ms` (wait before answering), `x-test-big` (answer with that many bytes), `x-test-hold`
/// (answer only once [`Upstream::release`] is called).
#[derive(Clone)]
pub struct Upstream {
    pub url: String,
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct UpstreamState {
    recorded: Arc<Mutex<Vec<Recorded>>>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Which HTTP versions the recording upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    /// HTTP/1.1 and HTTP/2 without TLS (prior knowledge), like `orgkeeper facts`.
    Both,
    /// HTTP/1.1 only, like most servers.
    Http1Only,
}

impl Upstream {
    /// An upstream speaking HTTP/1.1 and h2c on a free loopback port.
    pub async fn start() -> Upstream {
        Upstream::start_on("127.0.0.1:0".parse().unwrap(), Speaks::Both).await
    }

    /// An upstream on `addr` (port 0: a free one).
    pub async fn start_on(addr: SocketAddr, speaks: Speaks) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorded: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let gate = Arc::new(tokio::sync::watch::Sender::new(false));
        let stop = CancellationToken::new();
        let state = UpstreamState {
            recorded: recorded.clone(),
            gate: gate.clone(),
        };
        let app = axum::Router::new().fallback(move |request: Request| record(state.clone(), request));
        let shutdown = stop.clone();
        match speaks {
            Speaks::Both => {
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown.cancelled_owned())
                        .await
                        .unwrap()
                });
            }
            Speaks::Http1Only => {
                tokio::spawn(serve_http1_only(listener, app, shutdown));
            }
        }
        Upstream {
            url: format!("http://{addr}"),
            addr,
            recorded,
            gate,
            stop,
        }
    }

    /// Lets held requests (`x-test-hold`) answer.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.recorded.lock().unwrap().len()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Serves `app` in HTTP/1.1 only: the HTTP/2 preface is a malformed request to it.
async fn serve_http1_only(listener: TcpListener, app: axum::Router, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}

async fn record(state: UpstreamState, request: Request) -> Response {
    let UpstreamState { recorded, gate } = state;
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (status, delay, big) = (header("x-test-status"), header("x-test-delay-ms"), header("x-test-big"));
    let chunks = header("x-test-chunks");
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    recorded.lock().unwrap().push(Recorded {
        version: parts.version,
        method: parts.method.clone(),
        target: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts.headers.clone(),
        body,
    });
    if parts.headers.contains_key("x-test-hold") {
        let _ = gate.subscribe().wait_for(|open| *open).await;
    }
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = status
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);
    let body = match (big, chunks) {
        (Some(n), _) => Body::from(vec![b'x'; n as usize]),
        (None, Some(n)) => Body::from_stream(futures::stream::iter(
            (0..n).map(|i| Ok::<_, std::io::Error>(Bytes::from(format!("piece {i};")))),
        )),
        (None, None) => Body::from(r#"{"message":"from upstream"}"#),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", "yes")
        .body(body)
        .unwrap()
}

/// The smallest setup: one environment (`staging`, the default limits here) with one read-write key
/// (`rw`), on SQLite, in front of a recording upstream.
pub async fn one_key_sidecar() -> (Tenancy, Upstream, Running) {
    let tenancy = Tenancy::new(
        crate::support::sqlite().await,
        &[Env("staging", limits())],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let sidecar = start(&tenancy.store, Options::new(&upstream)).await;
    (tenancy, upstream, sidecar)
}

/// A sidecar serving on a loopback port.
pub struct Running {
    pub url: String,
    pub addr: SocketAddr,
    pub telemetry: Telemetry,
    pub sidecar: Sidecar,
    pub limiter: Arc<LocalLimiter>,
    pub ring: KeyRing,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Options for [`start`]: settings, a clock for the limiter, and whether to keep keys fresh from the store.
pub struct Options {
    pub settings: Settings,
    pub clock: Option<Arc<dyn Clock>>,
    pub refresh: bool,
}

impl Options {
    pub fn new(upstream: &Upstream) -> Options {
        Options {
            settings: Settings {
                upstream: upstream.url.clone(),
                ..Settings::default()
            },
            clock: None,
            refresh: true,
        }
    }
}

/// Starts a sidecar whose keys come from `store`, refreshed every second as in production, and waits
/// until it is ready.
pub async fn start(store: &Store, options: Options) -> Running {
    let shutdown = CancellationToken::new();
    let telemetry = Telemetry::new("orgkeeper");
    let ring = KeyRing::default();
    let limiter = Arc::new(match options.clock {
        Some(clock) => LocalLimiter::with_clock(clock),
        None => LocalLimiter::default(),
    });
    let sidecar = Sidecar::new(&options.settings, ring.clone(), limiter.clone(), &telemetry).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = sidecar.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move { serving.serve(listener, stop).await.unwrap() });
    tokio::spawn(sidecar.clone().watch(Duration::from_millis(100), shutdown.clone()));
    if options.refresh {
        tokio::spawn(
            ring.clone()
                .keep_fresh(store.clone(), Duration::from_secs(1), shutdown.clone()),
        );
        wait_for("the sidecar to load keys", Duration::from_secs(20), || {
            telemetry.health.get() == Readiness::Ready
        })
        .await;
    }
    Running {
        url: format!("http://{addr}"),
        addr,
        telemetry,
        sidecar,
        limiter,
        ring,
        shutdown,
    }
}

/// Polls `condition` every 50 ms until it holds, failing after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An answer, with its JSON body parsed when it is JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `message` of a JSON error body.
    pub fn message(&self) -> String {
        self.json()["message"].as_str().expect("a message").to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("whole seconds")
    }
}

/// A pooled keep-alive client, like the official clients use.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    pub fn new(running: &Running) -> Http {
        Http::to(&running.url)
    }

    pub fn to(base: &str) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.to_owned(),
        }
    }

    pub async fn send(&self, method: Method, path: &str, key: Option<&str>, body: &str) -> Reply {
        self.send_with(method, path, key, body, &[]).await
    }

    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let response = self.client.request(request).await.expect("the sidecar answers");
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("a whole body").to_bytes(),
        }
    }

    /// A GET that returns None when nothing answers (a process still starting).
    pub async fn try_get(&self, path: &str) -> Option<Reply> {
        let request = hyper::Request::get(format!("{}{path}", self.base))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), self.client.request(request))
            .await
            .ok()?
            .ok()?;
        let (parts, body) = response.into_parts();
        Some(Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.ok()?.to_bytes(),
        })
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> Reply {
        self.send(Method::GET, path, key, "").await
    }

    /// `POST /api/batch` inserting `facts` facts.
    pub async fn batch(&self, key: &str, facts: usize) -> Reply {
        self.send(Method::POST, "/api/batch", Some(key), &batch(facts)).await
    }
}

/// A fact as the clients send it.
pub fn fact(n: usize) -> String {
    format!(
        r#"{{"predicate":"has_role","args":[{{"type":"User","id":"u{n}"}},{{"type":"String","id":"member"}},{{"type":"Organization","id":"acme"}}]}}"#
    )
}

/// A batch body inserting `n` facts.
pub fn batch(n: usize) -> String {
    let facts: Vec<String> = (0..n).map(fact).collect();
    format!(r#"[{{"inserts":[{}]}}]"#, facts.join(","))
}

/// Sends raw bytes on a fresh connection and returns everything the sidecar answers until it closes
/// (or `limit` passes).
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_until_close(&mut stream, limit).await
}

pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of a raw HTTP/1.1 answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// The JSON body of a raw answer with a Content-Length body.
pub fn raw_json(answer: &str) -> serde_json::Value {
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// Metrics text of a running sidecar.
pub async fn metrics(running: &Running) -> String {
    use tower::ServiceExt;
    let response = running
        .telemetry
        .router()
        .oneshot(
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of one metric series (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Waits until nothing accepts connections at `addr` any more.
pub async fn wait_for_refused(addr: std::net::SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the upstream at {addr} still accepts connections");
}

/// A PostgreSQL server of the test's own (tests/postgres/up.sh in a directory of its own), so that a test
/// can stop it without disturbing the others. Stopped and removed when dropped.
pub struct OwnPostgres {
    pub url: String,
    dir: std::path::PathBuf,
}

impl OwnPostgres {
    pub fn start(name: &str) -> OwnPostgres {
        // Directly under /tmp: as root, up.sh runs PostgreSQL as the postgres user, which must reach it.
        let dir = std::env::temp_dir().join(format!("orgkeeper-{name}-{}", std::process::id()));
        let output = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/postgres/up.sh"))
            .env("ORGKEEPER_PG_DIR", &dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("tests/postgres/up.sh runs");
        assert!(output.status.success(), "tests/postgres/up.sh failed");
        let url = String::from_utf8(output.stdout).unwrap();
        let url = url.lines().last().expect("the database URL").to_owned();
        OwnPostgres { url, dir }
    }

    /// Stops the server (`pg_ctl stop -m fast`) and removes its data.
    pub fn stop(&self) {
        let status = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/postgres/down.sh"))
            .env("ORGKEEPER_PG_DIR", &self.dir)
            .status()
            .expect("tests/postgres/down.sh runs");
        assert!(status.success(), "tests/postgres/down.sh failed");
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.dir.exists() {
            self.stop();
        }
    }
}
