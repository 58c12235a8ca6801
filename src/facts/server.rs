//! The HTTP routes of the fact store and what each does.
//!
//! Every `/api` request but the health check carries `Authorization: Bearer <key>`; the key is checked here
//! against the [`KeyRing`] (the same check the sidecar makes), so the fact store is safe even when reached
//! directly, and the key's environment decides whose facts are read or written. Then, for writes: the key
//! must be ReadWrite (403), the body JSON (415), not too large (413, refused before it is read whole),
//! received in time (408) and well formed (400). Every answer is JSON.
//!
//! A write that removed facts says how many in [`FACTS_DELETED`], so that the sidecar in front can charge a
//! wildcard delete the facts it removed (it strips the header); wildcard deletes that would remove more than
//! [`crate::store::MAX_WILDCARD_DELETED`] facts are refused with 413 and change nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::health::{STORE_UNREACHABLE, StoreHealth};
use super::json;
use super::metrics::{EndpointLabels, FactsMetrics, RequestLabels, WriteLabels};
use super::query::parse_facts_query;
use super::wire::{self, WireError, WireFact};
use crate::auth::{KeyRing, Principal};
use crate::domain::Access;
use crate::domain::facts::FactChange;
use crate::store::{FactStoreError, FactWrite, Store, StoreError};

/// The clients refuse to send bodies of 10 MiB or more; so does the fact store by default.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// The response header of a write that removed facts: how many (concrete and wildcard deletes together).
/// A name, not text: the sidecar looks for it on every answer, and a name given as text is parsed and
/// hashed again at each look-up.
pub const FACTS_DELETED: HeaderName = HeaderName::from_static("orgkeeper-facts-deleted");
/// How long a client has to send its whole body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `/api/healthcheck` waits for the database before it answers 503.
pub const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct FactsConfig {
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
}

impl Default for FactsConfig {
    fn default() -> Self {
        FactsConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct FactsApp {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    keys: KeyRing,
    config: FactsConfig,
    metrics: FactsMetrics,
    health: StoreHealth,
}

impl FactsApp {
    pub fn new(store: Store, keys: KeyRing, config: FactsConfig, metrics: FactsMetrics) -> Self {
        FactsApp {
            inner: Arc::new(Inner {
                store,
                keys,
                config,
                metrics,
                health: StoreHealth::default(),
            }),
        }
    }

    /// What the store watcher ([`super::health::watch_store`]) keeps up to date and the handlers check.
    pub fn store_health(&self) -> StoreHealth {
        self.inner.health.clone()
    }

    /// The store, unless it is known to be unreachable: then 503 at once rather than after a timeout.
    fn store(&self) -> Result<&Store, ApiError> {
        match self.inner.health.check() {
            Ok(()) => Ok(&self.inner.store),
            Err(_) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, STORE_UNREACHABLE)),
        }
    }

    /// The answer for a failed store call; an unreachable database is noted so the next requests fail fast.
    fn store_failed(&self, error: StoreError) -> ApiError {
        self.inner.health.observe(&error);
        error.into()
    }
}

/// The endpoints of Oso Cloud that evaluate policies (or manage them): answered with 404 and a message
/// saying so. Not 501: the official clients retry 429 and every 5xx (the Node client 400 too) for up to a
/// second before the error reaches the caller, and retry no other 4xx.
const POLICY_ENDPOINTS: &[&str] = &[
    "/api/policy",
    "/api/policy_metadata",
    "/api/authorize",
    "/api/authorize_resources",
    "/api/list",
    "/api/actions",
    "/api/query",
    "/api/evaluate_query",
    "/api/actions_query",
    "/api/authorize_query",
    "/api/list_query",
    "/api/evaluate_query_local",
    "/api/expect",
    "/api/stats",
];

const FACT_ENDPOINTS: &[&str] = &[
    "/api/healthcheck",
    "/api/batch",
    "/api/facts",
    "/api/bulk_load",
    "/api/bulk_delete",
    "/api/bulk",
    "/api/clear_data",
];

/// The fact API.
pub fn router(app: FactsApp) -> Router {
    let mut router = Router::new()
        .route("/api/healthcheck", get(healthcheck))
        .route("/api/batch", post(batch))
        .route("/api/facts", get(get_facts).post(tell).delete(delete))
        .route("/api/bulk_load", post(bulk_load))
        .route("/api/bulk_delete", post(bulk_delete))
        .route("/api/bulk", post(bulk))
        .route("/api/clear_data", post(clear_data));
    for path in POLICY_ENDPOINTS {
        router = router.route(path, any(policies_not_evaluated));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// An error answer: a status and `{"message": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json::message(self.status, &self.message)
    }
}

