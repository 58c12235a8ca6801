//! How the sidecar speaks to its upstream: HTTP/2 (h2c) to an upstream that speaks it, like `orgkeeper
//! facts`, HTTP/1.1 to one that does not, either forced by `--upstream-protocol`; requests and answers
//! arrive the same over both; an upstream replaced on the same address is found out again; and what an
//! HTTP/1.1 upstream's framing and connection handling mean for the client (a raw upstream below, whose
//! bytes the tests choose).

mod sidecar_support;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{Method, StatusCode, Version};
use orgkeeper::domain::Access;
use orgkeeper::sidecar::{Settings, UpstreamProtocol};
use sidecar_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

/// An HTTP/1.1 upstream that answers with exactly the bytes it is given. Its `n`th connection (from 0)
/// follows `scripts[n]` (the last script for any later one): for each request on it, the answer's pieces
/// are written one at a time with a pause between them; `close` ends the connection after the answer.
/// Returns its URL and how many connections it accepted.
struct Script {
    pieces: Vec<Vec<u8>>,
    close: bool,
}

async fn raw_upstream(scripts: Vec<Script>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let scripts = Arc::new(scripts);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let scripts = scripts.clone();
            tokio::spawn(async move {
                let script = &scripts[n.min(scripts.len() - 1)];
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => request.extend_from_slice(&buffer[..read]),
                        }
                    }
                    request.clear();
                    for piece in &script.pieces {
                        if socket.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if script.close {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

fn script(pieces: &[&[u8]], close: bool) -> Script {
    Script {
        pieces: pieces.iter().map(|piece| piece.to_vec()).collect(),
        close,
    }
}

async fn sidecar_to(tenancy: &Tenancy, url: String) -> Running {
    let settings = Settings {
        upstream: url,
        upstream_protocol: UpstreamProtocol::Http1,
        ..Settings::default()
    };
    start(
        &tenancy.store,
        Options {
            settings,
            clock: None,
            refresh: true,
        },
    )
    .await
}

#[tokio::test]
async fn a_chunked_answer_is_relayed_whole_however_it_arrives() {
    let tenancy = tenancy().await;
    let answer: [&[u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n[\"ab",
        b"c\"\r\n",
        b"6;note=x\r\n,\"def\"\r\n1\r\n]\r\n0\r\n",
        b"Checksum: 1\r\n",
        b"\r\n",
    ];
    let (url, accepted) = raw_upstream(vec![script(&answer, false)]).await;
    let sidecar = sidecar_to(&tenancy, url).await;
    let http = Http::new(&sidecar);
    for _ in 0..3 {
        let reply = http.get("/api/facts", Some(tenancy.key("rw"))).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json(), serde_json::json!(["abc", "def"]));
        assert!(
            reply.header("ratelimit").is_some(),
            "the sidecar's own headers are added"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the connection is reused after a chunked answer"
    );
}

#[tokio::test]
async fn an_upstream_closing_mid_body_breaks_that_answer_and_the_next_request_gets_a_new_connection() {
    let tenancy = tenancy().await;
    let cut: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nonly ten b";
    let whole: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwhole";
    let (url, accepted) = raw_upstream(vec![script(&[cut], true), script(&[whole], false)]).await;
    let sidecar = sidecar_to(&tenancy, url).await;
    let request = format!(
        "GET /api/facts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        tenancy.key("rw")
    );
    let answer = raw(sidecar.addr, request.as_bytes(), Duration::from_secs(5)).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(head.to_ascii_lowercase().contains("content-length: 20"), "{head}");
    assert_eq!(body, "only ten b", "the client sees the body end short of its length");

    let reply = Http::new(&sidecar).get("/api/facts", Some(tenancy.key("rw"))).await;
    assert_eq!((reply.status, &reply.body[..]), (StatusCode::OK, &b"whole"[..]));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_upstream_connection_that_said_close_is_not_used_again() {
    let tenancy = tenancy().await;
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n[]";
    // Keeps the connection open after saying close: reusing it would wait for an answer that never comes.
    let (url, accepted) = raw_upstream(vec![script(&[answer], false)]).await;
    let sidecar = sidecar_to(&tenancy, url).await;
    let http = Http::new(&sidecar);
    for _ in 0..3 {
        let reply = http.get("/api/facts", Some(tenancy.key("rw"))).await;
        assert_eq!((reply.status, &reply.body[..]), (StatusCode::OK, &b"[]"[..]));
        assert_eq!(
            reply.header("connection"),
            None,
            "hop-by-hop: not relayed to the client"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_oversized_response_head_is_a_502_saying_so() {
    let tenancy = tenancy().await;
    let fields: String = (0..80)
        .map(|i| format!("x-field-{i}: {}\r\n", "v".repeat(1000)))
        .collect();
    let huge = format!("HTTP/1.1 200 OK\r\n{fields}Content-Length: 2\r\n\r\n[]");
    let (url, _) = raw_upstream(vec![Script {
        pieces: vec![huge.into_bytes()],
        close: true,
    }])
    .await;
    let sidecar = sidecar_to(&tenancy, url).await;
    let reply = Http::new(&sidecar).get("/api/facts", Some(tenancy.key("rw"))).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply
            .message()
            .contains("the upstream's response head is larger than 64 KiB"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn a_chunked_read_body_reaches_an_http1_upstream_whole() {
    let tenancy = tenancy().await;
    let upstream = Upstream::start_on("127.0.0.1:0".parse().unwrap(), Speaks::Http1Only).await;
    let sidecar = sidecar(&tenancy, &upstream, UpstreamProtocol::Http1).await;
    let body = format!(r#"{{"context_facts": [{}]}}"#, fact(7));
    let (first, rest) = body.split_at(10);
    let request = format!(
        "POST /api/authorize HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
        tenancy.key("rw"),
        first.len(),
        rest.len()
    );
    let answer = raw(sidecar.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Version::HTTP_11);
    assert_eq!(
        seen[0].body,
        body.as_bytes(),
        "the whole body, re-chunked by the sidecar"
    );
}
