//! What writes and reads cost, as Oso Cloud charges them, through a real sidecar in front of the real fact
//! store (SQLite and PostgreSQL): a wildcard delete costs the facts it removed, a debt the environment's
//! next writes wait for (seen in their 429 `Retry-After` and in the `RateLimit` headers); one that would
//! remove more than 10,000 facts is 413 and removes nothing; a read's body over 10 MiB is 413. The
//! limiter's clock is manual, so every wait is exact.

mod facts_support;
mod sidecar_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use orgkeeper::auth::KeyRing;
use orgkeeper::domain::facts::FactChange;
use orgkeeper::domain::{Access, LimitOverrides};
use orgkeeper::facts::{FactsApp, FactsConfig, FactsMetrics, router};
use orgkeeper::sidecar::{ManualClock, Settings};
use orgkeeper::store::Store;
use orgkeeper::telemetry::Telemetry;
use sidecar_support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// `has_role(User:*, "member", Organization:acme)`: every fact [`sidecar_support::fact`] makes.
const DELETE_MEMBERS: &str = r#"[{"deletes":[{"predicate":"has_role","args":[{"type":"User","id":null},{"type":"String","id":"member"},{"type":"Organization","id":"acme"}]}]}]"#;

/// The fact store serving `store` on a loopback port.
async fn fact_store(store: &Store) -> String {
    let keys = KeyRing::default();
    keys.refresh(store).await.unwrap();
    let telemetry = Telemetry::new("orgkeeper");
    let metrics = FactsMetrics::new(&mut telemetry.registry.lock().unwrap());
    let app = FactsApp::new(store.clone(), keys, FactsConfig::default(), metrics);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(app)).await.unwrap() });
    format!("http://{addr}")
}

struct Setup {
    tenancy: Tenancy,
    sidecar: Running,
    clock: ManualClock,
    http: Http,
}

/// Environment `small` (1,000 fact writes a minute) and `big` (a million), a ReadWrite key on each, the
/// fact store on `store`, and a sidecar in front of it.
async fn setup(store: Store) -> Setup {
    let env = |name, facts| {
        Env(
            name,
            LimitOverrides {
                fact_writes_per_minute: Some(facts),
                ..limits()
            },
        )
    };
    let tenancy = Tenancy::new(
        store,
        &[env("small", 1_000), env("big", 1_000_000)],
        &[
            Key("small", "small", Access::ReadWrite),
            Key("big", "big", Access::ReadWrite),
        ],
    )
    .await;
    let clock = ManualClock::default();
    let options = Options {
        settings: Settings {
            upstream: fact_store(&tenancy.store).await,
            ..Settings::default()
        },
        clock: Some(Arc::new(clock.clone())),
        refresh: true,
    };
    let sidecar = start(&tenancy.store, options).await;
    let http = Http::new(&sidecar);
    Setup {
        tenancy,
        sidecar,
        clock,
        http,
    }
}

impl Setup {
    /// Stores `n` member facts in `environment` directly, as an earlier bulk load would have.
    async fn store_members(&self, environment: &str, n: usize) {
        let facts = (0..n)
            .map(|i| facts_support::role(&format!("u{i}"), "member", "acme"))
            .collect();
        self.tenancy
            .store
            .write_facts(self.tenancy.environment_id(environment), &[FactChange::Insert(facts)])
            .await
            .unwrap();
    }

    async fn members(&self, key: &str) -> usize {
        let reply = self
            .http
            .get("/api/facts?predicate=has_role", Some(self.tenancy.key(key)))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.json().as_array().expect("a list of facts").len()
    }
}

