//! The fact API over HTTP (the real router on a real SQLite store, requests through tower): every endpoint
//! answers what the official clients accept, byte for byte where the captures show the bytes; keys are
//! checked; bad input gets a specific 4xx JSON message and never a panic.

mod facts_support;
mod support;

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use facts_support::*;
use futures::StreamExt as _;
use orgkeeper::auth::KeyRing;
use orgkeeper::facts::{FactsApp, FactsConfig, FactsMetrics, router};
use orgkeeper::store::Store;
use orgkeeper::telemetry::Telemetry;
use tower::ServiceExt;

const MAX_BODY: usize = 64 * 1024;

struct Api {
    router: Router,
    tenancy: Tenancy,
    telemetry: Telemetry,
    store: Store,
    keys: KeyRing,
    health: orgkeeper::facts::StoreHealth,
}

async fn api() -> Api {
    api_on(support::sqlite().await).await
}

async fn api_on(store: Store) -> Api {
    let tenancy = tenancy(&store).await;
    let keys = KeyRing::default();
    keys.refresh(&store).await.unwrap();
    let telemetry = Telemetry::new("orgkeeper");
    let metrics = FactsMetrics::new(&mut telemetry.registry.lock().unwrap());
    let config = FactsConfig {
        max_body_bytes: MAX_BODY,
        body_timeout: Duration::from_millis(300),
    };
    let app = FactsApp::new(store.clone(), keys.clone(), config, metrics);
    Api {
        health: app.store_health(),
        router: router(app),
        tenancy,
        telemetry,
        store,
        keys,
    }
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
    request_id: Option<String>,
    /// `orgkeeper-facts-deleted`: how many facts a write removed.
    facts_deleted: Option<String>,
}

impl Answer {
    /// Every answer is JSON, and every error is `{"message": "..."}` (what the clients print).
    fn json(&self) -> serde_json::Value {
        assert_eq!(self.content_type, "application/json", "{}", self.body);
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn message(&self) -> String {
        let json = self.json();
        let object = json.as_object().expect("an object");
        assert_eq!(object.len(), 1, "only a message: {}", self.body);
        object["message"].as_str().expect("a string message").to_owned()
    }
}

impl Api {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &header::HeaderValue| v.to_str().unwrap().to_owned())
        };
        let content_type = header(header::CONTENT_TYPE).unwrap_or_default();
        let request_id = header(header::HeaderName::from_static("x-request-id"));
        let facts_deleted = header(header::HeaderName::from_static("orgkeeper-facts-deleted"));
        let body = axum::body::to_bytes(response.into_body(), 16 << 20).await.unwrap();
        Answer {
            status,
            content_type,
            body: String::from_utf8(body.to_vec()).unwrap(),
            request_id,
            facts_deleted,
        }
    }

    fn request(&self, method: &str, uri: &str, key: Option<&str>) -> axum::http::request::Builder {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            builder = builder.header(header::AUTHORIZATION, self.tenancy.bearer(key));
        }
        builder
    }

    async fn post(&self, uri: &str, key: &str, body: &str) -> Answer {
        self.send(
            self.request("POST", uri, Some(key))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_owned()))
                .unwrap(),
        )
        .await
    }

    async fn delete(&self, uri: &str, key: &str, body: &str) -> Answer {
        self.send(
            self.request("DELETE", uri, Some(key))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_owned()))
                .unwrap(),
        )
        .await
    }

    async fn get(&self, uri: &str, key: &str) -> Answer {
        self.send(self.request("GET", uri, Some(key)).body(Body::empty()).unwrap())
            .await
    }
}

