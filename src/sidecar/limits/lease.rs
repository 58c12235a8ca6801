//! Leases: slices of the shared budgets that this replica holds and spends without asking Redis.
//!
//! Deciding every request in Redis is exact but costs Redis work per request (a script run reading and
//! writing an environment's budgets and slots): on the benchmark's two cores that work alone cost the sidecar
//! a third of its throughput. A lease moves the common case out of Redis without giving up the bound:
//!
//! - **Request tokens** are taken from the environment's shared GCRA budget in Redis, several at once, and
//!   spent here one per read. Every token spent was taken from the shared budget first, so all replicas
//!   together never admit more than the budget; a lease only changes *who* spends it. Tokens come only from
//!   the part of the budget above a reserve of a tenth ([`RESERVE_SHARE`]), never leased: near the
//!   edge every request is decided in Redis, one token at a time, exact and fair between replicas.
//! - **How many:** a hundredth of the budget (at least one), the request's own included, so what a
//!   replica holds (and loses when killed) refills within 0.6 s at the budget's rate. The budget, not the
//!   traffic seen, sizes it: a lease grown from one as it is used up (slow start) measured no better, and
//!   unspent tokens go back anyway.
//! - **Unspent tokens go back** after [`LEASE_SPAN`] (the limiter's heartbeat returns them to the shared
//!   budget), so an idle replica does not keep budget a busy one needs; a killed replica's unspent tokens
//!   are at most 1% of the budget, already counted as used, and refill with it (expiry, not goodwill).
//! - **Concurrency slots** are leased only when the limit is large against the replicas sharing it
//!   ([`SLOTS_PER_REPLICA_TO_LEASE`] each): a replica then keeps spare slots, a sixteenth of its share of
//!   the limit and at most 64 ([`spare_slots`]; never more than half of what is free in Redis), returned
//!   beyond that when requests end, and all after [`LEASE_SPAN`] idle. A small limit (say 4 across 3
//!   replicas) is decided slot by slot in Redis. Slots held count in Redis under this replica's id, so a
//!   killed replica's come back by heartbeat expiry as before.
//! - **One ask at a time:** clients send bursts (wrk's threads, like many clients, walk their keys in
//!   turn across connections, so an environment's requests arrive together). While a lease is being asked
//!   for, the environment's other requests that find the lease empty wait for that answer (at most the
//!   Redis timeout) instead of each asking Redis and waiting a round trip of their own. Near the edge
//!   (the last lease granted less than asked) nobody waits: each request is decided in Redis.
//!
//! This file is the bookkeeping only (no I/O): what can be admitted here, what to ask Redis for, what an
//! answer adds, and what to give back. `redis.rs` asks and answers.

use std::sync::Arc;
use std::time::Duration;

use foldhash::HashMap;
use tokio::sync::Notify;

use super::{Policy, Quota};
use crate::domain::EffectiveLimits;

/// How long unspent tokens and idle spare slots are kept before they go back to the shared budget.
pub const LEASE_SPAN: Duration = Duration::from_secs(1);

/// The part of a budget never leased: the last tenth is decided request by request in Redis.
pub const RESERVE_SHARE: u64 = 10;

/// The most one lease holds: one hundredth of the budget.
const LEASE_SHARE: u64 = 100;

/// Slots are leased only when the limit allows this many per replica sharing it.
pub const SLOTS_PER_REPLICA_TO_LEASE: u64 = 64;

/// The shared budget as Redis last reported it, and when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Reported {
    remaining: u64,
    /// Time until the budget is whole again, as of `at`.
    full_in: Duration,
    at: Duration,
}

/// One environment's lease on this replica.
#[derive(Clone, Debug, Default)]
pub struct EnvironmentLease {
    /// Request tokens taken from the shared budget and not spent yet.
    tokens: u64,
    /// The `requestsPerMinute` the tokens were taken under: another limit and they are not spent.
    per_minute: u64,
    granted_at: Duration,
    /// Slots this replica holds in Redis for the environment: those in use and spare ones.
    slots_held: u64,
    slots_in_use: u64,
    /// Slots in use by the other replicas when Redis last said.
    others_in_use: u64,
    /// Whether Redis ever counted slots of this replica here (then it is told when they are all gone).
    had_slots: bool,
    /// Set while a lease is being asked for: told when its answer is in.
    asking: Option<Arc<Notify>>,
    /// The last lease granted less than it asked (or a request was refused): the budget is near its
    /// edge, and requests do not wait for one another's asks.
    near_edge: bool,
    last_active: Duration,
    requests: Option<Reported>,
    facts: Option<Reported>,
}

