//! Forwarding to the upstream over keep-alive HTTP/1.1 connections.
//!
//! A request goes out as it came in: method, path, query, end-to-end headers (including `Host` and
//! `Authorization`) and body. Only hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and the headers it
//! names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) and `Expect`
//! are dropped, as every proxy must, because they describe one connection, not the request.
//!
//! Each worker thread keeps its own small pool of upstream connections (hyper's HTTP/1 client connections,
//! driven by tasks on that worker). A connection is lent to one request and comes back to the pool when that
//! request's response body has been read to its end or dropped ([`Lease`]). This does what a general client
//! pool does, minus what a sidecar with one upstream and one thread per pool does not need (keyed lookups,
//! cross-thread locking, a task per request to watch the connection become ready again), which measured as
//! most of the forwarding path's CPU.

use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;

use super::body::RequestBody;

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

/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per worker; more are closed when their request ends.
const MAX_IDLE: usize = 512;

type Idle = Arc<Mutex<Vec<SendRequest<RequestBody>>>>;

/// The upstream and this worker's connections to it.
#[derive(Clone)]
pub struct Upstream {
    idle: Idle,
    authority: Authority,
    host: HeaderValue,
    /// A path prefix from the URL (without its trailing slash), prepended to every request's path.
    prefix: String,
    timeout: Duration,
}

/// A connection lent to one request; it goes back to the pool when dropped (with the response body).
pub struct Lease {
    idle: Idle,
    sender: Option<SendRequest<RequestBody>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take().filter(|s| !s.is_closed()) {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
    }
}

impl Upstream {
    /// `url` is `http://host:port[/prefix]`. `timeout` bounds the wait for response headers.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, UpstreamUrlError> {
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
            idle: Idle::default(),
            authority,
            host,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same upstream with a connection pool of its own (one per worker thread, so that a pooled
    /// connection is always driven by the thread that uses it).
    pub fn with_own_pool(&self) -> Upstream {
        Upstream {
            idle: Idle::default(),
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
    /// body then streams, holding the returned [`Lease`] on the connection until it is done.
    pub async fn forward(
        &self,
        parts: hyper::http::request::Parts,
        body: RequestBody,
    ) -> Result<(Response<Incoming>, Lease), ForwardError> {
        let mut request = Request::from_parts(parts, body);
        *request.uri_mut() = self.target(request.uri());
        *request.version_mut() = hyper::Version::HTTP_11;
        strip_hop_by_hop(request.headers_mut());
        request.headers_mut().remove(header::EXPECT);
        if !request.headers().contains_key(header::HOST) {
            request.headers_mut().insert(header::HOST, self.host.clone());
        }
        match tokio::time::timeout(self.timeout, self.send(request)).await {
            Err(_) => Err(ForwardError::TimedOut),
            Ok(Err(e)) => Err(e),
            Ok(Ok((mut response, lease))) => {
                strip_hop_by_hop(response.headers_mut());
                Ok((response, lease))
            }
        }
    }

    /// Sends on an idle connection, or a new one. A request that an idle connection could not take (the
    /// upstream closed it meanwhile) is sent again on a new connection: it never reached the upstream.
    async fn send(&self, request: Request<RequestBody>) -> Result<(Response<Incoming>, Lease), ForwardError> {
        let mut request = request;
        while let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, self.lease(sender))),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(ForwardError::Unreachable(describe(&error.into_error()))),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(request).await {
            Ok(response) => Ok((response, self.lease(sender))),
            Err(e) => Err(ForwardError::Unreachable(describe(&e))),
        }
    }

    fn take_idle(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn lease(&self, sender: SendRequest<RequestBody>) -> Lease {
        Lease {
            idle: self.idle.clone(),
            sender: Some(sender),
        }
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, ForwardError> {
        let address = self.authority.as_str();
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
            Err(_) => return Err(ForwardError::Unreachable(format!("connecting to {address} timed out"))),
            Ok(Err(e)) => return Err(ForwardError::Unreachable(format!("cannot connect to {address}: {e}"))),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ForwardError::Unreachable(describe(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection closed");
            }
        });
        sender
            .ready()
            .await
            .map_err(|e| ForwardError::Unreachable(describe(&e)))?;
        Ok(sender)
    }
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

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the headers that describe one connection rather than the message. (A message has a handful of
/// headers, so scanning them beats looking up each hop-by-hop name.)
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

    #[test]
    fn only_plain_http_upstreams_with_a_host_are_accepted() {
        assert!(Upstream::new("http://127.0.0.1:8081", Duration::from_secs(1)).is_ok());
        assert!(Upstream::new("https://cloud.osohq.com", Duration::from_secs(1)).is_err());
        assert!(Upstream::new("127.0.0.1:8081", Duration::from_secs(1)).is_err());
        assert!(Upstream::new("http://x/?a=1", Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn paths_and_queries_go_through_unchanged_under_the_prefix() {
        let upstream = Upstream::new("http://127.0.0.1:9/base/", Duration::from_secs(1)).unwrap();
        let original: Uri = "/api/facts?predicate=has_role&args.0.type=User".parse().unwrap();
        assert_eq!(
            upstream.target(&original).to_string(),
            "/base/api/facts?predicate=has_role&args.0.type=User"
        );
        let plain = Upstream::new("http://127.0.0.1:9", Duration::from_secs(1)).unwrap();
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