// Requests and responses from reference/oso-client-wire-captures.txt (Python client 2.6.0 and 1.5.1).
const INSERT: &str = r#"[{"inserts": [{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "admin"}, {"type": "Organization", "id": "acme"}]}]}]"#;
const DELETE_CONCRETE: &str = r#"[{"deletes": [{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "admin"}, {"type": "Organization", "id": "acme"}]}]}]"#;
const DELETE_WILDCARDS: &str = r#"[{"deletes": [{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": null, "id": null}, {"type": "Organization", "id": null}]}]}]"#;
const BATCH: &str = r#"[{"inserts": [{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "member"}, {"type": "Organization", "id": "acme"}]}, {"predicate": "has_relation", "args": [{"type": "Repository", "id": "anvil"}, {"type": "String", "id": "parent"}, {"type": "Organization", "id": "acme"}]}]}, {"deletes": [{"predicate": "has_role", "args": [{"type": "User", "id": "bob"}, {"type": null, "id": null}, {"type": null, "id": null}]}]}, {"inserts": [{"predicate": "has_role", "args": [{"type": "User", "id": "carol"}, {"type": "String", "id": "viewer"}, {"type": "Organization", "id": "acme"}]}]}]"#;
const BATCH_OK: &str = r#"{"message": "Batch operation successful"}"#;
const GET_CONCRETE: &str = "/api/facts?predicate=has_role&args.0.type=User&args.0.id=alice&args.1.type=String&args.1.id=member&args.2.type=Organization&args.2.id=acme";
const GET_CONCRETE_RESP: &str = r#"[{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "member"}, {"type": "Organization", "id": "acme"}]}]"#;
const GET_WILDCARDS: &str = "/api/facts?predicate=has_role&args.0.type=User&args.2.type=Organization&args.2.id=acme";
const GET_WILDCARDS_RESP: &str = r#"[{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "member"}, {"type": "Organization", "id": "acme"}]}, {"predicate": "has_role", "args": [{"type": "User", "id": "carol"}, {"type": "String", "id": "viewer"}, {"type": "Organization", "id": "acme"}]}]"#;
const TELL: &str = r#"{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "admin"}, {"type": "Organization", "id": "acme"}]}"#;
const BULK_LOAD: &str = r#"[{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "member"}, {"type": "Organization", "id": "acme"}]}, {"predicate": "is_public", "args": [{"type": "Repository", "id": "anvil"}, {"type": "Boolean", "id": "true"}]}]"#;
const BULK_DELETE: &str = r#"[{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "member"}, {"type": "Organization", "id": "acme"}]}]"#;
const BULK: &str = r#"{"delete": [{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": null, "id": null}, {"type": "Organization", "id": null}]}], "tell": [{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "owner"}, {"type": "Organization", "id": "acme"}]}]}"#;
const V1_GET: &str = "/api/facts?predicate=has_role&args.0.type=User&args.0.id=alice&args.2.type=Organization";
const V1_GET_RESP: &str = r#"[{"predicate": "has_role", "args": [{"type": "User", "id": "alice"}, {"type": "String", "id": "owner"}, {"type": "Organization", "id": "acme"}]}]"#;

#[tokio::test]
async fn the_captured_v2_session_replays_byte_for_byte() {
    let api = api().await;
    for body in [INSERT, DELETE_CONCRETE, INSERT, DELETE_WILDCARDS, BATCH] {
        let answer = api.post("/api/batch", "rw", body).await;
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, BATCH_OK));
        assert_eq!(answer.content_type, "application/json");
    }
    let concrete = api.get(GET_CONCRETE, "rw").await;
    assert_eq!(
        (concrete.status, concrete.body.as_str()),
        (StatusCode::OK, GET_CONCRETE_RESP)
    );
    assert_eq!(concrete.content_type, "application/json");
    assert_eq!(api.get(GET_WILDCARDS, "rw").await.body, GET_WILDCARDS_RESP);
    assert_eq!(
        api.get("/api/facts?predicate=has_role", "rw").await.body,
        GET_WILDCARDS_RESP
    );
    // Node orders the parameters differently.
    let node = "/api/facts?args.0.type=User&args.2.type=Organization&args.2.id=acme&predicate=has_role";
    assert_eq!(api.get(node, "rw").await.body, GET_WILDCARDS_RESP);
    // Replaying the batch (a client retrying after a timeout) changes nothing.
    api.post("/api/batch", "rw", BATCH).await;
    assert_eq!(
        api.get("/api/facts?predicate=has_role", "rw").await.body,
        GET_WILDCARDS_RESP
    );
    assert_eq!(api.get("/api/facts?predicate=nothing", "rw").await.body, "[]");
}

