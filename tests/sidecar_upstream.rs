//! How the sidecar speaks to its upstream: HTTP/2 (h2c) to an upstream that speaks it, like `orgkeeper
//! facts`, HTTP/1.1 to one that does not, either forced by `--upstream-protocol`; requests and answers
//! arrive the same over both; and an upstream replaced on the same address is found out again.

mod sidecar_support;
mod support;

use axum::http::{Method, StatusCode, Version};
use orgkeeper::domain::Access;
use orgkeeper::sidecar::UpstreamProtocol;
use sidecar_support::*;

async fn tenancy() -> Tenancy {
    Tenancy::new(
        support::sqlite().await,
        &[Env("staging", limits())],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await
}

async fn sidecar(tenancy: &Tenancy, upstream: &Upstream, protocol: UpstreamProtocol) -> Running {
    let mut options = Options::new(upstream);
    options.settings.upstream_protocol = protocol;
    start(&tenancy.store, options).await
}

/// Sends reads and writes of every shape through `http` and checks what the upstream received and what
/// came back; returns the HTTP versions the upstream saw.
async fn forward_every_shape(http: &Http, upstream: &Upstream, key: &str) -> Vec<Version> {
    let before = upstream.count();
    let path = "/api/facts?predicate=has_role&args.0.type=User&args.0.id=alice%20b";
    let reply = http
        .send_with(Method::GET, path, Some(key), "", &[("x-request-id", "r-1")])
        .await;
    assert_eq!(
        (reply.status, reply.header("x-upstream")),
        (StatusCode::OK, Some("yes"))
    );
    let body = batch(3);
    assert_eq!(
        http.send(Method::POST, "/api/batch", Some(key), &body).await.status,
        StatusCode::OK
    );
    let reply = http
        .send_with(Method::GET, "/api/facts", Some(key), "", &[("x-test-big", "8000000")])
        .await;
    assert_eq!(
        (reply.status, reply.body.len()),
        (StatusCode::OK, 8_000_000),
        "a large answer"
    );
    let large = format!(r#"{{"context_facts": [{}]}}"#, vec![fact(0); 20_000].join(","));
    assert_eq!(
        http.send(Method::POST, "/api/authorize", Some(key), &large)
            .await
            .status,
        StatusCode::OK
    );
    let reply = http
        .send_with(Method::GET, "/api/nothing", Some(key), "", &[("x-test-status", "404")])
        .await;
    assert_eq!(
        (reply.status, reply.message().as_str()),
        (StatusCode::NOT_FOUND, "from upstream")
    );

    let seen = &upstream.requests()[before..];
    assert_eq!(seen.len(), 5);
    assert_eq!((&seen[0].method, seen[0].target.as_str()), (&Method::GET, path));
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {key}").as_str());
    assert_eq!(seen[0].headers["x-request-id"], "r-1");
    assert_eq!(
        (&seen[1].method, seen[1].body.as_ref()),
        (&Method::POST, body.as_bytes())
    );
    assert_eq!(
        seen[3].body,
        large.as_bytes(),
        "a large streamed request body, byte for byte"
    );
    seen.iter().map(|r| r.version).collect()
}

#[tokio::test]
async fn auto_speaks_http2_to_an_upstream_that_does_and_http1_to_one_that_does_not() {
    let tenancy = tenancy().await;
    for (speaks, expected) in [(Speaks::Both, Version::HTTP_2), (Speaks::Http1Only, Version::HTTP_11)] {
        let upstream = Upstream::start_on("127.0.0.1:0".parse().unwrap(), speaks).await;
        let sidecar = sidecar(&tenancy, &upstream, UpstreamProtocol::Auto).await;
        let versions = forward_every_shape(&Http::new(&sidecar), &upstream, tenancy.key("rw")).await;
        assert!(versions.iter().all(|v| *v == expected), "{speaks:?}: {versions:?}");
    }
}

#[tokio::test]
async fn the_setting_forces_either_protocol() {
    let tenancy = tenancy().await;
    let upstream = Upstream::start().await;
    for (protocol, expected) in [
        (UpstreamProtocol::Http1, Version::HTTP_11),
        (UpstreamProtocol::Http2, Version::HTTP_2),
    ] {
        let sidecar = sidecar(&tenancy, &upstream, protocol).await;
        let versions = forward_every_shape(&Http::new(&sidecar), &upstream, tenancy.key("rw")).await;
        assert!(versions.iter().all(|v| *v == expected), "{protocol}: {versions:?}");
    }
}

#[tokio::test]
async fn http2_forced_on_an_upstream_that_only_speaks_http1_is_502_with_a_message() {
    let tenancy = tenancy().await;
    let upstream = Upstream::start_on("127.0.0.1:0".parse().unwrap(), Speaks::Http1Only).await;
    let sidecar = sidecar(&tenancy, &upstream, UpstreamProtocol::Http2).await;
    let reply = Http::new(&sidecar).get("/api/facts", Some(tenancy.key("rw"))).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.message().starts_with("the sidecar cannot reach its upstream")
            && reply.message().contains("does not speak HTTP/2 without TLS (h2c)")
            && reply.message().contains("--upstream-protocol auto or http1"),
        "{}",
        reply.message()
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn an_upstream_replaced_on_the_same_address_is_found_out_again() {
    let tenancy = tenancy().await;
    let first = Upstream::start().await;
    let sidecar = sidecar(&tenancy, &first, UpstreamProtocol::Auto).await;
    let http = Http::new(&sidecar);
    let key = tenancy.key("rw");
    assert_eq!(http.get("/api/facts", Some(key)).await.status, StatusCode::OK);
    assert_eq!(first.requests()[0].version, Version::HTTP_2);

    first.stop();
    wait_for_refused(first.addr).await;
    assert_eq!(http.get("/api/facts", Some(key)).await.status, StatusCode::BAD_GATEWAY);

    let second = Upstream::start_on(first.addr, Speaks::Http1Only).await;
    for _ in 0..3 {
        assert_eq!(http.get("/api/facts", Some(key)).await.status, StatusCode::OK);
    }
    let versions: Vec<Version> = second.requests().iter().map(|r| r.version).collect();
    assert_eq!(versions, [Version::HTTP_11; 3]);
}
