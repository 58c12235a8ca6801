//! `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` headers, following
//! draft-ietf-httpapi-ratelimit-headers-10 (structured-field lists of named policies):
//!
//! ```text
//! RateLimit-Policy: "requests";q=60000;w=60, "fact-writes";q=1000;qu="facts";w=60, "concurrency";q=4;qu="concurrent-requests"
//! RateLimit: "requests";r=59998;t=1, "fact-writes";r=997;t=1, "concurrency";r=3
//! ```
//!
//! `r` is what is left now and `t` the seconds until the budget is whole again (rounded up). "facts" is not a
//! quota unit registered by the draft; clients that do not know it can ignore that policy. Unlimited budgets
//! are left out.

use std::fmt::Write as _;
use std::time::Duration;

use hyper::header::HeaderValue;

use super::limits::{Policy, Quota};
use crate::domain::EffectiveLimits;

pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
pub const RATELIMIT: &str = "ratelimit";

/// Whole seconds, rounded up, at least 1: a request sent after that many seconds is past the wait.
pub fn whole_seconds(wait: Duration) -> u64 {
    wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

/// The `RateLimit-Policy` value for an environment's limits, or `None` when nothing is limited.
pub fn policy(limits: &EffectiveLimits) -> Option<HeaderValue> {
    let mut value = String::new();
    let mut item = |text: std::fmt::Arguments| {
        if !value.is_empty() {
            value.push_str(", ");
        }
        let _ = value.write_fmt(text);
    };
    if let Some(q) = limits.requests_per_minute {
        item(format_args!("\"{}\";q={q};w=60", Policy::Requests.name()));
    }
    if let Some(q) = limits.fact_writes_per_minute {
        item(format_args!(
            "\"{}\";q={q};qu=\"facts\";w=60",
            Policy::FactWrites.name()
        ));
    }
    if let Some(q) = limits.max_concurrent_requests {
        item(format_args!(
            "\"{}\";q={q};qu=\"concurrent-requests\"",
            Policy::Concurrency.name()
        ));
    }
    (!value.is_empty()).then(|| HeaderValue::from_str(&value).expect("ASCII"))
}

/// The `RateLimit` value for the budgets' current state, or `None` when there are none.
pub fn state(quotas: &[Quota]) -> Option<HeaderValue> {
    let mut value = String::new();
    for quota in quotas {
        if !value.is_empty() {
            value.push_str(", ");
        }
        let _ = write!(value, "\"{}\";r={}", quota.policy.name(), quota.remaining);
        if let Some(full_in) = quota.full_in {
            let _ = write!(value, ";t={}", full_in.as_nanos().div_ceil(1_000_000_000));
        }
    }
    (!value.is_empty()).then(|| HeaderValue::from_str(&value).expect("ASCII"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PlanTier;

    #[test]
    fn the_developer_plan_advertises_its_three_policies() {
        let value = policy(&PlanTier::Developer.default_limits()).unwrap();
        assert_eq!(
            value,
            r#""requests";q=60000;w=60, "fact-writes";q=1000;qu="facts";w=60, "concurrency";q=4;qu="concurrent-requests""#
        );
        let growth = policy(&PlanTier::Growth.default_limits()).unwrap();
        assert_eq!(growth, r#""fact-writes";q=30000;qu="facts";w=60"#);
    }

    #[test]
    fn state_reports_remaining_and_seconds_until_whole() {
        let quotas = [
            Quota {
                policy: Policy::Requests,
                limit: 10,
                remaining: 0,
                full_in: Some(Duration::from_millis(1500)),
            },
            Quota {
                policy: Policy::Concurrency,
                limit: 4,
                remaining: 3,
                full_in: None,
            },
        ];
        assert_eq!(state(&quotas).unwrap(), r#""requests";r=0;t=2, "concurrency";r=3"#);
        assert!(state(&[]).is_none());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_nanos(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }
}
