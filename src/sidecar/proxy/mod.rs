//! Forwarding to the upstream.
//!
//! A request goes out as it came in: method, path, query, end-to-end headers (including `Host` and
//! `Authorization`) and body. Only hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and the headers it
//! names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) and `Expect`
//! are dropped, as every proxy must, because they describe one connection, not the request.
//!
//! - `protocol`: HTTP/2 (h2c) when the upstream speaks it, else HTTP/1.1, and how that is found out;
//! - `http1`: a pool of keep-alive connections per worker thread, written and read by the request's own
//!   task (no connection task);
//! - `http2`: two multiplexed connections per worker thread, driven by hyper's connection tasks.
//!
//! Connections belong to the worker that uses them, so a request, its upstream call and its answer stay
//! on one thread.

mod http1;
mod http2;
mod protocol;

use std::error::Error as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, Uri};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use protocol::UpstreamProtocol;
use protocol::{Choice, Wire};

use super::body::{BoxError, RequestBody};

/// Why `--upstream` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid upstream URL {url:?}: {reason}")]
pub struct UpstreamUrlError {
    url: String,
    reason: &'static str,
}

/// Why forwarding failed.
#[derive(Debug)]
pub enum ForwardError {
    /// No connection, or it broke before a response arrived.
    Unreachable(String),
    /// No response headers within the upstream timeout.
    TimedOut,
}

impl From<hyper::Error> for ForwardError {
    /// A connection that failed or broke: the error and its causes say why.
    fn from(error: hyper::Error) -> Self {
        ForwardError::Unreachable(describe(&error))
    }
}

/// The longest upstream timeout: a deadline is the request's start plus the timeout, and the clock cannot
/// add any duration (the command line takes at most 24 h; a year is as good as no bound).
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The upstream and this worker's connections to it.
#[derive(Clone)]
pub struct Upstream {
    authority: Authority,
    host: HeaderValue,
    /// A path prefix from the URL (without its trailing slash), prepended to every request's path.
    prefix: String,
    timeout: Duration,
    /// Shared by the workers: what the upstream speaks.
    protocol: Arc<Choice>,
    http1: http1::Pool,
    http2: http2::Connections,
}

/// The upstream's response body: over HTTP/1.1 it holds the connection, which goes back to the pool when
/// the body has been read to its end; over HTTP/2 it is one stream of a shared connection.
pub enum UpstreamBody {
    Http1(http1::Http1Body),
    Http2(Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Http1(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(body) => body.is_end_stream(),
            UpstreamBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http1(body) => body.size_hint(),
            UpstreamBody::Http2(body) => body.size_hint(),
        }
    }
}

