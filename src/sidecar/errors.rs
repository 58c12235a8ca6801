//! Every answer the sidecar gives itself: a status, a JSON body `{"message": "..."}` (what the official
//! clients print), and for rate limits `Retry-After` and the `RateLimit` headers. Messages never contain
//! the API key.

use std::time::Duration;

use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use super::body::ResponseBody;
use super::classify::BodyError;
use super::headers;
use super::limits::{Policy, Refused};
use super::metrics::Reason;
use crate::auth::AuthError;
use crate::domain::EffectiveLimits;

/// The budget that refused a request, and the environment's limits for the `RateLimit-Policy` header.
#[derive(Debug)]
pub struct Limited {
    pub refused: Refused,
    pub limits: EffectiveLimits,
}

/// Why the sidecar answers a request itself instead of (or after failing at) forwarding it.
#[derive(Debug)]
pub enum Rejection {
    /// Keys have not been loaded from the store yet.
    NotReady,
    Unauthenticated(AuthError),
    /// More than one `Authorization` header: the sidecar and the upstream could read different keys.
    AmbiguousAuthorization,
    ReadOnlyKey {
        endpoint: &'static str,
    },
    BodyTooLarge {
        limit: u64,
    },
    BatchTooLarge {
        facts: u64,
        limit: u64,
    },
    /// More facts than the whole per-minute budget: no wait will let it through.
    BeyondWholeBudget {
        facts: u64,
        budget: u64,
    },
    CompressedWrite,
    MalformedBody(BodyError),
    BodyTimeout {
        after: Duration,
    },
    BodyAborted,
    /// Over a rate or concurrency limit (boxed: it is much larger than the other variants).
    Limited(Box<Limited>),
    UpstreamUnreachable(String),
    UpstreamTimeout {
        after: Duration,
    },
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Unauthenticated(_) | Rejection::AmbiguousAuthorization => StatusCode::UNAUTHORIZED,
            Rejection::ReadOnlyKey { .. } => StatusCode::FORBIDDEN,
            Rejection::BodyTooLarge { .. } | Rejection::BatchTooLarge { .. } | Rejection::BeyondWholeBudget { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Rejection::CompressedWrite => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::MalformedBody(_) | Rejection::BodyAborted => StatusCode::BAD_REQUEST,
            Rejection::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Rejection::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            Rejection::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            Rejection::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            Rejection::NotReady => Reason::NotReady,
            Rejection::Unauthenticated(_) | Rejection::AmbiguousAuthorization => Reason::Unauthenticated,
            Rejection::ReadOnlyKey { .. } => Reason::Forbidden,
            Rejection::BodyTooLarge { .. } => Reason::BodyTooLarge,
            Rejection::BatchTooLarge { .. } | Rejection::BeyondWholeBudget { .. } => Reason::BatchTooLarge,
            Rejection::CompressedWrite => Reason::UnsupportedEncoding,
            Rejection::MalformedBody(_) | Rejection::BodyAborted => Reason::BadRequest,
            Rejection::BodyTimeout { .. } => Reason::Timeout,
            Rejection::Limited(limited) => match limited.refused.policy {
                Policy::Requests => Reason::RateLimitedRequests,
                Policy::FactWrites => Reason::RateLimitedFacts,
                Policy::Concurrency => Reason::ConcurrencyLimited,
            },
            Rejection::UpstreamUnreachable(_) => Reason::UpstreamUnreachable,
            Rejection::UpstreamTimeout { .. } => Reason::UpstreamTimeout,
        }
    }

    /// What the caller reads.
    pub fn message(&self) -> String {
        match self {
            Rejection::NotReady => "the sidecar has not loaded API keys from its store yet; retry in a moment".into(),
            Rejection::Unauthenticated(e) => e.to_string(),
            Rejection::AmbiguousAuthorization => "send exactly one Authorization header".into(),
            Rejection::ReadOnlyKey { endpoint } => {
                format!("this API key is read-only: it cannot write ({endpoint}); use a ReadWrite key")
            }
            Rejection::BodyTooLarge { limit } => format!(
                "the request body is larger than this environment's maxWriteBodyBytes ({limit} bytes); split the write"
            ),
            Rejection::BatchTooLarge { facts, limit } => format!(
                "this write has {facts} facts; this environment's maxBatchFacts is {limit}: split it into smaller writes"
            ),
            Rejection::BeyondWholeBudget { facts, budget } => format!(
                "this write has {facts} facts, more than this environment's whole factWritesPerMinute budget \
                 ({budget}): split it into smaller writes"
            ),
            Rejection::CompressedWrite => {
                "compressed write bodies are not supported: the sidecar counts the facts in each write, send it \
                 without Content-Encoding"
                    .into()
            }
            Rejection::MalformedBody(e) => e.to_string(),
            Rejection::BodyTimeout { after } => format!(
                "the request body did not arrive within {} s",
                headers::whole_seconds(*after)
            ),
            Rejection::BodyAborted => "the request body was cut off before its end".into(),
            Rejection::Limited(limited) => limited_message(&limited.refused),
            Rejection::UpstreamUnreachable(detail) => format!("the sidecar cannot reach its upstream: {detail}"),
            Rejection::UpstreamTimeout { after } => format!(
                "the upstream did not answer within {} s",
                headers::whole_seconds(*after)
            ),
        }
    }

    /// The response, with the headers each status calls for.
    pub fn into_response(self) -> Response<ResponseBody> {
        let mut response = json_response(self.status(), &self.message());
        let headers = response.headers_mut();
        match &self {
            Rejection::Unauthenticated(_) | Rejection::AmbiguousAuthorization => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Rejection::NotReady => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Rejection::Limited(limited) => {
                let Limited { refused, limits } = &**limited;
                if let Some(wait) = retry_after(refused) {
                    headers.insert(RETRY_AFTER, HeaderValue::from(headers::whole_seconds(wait)));
                }
                if let Some(policy) = headers::policy(limits) {
                    headers.insert(HeaderName::from_static(headers::RATELIMIT_POLICY), policy);
                }
                if let Some(state) = headers::state(&refused.quotas) {
                    headers.insert(HeaderName::from_static(headers::RATELIMIT), state);
                }
            }
            _ => {}
        }
        response
    }
}

