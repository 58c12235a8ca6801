//! GCRA (the generic cell rate algorithm): a token bucket kept as one timestamp per budget.
//!
//! A budget of `n` per minute admits one unit every `60 s / n`, with a burst of the whole budget, so a
//! client that waits 60 seconds has its whole budget back. [`Budgets`] holds an environment's request and
//! fact-write budgets and admits a request only when it fits *both*, taking from both at once; a refused
//! request takes nothing. That is why this is written here rather than with two `governor` limiters, which
//! cannot check two budgets atomically without consuming from one of them. The wait it reports is exact:
//! the same request sent after it would be admitted (unless other requests of the same environment use the
//! budget first). This is pure arithmetic on nanosecond timestamps: the caller owns the clock and the lock.
//!
//! [`Budgets::charge`] takes facts whatever the budget holds (work already done, such as the facts a
//! wildcard delete removed): the fact bucket's `tat` then lies beyond the window, a debt that later writes
//! wait out with the same exact arithmetic. A limit change carries at most one whole budget of use over, so
//! it also forgives a debt beyond that.

use std::time::Duration;

use super::{LimitRefusal, Policy, Quota};
use crate::domain::EffectiveLimits;

const MINUTE_NANOS: u64 = 60_000_000_000;

/// The `tat` of a bucket that starts used up: the first `follow` sets it to a whole window ahead.
const DRAINED: u64 = u64::MAX;

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
        if self.tat == DRAINED {
            self.per_minute = per_minute;
            self.tat = now.saturating_add(self.window());
            return;
        }
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

    /// Takes `cost` units whether or not they fit: the budget may end up owing more than it holds.
    fn force(&mut self, cost: u64, now: u64) {
        self.tat = self
            .tat
            .max(now)
            .saturating_add(cost.saturating_mul(Bucket::interval(self.per_minute)));
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

/// An environment's two rate budgets.
#[derive(Clone, Copy, Debug, Default)]
pub struct Budgets {
    requests: Bucket,
    facts: Bucket,
}

impl Budgets {
    /// Budgets that start used up and refill at their rate (instead of starting whole).
    pub fn drained() -> Self {
        let bucket = Bucket {
            tat: DRAINED,
            per_minute: 0,
        };
        Budgets {
            requests: bucket,
            facts: bucket,
        }
    }

    /// Checks one request carrying `facts` fact writes against both budgets at `now` (nanoseconds), and
    /// when `commit` is set and both fit, takes from both. Returns the budgets left, or the budget that
    /// keeps the request out longest (never counts as longest).
    pub fn take(
        &mut self,
        limits: &EffectiveLimits,
        facts: u64,
        now: u64,
        commit: bool,
    ) -> Result<Vec<Quota>, LimitRefusal> {
        let Budgets {
            requests,
            facts: fact_bucket,
        } = self;
        let mut taken: [Option<u64>; 2] = [None, None];
        let mut refusal: Option<LimitRefusal> = None;
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
                    let worse = match &refusal {
                        None => true,
                        Some(previous) => match (previous.retry_after, wait) {
                            (None, _) => false,
                            (Some(_), None) => true,
                            (Some(a), Some(b)) => b > a,
                        },
                    };
                    if worse {
                        refusal = Some(LimitRefusal {
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
        if let Some(mut refusal) = refusal {
            refusal.quotas = self.current(limits, now);
            return Err(refusal);
        }
        if commit {
            if let Some(tat) = taken[0] {
                self.requests.tat = tat;
            }
            if let Some(tat) = taken[1] {
                self.facts.tat = tat;
            }
        }
        Ok(self.current(limits, now))
    }

    /// Takes `facts` from the fact-write budget even beyond what it holds (a debt the next writes wait
    /// for), and nothing from the request budget. Returns the budgets left.
    pub fn charge(&mut self, limits: &EffectiveLimits, facts: u64, now: u64) -> Vec<Quota> {
        if let Some(limit) = limits.requests_per_minute {
            self.requests.follow(limit, now);
        }
        if let Some(limit) = limits.fact_writes_per_minute {
            self.facts.follow(limit, now);
            if facts > 0 {
                self.facts.force(facts, now);
            }
        }
        self.current(limits, now)
    }

    /// The budgets left at `now`, without taking anything.
    pub fn quotas(&mut self, limits: &EffectiveLimits, now: u64) -> Vec<Quota> {
        if let Some(limit) = limits.fact_writes_per_minute {
            self.facts.follow(limit, now);
        }
        self.current(limits, now)
    }

    fn current(&self, limits: &EffectiveLimits, now: u64) -> Vec<Quota> {
        let mut quotas = Vec::with_capacity(3);
        if limits.requests_per_minute.is_some() {
            quotas.push(self.requests.quota(Policy::Requests, now));
        }
        if limits.fact_writes_per_minute.is_some() {
            quotas.push(self.facts.quota(Policy::FactWrites, now));
        }
        quotas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn limits(requests: Option<u64>, facts: Option<u64>) -> EffectiveLimits {
        EffectiveLimits {
            requests_per_minute: requests,
            fact_writes_per_minute: facts,
            max_concurrent_requests: None,
            max_batch_facts: None,
            max_write_body_bytes: None,
        }
    }

    fn admit(
        budgets: &mut Budgets,
        limits: &EffectiveLimits,
        facts: u64,
        now: u64,
    ) -> Result<Vec<Quota>, LimitRefusal> {
        budgets.take(limits, facts, now, true)
    }

    #[test]
    fn a_budget_admits_exactly_its_size_then_refuses_with_the_exact_wait() {
        let mut budgets = Budgets::default();
        let limits = limits(Some(60), None);
        for i in 0..60 {
            let quotas = admit(&mut budgets, &limits, 0, 0).unwrap();
            assert_eq!(quotas[0].remaining, 59 - i);
        }
        let refusal = admit(&mut budgets, &limits, 0, 0).unwrap_err();
        assert_eq!(refusal.policy, Policy::Requests);
        assert_eq!(refusal.retry_after, Some(Duration::from_secs(1)), "one unit per second");
    }

    #[test]
    fn a_request_sent_after_the_wait_passes_and_not_before() {
        let mut budgets = Budgets::default();
        let limits = limits(Some(7), Some(10));
        while admit(&mut budgets, &limits, 3, 0).is_ok() {}
        let wait = admit(&mut budgets, &limits, 3, 0).unwrap_err().retry_after.unwrap();
        let wait = wait.as_nanos() as u64;
        assert!(admit(&mut budgets, &limits, 3, wait - 1).is_err());
        assert!(admit(&mut budgets, &limits, 3, wait).is_ok());
    }

    #[test]
    fn waiting_a_minute_brings_the_whole_budget_back() {
        let mut budgets = Budgets::default();
        let limits = limits(Some(1_000), Some(999));
        assert!(admit(&mut budgets, &limits, 999, 0).is_ok());
        assert!(admit(&mut budgets, &limits, 1, 0).is_err());
        let quotas = admit(&mut budgets, &limits, 999, 60 * SECOND).unwrap();
        assert_eq!(quotas[1].remaining, 0);
    }

    #[test]
    fn a_refused_request_takes_nothing_from_either_budget() {
        let mut budgets = Budgets::default();
        let limits = limits(Some(10), Some(5));
        assert!(admit(&mut budgets, &limits, 4, 0).is_ok());
        let refusal = admit(&mut budgets, &limits, 2, 0).unwrap_err();
        assert_eq!(refusal.policy, Policy::FactWrites);
        let quotas = admit(&mut budgets, &limits, 1, 0).unwrap();
        assert_eq!(quotas[0].remaining, 8, "two requests admitted out of ten");
        assert_eq!(quotas[1].remaining, 0);
    }

    #[test]
    fn a_cost_beyond_the_whole_budget_can_never_pass() {
        let mut budgets = Budgets::default();
        let refusal = admit(&mut budgets, &limits(None, Some(10)), 11, 0).unwrap_err();
        assert_eq!((refusal.policy, refusal.retry_after), (Policy::FactWrites, None));
        let refusal = admit(&mut budgets, &limits(Some(0), None), 0, 0).unwrap_err();
        assert_eq!((refusal.policy, refusal.retry_after), (Policy::Requests, None));
    }

    #[test]
    fn raising_a_limit_keeps_what_was_used_and_adds_the_difference() {
        let mut budgets = Budgets::default();
        while admit(&mut budgets, &limits(Some(10), None), 0, 0).is_ok() {}
        let quotas = admit(&mut budgets, &limits(Some(100), None), 0, 0).unwrap();
        assert_eq!(quotas[0].remaining, 89, "10 used before, 1 now");
        // Lowering it below what was used empties the budget but never waits more than a minute.
        let refusal = admit(&mut budgets, &limits(Some(5), None), 0, 0).unwrap_err();
        assert!(refusal.retry_after.unwrap() <= Duration::from_secs(12));
    }

    #[test]
    fn a_charge_beyond_the_budget_is_a_debt_the_next_write_waits_for_exactly() {
        let mut budgets = Budgets::default();
        let limits = limits(Some(100), Some(600));
        assert!(admit(&mut budgets, &limits, 1, 0).is_ok());
        // 5,000 facts at 600 a minute (one per 100 ms): 4,400 beyond the budget, 440 s of debt.
        let quotas = budgets.charge(&limits, 4_999, 0);
        assert_eq!(quotas[1].remaining, 0);
        assert_eq!(quotas[1].full_in, Some(Duration::from_millis(500_000)));
        assert_eq!(quotas[0].remaining, 99, "a charge takes no request");
        let refusal = admit(&mut budgets, &limits, 1, 0).unwrap_err();
        assert_eq!(refusal.policy, Policy::FactWrites);
        assert!(
            admit(&mut budgets, &limits, 0, 0).is_ok(),
            "a request without facts owes nothing"
        );
        let wait = refusal.retry_after.unwrap();
        assert_eq!(
            wait,
            Duration::from_millis(440_100),
            "the debt, then room for one more fact"
        );
        let wait = wait.as_nanos() as u64;
        assert!(admit(&mut budgets, &limits, 1, wait - 1).is_err());
        assert!(admit(&mut budgets, &limits, 1, wait).is_ok());
    }

    #[test]
    fn a_charge_without_a_fact_budget_takes_nothing() {
        let mut budgets = Budgets::default();
        let limits = limits(Some(2), None);
        assert_eq!(budgets.charge(&limits, 1_000_000, 0)[0].remaining, 2);
        assert!(admit(&mut budgets, &limits, 1_000, 0).is_ok());
    }

    #[test]
    fn drained_budgets_start_used_up_and_refill_at_their_rate() {
        let mut budgets = Budgets::drained();
        let limits = limits(Some(60), Some(60));
        let refusal = admit(&mut budgets, &limits, 0, 5 * SECOND).unwrap_err();
        assert_eq!(refusal.retry_after, Some(Duration::from_secs(1)));
        assert!(
            admit(&mut budgets, &limits, 1, 6 * SECOND).is_ok(),
            "one unit a second later"
        );
        assert!(admit(&mut budgets, &limits, 0, 6 * SECOND).is_err());
    }

    #[test]
    fn checking_without_committing_takes_nothing() {
        let mut budgets = Budgets::default();
        let limits = limits(Some(1), None);
        assert!(budgets.take(&limits, 0, 0, false).is_ok());
        assert!(budgets.take(&limits, 0, 0, false).is_ok());
        assert!(admit(&mut budgets, &limits, 0, 0).is_ok());
        assert!(budgets.take(&limits, 0, 0, false).is_err());
    }
}
