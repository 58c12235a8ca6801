//! [`LocalLimiter`]: the limits kept in this process's memory. Exact for one sidecar, but each replica has
//! its own budgets, so N replicas admit up to N times an environment's budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::gcra::Budgets;
use super::{
    Clock, LimitError, LimitRefusal, Limiter, Permit, Policy, Quota, SlotCounter, SystemClock, has_rate_budget,
};
use crate::domain::EffectiveLimits;
use crate::sidecar::read_mostly::ReadMostlyMap;

/// The state of one environment.
#[derive(Default)]
struct EnvironmentState {
    budgets: Mutex<Budgets>,
    in_flight: AtomicU64,
}

impl SlotCounter for EnvironmentState {
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Limits kept in this process's memory.
pub struct LocalLimiter {
    clock: Arc<dyn Clock>,
    /// New environments start with their budgets used up (refilling from empty) rather than whole.
    drained: bool,
    environments: ReadMostlyMap<Arc<str>, EnvironmentState>,
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
            drained: false,
            environments: ReadMostlyMap::default(),
        }
    }

    /// A limiter whose environments start with every budget used up, refilling at their rate: taking over
    /// from a shared budget that may already be spent, it cannot add a whole burst on top of it.
    pub fn drained(clock: Arc<dyn Clock>) -> Self {
        LocalLimiter {
            drained: true,
            ..LocalLimiter::with_clock(clock)
        }
    }

    fn state(&self, environment: &str) -> Arc<EnvironmentState> {
        self.environments.get_or_insert_with(environment, || EnvironmentState {
            budgets: Mutex::new(if self.drained {
                Budgets::drained()
            } else {
                Budgets::default()
            }),
            in_flight: AtomicU64::new(0),
        })
    }

    /// How many environments have state (for tests and memory checks).
    pub fn environments(&self) -> usize {
        self.environments.len()
    }

    fn now(&self) -> u64 {
        self.clock.now().as_nanos() as u64
    }

    /// Takes facts from the fact-write budget even beyond what it holds (see [`Limiter::charge`]).
    pub(super) fn charge_now(&self, environment: &str, limits: &EffectiveLimits, facts: u64) -> Vec<Quota> {
        if !has_rate_budget(limits) {
            return Vec::new();
        }
        let now = self.now();
        let state = self.state(environment);
        let mut budgets = state.budgets.lock().unwrap_or_else(|e| e.into_inner());
        budgets.charge(limits, facts, now)
    }

    pub(super) fn peek_now(&self, environment: &str, limits: &EffectiveLimits) -> Result<(), LimitRefusal> {
        if limits.requests_per_minute.is_none() {
            return Ok(());
        }
        self.take_now(environment, limits, 0, false).map(|_| ())
    }

    pub(super) fn enter_now(&self, environment: &str, limits: &EffectiveLimits) -> Result<Permit, LimitRefusal> {
        Self::enter_state(self.state(environment), limits)
    }

    /// [`Limiter::enter_read`] in one look-up of the environment's state: a slot, then one request from
    /// the budget; a read refused by the budget gives its slot back (the permit is dropped).
    pub(super) fn enter_read_now(
        &self,
        environment: &str,
        limits: &EffectiveLimits,
    ) -> Result<(Permit, Vec<Quota>), LimitRefusal> {
        let state = self.state(environment);
        let permit = Self::enter_state(state.clone(), limits)?;
        let quotas = self.take_state(&state, limits, 0, true)?;
        Ok((permit, quotas))
    }

    fn enter_state(state: Arc<EnvironmentState>, limits: &EffectiveLimits) -> Result<Permit, LimitRefusal> {
        let Some(max) = limits.max_concurrent_requests else {
            state.in_flight.fetch_add(1, Ordering::AcqRel);
            return Ok(Permit::counted(state, None));
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
            Ok(before) => Ok(Permit::counted(state, Some(quota(before + 1)))),
            Err(in_flight) => Err(LimitRefusal {
                policy: Policy::Concurrency,
                limit: max,
                needed: 1,
                retry_after: None,
                quotas: vec![quota(in_flight)],
            }),
        }
    }

    /// The core of `peek` and `admit`: checks both budgets under the environment's lock, and takes from
    /// both only if both fit (and `commit` is set).
    pub(super) fn take_now(
        &self,
        environment: &str,
        limits: &EffectiveLimits,
        facts: u64,
        commit: bool,
    ) -> Result<Vec<Quota>, LimitRefusal> {
        if !has_rate_budget(limits) {
            return Ok(Vec::new());
        }
        self.take_state(&self.state(environment), limits, facts, commit)
    }

    fn take_state(
        &self,
        state: &EnvironmentState,
        limits: &EffectiveLimits,
        facts: u64,
        commit: bool,
    ) -> Result<Vec<Quota>, LimitRefusal> {
        let nothing_to_take =
            limits.requests_per_minute.is_none() && (limits.fact_writes_per_minute.is_none() || facts == 0);
        if !has_rate_budget(limits) {
            return Ok(Vec::new());
        }
        let now = self.now();
        let mut budgets = state.budgets.lock().unwrap_or_else(|e| e.into_inner());
        if nothing_to_take {
            // Only the fact budget's state to report.
            return Ok(budgets.quotas(limits, now));
        }
        budgets.take(limits, facts, now, commit)
    }
}