/// What a request may do now.
#[derive(Debug)]
pub enum Decision {
    /// Admitted from the lease: the budgets as this replica sees them.
    Admitted(Vec<Quota>),
    /// Ask Redis for more.
    Ask(Ask),
    /// Another request is asking Redis for a lease: wait until it is told, then try again.
    Wait(Arc<Notify>),
}

/// What to ask Redis for: `slots` slots (0: none needed, or one was taken from the lease) and `tokens`
/// tokens (likewise), the request's own first; what was taken here goes back with [`Leases::refused`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ask {
    pub slots: u64,
    pub tokens: u64,
    took_slot: bool,
    took_token: bool,
    /// This is the environment's lease ask that others wait for.
    awaited: bool,
}

impl Ask {
    /// Whether the request holds a slot once Redis admits it (taken here, or asked for).
    pub fn holds_slot(&self) -> bool {
        self.took_slot || self.slots > 0
    }
}

/// What Redis granted a request that asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    pub slots: u64,
    pub tokens: u64,
    /// Slots in use in all, by every replica (when slots were asked).
    pub in_use: u64,
}

/// What goes back to Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GiveBack {
    pub environment: String,
    /// Request tokens unspent, taken under `per_minute`.
    pub tokens: u64,
    pub per_minute: u64,
    /// Spare slots.
    pub slots: u64,
    /// The environment was idle and holds nothing any more: it is forgotten here, and its count in Redis
    /// is to be zeroed.
    pub forgotten: bool,
}

/// Every environment's lease on this replica.
#[derive(Debug, Default)]
pub struct Leases {
    environments: HashMap<String, EnvironmentLease>,
}

/// Whether slots of a limit of `max` are leased when `replicas` share it.
pub fn leases_slots(max: u64, replicas: u64) -> bool {
    max >= SLOTS_PER_REPLICA_TO_LEASE.saturating_mul(replicas.max(1))
}

/// The spare slots a replica keeps of a limit of `max` shared by `replicas`: none when slots are not
/// leased, else a sixteenth of its share, at most 64.
pub fn spare_slots(max: u64, replicas: u64) -> u64 {
    if !leases_slots(max, replicas) {
        return 0;
    }
    (max / 16 / replicas.max(1)).clamp(1, 64)
}

impl EnvironmentLease {
    fn tokens_usable(&self, per_minute: u64, now: Duration) -> bool {
        self.tokens > 0 && self.per_minute == per_minute && now.saturating_sub(self.granted_at) < LEASE_SPAN
    }

    fn quotas(&self, limits: &EffectiveLimits, now: Duration) -> Vec<Quota> {
        let mut quotas = Vec::with_capacity(2);
        if let (Some(limit), Some(reported)) = (limits.requests_per_minute, self.requests) {
            quotas.push(seen(Policy::Requests, limit, reported, self.tokens, now));
        }
        if let (Some(limit), Some(reported)) = (limits.fact_writes_per_minute, self.facts) {
            quotas.push(seen(Policy::FactWrites, limit, reported, 0, now));
        }
        quotas
    }
}

/// A budget as a client of this replica sees it: what Redis reported, refilled since at the budget's rate,
/// plus the tokens held here (theirs to spend).
fn seen(policy: Policy, limit: u64, reported: Reported, held: u64, now: Duration) -> Quota {
    let interval = Duration::from_secs(60) / limit.max(1) as u32;
    let elapsed = now.saturating_sub(reported.at);
    let refilled = (elapsed.as_nanos() / interval.as_nanos().max(1)) as u64;
    let ahead = interval.saturating_mul(held.min(u32::MAX as u64) as u32);
    Quota {
        policy,
        limit,
        remaining: reported
            .remaining
            .saturating_add(refilled)
            .saturating_add(held)
            .min(limit),
        full_in: Some(reported.full_in.saturating_sub(elapsed).saturating_sub(ahead)),
    }
}