impl From<WireError> for ApiError {
    fn from(error: WireError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, error.0)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(error = %error, "fact store query failed");
        if error.is_unreachable() {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, STORE_UNREACHABLE)
        } else {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the fact store's database refused the request; nothing was changed",
            )
        }
    }
}

impl From<FactStoreError> for ApiError {
    fn from(error: FactStoreError) -> Self {
        match error {
            FactStoreError::EnvironmentGone => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid API key: its environment no longer exists",
            ),
            FactStoreError::WildcardTooLarge { limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the wildcard deletes of this request match more than {limit} facts, so nothing was deleted: \
                     delete them with narrower patterns, {limit} facts at most per request"
                ),
            ),
            FactStoreError::Store(e) => e.into(),
        }
    }
}

type ApiResult = Result<Response, ApiError>;

impl FactsApp {
    /// Authenticates the request and, for writes, checks that the key may write.
    fn principal(&self, headers: &HeaderMap, write: bool) -> Result<Principal, ApiError> {
        let authorization =
            match headers.get(header::AUTHORIZATION) {
                None => None,
                Some(value) => Some(value.to_str().map_err(|_| {
                    ApiError::new(StatusCode::UNAUTHORIZED, crate::auth::AuthError::Invalid.to_string())
                })?),
            };
        let principal = self
            .inner
            .keys
            .authenticate(authorization)
            .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
        if write && principal.access == Access::ReadOnly {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this API key is read-only: writing facts needs a ReadWrite key",
            ));
        }
        Ok(principal)
    }

    /// Reads a JSON body within the size and time limits.
    async fn json_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
        check_json_content_type(headers)?;
        let limit = self.inner.config.max_body_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {limit} bytes; split the batch"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let collect = Limited::new(body, limit).collect();
        match tokio::time::timeout(self.inner.config.body_timeout, collect).await {
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} seconds",
                    self.inner.config.body_timeout.as_secs()
                ),
            )),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Ok(Err(_)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    /// The whole write path: authenticate, read, parse, apply in one transaction.
    async fn write(
        &self,
        headers: &HeaderMap,
        body: Body,
        parse: impl FnOnce(&[u8]) -> Result<Vec<FactChange>, WireError>,
    ) -> Result<FactWrite, ApiError> {
        let principal = self.principal(headers, true)?;
        let bytes = self.json_body(headers, body).await?;
        let changes = parse(&bytes)?;
        let outcome = self
            .store()?
            .write_facts(principal.environment_id(), &changes)
            .await
            .map_err(|e| match e {
                FactStoreError::Store(e) => self.store_failed(e),
                other => other.into(),
            })?;
        self.count_written(&principal, outcome.inserted, outcome.deleted);
        Ok(outcome)
    }

    fn count_written(&self, principal: &Principal, inserted: u64, deleted: u64) {
        for (operation, n) in [("insert", inserted), ("delete", deleted)] {
            if n > 0 {
                self.inner
                    .metrics
                    .written
                    .get_or_create(&WriteLabels {
                        environment: principal.environment.label.clone(),
                        operation: operation.into(),
                    })
                    .inc_by(n);
            }
        }
    }
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        let found = if content_type.is_empty() {
            "none".to_owned()
        } else {
            format!("{:?}", content_type.chars().take(64).collect::<String>())
        };
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send the body as JSON with Content-Type: application/json (found {found})"),
        ))
    }
}

fn ok(message: &str) -> Response {
    json::message(StatusCode::OK, message)
}

/// A write's answer, with how many facts it removed when it removed any.
fn written(mut response: Response, outcome: FactWrite) -> Response {
    if outcome.deleted > 0 {
        response.headers_mut().insert(FACTS_DELETED, outcome.deleted.into());
    }
    response
}

/// Answers within [`HEALTHCHECK_TIMEOUT`] whatever the database does, and at once during a known outage.
async fn healthcheck(State(app): State<FactsApp>) -> Response {
    let unreachable = || json::message(StatusCode::SERVICE_UNAVAILABLE, STORE_UNREACHABLE);
    let Ok(store) = app.store() else { return unreachable() };
    match tokio::time::timeout(HEALTHCHECK_TIMEOUT, store.revision()).await {
        Ok(Ok(_)) => ok("ok"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: the store is unreachable");
            app.inner.health.observe(&e);
            unreachable()
        }
        Err(_) => {
            app.inner.health.unreachable(format!(
                "the health check got no answer within {} ms",
                HEALTHCHECK_TIMEOUT.as_millis()
            ));
            unreachable()
        }
    }
}