impl Upstream {
    /// `url` is `http://host:port[/prefix]`. `timeout` bounds the wait for response headers (at most
    /// [`MAX_TIMEOUT`]).
    pub fn new(url: &str, protocol: UpstreamProtocol, timeout: Duration) -> Result<Self, UpstreamUrlError> {
        let invalid = |reason| UpstreamUrlError {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(invalid(
                "only http:// upstreams are supported (the upstream runs next to the sidecar)",
            ));
        }
        let authority = uri.authority().cloned().ok_or_else(|| invalid("no host"))?;
        if uri.query().is_some() {
            return Err(invalid("a query string is not allowed"));
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| invalid("the host is not a valid header"))?;
        Ok(Upstream {
            authority,
            host,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            timeout: timeout.min(MAX_TIMEOUT),
            protocol: Arc::new(Choice::new(protocol)),
            http1: http1::Pool::default(),
            http2: http2::Connections::default(),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same upstream with connections of its own (one set per worker thread, so that a connection is
    /// always driven by the thread that uses it).
    pub fn with_own_pool(&self) -> Upstream {
        Upstream {
            http1: http1::Pool::default(),
            http2: http2::Connections::default(),
            ..self.clone()
        }
    }

    /// The request target in origin form (`/path?query`), under the upstream's path prefix.
    fn target(&self, original: &Uri) -> Uri {
        let path_and_query = original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let path_and_query = if self.prefix.is_empty() {
            path_and_query
        } else {
            PathAndQuery::try_from(format!("{}{}", self.prefix, path_and_query.as_str())).unwrap_or(path_and_query)
        };
        Uri::from(path_and_query)
    }

    /// Sends the request and waits (at most the upstream timeout) for the response headers; the response
    /// body then streams.
    pub async fn forward(
        &self,
        parts: &mut hyper::http::request::Parts,
        body: RequestBody,
    ) -> Result<Response<UpstreamBody>, ForwardError> {
        // The head is edited where the handler keeps it, and the HTTP/1.1 path writes it from there: each
        // layer that took it by value, or wrapped it in a `Request` and out again, copied its 224 bytes.
        parts.uri = self.target(&parts.uri);
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::EXPECT);
        if !parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, self.host.clone());
        }
        let mut response = self.send(parts, body, Instant::now() + self.timeout).await?;
        strip_hop_by_hop(response.headers_mut());
        *response.version_mut() = hyper::Version::HTTP_11;
        Ok(response)
    }

    /// Sends, with `deadline` for the response headers: HTTP/1.1 connections keep a timer each for it
    /// (`http1/watchdog.rs`), the rest takes one per request.
    async fn send(
        &self,
        parts: &mut hyper::http::request::Parts,
        body: RequestBody,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, ForwardError> {
        let authority = self.authority.as_str();
        let wire = match self.protocol.known() {
            Some(wire) => wire,
            None => within(deadline, self.protocol.wire(authority, CONNECT_TIMEOUT)).await?,
        };
        let sent = match wire {
            Wire::Http1 => {
                let response = self.http1.send(authority, parts, body, deadline).await;
                response.map(|response| response.map(UpstreamBody::Http1))
            }
            Wire::Http2 => {
                let mut request = Request::new(body);
                *request.method_mut() = parts.method.clone();
                *request.uri_mut() = std::mem::take(&mut parts.uri);
                *request.headers_mut() = std::mem::take(&mut parts.headers);
                *request.extensions_mut() = std::mem::take(&mut parts.extensions);
                self.prepare_for_http2(&mut request);
                let response = within(deadline, self.http2.send(authority, request)).await;
                response.map(|response| response.map(UpstreamBody::Http2))
            }
        };
        if matches!(sent, Err(ForwardError::Unreachable(_))) {
            self.protocol.forget();
        }
        sent
    }

    /// HTTP/2 names the target in `:scheme` and `:authority` (RFC 9113 §8.3.1). The authority is the
    /// request's `Host`, kept as a header too, so the upstream sees the same host either way.
    ///
    /// The key is then sent "never indexed" (RFC 7541 §7.1.3): a secret, different on most requests, has no
    /// place in either side's header compression table. (A request has one: the handler refuses several.
    /// HTTP/1.1 has no such table, so only this path looks the key up again.)
    fn prepare_for_http2(&self, request: &mut Request<RequestBody>) {
        *request.version_mut() = hyper::Version::HTTP_2;
        if let Some(key) = request.headers_mut().get_mut(header::AUTHORIZATION) {
            key.set_sensitive(true);
        }
        let authority = request
            .headers()
            .get(header::HOST)
            .and_then(|host| Authority::try_from(host.as_bytes()).ok())
            .unwrap_or_else(|| self.authority.clone());
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        *request.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    }
}

/// `work`'s result, or [`ForwardError::TimedOut`] at `deadline`.
pub(super) async fn within<T>(
    deadline: Instant,
    work: impl Future<Output = Result<T, ForwardError>>,
) -> Result<T, ForwardError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or(Err(ForwardError::TimedOut))
}

/// A TCP connection to the upstream, without Nagle's delay (requests and answers are small).
async fn connect(authority: &str) -> Result<TcpStream, ForwardError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority)).await {
        Err(_) => Err(ForwardError::Unreachable(format!(
            "connecting to {authority} timed out"
        ))),
        Ok(Err(e)) => Err(ForwardError::Unreachable(format!("cannot connect to {authority}: {e}"))),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// Drives a client connection on this worker until it closes (why it closed matters only when debugging).
fn drive(connection: impl Future<Output = Result<(), hyper::Error>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection closed");
        }
    });
}

/// The error and its causes, e.g. "connection closed before message completed: ...".
fn describe(error: &hyper::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A `static`, not a `const`: a `const` array would be built and dropped again at every use, i.e. for every
/// header of every message.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the headers that describe one connection rather than the message. (A message has a handful of
/// headers, so scanning them beats looking up each hop-by-hop name; most messages have none, and one pass
/// over the names tells.)
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // `Connection` is one of them: without any, no header is named by one either.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name) || named.contains(name))
        .cloned()
        .collect();
    for name in present {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[tokio::test]
    async fn a_timeout_longer_than_the_clock_can_add_still_forwards() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 4096];
            let _ = socket.read(&mut buffer).await;
            let _ = socket.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        });
        let upstream = Upstream::new(&format!("http://{address}"), UpstreamProtocol::Http1, Duration::MAX).unwrap();
        let mut parts = Request::get("/x").body(()).unwrap().into_parts().0;
        let response = upstream.forward(&mut parts, RequestBody::Full(None)).await.unwrap();
        assert_eq!(response.status(), hyper::StatusCode::NO_CONTENT);
    }

    #[test]
    fn only_plain_http_upstreams_with_a_host_are_accepted() {
        assert!(Upstream::new("http://127.0.0.1:8081", UpstreamProtocol::Auto, Duration::from_secs(1)).is_ok());
        assert!(
            Upstream::new(
                "https://cloud.osohq.com",
                UpstreamProtocol::Auto,
                Duration::from_secs(1)
            )
            .is_err()
        );
        assert!(Upstream::new("127.0.0.1:8081", UpstreamProtocol::Auto, Duration::from_secs(1)).is_err());
        assert!(Upstream::new("http://x/?a=1", UpstreamProtocol::Auto, Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn paths_and_queries_go_through_unchanged_under_the_prefix() {
        let upstream = Upstream::new(
            "http://127.0.0.1:9/base/",
            UpstreamProtocol::Auto,
            Duration::from_secs(1),
        )
        .unwrap();
        let original: Uri = "/api/facts?predicate=has_role&args.0.type=User".parse().unwrap();
        assert_eq!(
            upstream.target(&original).to_string(),
            "/base/api/facts?predicate=has_role&args.0.type=User"
        );
        let plain = Upstream::new("http://127.0.0.1:9", UpstreamProtocol::Auto, Duration::from_secs(1)).unwrap();
        assert_eq!(
            plain.target(&original).to_string(),
            "/api/facts?predicate=has_role&args.0.type=User"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["authorization", "x-request-id"]);
    }
}