impl Leases {
    /// A read (one request, no facts) or, with `needs_token` false, a write's slot: admitted from the lease
    /// when it holds what the request needs, else what to ask Redis for.
    pub fn try_enter(
        &mut self,
        environment: &str,
        limits: &EffectiveLimits,
        needs_token: bool,
        replicas: u64,
        now: Duration,
    ) -> Decision {
        let lease = match self.environments.get_mut(environment) {
            Some(lease) => lease,
            None => self.environments.entry(environment.to_owned()).or_default(),
        };
        lease.last_active = now;
        let slot_here = limits
            .max_concurrent_requests
            .map(|_| lease.slots_held > lease.slots_in_use);
        let token_here = limits
            .requests_per_minute
            .filter(|_| needs_token)
            .map(|per_minute| lease.tokens_usable(per_minute, now));
        if slot_here != Some(false) && token_here != Some(false) {
            if slot_here.is_some() {
                lease.slots_in_use += 1;
            }
            if token_here.is_some() {
                lease.tokens -= 1;
            }
            return Decision::Admitted(lease.quotas(limits, now));
        }
        if let Some(asking) = &lease.asking {
            return Decision::Wait(asking.clone());
        }
        let mut ask = Ask::default();
        match (limits.max_concurrent_requests, slot_here) {
            (Some(max), Some(false)) => ask.slots = 1 + spare_slots(max, replicas),
            (_, Some(true)) => {
                lease.slots_in_use += 1;
                ask.took_slot = true;
            }
            _ => {}
        }
        match (limits.requests_per_minute, token_here) {
            (Some(per_minute), Some(false)) => ask.tokens = (per_minute / LEASE_SHARE).max(1),
            (_, Some(true)) => {
                lease.tokens -= 1;
                ask.took_token = true;
            }
            _ => {}
        }
        if !lease.near_edge && (ask.tokens > 1 || ask.slots > 1) {
            ask.awaited = true;
            lease.asking = Some(Arc::new(Notify::new()));
        }
        Decision::Ask(ask)
    }

    /// Redis admitted a request that asked for `ask` and granted `granted` (the request's own slot and
    /// token included), reporting the budgets in `quotas`.
    pub fn granted(
        &mut self,
        environment: &str,
        limits: &EffectiveLimits,
        ask: &Ask,
        granted: Grant,
        quotas: &[Quota],
        now: Duration,
    ) {
        let lease = self.environments.entry(environment.to_owned()).or_default();
        if ask.slots > 0 && granted.slots > 0 {
            lease.slots_held += granted.slots;
            lease.slots_in_use += 1;
            lease.others_in_use = granted.in_use.saturating_sub(lease.slots_held);
            lease.had_slots = true;
        }
        if let Some(per_minute) = limits
            .requests_per_minute
            .filter(|_| ask.tokens > 0 && granted.tokens > 0)
        {
            if lease.per_minute != per_minute {
                lease.tokens = 0;
                lease.per_minute = per_minute;
            }
            lease.tokens += granted.tokens - 1;
            lease.granted_at = now;
        }
        if ask.tokens > 0 {
            lease.near_edge = granted.tokens < ask.tokens;
        }
        lease.answered(ask, quotas, now);
    }

    /// Redis refused a request that asked: what it took from the lease goes back into it.
    pub fn refused(&mut self, environment: &str, ask: &Ask, quotas: &[Quota], now: Duration) {
        let Some(lease) = self.environments.get_mut(environment) else {
            return;
        };
        if ask.took_slot {
            lease.slots_in_use = lease.slots_in_use.saturating_sub(1);
        }
        if ask.took_token {
            lease.tokens += 1;
        }
        if !quotas.is_empty() {
            // Refused by a budget (not by Redis failing): near the edge until a lease is granted whole.
            lease.near_edge = true;
        }
        lease.answered(ask, quotas, now);
    }

    /// A request's slot is free again: how many slots go back to Redis now (the spare ones beyond what
    /// the lease keeps; all of them when slots are not leased).
    pub fn release(&mut self, environment: &str, max: u64, replicas: u64, now: Duration) -> u64 {
        let Some(lease) = self.environments.get_mut(environment) else {
            return 0;
        };
        lease.slots_in_use = lease.slots_in_use.saturating_sub(1);
        lease.last_active = now;
        let spare = lease.slots_held.saturating_sub(lease.slots_in_use);
        let back = spare.saturating_sub(spare_slots(max, replicas));
        lease.slots_held -= back;
        back
    }

