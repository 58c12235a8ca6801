//! Per-environment limits: request and fact-write budgets that refill continuously, and a concurrency cap.
//!
//! - this file: the [`Limiter`] seam and what it answers ([`Quota`], [`LimitRefusal`], [`Permit`]);
//! - `clock`: the monotonic time budgets are measured in, injectable for tests;
//! - `gcra`: the budget arithmetic (GCRA), both budgets of a request checked and taken at once;
//! - `local`: [`LocalLimiter`], the state in this process's memory (limits per sidecar process);
//! - `redis`: [`RedisLimiter`], one budget per environment shared by every sidecar using the same Redis;
//! - `redis_link`: how it reaches Redis (one server, a Cluster, or the primary Sentinel names);
//! - `lease`: the slices of those shared budgets a replica holds and spends without asking Redis;
//! - `fallback`: what [`RedisLimiter`] does while Redis cannot answer (`--redis-fallback`).
//!
//! The trait's methods return futures so that a backend shared by several sidecar replicas can talk to a
//! network service; a new backend is one more file here implementing [`Limiter`], handed to the sidecar
//! through its run options.

mod clock;
mod fallback;
mod gcra;
mod lease;
mod local;
mod redis;
mod redis_link;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub use clock::{Clock, ManualClock, SystemClock};
pub use fallback::Fallback;
pub use local::LocalLimiter;
pub use redis::{RedisError, RedisLimiter, RedisOptions};
pub use redis_link::{RedisMode, RedisModeName};

use crate::domain::EffectiveLimits;

/// Whether an environment has a budget over time (requests or fact writes) at all; without one, neither
/// backend takes, charges or reports anything but concurrency.
fn has_rate_budget(limits: &EffectiveLimits) -> bool {
    limits.requests_per_minute.is_some() || limits.fact_writes_per_minute.is_some()
}

/// The budgets of an environment, named as in the `RateLimit-Policy` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// `requestsPerMinute`: every admitted request takes one.
    Requests,
    /// `factWritesPerMinute`: every fact a write inserts or deletes takes one.
    FactWrites,
    /// `maxConcurrentRequests`: requests in flight at once.
    Concurrency,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Requests => "requests",
            Policy::FactWrites => "fact-writes",
            Policy::Concurrency => "concurrency",
        }
    }

    /// The limit's name as users write it in manifests.
    pub fn field(self) -> &'static str {
        match self {
            Policy::Requests => "requestsPerMinute",
            Policy::FactWrites => "factWritesPerMinute",
            Policy::Concurrency => "maxConcurrentRequests",
        }
    }
}

/// The state of one budget as a client is told about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub policy: Policy,
    /// The budget (per minute for rates, at once for concurrency).
    pub limit: u64,
    /// Units left now.
    pub remaining: u64,
    /// Time until the budget is whole again (rates only).
    pub full_in: Option<Duration>,
}

/// Which budget refuses a request, and when it would pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitRefusal {
    pub policy: Policy,
    pub limit: u64,
    /// How much the request needed of that budget.
    pub needed: u64,
    /// The wait after which the same request fits; `None` when it never can (the cost exceeds the whole
    /// budget, e.g. a budget of 0) or when it depends on other requests finishing (concurrency).
    pub retry_after: Option<Duration>,
    pub quotas: Vec<Quota>,
}

/// Why a limiter could not decide on a request: its shared state is unreachable and the configured fallback
/// is to refuse (`--redis-fallback deny`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the sidecar cannot reach the shared limits ({detail}); retry in a moment")]
pub struct LimitsUnavailable {
    /// What failed, without secrets (never the URL's password).
    pub detail: String,
}

/// Why a request is not admitted: a limit refuses it, or the limits cannot be checked at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitError {
    Refused(LimitRefusal),
    Unavailable(LimitsUnavailable),
}

impl From<LimitRefusal> for LimitError {
    fn from(refusal: LimitRefusal) -> Self {
        LimitError::Refused(refusal)
    }
}