/// The wait to advertise. For concurrency it is a hint (1 s): a slot frees when one of the environment's
/// requests in flight finishes, which the sidecar cannot predict. A budget of 0 has no wait to advertise.
fn retry_after(refused: &Refused) -> Option<Duration> {
    match (refused.policy, refused.retry_after) {
        (Policy::Concurrency, _) => Some(Duration::from_secs(1)),
        (_, wait) => wait,
    }
}

fn limited_message(refused: &Refused) -> String {
    let field = refused.policy.field();
    let limit = refused.limit;
    match (refused.policy, retry_after(refused)) {
        (Policy::Concurrency, _) => {
            format!("too many requests in flight: this environment's {field} is {limit}; retry when one has finished")
        }
        (_, None) => format!("this environment's {field} is {limit}: nothing is admitted until the limit is raised"),
        (Policy::Requests, Some(wait)) => format!(
            "rate limit exceeded: this environment's {field} ({limit}) is used up; retry in {} s",
            headers::whole_seconds(wait)
        ),
        (Policy::FactWrites, Some(wait)) => format!(
            "rate limit exceeded: this write has {} facts and this environment's {field} ({limit}) does not have \
             them left; retry in {} s",
            refused.needed,
            headers::whole_seconds(wait)
        ),
    }
}

/// A JSON `{"message": ...}` response.
pub fn json_response(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let mut body = Vec::with_capacity(message.len() + 16);
    body.extend_from_slice(b"{\"message\":");
    // Writing a string to a Vec cannot fail; it escapes what JSON requires.
    let _ = serde_json::to_writer(&mut body, message);
    body.push(b'}');
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PlanTier;
    use crate::sidecar::limits::Quota;

    #[test]
    fn a_rate_limit_answer_carries_retry_after_and_both_ratelimit_headers() {
        let refused = Refused {
            policy: Policy::FactWrites,
            limit: 1000,
            needed: 20,
            retry_after: Some(Duration::from_millis(1_200)),
            quotas: vec![Quota {
                policy: Policy::FactWrites,
                limit: 1000,
                remaining: 3,
                full_in: Some(Duration::from_secs(59)),
            }],
        };
        let rejection = Rejection::Limited(Box::new(Limited {
            refused,
            limits: PlanTier::Developer.default_limits(),
        }));
        assert_eq!(rejection.reason(), Reason::RateLimitedFacts);
        let response = rejection.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert!(
            response.headers()["ratelimit-policy"]
                .to_str()
                .unwrap()
                .contains("\"fact-writes\";q=1000")
        );
        assert_eq!(response.headers()["ratelimit"], "\"fact-writes\";r=3;t=59");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }

    #[tokio::test]
    async fn messages_are_escaped_into_valid_json() {
        use http_body_util::BodyExt;
        let message = "the body of /api/batch is not valid: expected `\"` at line 1\n\u{1}";
        let body = json_response(StatusCode::BAD_REQUEST, message)
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed, serde_json::json!({ "message": message }));
    }

    #[test]
    fn every_rejection_is_a_4xx_or_5xx_with_a_message() {
        for rejection in [
            Rejection::NotReady,
            Rejection::Unauthenticated(AuthError::Invalid),
            Rejection::ReadOnlyKey { endpoint: "/api/batch" },
            Rejection::BodyTooLarge { limit: 10 },
            Rejection::BatchTooLarge { facts: 21, limit: 20 },
            Rejection::BodyTimeout {
                after: Duration::from_secs(30),
            },
            Rejection::UpstreamUnreachable("connection refused".into()),
        ] {
            let status = rejection.status();
            let message = rejection.message();
            assert!(status.is_client_error() || status.is_server_error());
            assert!(!message.is_empty());
        }
    }
}