async fn batch(State(app): State<FactsApp>, headers: HeaderMap, body: Body) -> ApiResult {
    let outcome = app.write(&headers, body, wire::parse_batch).await?;
    Ok(written(ok("Batch operation successful"), outcome))
}

async fn tell(State(app): State<FactsApp>, headers: HeaderMap, body: Body) -> ApiResult {
    let mut told = None;
    app.write(&headers, body, |bytes| {
        let fact = wire::parse_tell(bytes)?;
        told = Some(fact.clone());
        Ok(vec![FactChange::Insert(vec![fact])])
    })
    .await?;
    match told {
        Some(fact) => Ok(json::response(StatusCode::OK, &WireFact::from(&fact))),
        None => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no fact was told")),
    }
}

async fn delete(State(app): State<FactsApp>, headers: HeaderMap, body: Body) -> ApiResult {
    let outcome = app
        .write(&headers, body, |bytes| {
            Ok(vec![FactChange::Delete(vec![wire::parse_delete(bytes)?])])
        })
        .await?;
    Ok(written(ok("Deleted"), outcome))
}

async fn bulk_load(State(app): State<FactsApp>, headers: HeaderMap, body: Body) -> ApiResult {
    app.write(&headers, body, |bytes| {
        Ok(vec![FactChange::Insert(wire::parse_bulk_load(bytes)?)])
    })
    .await?;
    Ok(ok("Bulk load successful"))
}

async fn bulk_delete(State(app): State<FactsApp>, headers: HeaderMap, body: Body) -> ApiResult {
    let outcome = app
        .write(&headers, body, |bytes| {
            Ok(vec![FactChange::Delete(wire::parse_bulk_delete(bytes)?)])
        })
        .await?;
    Ok(written(ok("Bulk delete successful"), outcome))
}

async fn bulk(State(app): State<FactsApp>, headers: HeaderMap, body: Body) -> ApiResult {
    let outcome = app.write(&headers, body, wire::parse_bulk).await?;
    Ok(written(ok("Bulk operation successful"), outcome))
}

/// Deletes every fact of the key's environment (no body).
async fn clear_data(State(app): State<FactsApp>, headers: HeaderMap) -> ApiResult {
    let principal = app.principal(&headers, true)?;
    let deleted = app
        .store()?
        .clear_facts(principal.environment_id())
        .await
        .map_err(|e| app.store_failed(e))?;
    app.count_written(&principal, 0, deleted);
    Ok(ok("Data cleared"))
}

async fn get_facts(State(app): State<FactsApp>, headers: HeaderMap, uri: Uri) -> ApiResult {
    let principal = app.principal(&headers, false)?;
    let filter = parse_facts_query(uri.query())?;
    let facts = app
        .store()?
        .query_facts(principal.environment_id(), &filter)
        .await
        .map_err(|e| app.store_failed(e))?;
    let wire: Vec<WireFact> = facts.iter().map(WireFact::from).collect();
    Ok(json::response(StatusCode::OK, &wire))
}

async fn policies_not_evaluated(
    State(app): State<FactsApp>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult {
    let writes_policy = uri.path() == "/api/policy" && method != Method::GET;
    app.principal(&headers, writes_policy)?;
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "{} is not available: orgkeeper's fact store keeps facts (POST /api/batch, GET /api/facts and the v1 \
             fact endpoints) but does not evaluate policies; use Oso Cloud for policies and authorization checks",
            uri.path()
        ),
    ))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    let path: String = uri.path().chars().take(200).collect();
    ApiError::new(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {path}"))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Metrics for every request, and the client's `X-Request-ID` echoed back (the clients print it in errors).
async fn track(State(app): State<FactsApp>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let endpoint = if FACT_ENDPOINTS.contains(&path) || POLICY_ENDPOINTS.contains(&path) {
        path.to_owned()
    } else {
        "other".to_owned()
    };
    let method = match *request.method() {
        Method::GET | Method::POST | Method::DELETE | Method::PUT | Method::PATCH | Method::HEAD => {
            request.method().as_str().to_owned()
        }
        _ => "other".to_owned(),
    };
    let request_id = request.headers().get(&REQUEST_ID).cloned();
    let start = Instant::now();
    let mut response = next.run(request).await;
    let metrics = &app.inner.metrics;
    metrics
        .duration
        .get_or_create(&EndpointLabels {
            endpoint: endpoint.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint,
            method,
            status: response.status().as_str().to_owned(),
        })
        .inc();
    if let Some(id) = request_id {
        response.headers_mut().insert(REQUEST_ID.clone(), id);
    }
    response
}