/// Where a shared backend's budgets live right now, for `/readyz` and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendState {
    /// True while the shared state answers; false while the fallback decides.
    pub shared: bool,
    /// Sidecar replicas seen announcing themselves recently (the divisor of the `share` fallback).
    pub replicas: u64,
    /// Times the backend switched to its fallback since start.
    pub fallbacks: u64,
    /// Why it is in fallback, and which fallback (when not shared).
    pub detail: Option<String>,
}

/// Holds a concurrency slot until dropped (the end of the response body).
#[derive(Default)]
pub struct Permit {
    _slot: Option<Slot>,
    /// The concurrency budget after this request entered, when the environment has one.
    pub quota: Option<Quota>,
}

/// A counter of slots in use that a permit gives its slot back to when dropped.
pub trait SlotCounter: Send + Sync {
    fn release(&self);
}

enum Slot {
    /// A slot that is a count in shared state: the permit holds a reference to it, and no allocation.
    Counted(Arc<dyn SlotCounter>),
    /// A slot whose own drop gives it back.
    Owned { _slot: Box<dyn Send + Sync> },
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Slot::Counted(counter) = self {
            counter.release();
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// A slot given back when `slot` is dropped.
    pub fn new(slot: Box<dyn Send + Sync>, quota: Option<Quota>) -> Self {
        Permit {
            _slot: Some(Slot::Owned { _slot: slot }),
            quota,
        }
    }

    /// A slot already counted in `counter`, given back to it when the permit is dropped.
    pub fn counted(counter: Arc<dyn SlotCounter>, quota: Option<Quota>) -> Self {
        Permit {
            _slot: Some(Slot::Counted(counter)),
            quota,
        }
    }
}

/// Enforces per-environment limits. Limits are passed on every call, so a change in the store applies to
/// the next request; an implementation keeps the budget already used when a limit changes.
pub trait Limiter: Send + Sync + 'static {
    /// Takes a concurrency slot for the duration of a request.
    fn enter<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
    ) -> BoxFuture<'a, Result<Permit, LimitError>>;

    /// Takes a concurrency slot and admits one read at once (`enter`, then `admit` with no facts): a shared
    /// backend answers both in one round trip, and a read it refuses holds no slot.
    fn enter_read<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
    ) -> BoxFuture<'a, Result<(Permit, Vec<Quota>), LimitError>> {
        Box::pin(async move {
            let permit = self.enter(environment, limits).await?;
            let quotas = self.admit(environment, limits, 0).await?;
            Ok((permit, quotas))
        })
    }

    /// Whether one more request (with no facts) would be admitted now, without taking anything. Used before
    /// reading a write's body, so that a client over its request budget is refused without reading it.
    fn peek<'a>(&'a self, environment: &'a str, limits: &'a EffectiveLimits) -> BoxFuture<'a, Result<(), LimitError>>;

    /// Admits one request carrying `facts` fact writes, taking from both budgets, or refuses it and takes
    /// nothing. On success, returns the budgets left for the `RateLimit` header.
    fn admit<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
        facts: u64,
    ) -> BoxFuture<'a, Result<Vec<Quota>, LimitError>>;

    /// Charges `facts` fact writes to the fact-write budget unconditionally, for work already done whose cost
    /// was known only afterwards (a wildcard delete costs the facts it removed). The budget may go into debt:
    /// the environment's next writes wait until it is repaid, and their `Retry-After` says how long. Nothing
    /// is taken when the environment has no fact-write budget. Returns the budgets left (as `admit` does).
    fn charge<'a>(&'a self, environment: &'a str, limits: &'a EffectiveLimits, facts: u64)
    -> BoxFuture<'a, Vec<Quota>>;

    /// Drops the state of environments for which `keep` is false (deleted environments).
    fn retain(&self, keep: &dyn Fn(&str) -> bool);

    /// The state of a shared backend (`None`: limits are this process's own and always answer).
    fn backend(&self) -> Option<BackendState> {
        None
    }
}
