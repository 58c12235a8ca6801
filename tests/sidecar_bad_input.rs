//! Bad input and bad neighbours: malformed and misshapen writes, huge bodies (refused before they are read
//! whole), compressed writes, slow clients, bodies cut off, an upstream that is down or slow. Every answer
//! is a JSON `{"message": ...}` and nothing bad reaches the upstream. The store (SQLite here) is not what
//! these tests are about.

mod sidecar_support;
mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use orgkeeper::domain::{Access, LimitOverrides};
use orgkeeper::sidecar::{Settings, UpstreamProtocol};
use sidecar_support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Setup {
    tenancy: Tenancy,
    upstream: Upstream,
    sidecar: Running,
}

impl Setup {
    fn key(&self) -> &str {
        self.tenancy.key("rw")
    }

    /// Request head bytes for a raw connection.
    fn head(&self, method: &str, path: &str, extra: &str) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nhost: sidecar\r\nauthorization: Bearer {}\r\n{extra}\r\n",
            self.key()
        )
    }
}

async fn setup(settings: impl FnOnce(&mut Settings)) -> Setup {
    let tenancy = Tenancy::new(
        support::sqlite().await,
        &[Env(
            "staging",
            LimitOverrides {
                max_batch_facts: Some(1_000_000),
                ..limits()
            },
        )],
        &[Key("rw", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let mut options = Options::new(&upstream);
    settings(&mut options.settings);
    let sidecar = start(&tenancy.store, options).await;
    Setup {
        tenancy,
        upstream,
        sidecar,
    }
}

#[tokio::test]
async fn malformed_or_misshapen_writes_are_400_and_never_forwarded() {
    let setup = setup(|_| {}).await;
    let http = Http::new(&setup.sidecar);
    let f = fact(0);
    for (path, body, expected) in [
        ("/api/batch", "[{\"inserts\": [".to_owned(), "EOF while parsing"),
        ("/api/batch", "not json".to_owned(), "expected"),
        (
            "/api/batch",
            format!("{{\"inserts\": [{f}]}}"),
            "an array of changesets",
        ),
        ("/api/batch", "[{}]".to_owned(), "a changeset needs"),
        (
            "/api/batch",
            "[{\"upserts\": []}]".to_owned(),
            "unknown field `upserts`",
        ),
        ("/api/batch", "[{\"inserts\": [\"has_role\"]}]".to_owned(), "a fact"),
        (
            "/api/batch",
            "[{\"inserts\": [{\"predicate\": 7, \"args\": []}]}]".to_owned(),
            "invalid type",
        ),
        (
            "/api/batch",
            format!("[{{\"inserts\": [{f}], \"inserts\": []}}]"),
            "duplicate field",
        ),
        ("/api/batch", String::new(), "EOF"),
        ("/api/facts", format!("[{f}]"), "a fact"),
        ("/api/bulk_load", f.clone(), "an array of facts"),
        ("/api/bulk", format!("[{f}]"), "delete"),
        ("/api/policy", "{\"src\": ".to_owned(), "EOF"),
    ] {
        let reply = http.send(Method::POST, path, Some(setup.key()), &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path} {body}");
        let message = reply.message();
        assert!(
            message.starts_with(&format!("the body of {path} is not valid")),
            "{message}"
        );
        assert!(message.contains(expected), "{message} should mention {expected}");
    }
    assert_eq!(setup.upstream.count(), 0);
    // The connection stays usable after a refusal whose body was read.
    assert_eq!(http.batch(setup.key(), 1).await.status, StatusCode::OK);
}

#[tokio::test]
async fn compressed_writes_are_refused_because_their_facts_cannot_be_counted() {
    let setup = setup(|_| {}).await;
    let reply = Http::new(&setup.sidecar)
        .send_with(
            Method::POST,
            "/api/batch",
            Some(setup.key()),
            "xx",
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(reply.message().contains("Content-Encoding"));
}

#[tokio::test]
async fn a_huge_declared_body_is_refused_before_it_is_sent() {
    let setup = setup(|_| {}).await;
    let mut stream = TcpStream::connect(setup.sidecar.addr).await.unwrap();
    let head = setup.head(
        "POST",
        "/api/batch",
        "content-type: application/json\r\ncontent-length: 1073741824\r\n",
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'['; 65_536]).await.unwrap();
    // The client has sent 64 KiB of a declared 1 GiB and waits: the answer comes anyway.
    let answer = read_until_close(&mut stream, Duration::from_secs(30)).await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert!(
        raw_json(&answer)["message"]
            .as_str()
            .unwrap()
            .contains("maxWriteBodyBytes (983040 bytes)")
    );
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    assert_eq!(setup.upstream.count(), 0);
}

#[tokio::test]
async fn a_huge_chunked_body_is_refused_as_soon_as_it_passes_the_limit() {
    let setup = setup(|_| {}).await;
    let mut stream = TcpStream::connect(setup.sidecar.addr).await.unwrap();
    let head = setup.head("POST", "/api/batch", "transfer-encoding: chunked\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("10000\r\n{}\r\n", "[".repeat(0x10000));
    // 16 chunks of 64 KiB = 1 MiB > 960 KiB, and the body never ends (no last chunk).
    for _ in 0..16 {
        stream.write_all(chunk.as_bytes()).await.unwrap();
    }
    let answer = read_until_close(&mut stream, Duration::from_secs(30)).await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert_eq!(setup.upstream.count(), 0);
}

#[tokio::test]
async fn a_pooled_client_sending_a_huge_body_reads_the_413_not_a_reset() {
    let setup = setup(|_| {}).await;
    let huge = batch(40_000); // about 5 MB
    assert!(huge.len() > 4_000_000);
    let reply = Http::new(&setup.sidecar)
        .send(Method::POST, "/api/batch", Some(setup.key()), &huge)
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.message().contains("maxWriteBodyBytes"));
}

#[tokio::test]
async fn headers_that_never_finish_get_408_and_idle_connections_just_close() {
    let setup = setup(|s| s.header_read_timeout = Duration::from_secs(1)).await;
    let answer = raw(
        setup.sidecar.addr,
        b"GET /api/facts HTTP/1.1\r\nhost: sidecar\r\nx-slow: 1",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(raw_status(&answer), 408, "{answer}");
    assert!(
        raw_json(&answer)["message"]
            .as_str()
            .unwrap()
            .contains("headers did not arrive within 1 s")
    );
    let answer = raw(setup.sidecar.addr, b"", Duration::from_secs(30)).await;
    assert_eq!(answer, "", "a connection that sent nothing is closed without an answer");
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_408() {
    let setup = setup(|s| s.body_timeout = Duration::from_secs(1)).await;
    // A write (read whole by the sidecar) and a read (streamed to the upstream).
    for path in ["/api/batch", "/api/authorize"] {
        let head = setup.head("POST", path, "content-length: 100\r\n");
        let answer = raw(
            setup.sidecar.addr,
            format!("{head}[{{\"inse").as_bytes(),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(raw_status(&answer), 408, "{path}: {answer}");
        assert!(
            raw_json(&answer)["message"]
                .as_str()
                .unwrap()
                .contains("body did not arrive within 1 s")
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{path}: {answer}"
        );
    }
}

#[tokio::test]
async fn a_body_cut_off_is_400() {
    let setup = setup(|_| {}).await;
    let mut stream = TcpStream::connect(setup.sidecar.addr).await.unwrap();
    let head = setup.head("POST", "/api/batch", "content-length: 100\r\n");
    stream.write_all(format!("{head}[{{").as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap(); // no more bytes will come
    let answer = read_until_close(&mut stream, Duration::from_secs(30)).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert!(raw_json(&answer)["message"].as_str().unwrap().contains("cut off"));
    assert_eq!(setup.upstream.count(), 0);
}

#[tokio::test]
async fn an_upstream_that_is_down_is_502_with_a_message() {
    for protocol in [UpstreamProtocol::Auto, UpstreamProtocol::Http1] {
        let setup = setup(|s| s.upstream_protocol = protocol).await;
        let http = Http::new(&setup.sidecar);
        assert_eq!(http.get("/api/facts", Some(setup.key())).await.status, StatusCode::OK);
        setup.upstream.stop();
        wait_for_refused(setup.upstream.addr).await;
        for reply in [
            http.get("/api/facts", Some(setup.key())).await,
            http.batch(setup.key(), 1).await,
        ] {
            assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{protocol}");
            assert!(
                reply.message().starts_with("the sidecar cannot reach its upstream"),
                "{protocol}: {}",
                reply.message()
            );
        }
        let text = metrics(&setup.sidecar).await;
        assert_eq!(
            metric(
                &text,
                r#"orgkeeper_sidecar_rejections_total{environment="team/acme/staging",reason="upstream_unreachable"}"#
            ),
            2.0
        );
    }
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_is_504() {
    for protocol in [UpstreamProtocol::Auto, UpstreamProtocol::Http1] {
        let setup = setup(|s| {
            s.upstream_timeout = Duration::from_secs(1);
            s.upstream_protocol = protocol;
        })
        .await;
        let reply = Http::new(&setup.sidecar)
            .send_with(
                Method::GET,
                "/api/facts",
                Some(setup.key()),
                "",
                &[("x-test-hold", "1")],
            )
            .await;
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{protocol}");
        assert!(reply.message().contains("did not answer within 1 s"));
        setup.upstream.release();
    }
}

#[tokio::test]
async fn authorization_that_is_not_text_is_401() {
    let setup = setup(|_| {}).await;
    let mut request =
        b"GET /api/facts HTTP/1.1\r\nhost: s\r\nauthorization: Bearer \xff\xfe\r\nconnection: close\r\n\r\n".to_vec();
    request.shrink_to_fit();
    let answer = raw(setup.sidecar.addr, &request, Duration::from_secs(30)).await;
    assert_eq!(raw_status(&answer), 401, "{answer}");
    assert!(raw_json(&answer)["message"].as_str().unwrap().contains("not a Bearer"));
}

#[tokio::test]
async fn malformed_http_gets_a_json_answer_with_the_status_hyper_chose() {
    let setup = setup(|_| {}).await;
    let addr = setup.sidecar.addr;
    let huge_uri = format!(
        "GET /api/facts?{} HTTP/1.1\r\nhost: sidecar\r\n\r\n",
        "a".repeat(70_000)
    );
    let huge_headers = format!(
        "GET /api/facts HTTP/1.1\r\nhost: sidecar\r\nx-big: {}\r\n\r\n",
        "b".repeat(100_000)
    );
    let many_headers = format!(
        "GET /api/facts HTTP/1.1\r\nhost: sidecar\r\n{}\r\n",
        (0..150).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()
    );
    for (request, status, says) in [
        (&b"GARBAGE\r\n\r\n"[..], 400, "malformed HTTP request"),
        (
            b"GET /api/facts HTTP/9.9\r\nhost: sidecar\r\n\r\n",
            400,
            "malformed HTTP request",
        ),
        (b"GET /a b c HTTP/1.1\r\n\r\n", 400, "malformed HTTP request"),
        (
            b"GET /api/facts HTTP/1.1\r\nbad header\r\n\r\n",
            400,
            "malformed HTTP request",
        ),
        (huge_uri.as_bytes(), 431, "larger than 32768 bytes"),
        (huge_headers.as_bytes(), 431, "larger than 32768 bytes"),
        (many_headers.as_bytes(), 431, "more than 100 headers"),
    ] {
        let answer = raw(addr, request, Duration::from_secs(10)).await;
        let shown: String = String::from_utf8_lossy(request).chars().take(60).collect();
        assert_eq!(raw_status(&answer), status, "{shown:?}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("content-type: application/json"),
            "{answer}"
        );
        let message = raw_json(&answer)["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{shown:?}: {message}");
    }
    assert_eq!(setup.upstream.count(), 0);
    let text = metrics(&setup.sidecar).await;
    assert_eq!(
        metric(
            &text,
            r#"orgkeeper_sidecar_rejections_total{environment="unknown",reason="bad_request"}"#
        ),
        7.0
    );
    // The connection that follows a malformed one is served as usual.
    let http = Http::new(&setup.sidecar);
    assert_eq!(http.get("/api/facts", Some(setup.key())).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_malformed_request_after_a_good_one_on_the_same_connection_gets_json_too() {
    let setup = setup(|_| {}).await;
    let mut bytes = setup.head("GET", "/api/facts", "").into_bytes();
    bytes.extend_from_slice(b"NOT HTTP AT ALL\r\n\r\n");
    let answer = raw(setup.sidecar.addr, &bytes, Duration::from_secs(10)).await;
    let second = answer
        .match_indices("HTTP/1.1 ")
        .nth(1)
        .map(|(at, _)| &answer[at..])
        .unwrap_or_else(|| panic!("two answers: {answer}"));
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(raw_status(second), 400, "{second}");
    assert!(
        raw_json(second)["message"]
            .as_str()
            .unwrap()
            .starts_with("malformed HTTP request"),
        "{second}"
    );
}

#[tokio::test]
async fn at_max_connections_with_every_connection_busy_a_new_one_gets_503_and_idle_ones_make_room() {
    let setup = setup(|s| {
        s.max_connections = 2;
        s.max_pending_headers = 100;
    })
    .await;
    let addr = setup.sidecar.addr;
    // Two requests held by the upstream keep both connections busy.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = setup.head("GET", "/api/facts", "x-test-hold: 1\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        busy.push(stream);
    }
    wait_for("both requests to reach the upstream", Duration::from_secs(10), || {
        setup.upstream.count() == 2
    })
    .await;
    let refused = raw(
        addr,
        setup.head("GET", "/api/facts", "").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&refused), 503, "{refused}");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    assert!(
        raw_json(&refused)["message"]
            .as_str()
            .unwrap()
            .contains("--max-connections"),
        "{refused}"
    );
    assert_eq!(setup.upstream.count(), 2, "the refused request went nowhere");

    // Once answered, the two connections idle on keep-alive: a newcomer closes the one idle longest.
    setup.upstream.release();
    for stream in &mut busy {
        let mut head = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(stream, &mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let http = Http::new(&setup.sidecar);
    assert_eq!(http.get("/api/facts", Some(setup.key())).await.status, StatusCode::OK);
    let text = metrics(&setup.sidecar).await;
    assert_eq!(
        metric(
            &text,
            r#"orgkeeper_sidecar_connections_shed_total{reason="at_capacity"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"orgkeeper_sidecar_connections_shed_total{reason="waited_longest"}"#
        ),
        1.0
    );
    assert_eq!(metric(&text, "orgkeeper_sidecar_connections"), 2.0);
}
