//! Per-environment limits: request and fact-write budgets that refill continuously, and a concurrency cap.
//!
//! The [`Limiter`] trait is the seam for a shared backend (several sidecar replicas enforcing one budget);
//! its methods return futures so that such a backend can talk to a network service. [`LocalLimiter`] keeps
//! the state in this process, so limits are per sidecar process.
//!
//! Budgets use GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): a budget of
//! `n` per minute admits one unit every `60 s / n`, with a burst of the whole budget, so a client that waits
//! 60 seconds has its whole budget back. A request is admitted only when it fits *both* its request budget
//! and its fact budget, and then takes from both at once; a refused request takes nothing. That is why this
//! is written here rather than with two `governor` limiters, which cannot check two budgets atomically
//! without consuming from one of them. The wait it reports is exact: the same request sent after it would be
//! admitted (unless other requests of the same environment use the budget first).

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::domain::EffectiveLimits;

const MINUTE_NANOS: u64 = 60_000_000_000;

/// A monotonic clock, as time since an arbitrary origin. Injected so tests can stop time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;
}

/// The process's monotonic clock.
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock { origin: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
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

/// Why a request is refused, and when it would pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub policy: Policy,
    pub limit: u64,
    /// How much the request needed of that budget.
    pub needed: u64,
    /// The wait after which the same request fits; `None` when it never can (the cost exceeds the whole
    /// budget, e.g. a budget of 0) or when it depends on other requests finishing (concurrency).
    pub retry_after: Option<Duration>,
    pub quotas: Vec<Quota>,
}

/// Holds a concurrency slot until dropped (the end of the response body).
#[derive(Default)]
pub struct Permit {
    _slot: Option<Box<dyn Send + Sync>>,
    /// The concurrency budget after this request entered, when the environment has one.
    pub quota: Option<Quota>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

impl Permit {
    pub fn new(slot: Box<dyn Send + Sync>, quota: Option<Quota>) -> Self {
        Permit {
            _slot: Some(slot),
            quota,
        }
    }
}

/// Enforces per-environment limits. Limits are passed on every call, so a change in the store applies to
/// the next request; an implementation keeps the budget already used when a limit changes.
pub trait Limiter: Send + Sync + 'static {
    /// Takes a concurrency slot for the duration of a request.
    fn enter<'a>(&'a self, environment: &'a str, limits: &'a EffectiveLimits)
    -> BoxFuture<'a, Result<Permit, Refused>>;

    /// Whether one more request (with no facts) would be admitted now, without taking anything. Used before
    /// reading a write's body, so that a client over its request budget is refused without reading it.
    fn peek<'a>(&'a self, environment: &'a str, limits: &'a EffectiveLimits) -> BoxFuture<'a, Result<(), Refused>>;

    /// Admits one request carrying `facts` fact writes, taking from both budgets, or refuses it and takes
    /// nothing. On success, returns the budgets left for the `RateLimit` header.
    fn admit<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
        facts: u64,
    ) -> BoxFuture<'a, Result<Vec<Quota>, Refused>>;

    /// Drops the state of environments for which `keep` is false (deleted environments).
    fn retain(&self, keep: &dyn Fn(&str) -> bool);
}

/// One budget as a GCRA cell: `tat` is the theoretical arrival time of the next unit, in clock nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    tat: u64,
    per_minute: u64,
}

impl Bucket {
    fn interval(per_minute: u64) -> u64 {
        MINUTE_NANOS / per_minute.max(1)
    }

    /// The span of time the whole budget covers: `per_minute` intervals (at most one minute).
    fn window(&self) -> u64 {
        Bucket::interval(self.per_minute).saturating_mul(self.per_minute)
    }

    /// Adopts a new limit, keeping the units already used (capped at the new budget).
    fn follow(&mut self, per_minute: u64, now: u64) {
        if self.per_minute == per_minute {
            return;
        }
        let used = if self.per_minute == 0 {
            0
        } else {
            self.tat.saturating_sub(now).div_ceil(Bucket::interval(self.per_minute))
        };
        self.per_minute = per_minute;
        self.tat = now + used.min(per_minute).saturating_mul(Bucket::interval(per_minute));
    }