    /// What goes back to Redis now: tokens older than [`LEASE_SPAN`] and the spare slots of environments
    /// idle that long. Environments holding nothing and idle are forgotten (memory stays bounded by the
    /// environments in use).
    pub fn expire(&mut self, now: Duration) -> Vec<GiveBack> {
        let mut back = Vec::new();
        self.environments.retain(|environment, lease| {
            let idle = now.saturating_sub(lease.last_active) >= LEASE_SPAN;
            let tokens = if now.saturating_sub(lease.granted_at) >= LEASE_SPAN {
                std::mem::take(&mut lease.tokens)
            } else {
                0
            };
            let slots = if idle {
                let spare = lease.slots_held.saturating_sub(lease.slots_in_use);
                lease.slots_held -= spare;
                spare
            } else {
                0
            };
            let forgotten = idle && lease.slots_held == 0 && lease.tokens == 0;
            if tokens > 0 || slots > 0 || (forgotten && lease.had_slots) {
                back.push(GiveBack {
                    environment: environment.clone(),
                    tokens,
                    per_minute: lease.per_minute,
                    slots,
                    forgotten,
                });
            }
            !forgotten
        });
        back
    }

    /// Redis is away: tokens held cannot be given back (they are forgotten; the shared budget counted them
    /// as used) and spare slots are dropped from the count (the heartbeat's rewrite sets Redis's).
    pub fn forget(&mut self) {
        for lease in self.environments.values_mut() {
            lease.tokens = 0;
            lease.slots_held = lease.slots_in_use;
        }
    }

    /// The budgets as a client of this replica sees them.
    pub fn quotas(&self, environment: &str, limits: &EffectiveLimits, now: Duration) -> Vec<Quota> {
        self.environments
            .get(environment)
            .map(|lease| lease.quotas(limits, now))
            .unwrap_or_default()
    }

    /// The concurrency budget as this replica sees it: its own slots in use and the others' when Redis last
    /// said.
    pub fn concurrency(&self, environment: &str, max: u64) -> Quota {
        let in_use = self
            .environments
            .get(environment)
            .map_or(0, |lease| lease.others_in_use + lease.slots_in_use);
        Quota {
            policy: Policy::Concurrency,
            limit: max,
            remaining: max.saturating_sub(in_use),
            full_in: None,
        }
    }

    /// Whether the lease holds a request token to spend (a write's peek before its body is read).
    pub fn has_token(&self, environment: &str, per_minute: u64, now: Duration) -> bool {
        self.environments
            .get(environment)
            .is_some_and(|lease| lease.tokens_usable(per_minute, now))
    }

    /// Slots held per environment, for the heartbeat's rewrite of this replica's counts in Redis.
    pub fn held(&self) -> impl Iterator<Item = (&str, u64)> {
        self.environments
            .iter()
            .map(|(environment, lease)| (environment.as_str(), lease.slots_held))
    }
}

impl EnvironmentLease {
    /// Notes an answer; the requests waiting for it try again.
    fn answered(&mut self, ask: &Ask, quotas: &[Quota], now: Duration) {
        if ask.awaited
            && let Some(asking) = self.asking.take()
        {
            asking.notify_waiters();
        }
        self.note(quotas, now);
    }