#[tokio::test]
async fn the_captured_v1_session_replays_byte_for_byte() {
    let api = api().await;
    let tell = api.post("/api/facts", "rw", TELL).await;
    assert_eq!((tell.status, tell.body.as_str()), (StatusCode::OK, TELL));
    let answer = api.post("/api/bulk_load", "rw", BULK_LOAD).await;
    assert_eq!(answer.body, r#"{"message": "Bulk load successful"}"#);
    let answer = api.delete("/api/facts", "rw", TELL).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, r#"{"message": "Deleted"}"#)
    );
    let answer = api.post("/api/bulk_delete", "rw", BULK_DELETE).await;
    assert_eq!(answer.body, r#"{"message": "Bulk delete successful"}"#);
    api.post("/api/bulk_load", "rw", BULK_LOAD).await;
    let answer = api.post("/api/bulk", "rw", BULK).await;
    assert_eq!(answer.body, r#"{"message": "Bulk operation successful"}"#);
    assert_eq!(api.get(V1_GET, "rw").await.body, V1_GET_RESP);
    assert_eq!(
        api.get("/api/facts?predicate=is_public", "rw").await.body,
        r#"[{"predicate": "is_public", "args": [{"type": "Repository", "id": "anvil"}, {"type": "Boolean", "id": "true"}]}]"#
    );
}

#[tokio::test]
async fn clear_data_empties_only_the_keys_environment() {
    let api = api().await;
    api.post("/api/batch", "rw", INSERT).await;
    api.post("/api/batch", "qa", INSERT).await;
    let answer = api
        .send(
            api.request("POST", "/api/clear_data", Some("rw"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (answer.status, answer.message()),
        (StatusCode::OK, "Data cleared".into())
    );
    assert_eq!(api.get("/api/facts?predicate=has_role", "rw").await.body, "[]");
    assert_ne!(api.get("/api/facts?predicate=has_role", "qa").await.body, "[]");
    assert_eq!(api.store.count_facts(api.tenancy.env("qa")).await.unwrap(), 1);
}

#[tokio::test]
async fn each_key_sees_only_its_environment() {
    let api = api().await;
    api.post("/api/batch", "rw", BATCH).await;
    assert_eq!(api.get("/api/facts?predicate=has_role", "qa").await.body, "[]");
    assert_eq!(
        api.get("/api/facts?predicate=has_role", "ro").await.body,
        api.get("/api/facts?predicate=has_role", "rw").await.body,
        "a read-only key reads its environment"
    );
}

#[tokio::test]
async fn keys_are_checked_on_every_api_request() {
    let api = api().await;
    let cases = [
        (None, "missing API key"),
        (Some("Basic dXNlcjpwYXNz"), "not a Bearer"),
        (Some("Bearer nope"), "invalid API key"),
        (
            Some("Bearer e_aaaaaaaaaaaa_bbbbbbbbbbbb_cccccccccccccccccccccccccccccccc"),
            "invalid API key",
        ),
    ];
    for (authorization, expected) in cases {
        for (method, uri) in [
            ("GET", "/api/facts?predicate=p"),
            ("POST", "/api/batch"),
            ("POST", "/api/authorize"),
        ] {
            let mut request = Request::builder().method(method).uri(uri);
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            let answer = api
                .send(
                    request
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from("[]"))
                        .unwrap(),
                )
                .await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
            assert!(answer.message().contains(expected), "{}", answer.body);
        }
    }
    // A header that is not even ASCII.
    let answer = api
        .send(
            Request::get("/api/facts?predicate=p")
                .header(
                    header::AUTHORIZATION,
                    header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    // The health check needs no key.
    let health = api
        .send(Request::get("/api/healthcheck").body(Body::empty()).unwrap())
        .await;
    assert_eq!((health.status, health.message()), (StatusCode::OK, "ok".into()));
}

#[tokio::test]
async fn a_revoked_key_is_refused_once_the_ring_reloads() {
    let api = api().await;
    assert_eq!(api.get("/api/facts?predicate=p", "rw").await.status, StatusCode::OK);
    let mut revoked = declarations(true);
    revoked.api_keys.iter_mut().find(|k| k.name == "rw").unwrap().revoked = true;
    reconcile(&api.store, &revoked).await;
    assert!(api.keys.refresh(&api.store).await.unwrap());
    let answer = api.get("/api/facts?predicate=p", "rw").await;
    assert_eq!(
        (answer.status, answer.message()),
        (StatusCode::UNAUTHORIZED, "invalid API key".into())
    );
    assert_eq!(api.get("/api/facts?predicate=p", "ro").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_read_only_key_cannot_write_anything() {
    let api = api().await;
    api.post("/api/batch", "rw", INSERT).await;
    let writes = [
        ("POST", "/api/batch", INSERT),
        ("POST", "/api/facts", TELL),
        ("DELETE", "/api/facts", TELL),
        ("POST", "/api/bulk_load", BULK_LOAD),
        ("POST", "/api/bulk_delete", BULK_DELETE),
        ("POST", "/api/bulk", BULK),
        ("POST", "/api/clear_data", ""),
        ("POST", "/api/policy", r#"{"src": ""}"#),
    ];
    for (method, uri, body) in writes {
        let answer = api
            .send(
                api.request(method, uri, Some("ro"))
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{method} {uri}: {}", answer.body);
        assert!(answer.message().contains("read-only"));
    }
    assert_eq!(api.store.count_facts(api.tenancy.env("staging")).await.unwrap(), 1);
}

#[tokio::test]
async fn malformed_and_misshapen_bodies_get_400_with_the_reason() {
    let api = api().await;
    let cases = [
        ("/api/batch", "", "empty"),
        ("/api/batch", "[{", "malformed JSON"),
        ("/api/batch", "\u{0}\u{1}garbage", "malformed JSON"),
        ("/api/batch", "{}", "body: expected a list of changesets"),
        ("/api/batch", "[1]", "body[0]: expected a changeset"),
        ("/api/batch", r#"[{"upserts": []}]"#, "unknown field \"upserts\""),
        (
            "/api/batch",
            r#"[{"inserts": {}}]"#,
            "body[0].inserts: expected a list of facts",
        ),
        (
            "/api/batch",
            r#"[{"inserts": [{"predicate": 7, "args": []}]}]"#,
            "body[0].inserts[0].predicate: expected a string",
        ),
        (
            "/api/batch",
            r#"[{"inserts": [{"predicate": "p", "args": ["User:alice"]}]}]"#,
            "body[0].inserts[0].args[0]: expected a value",
        ),
        (
            "/api/batch",
            r#"[{"inserts": [{"predicate": "p", "args": [{"type": null, "id": null}]}]}]"#,
            "must be concrete",
        ),
        (
            "/api/batch",
            r#"[{"inserts": [{"predicate": "p", "args": [{"type": "U", "id": "a\u0000"}]}]}]"#,
            "NUL",
        ),
        ("/api/facts", r#"{"predicate": "p"}"#, "body: missing field \"args\""),
        (
            "/api/bulk_load",
            r#"{"predicate": "p", "args": []}"#,
            "body: expected a list of facts",
        ),
        (
            "/api/bulk_delete",
            r#"[{"predicate": "p", "args": [], "extra": true}]"#,
            "unknown field \"extra\"",
        ),
        ("/api/bulk", "[]", "body: expected an object"),
        ("/api/bulk", r#"{"tell": []}"#, "missing field \"delete\""),
    ];
    for (uri, body, expected) in cases {
        let answer = api.post(uri, "rw", body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{uri} {body}: {}", answer.body);
        let message = answer.message();
        assert!(message.contains(expected), "{uri} {body}: {message}");
    }
    let long = format!(
        r#"[{{"inserts": [{{"predicate": "p", "args": [{{"type": "U", "id": "{}"}}]}}]}}]"#,
        "x".repeat(2000)
    );
    assert!(
        api.post("/api/batch", "rw", &long)
            .await
            .message()
            .contains("limit is 1024")
    );
    // A batch with one bad fact is refused whole: nothing before it was written.
    let half = r#"[{"inserts": [{"predicate": "ok", "args": []}]}, {"inserts": [{"predicate": "", "args": []}]}]"#;
    assert_eq!(api.post("/api/batch", "rw", half).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(api.store.count_facts(api.tenancy.env("staging")).await.unwrap(), 0);
}

#[tokio::test]
async fn bad_queries_get_400_with_the_reason() {
    let api = api().await;
    for (query, expected) in [
        ("", "missing query parameter \"predicate\""),
        ("?args.0.type=User", "missing query parameter \"predicate\""),
        ("?predicate=p&limit=10", "unknown query parameter \"limit\""),
        ("?predicate=p&args.one.type=User", "unknown query parameter"),
        ("?predicate=p&args.100.id=x", "from 0 to 63"),
        ("?predicate=p&predicate=q", "twice"),
        ("?predicate=%G0", "percent-encoding"),
        ("?predicate=p&args.0.id=%00", "NUL"),
    ] {
        let answer = api.get(&format!("/api/facts{query}"), "rw").await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(answer.message().contains(expected), "{query}: {}", answer.body);
    }
}

#[tokio::test]
async fn bodies_must_be_declared_json() {
    let api = api().await;
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut request = api.request("POST", "/api/batch", Some("rw"));
        if let Some(value) = content_type {
            request = request.header(header::CONTENT_TYPE, value);
        }
        let answer = api.send(request.body(Body::from(INSERT)).unwrap()).await;
        assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type:?}");
        assert!(answer.message().contains("Content-Type: application/json"));
    }
    let answer = api
        .send(
            api.request("POST", "/api/batch", Some("rw"))
                .header(header::CONTENT_TYPE, "Application/JSON; charset=utf-8")
                .body(Body::from(INSERT))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn huge_bodies_are_refused_before_they_are_read_whole() {
    let api = api().await;
    // Declared too large: refused at once; the body (which would never end) is not read at all.
    let never_ends = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
    let answer = api
        .send(
            api.request("POST", "/api/batch", Some("rw"))
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, "1000000000")
                .body(never_ends)
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer.message().contains(&MAX_BODY.to_string()));
    // Streamed without a length and endless: refused as soon as it passes the limit.
    let endless = futures::stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 4096])));
    let answer = api
        .send(
            api.request("POST", "/api/batch", Some("rw"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(endless))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Just under the limit is fine.
    let padded = format!("{INSERT}{}", " ".repeat(MAX_BODY - INSERT.len()));
    assert_eq!(api.post("/api/batch", "rw", &padded).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_body_that_never_arrives_times_out() {
    let api = api().await;
    let stalls = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"[{\"ins"))])
        .chain(futures::stream::pending());
    let answer = api
        .send(
            api.request("POST", "/api/batch", Some("rw"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(stalls))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::REQUEST_TIMEOUT);
    assert!(answer.message().contains("did not arrive"));
}

#[tokio::test]
async fn other_endpoints_answer_json_too() {
    let api = api().await;
    let answer = api.get("/api/nope", "rw").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.message(), "no such endpoint: GET /api/nope");
    let answer = api.send(Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    answer.message();
    let answer = api.get("/api/batch", "rw").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(answer.message().contains("GET is not allowed on /api/batch"));
    for (method, uri) in [
        ("POST", "/api/authorize"),
        ("POST", "/api/authorize_resources"),
        ("POST", "/api/list"),
        ("POST", "/api/actions"),
        ("POST", "/api/query"),
        ("POST", "/api/evaluate_query"),
        ("GET", "/api/policy_metadata"),
        ("GET", "/api/policy"),
        ("POST", "/api/policy"),
    ] {
        let answer = api
            .send(
                api.request(method, uri, Some("rw"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {uri}");
        let message = answer.message();
        assert!(
            message.contains(uri) && message.contains("does not evaluate policies"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn the_request_id_is_echoed_and_requests_are_counted() {
    let api = api().await;
    let answer = api
        .send(
            api.request("GET", "/api/facts?predicate=p", Some("rw"))
                .header("X-Request-ID", "req-123")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(answer.request_id.as_deref(), Some("req-123"));
    api.post("/api/batch", "rw", INSERT).await;
    api.post("/api/batch", "ro", INSERT).await;
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &api.telemetry.registry.lock().unwrap()).unwrap();
    for line in [
        r#"orgkeeper_facts_requests_total{endpoint="/api/facts",method="GET",status="200"} 1"#,
        r#"orgkeeper_facts_requests_total{endpoint="/api/batch",method="POST",status="200"} 1"#,
        r#"orgkeeper_facts_requests_total{endpoint="/api/batch",method="POST",status="403"} 1"#,
        r#"orgkeeper_facts_written_total{environment="facts/acme/staging",operation="insert"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

/// Random methods, paths, queries, content types and bodies through the whole router: every answer is a
/// JSON message with a 2xx or 4xx status (5xx would mean the fact store failed on bad input).
#[test]
fn random_requests_never_break_the_api() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let api = runtime.block_on(api());
    let request = (
        prop::sample::select(vec!["GET", "POST", "DELETE", "PUT"]),
        prop::sample::select(vec![
            "/api/batch",
            "/api/facts",
            "/api/bulk",
            "/api/bulk_load",
            "/api/bulk_delete",
            "/api/clear_data",
            "/api/authorize",
            "/api/x",
        ]),
        "[a-z.0-9=&%+]{0,40}",
        prop::sample::select(vec!["application/json", "text/plain", ""]),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            Just(INSERT.as_bytes().to_vec()),
            Just(BULK.as_bytes().to_vec()),
            "\\[\\{\"(inserts|deletes)\": \\[\\{\"predicate\": \"[a-z]{0,3}\", \"args\": \\[\\{\"type\": (null|\"T\"|1), \"id\": (null|\"x\"|\\[\\])\\}\\]\\}\\]\\}\\]"
                .prop_map(String::into_bytes),
        ],
    );
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&request, |(method, path, query, content_type, body)| {
            let mut builder = api.request(method, &format!("{path}?{query}"), Some("rw"));
            if !content_type.is_empty() {
                builder = builder.header(header::CONTENT_TYPE, content_type);
            }
            let answer = runtime.block_on(api.send(builder.body(Body::from(body)).unwrap()));
            prop_assert!(
                answer.status.is_success() || answer.status.is_client_error(),
                "{method} {path}?{query}: {} {}",
                answer.status,
                answer.body
            );
            answer.json();
            Ok(())
        })
        .unwrap();
}

/// During a PostgreSQL outage every request and the health check answer 503 at once (not after the pool's
/// timeout), saying the store is unreachable; the outage is noticed within the refresh interval, `/readyz`
/// says so, and everything works again once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_answered_at_once_and_noticed_within_the_refresh_interval() {
    use orgkeeper::store::StoreOptions;
    let postgres = OwnPostgres::start();
    let options = StoreOptions {
        acquire_timeout: Duration::from_secs(2),
        ..StoreOptions::default()
    };
    let store = Store::connect_with(&postgres.url, &options).await.unwrap();
    let api = api_on(store.clone()).await;
    let app_health = api.health.clone();
    let refresh = Duration::from_millis(300);
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(orgkeeper::facts::watch_store(
        store.clone(),
        api.keys.clone(),
        app_health,
        api.telemetry.health.clone(),
        refresh,
        shutdown.clone(),
    ));
    let healthcheck = || api.send(Request::get("/api/healthcheck").body(Body::empty()).unwrap());
    assert_eq!(api.get("/api/facts?predicate=p", "rw").await.status, StatusCode::OK);
    assert_eq!(healthcheck().await.status, StatusCode::OK);

    postgres.stop();
    let stopped = std::time::Instant::now();
    // Noticed by the watcher within about one refresh interval (two at most: a probe may have just run).
    while api.health.check().is_ok() {
        assert!(
            stopped.elapsed() < refresh * 2 + Duration::from_millis(500),
            "the outage went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let noticed = stopped.elapsed();
    for answer in [
        api.get("/api/facts?predicate=p", "rw").await,
        api.post("/api/batch", "rw", INSERT).await,
        healthcheck().await,
    ] {
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
        assert_eq!(
            answer.message(),
            "the fact store cannot reach its database; retry later"
        );
    }
    let answered = stopped.elapsed() - noticed;
    assert!(answered < Duration::from_millis(200), "three answers took {answered:?}");
    let readiness = api.telemetry.health.get();
    assert!(
        matches!(&readiness, orgkeeper::telemetry::Readiness::NotReady(reason) if reason.contains("cannot reach the store")),
        "{readiness:?}"
    );
    println!("outage noticed after {noticed:?}; three 503s in {answered:?}");

    postgres.restart();
    let restarted = std::time::Instant::now();
    while api.get("/api/facts?predicate=p", "rw").await.status != StatusCode::OK {
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "the fact store did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(healthcheck().await.status, StatusCode::OK);
    // The watcher that ended the outage reports it to /readyz right after.
    while api.telemetry.health.get() != orgkeeper::telemetry::Readiness::Ready {
        assert!(restarted.elapsed() < Duration::from_secs(10), "/readyz did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
}

/// Facts of arity five, so that a pattern on the fifth argument takes the path filtered in Rust.
fn wide(i: usize) -> orgkeeper::domain::facts::Fact {
    let user = format!("u{i}");
    fact(
        "wide",
        &[
            ("User", &user),
            ("String", "a"),
            ("String", "b"),
            ("String", "c"),
            ("Tag", "x"),
        ],
    )
}

fn deletes(pattern: &str) -> String {
    format!(r#"[{{"deletes": [{pattern}]}}]"#)
}

/// Matched in SQL (the first argument's type only).
const BY_TYPE: &str = r#"{"predicate": "wide", "args": [{"type": "User", "id": null}, {"type": null, "id": null}, {"type": null, "id": null}, {"type": null, "id": null}, {"type": null, "id": null}]}"#;
/// Matched in Rust (the fifth argument).
const BY_TAG: &str = r#"{"predicate": "wide", "args": [{"type": null, "id": null}, {"type": null, "id": null}, {"type": null, "id": null}, {"type": null, "id": null}, {"type": "Tag", "id": "x"}]}"#;

/// Oso Cloud's bound: the wildcard deletes of one request remove at most 10,000 facts; beyond, 413 and
/// nothing changes (the whole batch rolls back), on both paths a pattern can take. A write says how many
/// facts it removed, which the sidecar charges.
async fn wildcard_deletes_remove_at_most_ten_thousand_facts_and_say_how_many(store: Store) {
    use orgkeeper::domain::facts::FactChange;
    let api = api_on(store).await;
    let env = api.tenancy.env("staging").to_owned();
    let facts: Vec<_> = (0..10_001).map(wide).collect();
    api.store.write_facts(&env, &[FactChange::Insert(facts)]).await.unwrap();
    for pattern in [BY_TYPE, BY_TAG] {
        let answer = api.post("/api/batch", "rw", &deletes(pattern)).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.body);
        assert_eq!(
            answer.message(),
            "the wildcard deletes of this request match more than 10000 facts, so nothing was deleted: delete \
             them with narrower patterns, 10000 facts at most per request"
        );
        assert_eq!(answer.facts_deleted, None);
        assert_eq!(api.store.count_facts(&env).await.unwrap(), 10_001, "{pattern}");
    }
    let v1 = api.post("/api/bulk_delete", "rw", &format!("[{BY_TAG}]")).await;
    assert_eq!(v1.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", v1.body);

    let concrete = serde_json::to_string(&orgkeeper::facts::wire::WireFact::from(&wide(0))).unwrap();
    let answer = api.post("/api/batch", "rw", &deletes(&concrete)).await;
    assert_eq!(
        (answer.status, answer.facts_deleted.as_deref()),
        (StatusCode::OK, Some("1"))
    );
    assert_eq!(api.store.count_facts(&env).await.unwrap(), 10_000);

    // The bound counts what the request itself inserted first; refused, the insert is undone too.
    let extra = serde_json::to_string(&orgkeeper::facts::wire::WireFact::from(&wide(99_999))).unwrap();
    let batch = format!(r#"[{{"inserts": [{extra}]}}, {{"deletes": [{BY_TYPE}]}}]"#);
    let answer = api.post("/api/batch", "rw", &batch).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.body);
    assert_eq!(
        api.get("/api/facts?predicate=wide&args.0.type=User&args.0.id=u99999", "rw")
            .await
            .body,
        "[]"
    );
    assert_eq!(api.store.count_facts(&env).await.unwrap(), 10_000);

    let answer = api.post("/api/batch", "rw", &deletes(BY_TAG)).await;
    assert_eq!(
        (answer.status, answer.facts_deleted.as_deref()),
        (StatusCode::OK, Some("10000")),
        "{}",
        answer.body
    );
    assert_eq!(api.store.count_facts(&env).await.unwrap(), 0);
    let replay = api.post("/api/batch", "rw", &deletes(BY_TAG)).await;
    assert_eq!((replay.status, replay.facts_deleted), (StatusCode::OK, None));
}

on_both_backends!(wildcard_deletes_remove_at_most_ten_thousand_facts_and_say_how_many);
