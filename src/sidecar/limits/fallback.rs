//! What a shared limiter does while its shared state cannot answer (`--redis-fallback`).
//!
//! `share` keeps the promise that matters most, the total: each live replica enforces its share of every
//! budget (the budget divided by the replicas last seen announcing themselves), in a [`LocalLimiter`] that
//! starts *drained* so that the switch cannot add a whole burst on top of a shared budget already spent.
//! What it admits is remembered per environment and charged to the shared state when it answers again,
//! so an outage does not hand out its budget twice. `deny` refuses with 503 (nothing unaccounted is
//! admitted); `allow` admits everything (availability over limits).

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use foldhash::HashMap;

use super::{Clock, LocalLimiter};
use crate::domain::EffectiveLimits;

/// `--redis-fallback`: what the sidecar does while Redis cannot answer within `--redis-timeout`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fallback {
    /// Each replica enforces budget / replicas-seen-recently on its own.
    #[default]
    Share,
    /// Every limited request is refused with 503.
    Deny,
    /// Requests are admitted without limits.
    Allow,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Share => "share",
            Fallback::Deny => "deny",
            Fallback::Allow => "allow",
        }
    }
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown fallback {0:?}: use share, deny or allow")]
pub struct UnknownFallback(String);

impl FromStr for Fallback {
    type Err = UnknownFallback;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "share" => Ok(Fallback::Share),
            "deny" => Ok(Fallback::Deny),
            "allow" => Ok(Fallback::Allow),
            other => Err(UnknownFallback(other.to_owned())),
        }
    }
}

/// One replica's share of `limits` when `replicas` share them: each budget divided, rounded down so that
/// the shares never add up to more than the budget (a budget smaller than the replica count admits
/// nothing on any replica while the fallback lasts).
pub fn share_of(limits: &EffectiveLimits, replicas: u64) -> EffectiveLimits {
    let replicas = replicas.max(1);
    EffectiveLimits {
        requests_per_minute: limits.requests_per_minute.map(|n| n / replicas),
        fact_writes_per_minute: limits.fact_writes_per_minute.map(|n| n / replicas),
        max_concurrent_requests: limits.max_concurrent_requests.map(|n| n / replicas),
        ..*limits
    }
}

/// What was admitted locally during one outage, to be charged to the shared state afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spent {
    pub requests: u64,
    pub facts: u64,
    /// The (whole, undivided) limits the environment had when it last spent.
    pub limits: EffectiveLimits,
}

/// The local state of one outage in `share` mode: its own drained budgets and what they admitted.
pub struct Outage {
    pub limiter: LocalLimiter,
    pub replicas: u64,
    spent: Mutex<HashMap<String, Spent>>,
}

impl Outage {
    pub fn new(clock: Arc<dyn Clock>, replicas: u64) -> Self {
        Outage {
            limiter: LocalLimiter::drained(clock),
            replicas: replicas.max(1),
            spent: Mutex::new(HashMap::default()),
        }
    }

    pub fn share(&self, limits: &EffectiveLimits) -> EffectiveLimits {
        share_of(limits, self.replicas)
    }

    /// Records what this replica admitted for `environment` while the shared state was away.
    pub fn spend(&self, environment: &str, limits: &EffectiveLimits, requests: u64, facts: u64) {
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let entry = spent.entry(environment.to_owned()).or_insert(Spent {
            requests: 0,
            facts: 0,
            limits: *limits,
        });
        entry.requests += requests;
        entry.facts += facts;
        entry.limits = *limits;
    }

    /// Everything spent, emptied (charged once).
    pub fn take_spent(&self) -> Vec<(String, Spent)> {
        std::mem::take(&mut *self.spent.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_never_add_up_to_more_than_the_budget() {
        let limits = EffectiveLimits {
            requests_per_minute: Some(100),
            fact_writes_per_minute: Some(2),
            max_concurrent_requests: Some(4),
            max_batch_facts: Some(7),
            max_write_body_bytes: None,
        };
        let share = share_of(&limits, 3);
        assert_eq!(share.requests_per_minute, Some(33));
        assert_eq!(
            share.fact_writes_per_minute,
            Some(0),
            "2 among 3 rounds down to nothing"
        );
        assert_eq!(share.max_concurrent_requests, Some(1));
        assert_eq!(share.max_batch_facts, Some(7), "not a budget: unchanged");
        assert_eq!(share_of(&limits, 0), limits, "no replica seen counts as this one");
    }

    #[test]
    fn fallbacks_are_named_as_on_the_command_line() {
        for fallback in [Fallback::Share, Fallback::Deny, Fallback::Allow] {
            assert_eq!(fallback.as_str().parse::<Fallback>().unwrap(), fallback);
        }
        let error = "open".parse::<Fallback>().unwrap_err().to_string();
        assert!(error.contains("share, deny or allow"), "{error}");
    }
}