    fn note(&mut self, quotas: &[Quota], now: Duration) {
        for quota in quotas {
            let reported = Some(Reported {
                remaining: quota.remaining,
                full_in: quota.full_in.unwrap_or_default(),
                at: now,
            });
            match quota.policy {
                Policy::Requests => self.requests = reported,
                Policy::FactWrites => self.facts = reported,
                Policy::Concurrency => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limits(per_minute: Option<u64>, max: Option<u64>) -> EffectiveLimits {
        EffectiveLimits {
            requests_per_minute: per_minute,
            fact_writes_per_minute: None,
            max_concurrent_requests: max,
            max_batch_facts: None,
            max_write_body_bytes: None,
        }
    }

    fn ask(decision: Decision) -> Ask {
        match decision {
            Decision::Ask(ask) => ask,
            Decision::Admitted(_) => panic!("admitted from the lease"),
            Decision::Wait(_) => panic!("waits for another ask"),
        }
    }

    /// Redis answers `ask` with a lease of `tokens` tokens and `slots` slots, `in_use` slots in use in all.
    fn answer(
        leases: &mut Leases,
        limits: &EffectiveLimits,
        ask: &Ask,
        (slots, tokens, in_use): (u64, u64, u64),
        quotas: &[Quota],
        now: Duration,
    ) {
        leases.granted("env", limits, ask, Grant { slots, tokens, in_use }, quotas, now);
    }

    /// Redis grants everything asked (the script's part is tested against a real Redis).
    fn grant_all(leases: &mut Leases, limits: &EffectiveLimits, ask: &Ask, now: Duration) {
        answer(leases, limits, ask, (ask.slots, ask.tokens, ask.slots), &[], now);
    }

    #[test]
    fn a_read_that_finds_the_lease_empty_asks_for_a_hundredth_of_the_budget() {
        let mut leases = Leases::default();
        for (per_minute, expected) in [(60_000, 600), (1_000, 10), (50, 1)] {
            let limits = limits(Some(per_minute), None);
            let asked = ask(leases.try_enter("env", &limits, true, 1, Duration::ZERO));
            assert_eq!(asked.tokens, expected, "{per_minute} a minute");
            // Granted only the request's own (near the edge): the next read asks again.
            answer(&mut leases, &limits, &asked, (0, 1, 0), &[], Duration::ZERO);
            assert_eq!(ask(leases.try_enter("env", &limits, true, 1, MS)).tokens, expected);
        }
    }

    /// A lease of `tokens` tokens (the first request's own spent) taken at time zero.
    fn leased(limits: &EffectiveLimits, tokens: u64) -> Leases {
        let mut leases = Leases::default();
        let first = ask(leases.try_enter("env", limits, true, 1, Duration::ZERO));
        answer(&mut leases, limits, &first, (0, tokens, 0), &[], Duration::ZERO);
        leases
    }

    #[test]
    fn tokens_are_spent_here_until_gone_and_unspent_ones_go_back_after_the_span() {
        let limits = limits(Some(60_000), None);
        let mut leases = leased(&limits, 4);
        for _ in 0..3 {
            assert!(matches!(
                leases.try_enter("env", &limits, true, 1, MS),
                Decision::Admitted(_)
            ));
        }
        assert!(matches!(
            leases.try_enter("env", &limits, true, 1, MS),
            Decision::Ask(_)
        ));

        let mut leases = leased(&limits, 4);
        assert!(leases.expire(LEASE_SPAN - MS).is_empty(), "kept within the span");
        assert!(
            matches!(leases.try_enter("env", &limits, true, 1, LEASE_SPAN), Decision::Ask(_)),
            "not spent once the span is over"
        );
        let back = leases.expire(LEASE_SPAN);
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].tokens, back[0].per_minute), (3, 60_000));
        assert!(leases.expire(LEASE_SPAN * 3).is_empty());
        assert!(
            leases.environments.is_empty(),
            "an idle environment holding nothing is forgotten"
        );
    }

    #[test]
    fn tokens_taken_under_another_limit_are_not_spent() {
        let before = limits(Some(60_000), None);
        let mut leases = leased(&before, 5);
        assert!(matches!(
            leases.try_enter("env", &limits(Some(600), None), true, 1, MS),
            Decision::Ask(_)
        ));
        assert!(leases.has_token("env", 60_000, MS));
        assert!(!leases.has_token("env", 600, MS));
    }

    #[test]
    fn a_small_concurrency_limit_is_decided_slot_by_slot() {
        let mut leases = Leases::default();
        let limits = limits(None, Some(4));
        let first = ask(leases.try_enter("env", &limits, true, 3, Duration::ZERO));
        assert_eq!((first.slots, first.tokens), (1, 0));
        grant_all(&mut leases, &limits, &first, Duration::ZERO);
        assert!(matches!(
            leases.try_enter("env", &limits, true, 3, MS),
            Decision::Ask(_)
        ));
        assert_eq!(leases.release("env", 4, 3, MS), 1, "back to Redis at once");
    }