    /// The new `tat` if `cost` units fit now, or how long until they do (`None`: never).
    fn try_take(&self, cost: u64, now: u64) -> Result<u64, Option<u64>> {
        if cost == 0 {
            return Ok(self.tat);
        }
        if cost > self.per_minute {
            return Err(None);
        }
        let new_tat = self
            .tat
            .max(now)
            .saturating_add(cost.saturating_mul(Bucket::interval(self.per_minute)));
        let horizon = now.saturating_add(self.window());
        if new_tat <= horizon {
            Ok(new_tat)
        } else {
            Err(Some(new_tat - horizon))
        }
    }

    fn quota(&self, policy: Policy, now: u64) -> Quota {
        let backlog = self.tat.saturating_sub(now);
        let window = self.window();
        Quota {
            policy,
            limit: self.per_minute,
            remaining: window.saturating_sub(backlog) / Bucket::interval(self.per_minute),
            full_in: Some(Duration::from_nanos(backlog)),
        }
    }
}

#[derive(Default)]
struct Budgets {
    requests: Bucket,
    facts: Bucket,
}

/// The state of one environment.
#[derive(Default)]
struct EnvironmentState {
    budgets: Mutex<Budgets>,
    in_flight: AtomicU64,
}

/// Releases a concurrency slot when dropped.
struct Slot(Arc<EnvironmentState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Limits kept in this process's memory: exact for one sidecar, but each replica has its own budgets.
pub struct LocalLimiter {
    clock: Arc<dyn Clock>,
    environments: RwLock<HashMap<String, Arc<EnvironmentState>>>,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        LocalLimiter::with_clock(Arc::new(SystemClock::default()))
    }
}