/// The `"fact-writes"` item of a `RateLimit` header: what is left and the seconds until it is whole.
fn fact_writes(reply: &Reply) -> (u64, u64) {
    let header = reply.header("ratelimit").expect("a RateLimit header");
    let item = header
        .split(", ")
        .find(|item| item.starts_with("\"fact-writes\""))
        .unwrap_or_else(|| panic!("no fact-writes in {header}"));
    let field = |name: &str| {
        item.split(';')
            .find_map(|p| p.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {item}"))
    };
    (field("r="), field("t="))
}

/// 5,000 facts removed by one wildcard at 1,000 a minute (one per 60 ms): 300 s of budget used, 240 s beyond
/// the whole budget, which the next write waits for.
async fn a_wildcard_delete_is_charged_the_facts_it_removed(store: Store) {
    let setup = setup(store).await;
    setup.store_members("small", 5_000).await;
    let key = setup.tenancy.key("small");
    let deleted = setup
        .http
        .send(Method::POST, "/api/batch", Some(key), DELETE_MEMBERS)
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{:?}", deleted.body);
    assert_eq!(fact_writes(&deleted), (0, 300), "5,000 facts charged");
    assert_eq!(
        deleted.header("orgkeeper-facts-deleted"),
        None,
        "the fact store's report stays between it and the sidecar"
    );
    assert_eq!(setup.members("small").await, 0);

    let write = setup.http.batch(key, 1).await;
    assert_eq!(write.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", write.body);
    assert_eq!(
        write.retry_after(),
        241,
        "240.06 s: the debt beyond the budget, then one fact"
    );
    assert!(write.message().contains("factWritesPerMinute"), "{}", write.message());
    assert_eq!(fact_writes(&write), (0, 300));
    assert_eq!(setup.members("small").await, 0, "a refused write is not applied");

    setup.clock.advance(Duration::from_secs(240));
    assert_eq!(setup.http.batch(key, 1).await.retry_after(), 1);
    setup.clock.advance(Duration::from_millis(60));
    let write = setup.http.batch(key, 1).await;
    assert_eq!(write.status, StatusCode::OK, "{:?}", write.body);
    assert_eq!(setup.members("small").await, 1);

    // Another environment's budget is its own.
    let other = setup.http.batch(setup.tenancy.key("big"), 1).await;
    assert_eq!(other.status, StatusCode::OK);
    let _ = &setup.sidecar;
}

/// 10,001 matching facts: the fact store refuses the delete before removing any, the sidecar passes its
/// 413 through and charges only the one fact it counted.
async fn a_wildcard_delete_of_more_than_ten_thousand_facts_is_413_and_deletes_nothing(store: Store) {
    let setup = setup(store).await;
    setup.store_members("big", 10_001).await;
    let key = setup.tenancy.key("big");
    let refused = setup
        .http
        .send(Method::POST, "/api/batch", Some(key), DELETE_MEMBERS)
        .await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", refused.body);
    assert!(
        refused
            .message()
            .starts_with("the wildcard deletes of this request match more than 10000 facts, so nothing was deleted"),
        "{}",
        refused.message()
    );
    assert_eq!(setup.members("big").await, 10_001);
    // The delete paid for one fact up front and no more; this write is the second.
    let write = setup.http.batch(key, 1).await;
    assert_eq!(write.status, StatusCode::OK);
    assert_eq!(fact_writes(&write).0, 1_000_000 - 2);
}

on_both_backends!(
    a_wildcard_delete_is_charged_the_facts_it_removed,
    a_wildcard_delete_of_more_than_ten_thousand_facts_is_413_and_deletes_nothing,
);

/// A read sidecar whose upstream only records (the fact store's reads take no body; Oso Cloud's do).
async fn read_setup() -> (Tenancy, Upstream, Running) {
    one_key_sidecar().await
}

const TEN_MIB: usize = 10 * 1024 * 1024;

#[tokio::test]
async fn a_read_declaring_a_body_over_10_mib_is_413_before_a_byte_is_read() {
    let (tenancy, upstream, sidecar) = read_setup().await;
    let head = format!(
        "POST /api/authorize HTTP/1.1\r\nhost: sidecar\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        tenancy.key("rw"),
        TEN_MIB + 1
    );
    let answer = raw(sidecar.addr, head.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert_eq!(
        raw_json(&answer)["message"],
        "the request body is larger than 10485760 bytes, the most a read request may send (10 MiB)"
    );
    assert_eq!(upstream.count(), 0);
    // Exactly 10 MiB is a read like any other.
    let body = "x".repeat(TEN_MIB);
    let reply = Http::new(&sidecar)
        .send(Method::POST, "/api/authorize", Some(tenancy.key("rw")), &body)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(upstream.requests()[0].body.len(), TEN_MIB);
}

#[tokio::test]
async fn a_chunked_read_body_is_cut_off_with_413_once_it_passes_10_mib() {
    let (tenancy, upstream, sidecar) = read_setup().await;
    let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
    let head = format!(
        "POST /api/authorize HTTP/1.1\r\nhost: sidecar\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        tenancy.key("rw")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
    // 11 MiB in 64 KiB chunks, and no last chunk: the body would never end by itself.
    for _ in 0..176 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let answer = read_until_close(&mut stream, Duration::from_secs(30)).await;
    assert_eq!(raw_status(&answer), 413, "{}", &answer[..answer.len().min(300)]);
    assert!(answer.contains("the most a read request may send (10 MiB)"), "{answer}");
    assert!(
        upstream.requests().iter().all(|r| r.body.len() <= TEN_MIB),
        "the upstream never got more than 10 MiB"
    );
}
