//! Every answer the sidecar gives itself: a status, a JSON body `{"message": "..."}` (what the official
//! clients print), and for rate limits `Retry-After` and the `RateLimit` headers. Messages never contain
//! the API key.

use std::time::Duration;

use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use super::body::ResponseBody;
use super::classify::BodyError;
use super::headers;
use super::limits::{LimitRefusal, LimitsUnavailable, Policy};
use super::metrics::RefusalReason;
use crate::auth::AuthError;
use crate::domain::EffectiveLimits;

/// The budget that refused a request, and the environment's limits for the `RateLimit-Policy` header.
#[derive(Debug)]
pub struct Limited {
    pub by: LimitRefusal,
    pub limits: EffectiveLimits,
}

/// Why the sidecar answers a request itself instead of (or after failing at) forwarding it.
#[derive(Debug)]
pub enum Refusal {
    /// Keys have not been loaded from the store yet.
    NotReady,
    /// The store has been unreachable for longer than `--max-key-staleness`: a key may have been revoked
    /// since the copy was read, so none is honoured.
    KeysStale {
        age: Duration,
        limit: Duration,
    },
    Unauthenticated(AuthError),
    /// More than one `Authorization` header: the sidecar and the upstream could read different keys.
    AmbiguousAuthorization,
    ReadOnlyKey {
        endpoint: &'static str,
    },
    BodyTooLarge {
        limit: u64,
    },
    /// A read's body (e.g. `/api/authorize` with its context facts) beyond the fixed bound for reads.
    ReadBodyTooLarge {
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
    /// The shared limits cannot be checked and `--redis-fallback deny` says to refuse meanwhile.
    LimitsUnavailable(LimitsUnavailable),
    UpstreamUnreachable(String),
    UpstreamTimeout {
        after: Duration,
    },
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NotReady | Refusal::KeysStale { .. } | Refusal::LimitsUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::Unauthenticated(_) | Refusal::AmbiguousAuthorization => StatusCode::UNAUTHORIZED,
            Refusal::ReadOnlyKey { .. } => StatusCode::FORBIDDEN,
            Refusal::BodyTooLarge { .. }
            | Refusal::ReadBodyTooLarge { .. }
            | Refusal::BatchTooLarge { .. }
            | Refusal::BeyondWholeBudget { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::CompressedWrite => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::MalformedBody(_) | Refusal::BodyAborted => StatusCode::BAD_REQUEST,
            Refusal::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Refusal::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn reason(&self) -> RefusalReason {
        match self {
            Refusal::NotReady => RefusalReason::NotReady,
            Refusal::KeysStale { .. } => RefusalReason::KeysStale,
            Refusal::Unauthenticated(_) | Refusal::AmbiguousAuthorization => RefusalReason::Unauthenticated,
            Refusal::ReadOnlyKey { .. } => RefusalReason::Forbidden,
            Refusal::BodyTooLarge { .. } | Refusal::ReadBodyTooLarge { .. } => RefusalReason::BodyTooLarge,
            Refusal::BatchTooLarge { .. } | Refusal::BeyondWholeBudget { .. } => RefusalReason::BatchTooLarge,
            Refusal::CompressedWrite => RefusalReason::UnsupportedEncoding,
            Refusal::MalformedBody(_) | Refusal::BodyAborted => RefusalReason::BadRequest,
            Refusal::BodyTimeout { .. } => RefusalReason::Timeout,
            Refusal::Limited(limited) => match limited.by.policy {
                Policy::Requests => RefusalReason::RateLimitedRequests,
                Policy::FactWrites => RefusalReason::RateLimitedFacts,
                Policy::Concurrency => RefusalReason::ConcurrencyLimited,
            },
            Refusal::LimitsUnavailable(_) => RefusalReason::LimitsUnavailable,
            Refusal::UpstreamUnreachable(_) => RefusalReason::UpstreamUnreachable,
            Refusal::UpstreamTimeout { .. } => RefusalReason::UpstreamTimeout,
        }
    }

    /// What the caller reads.
    pub fn message(&self) -> String {
        match self {
            Refusal::NotReady => "the sidecar has not loaded API keys from its store yet; retry in a moment".into(),
            Refusal::KeysStale { age, limit } => stale_message(*age, *limit),
            Refusal::Unauthenticated(e) => e.to_string(),
            Refusal::AmbiguousAuthorization => "send exactly one Authorization header".into(),
            Refusal::ReadOnlyKey { endpoint } => {
                format!("this API key is read-only: it cannot write ({endpoint}); use a ReadWrite key")
            }
            Refusal::BodyTooLarge { limit } => format!(
                "the request body is larger than this environment's maxWriteBodyBytes ({limit} bytes); split the write"
            ),
            Refusal::ReadBodyTooLarge { limit } => {
                format!("the request body is larger than {limit} bytes, the most a read request may send (10 MiB)")
            }
            Refusal::BatchTooLarge { facts, limit } => format!(
                "this write has {facts} facts; this environment's maxBatchFacts is {limit}: split it into smaller writes"
            ),
            Refusal::BeyondWholeBudget { facts, budget } => format!(
                "this write has {facts} facts, more than this environment's whole factWritesPerMinute budget \
                 ({budget}): split it into smaller writes"
            ),
            Refusal::CompressedWrite => {
                "compressed write bodies are not supported: the sidecar counts the facts in each write, send it \
                 without Content-Encoding"
                    .into()
            }
            Refusal::MalformedBody(e) => e.to_string(),
            Refusal::BodyTimeout { after } => format!(
                "the request body did not arrive within {} s",
                headers::whole_seconds(*after)
            ),
            Refusal::BodyAborted => "the request body was cut off before its end".into(),
            Refusal::Limited(limited) => limited_message(&limited.by),
            Refusal::LimitsUnavailable(why) => why.to_string(),
            Refusal::UpstreamUnreachable(detail) => format!("the sidecar cannot reach its upstream: {detail}"),
            Refusal::UpstreamTimeout { after } => format!(
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
            Refusal::Unauthenticated(_) | Refusal::AmbiguousAuthorization => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Refusal::NotReady | Refusal::KeysStale { .. } | Refusal::LimitsUnavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Refusal::Limited(limited) => {
                let Limited { by, limits } = &**limited;
                if let Some(wait) = retry_after(by) {
                    headers.insert(RETRY_AFTER, HeaderValue::from(headers::whole_seconds(wait)));
                }
                if let Some(policy) = headers::policy(limits) {
                    headers.insert(headers::RATELIMIT_POLICY, policy);
                }
                if let Some(state) = headers::state(&by.quotas) {
                    headers.insert(headers::RATELIMIT, state);
                }
            }
            _ => {}
        }
        response
    }
}

/// The wait to advertise. For concurrency it is a hint (1 s): a slot frees when one of the environment's
/// requests in flight finishes, which the sidecar cannot predict. A budget of 0 has no wait to advertise.
fn retry_after(by: &LimitRefusal) -> Option<Duration> {
    match (by.policy, by.retry_after) {
        (Policy::Concurrency, _) => Some(Duration::from_secs(1)),
        (_, wait) => wait,
    }
}

fn limited_message(by: &LimitRefusal) -> String {
    let field = by.policy.field();
    let limit = by.limit;
    match (by.policy, retry_after(by)) {
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
            by.needed,
            headers::whole_seconds(wait)
        ),
    }
}

/// Why the sidecar refuses every key while its copy is too old (also its readiness message).
pub fn stale_message(age: Duration, limit: Duration) -> String {
    format!(
        "the sidecar has not reached its store for {} s, longer than its --max-key-staleness ({} s): it refuses \
         every request rather than honour keys that may have been revoked since; retry when the store is back",
        age.as_secs(),
        headers::whole_seconds(limit)
    )
}

/// A JSON `{"message": ...}` response.
pub fn json_response(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let mut body = Vec::with_capacity(message.len() + 16);
    body.extend_from_slice(b"{\"message\":");
    // Most messages are plain text that JSON takes as it is; the others go through serde_json, which
    // escapes what JSON requires (writing to a Vec cannot fail).
    if message.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        body.push(b'"');
        body.extend_from_slice(message.as_bytes());
        body.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut body, message);
    }
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
        let by = LimitRefusal {
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
        let refusal = Refusal::Limited(Box::new(Limited {
            by,
            limits: PlanTier::Developer.default_limits(),
        }));
        assert_eq!(refusal.reason(), RefusalReason::RateLimitedFacts);
        let response = refusal.into_response();
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
        // A message with nothing to escape is written as it is, and reads back the same.
        let plain = "rate limit exceeded: this environment's requestsPerMinute (1) is used up; retry in 60 s, ünïcode";
        let body = json_response(StatusCode::TOO_MANY_REQUESTS, plain)
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, serde_json::json!({ "message": plain }).to_string());
    }

    #[test]
    fn every_rejection_is_a_4xx_or_5xx_with_a_message() {
        for refusal in [
            Refusal::NotReady,
            Refusal::KeysStale {
                age: Duration::from_secs(400),
                limit: Duration::from_secs(300),
            },
            Refusal::Unauthenticated(AuthError::Invalid),
            Refusal::ReadOnlyKey { endpoint: "/api/batch" },
            Refusal::BodyTooLarge { limit: 10 },
            Refusal::ReadBodyTooLarge { limit: 10 },
            Refusal::BatchTooLarge { facts: 21, limit: 20 },
            Refusal::BodyTimeout {
                after: Duration::from_secs(30),
            },
            Refusal::UpstreamUnreachable("connection refused".into()),
        ] {
            let status = refusal.status();
            let message = refusal.message();
            assert!(status.is_client_error() || status.is_server_error());
            assert!(!message.is_empty());
        }
    }
}
