//! Per-environment limits. Each environment's effective limits are resolved in three layers: the plan's
//! defaults, then the organization's overrides, then the environment's own overrides. `None` in an
//! effective limit means unlimited.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The commercial plan an organization is on; it only decides the default limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlanTier {
    #[default]
    Developer,
    Growth,
}

impl PlanTier {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanTier::Developer => "Developer",
            PlanTier::Growth => "Growth",
        }
    }

    /// The limits an environment gets when nobody overrides them.
    pub fn default_limits(self) -> EffectiveLimits {
        match self {
            PlanTier::Developer => EffectiveLimits {
                requests_per_minute: Some(60_000),
                fact_writes_per_minute: Some(1_000),
                max_concurrent_requests: Some(4),
                max_batch_facts: Some(20),
                max_write_body_bytes: Some(MAX_WRITE_BODY_BYTES),
            },
            PlanTier::Growth => EffectiveLimits {
                requests_per_minute: None,
                fact_writes_per_minute: Some(30_000),
                max_concurrent_requests: None,
                max_batch_facts: Some(1_000),
                max_write_body_bytes: Some(MAX_WRITE_BODY_BYTES),
            },
        }
    }
}

/// 960 KiB, the largest write body Oso Cloud accepts on every plan.
pub const MAX_WRITE_BODY_BYTES: u64 = 983_040;

impl fmt::Display for PlanTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PlanTier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Developer" => Ok(PlanTier::Developer),
            "Growth" => Ok(PlanTier::Growth),
            other => Err(format!("unknown plan {other:?}")),
        }
    }
}

/// Overrides declared on an organization or an environment. An absent field inherits from the layer below.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fact_writes_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_facts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_write_body_bytes: Option<u64>,
}

impl LimitOverrides {
    pub fn is_empty(&self) -> bool {
        *self == LimitOverrides::default()
    }

    /// Each field with its user-facing name, for plans and error messages.
    pub fn fields(&self) -> [(&'static str, Option<u64>); 5] {
        [
            ("requestsPerMinute", self.requests_per_minute),
            ("factWritesPerMinute", self.fact_writes_per_minute),
            ("maxConcurrentRequests", self.max_concurrent_requests),
            ("maxBatchFacts", self.max_batch_facts),
            ("maxWriteBodyBytes", self.max_write_body_bytes),
        ]
    }
}

/// The limits a sidecar enforces for one environment. `None` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveLimits {
    pub requests_per_minute: Option<u64>,
    pub fact_writes_per_minute: Option<u64>,
    pub max_concurrent_requests: Option<u64>,
    pub max_batch_facts: Option<u64>,
    pub max_write_body_bytes: Option<u64>,
}

impl EffectiveLimits {
    /// Plan defaults, then the organization's overrides, then the environment's: the most specific wins.
    pub fn resolve(plan: PlanTier, organization: &LimitOverrides, environment: &LimitOverrides) -> Self {
        let defaults = plan.default_limits();
        let pick = |env: Option<u64>, org: Option<u64>, default: Option<u64>| env.or(org).or(default);
        EffectiveLimits {
            requests_per_minute: pick(
                environment.requests_per_minute,
                organization.requests_per_minute,
                defaults.requests_per_minute,
            ),
            fact_writes_per_minute: pick(
                environment.fact_writes_per_minute,
                organization.fact_writes_per_minute,
                defaults.fact_writes_per_minute,
            ),
            max_concurrent_requests: pick(
                environment.max_concurrent_requests,
                organization.max_concurrent_requests,
                defaults.max_concurrent_requests,
            ),
            max_batch_facts: pick(
                environment.max_batch_facts,
                organization.max_batch_facts,
                defaults.max_batch_facts,
            ),
            max_write_body_bytes: pick(
                environment.max_write_body_bytes,
                organization.max_write_body_bytes,
                defaults.max_write_body_bytes,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_have_the_documented_defaults() {
        let dev = PlanTier::Developer.default_limits();
        assert_eq!(dev.requests_per_minute, Some(60_000));
        assert_eq!(dev.fact_writes_per_minute, Some(1_000));
        assert_eq!(dev.max_concurrent_requests, Some(4));
        assert_eq!(dev.max_batch_facts, Some(20));
        assert_eq!(dev.max_write_body_bytes, Some(983_040));
        let growth = PlanTier::Growth.default_limits();
        assert_eq!(growth.requests_per_minute, None);
        assert_eq!(growth.fact_writes_per_minute, Some(30_000));
        assert_eq!(growth.max_concurrent_requests, None);
        assert_eq!(growth.max_batch_facts, Some(1_000));
    }

    #[test]
    fn the_most_specific_layer_wins_field_by_field() {
        let org = LimitOverrides {
            fact_writes_per_minute: Some(500),
            max_batch_facts: Some(50),
            ..Default::default()
        };
        let env = LimitOverrides {
            max_batch_facts: Some(5),
            ..Default::default()
        };
        let limits = EffectiveLimits::resolve(PlanTier::Developer, &org, &env);
        assert_eq!(limits.requests_per_minute, Some(60_000), "plan default");
        assert_eq!(limits.fact_writes_per_minute, Some(500), "organization override");
        assert_eq!(
            limits.max_batch_facts,
            Some(5),
            "environment override beats organization"
        );
    }

    #[test]
    fn an_override_can_cap_an_unlimited_plan_default() {
        let env = LimitOverrides {
            requests_per_minute: Some(10),
            ..Default::default()
        };
        let limits = EffectiveLimits::resolve(PlanTier::Growth, &LimitOverrides::default(), &env);
        assert_eq!(limits.requests_per_minute, Some(10));
        assert_eq!(limits.max_concurrent_requests, None);
    }
}
