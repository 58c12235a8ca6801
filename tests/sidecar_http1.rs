//! The sidecar's own HTTP/1.1 server path (`src/sidecar/server/lean.rs`) and the hand-over to hyper, as a
//! client sees them on the wire: plain requests and unusual ones (chunked, HTTP/1.0, `HEAD`, a body that
//! comes after its head) mixed on one connection are all answered, in order, and reach the upstream
//! whole; answers of unknown length are relayed chunked; `Connection: close` closes.

mod sidecar_support;
mod support;

use std::time::Duration;

use sidecar_support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

struct Setup {
    tenancy: Tenancy,
    upstream: Upstream,
    sidecar: Running,
}

impl Setup {
    async fn new() -> Setup {
        let (tenancy, upstream, sidecar) = one_key_sidecar().await;
        Setup {
            tenancy,
            upstream,
            sidecar,
        }
    }

    /// A request head (ending with its blank line) for a raw connection.
    fn head(&self, request_line: &str, extra: &str) -> String {
        format!(
            "{request_line}\r\nhost: sidecar\r\nauthorization: Bearer {}\r\n{extra}\r\n",
            self.tenancy.key("rw")
        )
    }
}

/// The answers in a raw HTTP/1.x byte stream, each as its head and its body (de-chunked). The answers
/// numbered in `to_head` answer `HEAD` requests: no body whatever their headers say.
fn answers_to(mut text: &str, to_head: &[usize]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    while let Some(end) = text.find("\r\n\r\n") {
        let head = text[..end].to_ascii_lowercase();
        let mut rest = &text[end + 4..];
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .map(|n| n.trim().parse::<usize>().unwrap());
        let body = if to_head.contains(&found.len()) {
            String::new()
        } else if let Some(length) = length {
            let body = rest[..length].to_owned();
            rest = &rest[length..];
            body
        } else if head.contains("transfer-encoding: chunked") {
            let mut body = String::new();
            loop {
                let line_end = rest.find("\r\n").expect("a chunk size line");
                let size = usize::from_str_radix(rest[..line_end].trim(), 16).unwrap();
                rest = &rest[line_end + 2..];
                if size == 0 {
                    rest = &rest[2..];
                    break;
                }
                body.push_str(&rest[..size]);
                rest = &rest[size + 2..];
            }
            body
        } else {
            std::mem::take(&mut rest).to_owned()
        };
        found.push((head, body));
        text = rest;
    }
    found
}

fn answers(text: &str) -> Vec<(String, String)> {
    answers_to(text, &[])
}

#[tokio::test]
async fn plain_and_unusual_requests_on_one_connection_are_answered_in_order_and_arrive_whole() {
    let setup = Setup::new().await;
    let write = batch(2);
    let chunked_write = format!("{:x}\r\n{write}\r\n0\r\n\r\n", write.len());
    let mut bytes = String::new();
    // Plain (served by the sidecar's own path), then a chunked write, HTTP/1.0 and HEAD (handed to
    // hyper, which serves the rest of the connection), then plain again.
    bytes += &setup.head("GET /api/facts?n=1 HTTP/1.1", "");
    bytes += &setup.head(
        "POST /api/batch HTTP/1.1",
        "content-type: application/json\r\ntransfer-encoding: chunked\r\n",
    );
    bytes += &chunked_write;
    bytes += &setup.head("GET /api/facts?n=3 HTTP/1.0", "connection: keep-alive\r\n");
    bytes += &setup.head("HEAD /api/facts?n=4 HTTP/1.1", "");
    bytes += &setup.head("GET /api/facts?n=5 HTTP/1.1", "connection: close\r\n");
    let text = raw(setup.sidecar.addr, bytes.as_bytes(), LIMIT).await;
    let found = answers_to(&text, &[3]);
    let statuses: Vec<&str> = found.iter().map(|(head, _)| &head[..12]).collect();
    assert_eq!(
        statuses,
        // hyper answers an HTTP/1.0 request in HTTP/1.0.
        [
            "http/1.1 200",
            "http/1.1 200",
            "http/1.0 200",
            "http/1.1 200",
            "http/1.1 200"
        ],
        "{text}"
    );
    assert!(found[4].0.contains("connection: close"), "{}", found[4].0);
    assert_eq!(found[0].1, r#"{"message":"from upstream"}"#);
    let targets: Vec<String> = setup.upstream.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        targets,
        [
            "/api/facts?n=1",
            "/api/batch",
            "/api/facts?n=3",
            "/api/facts?n=4",
            "/api/facts?n=5"
        ]
    );
    assert_eq!(
        setup.upstream.requests()[1].body,
        write.as_bytes(),
        "the chunked write, whole"
    );
}