impl LocalLimiter {
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        LocalLimiter {
            clock,
            environments: RwLock::new(HashMap::default()),
        }
    }

    fn state(&self, environment: &str) -> Arc<EnvironmentState> {
        if let Some(state) = self
            .environments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(environment)
        {
            return state.clone();
        }
        self.environments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(environment.to_owned())
            .or_default()
            .clone()
    }

    /// How many environments have state (for tests and memory checks).
    pub fn environments(&self) -> usize {
        self.environments.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn now(&self) -> u64 {
        self.clock.now().as_nanos() as u64
    }

    fn enter_now(&self, environment: &str, limits: &EffectiveLimits) -> Result<Permit, Refused> {
        let state = self.state(environment);
        let Some(max) = limits.max_concurrent_requests else {
            state.in_flight.fetch_add(1, Ordering::AcqRel);
            return Ok(Permit::new(Box::new(Slot(state)), None));
        };
        let entered = state
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        let quota = |in_flight: u64| Quota {
            policy: Policy::Concurrency,
            limit: max,
            remaining: max.saturating_sub(in_flight),
            full_in: None,
        };
        match entered {
            Ok(before) => Ok(Permit::new(Box::new(Slot(state)), Some(quota(before + 1)))),
            Err(in_flight) => Err(Refused {
                policy: Policy::Concurrency,
                limit: max,
                needed: 1,
                retry_after: None,
                quotas: vec![quota(in_flight)],
            }),
        }
    }

    /// The core of `peek` and `admit`: checks both budgets under one lock, and takes from both only if
    /// both fit.
    fn take_now(
        &self,
        environment: &str,
        limits: &EffectiveLimits,
        facts: u64,
        commit: bool,
    ) -> Result<Vec<Quota>, Refused> {
        if limits.requests_per_minute.is_none() && (limits.fact_writes_per_minute.is_none() || facts == 0) {
            // Nothing to take; report the fact budget's state if there is one.
            return Ok(self.quotas(environment, limits));
        }
        let now = self.now();
        let state = self.state(environment);
        let mut budgets = state.budgets.lock().unwrap_or_else(|e| e.into_inner());
        let Budgets {
            requests,
            facts: fact_bucket,
        } = &mut *budgets;
        let mut taken: [Option<u64>; 2] = [None, None];
        let mut refusal: Option<Refused> = None;
        for (i, (policy, limit, cost, bucket)) in [
            (Policy::Requests, limits.requests_per_minute, 1, &mut *requests),
            (
                Policy::FactWrites,
                limits.fact_writes_per_minute,
                facts,
                &mut *fact_bucket,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(limit) = limit else { continue };
            bucket.follow(limit, now);
            match bucket.try_take(cost, now) {
                Ok(tat) => taken[i] = Some(tat),
                Err(wait) => {
                    let wait = wait.map(Duration::from_nanos);
                    // Report the budget that keeps the request out longest (never = longest).
                    let worse = match &refusal {
                        None => true,
                        Some(previous) => match (previous.retry_after, wait) {
                            (None, _) => false,
                            (Some(_), None) => true,
                            (Some(a), Some(b)) => b > a,
                        },
                    };
                    if worse {
                        refusal = Some(Refused {
                            policy,
                            limit,
                            needed: cost,
                            retry_after: wait,
                            quotas: Vec::new(),
                        });
                    }
                }
            }
        }
        if let Some(mut refused) = refusal {
            refused.quotas = current_quotas(requests, fact_bucket, limits, now);
            return Err(refused);
        }
        if commit {
            if let Some(tat) = taken[0] {
                requests.tat = tat;
            }
            if let Some(tat) = taken[1] {
                fact_bucket.tat = tat;
            }
        }
        Ok(current_quotas(requests, fact_bucket, limits, now))
    }

    fn quotas(&self, environment: &str, limits: &EffectiveLimits) -> Vec<Quota> {
        if limits.requests_per_minute.is_none() && limits.fact_writes_per_minute.is_none() {
            return Vec::new();
        }
        let now = self.now();
        let state = self.state(environment);
        let mut budgets = state.budgets.lock().unwrap_or_else(|e| e.into_inner());
        let Budgets { requests, facts } = &mut *budgets;
        if let Some(limit) = limits.fact_writes_per_minute {
            facts.follow(limit, now);
        }
        current_quotas(requests, facts, limits, now)
    }
}

fn current_quotas(requests: &Bucket, facts: &Bucket, limits: &EffectiveLimits, now: u64) -> Vec<Quota> {
    let mut quotas = Vec::with_capacity(3);
    if limits.requests_per_minute.is_some() {
        quotas.push(requests.quota(Policy::Requests, now));
    }
    if limits.fact_writes_per_minute.is_some() {
        quotas.push(facts.quota(Policy::FactWrites, now));
    }
    quotas
}

impl Limiter for LocalLimiter {
    fn enter<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
    ) -> BoxFuture<'a, Result<Permit, Refused>> {
        Box::pin(std::future::ready(self.enter_now(environment, limits)))
    }

    fn peek<'a>(&'a self, environment: &'a str, limits: &'a EffectiveLimits) -> BoxFuture<'a, Result<(), Refused>> {
        let result = if limits.requests_per_minute.is_none() {
            Ok(())
        } else {
            self.take_now(environment, limits, 0, false).map(|_| ())
        };
        Box::pin(std::future::ready(result))
    }

    fn admit<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
        facts: u64,
    ) -> BoxFuture<'a, Result<Vec<Quota>, Refused>> {
        Box::pin(std::future::ready(self.take_now(environment, limits, facts, true)))
    }

    fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        self.environments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: Option<u64>, facts: Option<u64>, concurrency: Option<u64>) -> EffectiveLimits {
        EffectiveLimits {
            requests_per_minute: requests,
            fact_writes_per_minute: facts,
            max_concurrent_requests: concurrency,
            max_batch_facts: None,
            max_write_body_bytes: None,
        }
    }

    fn limiter() -> (LocalLimiter, ManualClock) {
        let clock = ManualClock::default();
        (LocalLimiter::with_clock(Arc::new(clock.clone())), clock)
    }

    fn admit(limiter: &LocalLimiter, limits: &EffectiveLimits, facts: u64) -> Result<Vec<Quota>, Refused> {
        limiter.take_now("env", limits, facts, true)
    }

    #[test]
    fn a_budget_admits_exactly_its_size_then_refuses_with_the_exact_wait() {
        let (limiter, _) = limiter();
        let limits = limits(Some(60), None, None);
        for i in 0..60 {
            let quotas = admit(&limiter, &limits, 0).unwrap();
            assert_eq!(quotas[0].remaining, 59 - i);
        }
        let refused = admit(&limiter, &limits, 0).unwrap_err();
        assert_eq!(refused.policy, Policy::Requests);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(1)), "one unit per second");
    }

    #[test]
    fn a_request_sent_after_the_wait_passes_and_not_before() {
        let (limiter, clock) = limiter();
        let limits = limits(Some(7), Some(10), None);
        while admit(&limiter, &limits, 3).is_ok() {}
        let wait = admit(&limiter, &limits, 3).unwrap_err().retry_after.unwrap();
        clock.advance(wait - Duration::from_nanos(1));
        assert!(admit(&limiter, &limits, 3).is_err());
        clock.advance(Duration::from_nanos(1));
        assert!(admit(&limiter, &limits, 3).is_ok());
    }

    #[test]
    fn waiting_a_minute_brings_the_whole_budget_back() {
        let (limiter, clock) = limiter();
        let limits = limits(Some(1_000), Some(999), None);
        assert!(admit(&limiter, &limits, 999).is_ok());
        assert!(admit(&limiter, &limits, 1).is_err());
        clock.advance(Duration::from_secs(60));
        let quotas = admit(&limiter, &limits, 999).unwrap();
        assert_eq!(quotas[1].remaining, 0);
    }

    #[test]
    fn a_refused_request_takes_nothing_from_either_budget() {
        let (limiter, _) = limiter();
        let limits = limits(Some(10), Some(5), None);
        assert!(admit(&limiter, &limits, 4).is_ok());
        let refused = admit(&limiter, &limits, 2).unwrap_err();
        assert_eq!(refused.policy, Policy::FactWrites);
        let quotas = admit(&limiter, &limits, 1).unwrap();
        assert_eq!(quotas[0].remaining, 8, "two requests admitted out of ten");
        assert_eq!(quotas[1].remaining, 0);
    }

    #[test]
    fn a_cost_beyond_the_whole_budget_can_never_pass() {
        let (limiter, _) = limiter();
        let refused = admit(&limiter, &limits(None, Some(10), None), 11).unwrap_err();
        assert_eq!((refused.policy, refused.retry_after), (Policy::FactWrites, None));
        let refused = admit(&limiter, &limits(Some(0), None, None), 0).unwrap_err();
        assert_eq!((refused.policy, refused.retry_after), (Policy::Requests, None));
    }

    #[test]
    fn raising_a_limit_keeps_what_was_used_and_adds_the_difference() {
        let (limiter, _) = limiter();
        while admit(&limiter, &limits(Some(10), None, None), 0).is_ok() {}
        let quotas = admit(&limiter, &limits(Some(100), None, None), 0).unwrap();
        assert_eq!(quotas[0].remaining, 89, "10 used before, 1 now");
        // Lowering it below what was used empties the budget but never waits more than a minute.
        let refused = admit(&limiter, &limits(Some(5), None, None), 0).unwrap_err();
        assert!(refused.retry_after.unwrap() <= Duration::from_secs(12));
    }

    #[test]
    fn concurrency_slots_are_released_when_the_permit_drops() {
        let (limiter, _) = limiter();
        let limits = limits(None, None, Some(2));
        let a = limiter.enter_now("env", &limits).unwrap();
        let _b = limiter.enter_now("env", &limits).unwrap();
        assert_eq!(
            limiter.enter_now("env", &limits).unwrap_err().policy,
            Policy::Concurrency
        );
        assert!(
            limiter.enter_now("other", &limits).is_ok(),
            "environments are independent"
        );
        drop(a);
        assert!(limiter.enter_now("env", &limits).is_ok());
    }

    #[test]
    fn peeking_takes_nothing() {
        let (limiter, _) = limiter();
        let limits = limits(Some(1), None, None);
        assert!(limiter.take_now("env", &limits, 0, false).is_ok());
        assert!(limiter.take_now("env", &limits, 0, false).is_ok());
        assert!(admit(&limiter, &limits, 0).is_ok());
        assert!(limiter.take_now("env", &limits, 0, false).is_err());
    }
}
