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

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::Duration;

use foldhash::HashMap;

use hyper::header::{HeaderName, HeaderValue};

use super::limits::{Policy, Quota};
use crate::domain::EffectiveLimits;

// Names built at compile time: `from_static` outside a const context checks its argument on every call.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds, rounded up, at least 1: a request sent after that many seconds is past the wait.
pub fn whole_seconds(wait: Duration) -> u64 {
    wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

/// At most this many `RateLimit-Policy` values kept per thread; beyond it the cache starts afresh.
const MAX_CACHED_POLICIES: usize = 4096;

thread_local! {
    /// `RateLimit-Policy` values by limits: most environments share a few sets of limits (the plans'), and
    /// the value is on every answer, so it is formatted once per set. Per thread, not shared: a value is
    /// cloned for every answer, and a clone writes the value's reference count, which would otherwise be
    /// one cache line written by every worker for every environment of a plan.
    static POLICIES: RefCell<HashMap<EffectiveLimits, Option<HeaderValue>>> = RefCell::default();
}

/// The `RateLimit-Policy` value for an environment's limits, or `None` when nothing is limited.
pub fn policy(limits: &EffectiveLimits) -> Option<HeaderValue> {
    POLICIES.with_borrow_mut(|cache| {
        if let Some(value) = cache.get(limits) {
            return value.clone();
        }
        if cache.len() >= MAX_CACHED_POLICIES {
            cache.clear();
        }
        cache.entry(*limits).or_insert_with(|| format_policy(limits)).clone()
    })
}

fn format_policy(limits: &EffectiveLimits) -> Option<HeaderValue> {
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

/// The `RateLimit` value for the budgets' current state, or `None` when there are none. (It changes on every
/// answer, so it is written without the formatting machinery, on the stack: one allocation, the value's.)
pub fn state(quotas: &[Quota]) -> Option<HeaderValue> {
    if quotas.is_empty() {
        return None;
    }
    // Three policies at most, each a name and two 20-digit numbers: the value fits (a test checks the
    // longest), and anything longer is written again into a vector rather than cut.
    let mut inline = [0u8; INLINE_STATE];
    let mut rest: &mut [u8] = &mut inline;
    let fits = write_state(&mut rest, quotas).is_ok();
    let unused = rest.len();
    if fits {
        return HeaderValue::from_bytes(&inline[..inline.len() - unused]).ok();
    }
    let mut value = Vec::new();
    write_state(&mut value, quotas).ok()?;
    HeaderValue::from_bytes(&value).ok()
}

/// The longest `RateLimit` value written on the stack.
const INLINE_STATE: usize = 192;

/// `"requests";r=59998;t=1, "concurrency";r=3`, numbers by `itoa` (two digits per step). Writing into a
/// slice is a bounds check and a copy per part, where a `SmallVec` spent a thousand instructions a value.
fn write_state(out: &mut impl std::io::Write, quotas: &[Quota]) -> std::io::Result<()> {
    let mut numbers = itoa::Buffer::new();
    for (i, quota) in quotas.iter().enumerate() {
        if i > 0 {
            out.write_all(b", ")?;
        }
        out.write_all(b"\"")?;
        out.write_all(quota.policy.name().as_bytes())?;
        out.write_all(b"\";r=")?;
        out.write_all(numbers.format(quota.remaining).as_bytes())?;
        if let Some(full_in) = quota.full_in {
            out.write_all(b";t=")?;
            out.write_all(
                numbers
                    .format(full_in.as_nanos().div_ceil(1_000_000_000) as u64)
                    .as_bytes(),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PlanTier;

    #[test]
    fn cached_policies_follow_the_limits() {
        let mut limits = PlanTier::Developer.default_limits();
        assert_eq!(policy(&limits), format_policy(&limits));
        limits.requests_per_minute = Some(7);
        assert!(
            policy(&limits)
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("\"requests\";q=7;")
        );
        limits.requests_per_minute = None;
        limits.fact_writes_per_minute = None;
        limits.max_concurrent_requests = None;
        assert_eq!(policy(&limits), None);
    }

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
        let big = Quota {
            policy: Policy::FactWrites,
            limit: u64::MAX,
            remaining: u64::MAX,
            full_in: Some(Duration::ZERO),
        };
        assert_eq!(state(&[big]).unwrap(), r#""fact-writes";r=18446744073709551615;t=0"#);
        let longest = [Policy::Requests, Policy::FactWrites, Policy::Concurrency].map(|policy| Quota {
            policy,
            full_in: Some(Duration::from_secs(u64::MAX)),
            ..big
        });
        let expected = [
            r#""requests";r=18446744073709551615;t=18446744073709551615"#,
            r#""fact-writes";r=18446744073709551615;t=18446744073709551615"#,
            r#""concurrency";r=18446744073709551615;t=18446744073709551615"#,
        ]
        .join(", ");
        assert!(
            expected.len() <= INLINE_STATE,
            "every policy with both numbers at their longest is written on the stack"
        );
        assert_eq!(
            state(&longest).unwrap(),
            expected.as_str(),
            "the longest value fits whole"
        );
        let twice = [longest, longest].concat();
        assert_eq!(
            state(&twice).unwrap(),
            [expected.as_str(), expected.as_str()].join(", ").as_str(),
            "what does not fit on the stack is not cut"
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_nanos(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }
}
