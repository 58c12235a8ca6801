//! One request through the sidecar, cheapest refusals first:
//!
//! 1. authenticate the key (401; 503 before keys are loaded, or once they are older than
//!    `--max-key-staleness`), and note its use in memory for its last-used time;
//! 2. classify: a write with a read-only key is 403; a compressed write 415; a declared body over
//!    `maxWriteBodyBytes` 413 before a byte of it is read; so is a read's declared body over 10 MiB;
//! 3. take a concurrency slot (429);
//! 4. reads: take one request from the budget (429) and stream the request to the upstream, cut off with
//!    413 once more than 10 MiB of its body arrived;
//!    writes: check the request budget has room (429, body unread), read the body bounded in size (413) and
//!    time (408), count its facts (400 when malformed), check `maxBatchFacts` (413), take one request and
//!    the facts from both budgets at once (429), and forward it;
//! 5. a write whose answer reports (`orgkeeper-facts-deleted`, taken off the answer) more facts removed than
//!    it had deletes counted in step 4, i.e. a wildcard delete, is charged the rest to the fact-write budget,
//!    a debt the environment's next writes wait for;
//! 6. stream the upstream's response back with the `RateLimit` headers; 502/504 when the upstream fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::body::{Body, Bytes};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response};

use super::answers::{Limited, Refusal};
use super::body::{ClientBody, ReadError, RequestBody, ResponseBody, StreamFault, read_bounded};
use super::classify::{Route, WriteKind, classify, count_changes};
use super::headers;
use super::limits::{LimitError, Limiter, Permit, Policy, Quota};
use super::metrics::{EnvironmentCounters, InFlight, SidecarMetrics};
use super::proxy::{ForwardError, Upstream};
use crate::auth::{AuthError, KeyRing, Principal};
use crate::domain::{Access, EffectiveLimits};
use crate::facts::server::FACTS_DELETED;

/// The most a read request may send as its body (Oso Cloud's bound on request bodies).
pub const MAX_READ_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// What a connection needs to know about how its last request ended.
#[derive(Default)]
pub struct ConnectionState {
    /// A request was refused before its body was read: linger so the client can read the answer.
    pub left_body_unread: AtomicBool,
}

pub struct Handler {
    pub(super) ring: KeyRing,
    pub(super) limiter: Arc<dyn Limiter>,
    pub(super) upstream: Upstream,
    pub(super) metrics: SidecarMetrics,
    pub(super) body_timeout: Duration,
    pub(super) max_key_staleness: Option<Duration>,
}

/// A request the sidecar refused: why, whom to count it against, and whether its body was left unread.
struct RefusedRequest {
    refusal: Refusal,
    counters: Arc<EnvironmentCounters>,
    body_unread: bool,
}

/// The request once authenticated.
struct Caller {
    principal: Principal,
    limits: EffectiveLimits,
    counters: Arc<EnvironmentCounters>,
}

impl Caller {
    fn refuse(&self, refusal: Refusal, body_unread: bool) -> RefusedRequest {
        RefusedRequest {
            refusal,
            counters: self.counters.clone(),
            body_unread,
        }
    }

    fn limited(&self, by: LimitError, body_unread: bool) -> RefusedRequest {
        let by = match by {
            LimitError::Refused(by) => by,
            LimitError::Unavailable(why) => return self.refuse(Refusal::LimitsUnavailable(why), body_unread),
        };
        let refusal = match (by.policy, by.retry_after) {
            (Policy::FactWrites, None) => Refusal::BeyondWholeBudget {
                facts: by.needed,
                budget: by.limit,
            },
            _ => Refusal::Limited(Box::new(Limited {
                by,
                limits: self.limits,
            })),
        };
        self.refuse(refusal, body_unread)
    }

    fn environment(&self) -> &str {
        self.principal.environment_id()
    }
}

impl Handler {
    /// The same handler with a connection pool of its own, for one worker thread.
    pub fn for_worker(&self) -> Handler {
        Handler {
            ring: self.ring.clone(),
            limiter: self.limiter.clone(),
            upstream: self.upstream.with_own_pool(),
            metrics: self.metrics.for_worker(),
            body_timeout: self.body_timeout,
            max_key_staleness: self.max_key_staleness,
        }
    }

    /// The refusal every request gets while the keys are older than `max_key_staleness`.
    pub fn stale(&self) -> Option<Refusal> {
        self.stale_at(Instant::now())
    }

    /// [`Handler::stale`] as of `now` (a request's start: one clock read fewer per request).
    fn stale_at(&self, now: Instant) -> Option<Refusal> {
        let limit = self.max_key_staleness?;
        let age = self.ring.since_last_success_at(now)?;
        (age > limit).then_some(Refusal::KeysStale { age, limit })
    }