impl Limiter for LocalLimiter {
    fn enter<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
    ) -> BoxFuture<'a, Result<Permit, LimitError>> {
        Box::pin(std::future::ready(
            self.enter_now(environment, limits).map_err(LimitError::from),
        ))
    }

    fn enter_read<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
    ) -> BoxFuture<'a, Result<(Permit, Vec<Quota>), LimitError>> {
        Box::pin(std::future::ready(
            self.enter_read_now(environment, limits).map_err(LimitError::from),
        ))
    }

    fn peek<'a>(&'a self, environment: &'a str, limits: &'a EffectiveLimits) -> BoxFuture<'a, Result<(), LimitError>> {
        Box::pin(std::future::ready(
            self.peek_now(environment, limits).map_err(LimitError::from),
        ))
    }

    fn admit<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
        facts: u64,
    ) -> BoxFuture<'a, Result<Vec<Quota>, LimitError>> {
        Box::pin(std::future::ready(
            self.take_now(environment, limits, facts, true)
                .map_err(LimitError::from),
        ))
    }

    fn charge<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
        facts: u64,
    ) -> BoxFuture<'a, Vec<Quota>> {
        Box::pin(std::future::ready(self.charge_now(environment, limits, facts)))
    }

    fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        self.environments.retain(|id| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sidecar::limits::ManualClock;

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

    fn admit(limiter: &LocalLimiter, limits: &EffectiveLimits, facts: u64) -> Result<Vec<Quota>, LimitRefusal> {
        limiter.take_now("env", limits, facts, true)
    }

    #[test]
    fn budgets_refill_with_the_clock_it_was_given() {
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
    fn a_charged_debt_holds_the_environments_next_writes_and_no_other_environment() {
        let (limiter, clock) = limiter();
        let limits = limits(None, Some(60), None);
        let quotas = futures::executor::block_on(limiter.charge("env", &limits, 120));
        assert_eq!(
            (quotas[0].remaining, quotas[0].full_in),
            (0, Some(Duration::from_secs(120)))
        );
        let wait = admit(&limiter, &limits, 1).unwrap_err().retry_after.unwrap();
        assert_eq!(
            wait,
            Duration::from_secs(61),
            "60 s of debt beyond the budget, then one fact"
        );
        assert!(limiter.take_now("other", &limits, 1, true).is_ok());
        clock.advance(wait);
        assert!(admit(&limiter, &limits, 1).is_ok());
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
    fn a_read_takes_a_slot_and_a_request_and_a_read_refused_by_the_budget_keeps_no_slot() {
        let (limiter, _) = limiter();
        let limits = limits(Some(2), None, Some(1));
        let (permit, quotas) = limiter.enter_read_now("env", &limits).unwrap();
        assert!(quotas.iter().any(|q| q.policy == Policy::Requests && q.remaining == 1));
        assert_eq!(
            limiter.enter_read_now("env", &limits).unwrap_err().policy,
            Policy::Concurrency,
            "the one slot is held"
        );
        drop(permit);
        let (permit, _) = limiter.enter_read_now("env", &limits).unwrap();
        drop(permit);
        assert_eq!(
            limiter.enter_read_now("env", &limits).unwrap_err().policy,
            Policy::Requests,
            "the budget is spent"
        );
        assert!(
            limiter.enter_now("env", &limits).is_ok(),
            "and the refused read gave its slot back"
        );
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

    #[test]
    fn environments_have_budgets_of_their_own_and_deleted_ones_are_forgotten() {
        let (limiter, _) = limiter();
        let limits = limits(Some(1), None, None);
        assert!(limiter.take_now("a", &limits, 0, true).is_ok());
        assert!(limiter.take_now("b", &limits, 0, true).is_ok());
        assert!(limiter.take_now("a", &limits, 0, true).is_err());
        limiter.retain(&|id| id == "b");
        assert_eq!(limiter.environments(), 1);
        assert!(limiter.take_now("a", &limits, 0, true).is_ok(), "a new budget");
    }
}
