//! A local stand-in for GitHub's REST API and Google's token endpoint and Directory API: an HTTP server that
//! replays the providers' documented answers (status, headers, JSON bodies) kept as fixtures in
//! tests/fixtures/identity/, behaves as they do for conditional requests (an `If-None-Match` that matches the
//! answer's `ETag` gets `304 Not Modified`), and records every request so tests can check what was sent.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::Response;
use serde::Deserialize;

/// One recorded answer: what the provider's documentation shows for a request.
#[derive(Clone, Debug, Deserialize)]
pub struct Fixture {
    #[serde(default)]
    pub note: String,
    pub status: u16,
    #[serde(default)]
    pub headers: HashMap<String, String>,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    #[serde(default)]
    pub body_text: Option<String>,
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/identity")
}

/// Reads tests/fixtures/identity/NAME.json.
pub fn fixture(name: &str) -> Fixture {
    let path = fixtures_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Fixture {
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name.to_owned(), value.to_owned());
        self
    }
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
    pub answered: u16,
}

#[derive(Clone)]
struct Route {
    answers: Vec<Fixture>,
    delay: Duration,
}

#[derive(Default)]
struct Inner {
    routes: Mutex<HashMap<String, Route>>,
    requests: Mutex<Vec<Recorded>>,
}

pub struct FakeProvider {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeProvider {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new().fallback(answer).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeProvider {
            addr,
            inner,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `path` (matched case-insensitively, as GitHub matches logins) with `fixture`, from now on.
    pub fn answer(&self, path: &str, fixture: Fixture) {
        self.answer_in_turn(path, vec![fixture]);
    }

    /// Answers `path` with each fixture in turn; the last one repeats.
    pub fn answer_in_turn(&self, path: &str, answers: Vec<Fixture>) {
        let mut routes = self.inner.routes.lock().unwrap();
        let delay = routes
            .get(&path.to_ascii_lowercase())
            .map_or(Duration::ZERO, |r| r.delay);
        routes.insert(path.to_ascii_lowercase(), Route { answers, delay });
    }

    /// Answers `path` only after `delay` (for timeouts).
    pub fn delay(&self, path: &str, delay: Duration) {
        let mut routes = self.inner.routes.lock().unwrap();
        if let Some(route) = routes.get_mut(&path.to_ascii_lowercase()) {
            route.delay = delay;
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.eq_ignore_ascii_case(path))
            .collect()
    }
}

async fn answer(State(inner): State<Arc<Inner>>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let body_in: Bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let path = path_of(&parts.uri);
    let route = {
        let mut routes = inner.routes.lock().unwrap();
        routes.get_mut(&path.to_ascii_lowercase()).map(|route| {
            let fixture = if route.answers.len() > 1 {
                route.answers.remove(0)
            } else {
                route.answers[0].clone()
            };
            (fixture, route.delay)
        })
    };
    let (fixture, delay) = route.unwrap_or_else(|| {
        (
            Fixture {
                note: "no route".into(),
                status: 404,
                headers: HashMap::new(),
                body: Some(serde_json::json!({"message": "Not Found"})),
                body_text: None,
            },
            Duration::ZERO,
        )
    });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::builder();
    let etag = fixture.headers.get("etag").cloned();
    let not_modified =
        etag.is_some() && parts.headers.get("if-none-match").and_then(|v| v.to_str().ok()) == etag.as_deref();
    let status = if not_modified { 304 } else { fixture.status };
    for (name, value) in &fixture.headers {
        let value = fill_in(value);
        response = response.header(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    let body = match (&fixture.body, &fixture.body_text) {
        _ if not_modified => Body::empty(),
        (Some(json), _) => Body::from(serde_json::to_vec(json).unwrap()),
        (None, Some(text)) => Body::from(text.clone()),
        (None, None) => Body::empty(),
    };
    inner.requests.lock().unwrap().push(Recorded {
        method: parts.method,
        path,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body_in).into_owned(),
        answered: status,
    });
    response
        .status(StatusCode::from_u16(status).unwrap())
        .body(body)
        .unwrap()
}

fn path_of(uri: &Uri) -> String {
    let path = uri.path();
    percent_decode(path)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `now+N` in a fixture's header is the Unix time N seconds from now (GitHub's x-ratelimit-reset).
fn fill_in(value: &str) -> String {
    match value.strip_prefix("now+").and_then(|n| n.parse::<u64>().ok()) {
        Some(seconds) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            (now + seconds).to_string()
        }
        None => value.to_owned(),
    }
}

/// Collects every log line written while it is installed (on this thread; tests run on one).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || LogWriter(logs.0.clone()))
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
