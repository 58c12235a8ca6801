//! Types shared by several resources: references, limits, enums and status conditions.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain;

/// Which organization an object belongs to (in the object's own namespace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrganizationRef {
    /// Name of the Organization resource in the same namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
}

/// Limit overrides. An absent field inherits from the next layer: environment, then organization, then the
/// plan's default. Rates are per minute and refill continuously.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// All requests per minute (429 when exceeded). Developer: 60000; Growth: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000_000))]
    pub requests_per_minute: Option<i64>,
    /// Facts inserted or deleted per minute; writes count toward requestsPerMinute too. Developer: 1000; Growth: 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000_000))]
    pub fact_writes_per_minute: Option<i64>,
    /// Requests in flight at once (429 when exceeded). Developer: 4; Growth: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_concurrent_requests: Option<i64>,
    /// Facts in one write request (413 when exceeded). Developer: 20; Growth: 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_batch_facts: Option<i64>,
    /// Bytes in one write request body (413 when exceeded). Default 983040 (960 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 67_108_864))]
    pub max_write_body_bytes: Option<i64>,
}

/// The plan decides the default limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PlanSpec {
    #[default]
    Developer,
    Growth,
}

/// What happens to the stored data when the resource is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicySpec {
    /// Stop managing it and keep its data (facts, settings). Declaring it again adopts it.
    #[default]
    Retain,
    /// Delete it and its data.
    Delete,
}

/// A user's role in the organization.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RoleSpec {
    /// Reads every environment; manages non-production environments.
    #[default]
    Member,
    /// Also manages production environments, users and roles.
    Admin,
}

/// What an API key may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AccessSpec {
    /// Reads and writes facts.
    #[default]
    ReadWrite,
    /// Queries only; writes are refused with 403.
    ReadOnly,
}

/// A kstatus condition (`Ready`, `Reconciling`, `Stalled`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    /// A CamelCase reason, e.g. UnknownAccount or KeyLimitReached.
    pub reason: String,
    /// What happened and what to do about it.
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The limits an environment's sidecar enforces; absent means unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveLimitsStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fact_writes_per_minute: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_facts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_write_body_bytes: Option<i64>,
}

fn to_i64(value: Option<u64>) -> Option<i64> {
    value.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

impl From<domain::EffectiveLimits> for EffectiveLimitsStatus {
    fn from(limits: domain::EffectiveLimits) -> Self {
        EffectiveLimitsStatus {
            requests_per_minute: to_i64(limits.requests_per_minute),
            fact_writes_per_minute: to_i64(limits.fact_writes_per_minute),
            max_concurrent_requests: to_i64(limits.max_concurrent_requests),
            max_batch_facts: to_i64(limits.max_batch_facts),
            max_write_body_bytes: to_i64(limits.max_write_body_bytes),
        }
    }
}

impl From<&LimitsSpec> for domain::LimitOverrides {
    fn from(spec: &LimitsSpec) -> Self {
        // The schema forbids negatives; should one slip through (a manifest that never met an API server),
        // treating it as zero is the safe reading of "no budget".
        let to_u64 = |v: Option<i64>| v.map(|n| u64::try_from(n).unwrap_or(0));
        domain::LimitOverrides {
            requests_per_minute: to_u64(spec.requests_per_minute),
            fact_writes_per_minute: to_u64(spec.fact_writes_per_minute),
            max_concurrent_requests: to_u64(spec.max_concurrent_requests),
            max_batch_facts: to_u64(spec.max_batch_facts),
            max_write_body_bytes: to_u64(spec.max_write_body_bytes),
        }
    }
}

impl From<PlanSpec> for domain::PlanTier {
    fn from(plan: PlanSpec) -> Self {
        match plan {
            PlanSpec::Developer => domain::PlanTier::Developer,
            PlanSpec::Growth => domain::PlanTier::Growth,
        }
    }
}

impl From<DeletionPolicySpec> for domain::DeletionPolicy {
    fn from(policy: DeletionPolicySpec) -> Self {
        match policy {
            DeletionPolicySpec::Retain => domain::DeletionPolicy::Retain,
            DeletionPolicySpec::Delete => domain::DeletionPolicy::Delete,
        }
    }
}

impl From<RoleSpec> for domain::Role {
    fn from(role: RoleSpec) -> Self {
        match role {
            RoleSpec::Member => domain::Role::Member,
            RoleSpec::Admin => domain::Role::Admin,
        }
    }
}

impl From<AccessSpec> for domain::Access {
    fn from(access: AccessSpec) -> Self {
        match access {
            AccessSpec::ReadWrite => domain::Access::ReadWrite,
            AccessSpec::ReadOnly => domain::Access::ReadOnly,
        }
    }
}

/// Labels or annotations.
pub type StringMap = BTreeMap<String, String>;