#[tokio::test]
async fn a_keep_alive_connection_carries_request_after_request_and_closes_when_asked() {
    let setup = Setup::new().await;
    let mut stream = TcpStream::connect(setup.sidecar.addr).await.unwrap();
    // One at a time, each answer read before the next request is sent, as a pooled client does.
    for n in 0..20 {
        let request = setup.head(&format!("GET /api/facts?n={n} HTTP/1.1"), "");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        while answers(&String::from_utf8_lossy(&answer)).is_empty()
            || !String::from_utf8_lossy(&answer).ends_with(r#"{"message":"from upstream"}"#)
        {
            let mut piece = [0u8; 4096];
            let read = tokio::time::timeout(LIMIT, tokio::io::AsyncReadExt::read(&mut stream, &mut piece))
                .await
                .expect("an answer in time")
                .unwrap();
            assert!(read > 0, "the connection stayed open after {n} requests");
            answer.extend_from_slice(&piece[..read]);
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.to_ascii_lowercase().contains("\r\ndate: "), "{text}");
        assert!(text.contains("ratelimit: "), "{text}");
    }
    let last = setup.head("GET /api/facts?n=last HTTP/1.1", "connection: close\r\n");
    stream.write_all(last.as_bytes()).await.unwrap();
    let text = read_until_close(&mut stream, LIMIT).await;
    assert!(
        text.to_ascii_lowercase().contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    assert_eq!(answers(&text).len(), 1, "{text}");
    assert_eq!(setup.upstream.count(), 21);
}

#[tokio::test]
async fn an_answer_of_unknown_length_is_relayed_chunked_and_whole() {
    let setup = Setup::new().await;
    let bytes = setup.head("GET /api/facts HTTP/1.1", "x-test-chunks: 3\r\nconnection: close\r\n");
    let text = raw(setup.sidecar.addr, bytes.as_bytes(), LIMIT).await;
    let found = answers(&text);
    assert_eq!(found.len(), 1, "{text}");
    assert!(found[0].0.contains("transfer-encoding: chunked"), "{text}");
    assert_eq!(found[0].1, "piece 0;piece 1;piece 2;");
}

#[tokio::test]
async fn a_body_that_arrives_after_its_head_reaches_the_upstream_whole() {
    let setup = Setup::new().await;
    let write = batch(3);
    let mut stream = TcpStream::connect(setup.sidecar.addr).await.unwrap();
    let head = setup.head(
        "POST /api/batch HTTP/1.1",
        &format!("content-type: application/json\r\ncontent-length: {}\r\n", write.len()),
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(write.as_bytes()).await.unwrap();
    let close = setup.head("GET /api/facts HTTP/1.1", "connection: close\r\n");
    stream.write_all(close.as_bytes()).await.unwrap();
    let text = read_until_close(&mut stream, LIMIT).await;
    let statuses: Vec<u16> = answers(&text).iter().map(|(head, _)| raw_status(head)).collect();
    assert_eq!(statuses, [200, 200], "{text}");
    assert_eq!(setup.upstream.requests()[0].body, write.as_bytes());
}