    pub async fn handle(&self, request: Request<ClientBody>, connection: &ConnectionState) -> Response<ResponseBody> {
        let started = Instant::now();
        let in_flight = self.metrics.enter();
        // The head stays here and the layers below borrow it (each that took it by value copied it).
        let (mut parts, body) = request.into_parts();
        let response = match self.process(&mut parts, body, started, in_flight).await {
            Ok(response) => response,
            Err(refused) => {
                refused.counters.reject(refused.refusal.reason());
                let mut response = refused.refusal.into_response();
                if refused.body_unread {
                    connection.left_body_unread.store(true, Ordering::Release);
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
            }
        };
        self.metrics.observe(started.elapsed().as_secs_f64());
        response
    }

    async fn process(
        &self,
        parts: &mut hyper::http::request::Parts,
        body: ClientBody,
        started: Instant,
        in_flight: InFlight,
    ) -> Result<Response<ResponseBody>, RefusedRequest> {
        // From the clock read `handle` made (one read fewer per request).
        let deadline = tokio::time::Instant::from_std(started) + self.body_timeout;
        let has_body = !body.is_end_stream();
        // Known before the key check so that the check notes the key's use only for a request it will
        // serve; a request refused for stale keys is still told first whether its key is right.
        let stale = self.stale_at(started);
        let caller = self
            .authenticate(&parts.headers, stale.is_none())
            .map_err(|refusal| RefusedRequest {
                refusal,
                counters: self.metrics.unknown(),
                body_unread: has_body,
            })?;
        if let Some(stale) = stale {
            return Err(caller.refuse(stale, has_body));
        }
        let route = classify(&parts.method, parts.uri.path());
        match route {
            Route::Write(kind) => {
                check_write_headers(&caller, kind, &parts.headers, &body).map_err(|r| caller.refuse(r, has_body))?
            }
            Route::Read if body.size_hint().lower() > MAX_READ_BODY_BYTES => {
                let refusal = Refusal::ReadBodyTooLarge {
                    limit: MAX_READ_BODY_BYTES,
                };
                return Err(caller.refuse(refusal, true));
            }
            Route::Read => {}
        }
        let (permit, quotas, body) = match route {
            Route::Read => {
                let (permit, quotas) = self
                    .limiter
                    .enter_read(caller.environment(), &caller.limits)
                    .await
                    .map_err(|by| caller.limited(by, has_body))?;
                caller.counters.reads.inc();
                (permit, quotas, Outgoing::Stream(body))
            }
            Route::Write(kind) => {
                // The slot is taken before the body is read: a slow upload counts against the limit.
                let permit = self
                    .limiter
                    .enter(caller.environment(), &caller.limits)
                    .await
                    .map_err(|by| caller.limited(by, has_body))?;
                let (quotas, bytes, deletes) = self.admit_write(&caller, kind, body, deadline).await?;
                (permit, quotas, Outgoing::Full { bytes, deletes })
            }
        };
        self.forward(&caller, parts, body, deadline, quotas, permit, in_flight)
            .await
    }

    /// The caller of a request with these headers; `note_use`: note its key's use for its last-used time.
    fn authenticate(&self, headers: &HeaderMap, note_use: bool) -> Result<Caller, Refusal> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(Refusal::AmbiguousAuthorization);
        }
        let text = match first {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| Refusal::Unauthenticated(AuthError::NotBearer))?,
            ),
        };
        let principal = if note_use {
            self.ring.authenticate_and_note_use(text)
        } else {
            self.ring.authenticate(text)
        };
        let principal = principal.map_err(|e| {
            if e == AuthError::Invalid && !self.ring.status().loaded {
                Refusal::NotReady
            } else {
                Refusal::Unauthenticated(e)
            }
        })?;
        let counters = self
            .metrics
            .environment(principal.environment_id(), &principal.environment.label);
        Ok(Caller {
            limits: *principal.limits(),
            principal,
            counters,
        })
    }

    /// Reads and counts a write, then takes its request and facts from the budgets. Returns the budgets
    /// left, the body, and how many of its facts were deletes.
    async fn admit_write(
        &self,
        caller: &Caller,
        kind: WriteKind,
        body: ClientBody,
        deadline: tokio::time::Instant,
    ) -> Result<(Vec<Quota>, Bytes, u64), RefusedRequest> {
        let limits = &caller.limits;
        let has_body = !body.is_end_stream();
        self.limiter
            .peek(caller.environment(), limits)
            .await
            .map_err(|by| caller.limited(by, has_body))?;
        let bytes = read_bounded(body, limits.max_write_body_bytes, deadline)
            .await
            .map_err(|e| {
                let refusal = match e {
                    ReadError::TooLarge => Refusal::BodyTooLarge {
                        limit: limits.max_write_body_bytes.unwrap_or_default(),
                    },
                    ReadError::TimedOut => Refusal::BodyTimeout {
                        after: self.body_timeout,
                    },
                    ReadError::Aborted => Refusal::BodyAborted,
                };
                caller.refuse(refusal, true)
            })?;
        let changes = count_changes(kind, &bytes).map_err(|e| caller.refuse(Refusal::MalformedBody(e), false))?;
        let facts = changes.facts;
        if let Some(limit) = limits.max_batch_facts.filter(|limit| facts > *limit) {
            return Err(caller.refuse(Refusal::BatchTooLarge { facts, limit }, false));
        }
        let quotas = self
            .limiter
            .admit(caller.environment(), limits, facts)
            .await
            .map_err(|by| caller.limited(by, false))?;
        caller.counters.writes.inc();
        caller.counters.facts.inc_by(facts);
        Ok((quotas, bytes, changes.deletes))
    }

    /// Step 5: charges a write the facts its answer says it removed beyond the deletes it paid for, and
    /// returns the budgets left then. The header is the fact store's, so it never reaches the client.
    async fn charge_removed(
        &self,
        caller: &Caller,
        headers: &mut HeaderMap,
        paid_deletes: Option<u64>,
        quotas: Vec<Quota>,
    ) -> Vec<Quota> {
        let Some(removed) = headers.remove(FACTS_DELETED) else {
            return quotas;
        };
        let removed = removed.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok());
        let owed = match (paid_deletes, removed) {
            (Some(paid), Some(removed)) => removed.saturating_sub(paid),
            _ => 0,
        };
        if owed == 0 {
            return quotas;
        }
        caller.counters.facts.inc_by(owed);
        tracing::debug!(
            environment = caller.environment(),
            facts = owed,
            "charging a write the facts it removed beyond its deletes"
        );
        self.limiter.charge(caller.environment(), &caller.limits, owed).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        caller: &Caller,
        parts: &mut hyper::http::request::Parts,
        body: Outgoing,
        deadline: tokio::time::Instant,
        quotas: Vec<Quota>,
        permit: Permit,
        in_flight: InFlight,
    ) -> Result<Response<ResponseBody>, RefusedRequest> {
        // Only a body that streams can fault (and a read with none is the usual request: no allocation).
        let fault = matches!(&body, Outgoing::Stream(incoming) if !incoming.is_end_stream()).then(StreamFault::default);
        let paid_deletes = match &body {
            Outgoing::Full { deletes, .. } => Some(*deletes),
            Outgoing::Stream(_) => None,
        };
        let body = match body {
            Outgoing::Full { bytes, .. } => {
                parts.headers.remove(header::TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                RequestBody::Full(Some(bytes))
            }
            Outgoing::Stream(incoming) => match &fault {
                Some(fault) => RequestBody::streaming(incoming, deadline, MAX_READ_BODY_BYTES, fault.clone()),
                None => RequestBody::Full(None),
            },
        };
        let response = self.upstream.forward(parts, body).await.map_err(|e| {
            let fault = fault.as_ref();
            let refusal = if fault.is_some_and(StreamFault::too_large) {
                Refusal::ReadBodyTooLarge {
                    limit: MAX_READ_BODY_BYTES,
                }
            } else if fault.is_some_and(StreamFault::timed_out) {
                Refusal::BodyTimeout {
                    after: self.body_timeout,
                }
            } else if fault.is_some_and(StreamFault::aborted) {
                Refusal::BodyAborted
            } else {
                match e {
                    ForwardError::Unreachable(detail) => {
                        tracing::warn!(error = %detail, "cannot forward a request to the upstream");
                        Refusal::UpstreamUnreachable(detail)
                    }
                    ForwardError::TimedOut => Refusal::UpstreamTimeout {
                        after: self.upstream.timeout(),
                    },
                }
            };
            // A read body that timed out or broke was not read to its end.
            let body_unread = matches!(
                refusal,
                Refusal::BodyTimeout { .. } | Refusal::BodyAborted | Refusal::ReadBodyTooLarge { .. }
            );
            caller.refuse(refusal, body_unread)
        })?;
        let (mut head, inner) = response.into_parts();
        let mut quotas = self
            .charge_removed(caller, &mut head.headers, paid_deletes, quotas)
            .await;
        quotas.extend(permit.quota);
        if let Some(policy) = headers::policy(&caller.limits) {
            head.headers.insert(headers::RATELIMIT_POLICY, policy);
        }
        if let Some(state) = headers::state(&quotas) {
            head.headers.insert(headers::RATELIMIT, state);
        }
        // Released when the response body ends or is dropped: the slot and the gauge. (The body itself
        // holds an HTTP/1.1 upstream connection until then.)
        Ok(Response::from_parts(
            head,
            ResponseBody::Upstream {
                inner,
                hold: Some((permit, in_flight)),
            },
        ))
    }
}

/// What goes to the upstream: a write's body, read and counted (`deletes` of its facts were deletes), or
/// a read's body, streamed.
enum Outgoing {
    Full { bytes: Bytes, deletes: u64 },
    Stream(ClientBody),
}

/// Refusals a write earns from its headers alone, before any of its body is read.
fn check_write_headers(
    caller: &Caller,
    kind: WriteKind,
    headers: &HeaderMap,
    body: &ClientBody,
) -> Result<(), Refusal> {
    if caller.principal.access == Access::ReadOnly {
        return Err(Refusal::ReadOnlyKey {
            endpoint: kind.endpoint(),
        });
    }
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(Refusal::CompressedWrite);
    }
    // For a Content-Length body the size hint is exact; for a chunked one it is 0 and the read counts.
    if let Some(limit) = caller
        .limits
        .max_write_body_bytes
        .filter(|limit| body.size_hint().lower() > *limit)
    {
        return Err(Refusal::BodyTooLarge { limit });
    }
    Ok(())
}
