//! Forwarding to the upstream over a pooled keep-alive HTTP/1.1 client.
//!
//! A request goes out as it came in: method, path, query, end-to-end headers (including `Host` and
//! `Authorization`) and body. Only hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and the headers it
//! names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) and `Expect`
//! are dropped, as every proxy must, because they describe one connection, not the request.

use std::error::Error as _;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

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

/// The upstream and the connection pool to it.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, RequestBody>,
    scheme: Scheme,
    authority: Authority,
    /// A path prefix from the URL (without its trailing slash), prepended to every request's path.
    prefix: String,
    timeout: Duration,
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
        Ok(Upstream {
            client: pool(),
            scheme: Scheme::HTTP,
            authority,
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
            client: pool(),
            ..self.clone()
        }
    }

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
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .unwrap_or_else(|_| original.clone())
    }

    /// Sends the request and waits (at most the upstream timeout) for the response headers; the response
    /// body then streams.
    pub async fn forward(
        &self,
        parts: hyper::http::request::Parts,
        body: RequestBody,
    ) -> Result<Response<Incoming>, ForwardError> {
        let mut request = Request::from_parts(parts, body);
        *request.uri_mut() = self.target(request.uri());
        *request.version_mut() = hyper::Version::HTTP_11;
        strip_hop_by_hop(request.headers_mut());
        request.headers_mut().remove(header::EXPECT);
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err(ForwardError::TimedOut),
            Ok(Err(e)) => Err(ForwardError::Unreachable(describe(&e))),
            Ok(Ok(mut response)) => {
                strip_hop_by_hop(response.headers_mut());
                Ok(response)
            }
        }
    }
}

/// A keep-alive HTTP/1.1 connection pool.
fn pool() -> Client<HttpConnector, RequestBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// The error and its causes, e.g. "client error (Connect): tcp connect error: Connection refused".
fn describe(error: &hyper_util::client::legacy::Error) -> String {
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
            "http://127.0.0.1:9/base/api/facts?predicate=has_role&args.0.type=User"
        );
        let plain = Upstream::new("http://127.0.0.1:9", Duration::from_secs(1)).unwrap();
        assert_eq!(
            plain.target(&original).to_string(),
            "http://127.0.0.1:9/api/facts?predicate=has_role&args.0.type=User"
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