    #[test]
    fn a_large_concurrency_limit_keeps_spare_slots_until_idle() {
        let mut leases = Leases::default();
        let limits = limits(None, Some(1_000));
        let first = ask(leases.try_enter("env", &limits, true, 3, Duration::ZERO));
        // 1,000 across 3 replicas: a sixteenth of this replica's share is 20 spare.
        assert_eq!(first.slots, 21, "its own and the spares");
        grant_all(&mut leases, &limits, &first, Duration::ZERO);
        assert!(
            matches!(leases.try_enter("env", &limits, true, 3, MS), Decision::Admitted(_)),
            "a spare"
        );
        assert_eq!(leases.release("env", 1_000, 3, MS), 0, "kept: 20 spare, one in use");
        assert_eq!(leases.release("env", 1_000, 3, MS), 1, "beyond 20 spare: back");
        assert_eq!(leases.held().collect::<Vec<_>>(), [("env", 20)]);
        let back = leases.expire(MS + LEASE_SPAN);
        assert_eq!((back[0].slots, back[0].forgotten), (20, true));
        assert_eq!(leases.held().count(), 0);
    }

    #[test]
    fn what_a_refused_request_took_from_the_lease_goes_back() {
        let mut leases = Leases::default();
        let limits = limits(Some(60_000), Some(1_000));
        let first = ask(leases.try_enter("env", &limits, true, 1, Duration::ZERO));
        answer(&mut leases, &limits, &first, (2, 1, 2), &[], Duration::ZERO);
        leases.release("env", 1_000, 1, MS);
        // The lease holds a spare slot and no token: the next read takes the slot here and asks for a token.
        let before = leases.environments["env"].slots_in_use;
        let asked = ask(leases.try_enter("env", &limits, true, 1, MS));
        assert!(asked.took_slot && asked.slots == 0 && asked.tokens > 0);
        leases.refused("env", &asked, &[], MS);
        assert_eq!(leases.environments["env"].slots_in_use, before);
    }

    #[test]
    fn a_client_is_told_the_shared_budget_plus_what_this_replica_holds_for_it() {
        let mut leases = Leases::default();
        let limits = limits(Some(600), None);
        let first = ask(leases.try_enter("env", &limits, true, 1, Duration::ZERO));
        let reported = [Quota {
            policy: Policy::Requests,
            limit: 600,
            remaining: 100,
            full_in: Some(Duration::from_secs(50)),
        }];
        answer(&mut leases, &limits, &first, (0, 6, 0), &reported, Duration::ZERO);
        // One second later: 10 more refilled, 5 held here.
        let seen = leases.quotas("env", &limits, Duration::from_secs(1));
        assert_eq!(seen[0].remaining, 115);
        assert_eq!(seen[0].full_in, Some(Duration::from_millis(48_500)));
    }

    #[test]
    fn while_a_lease_is_asked_for_the_others_wait_for_it_except_near_the_edge() {
        let mut leases = Leases::default();
        let limits = limits(Some(60_000), None);
        let first = ask(leases.try_enter("env", &limits, true, 1, Duration::ZERO));
        let Decision::Wait(asking) = leases.try_enter("env", &limits, true, 1, Duration::ZERO) else {
            panic!("a second request waits for the first one's ask");
        };
        let told = asking.notified_owned();
        // Redis grants less than asked: the budget is near its edge.
        answer(&mut leases, &limits, &first, (0, 2, 0), &[], Duration::ZERO);
        assert!(
            futures::FutureExt::now_or_never(told).is_some(),
            "the waiting request is told"
        );
        assert!(matches!(
            leases.try_enter("env", &limits, true, 1, MS),
            Decision::Admitted(_)
        ));
        let near = ask(leases.try_enter("env", &limits, true, 1, MS));
        assert!(
            matches!(leases.try_enter("env", &limits, true, 1, MS), Decision::Ask(_)),
            "near the edge every request asks Redis itself"
        );
        answer(&mut leases, &limits, &near, (0, 600, 0), &[], MS);
        assert!(
            !leases.environments["env"].near_edge,
            "a whole lease: no longer near the edge"
        );
    }
}
