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

macro_rules! limit_types {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident $name:literal max $max:literal, developer $developer:expr, growth $growth:expr;
    )*) => {
        /// Limit overrides. An absent field inherits from the next layer: environment, then organization, then the
        /// plan's default. Rates are per minute and refill continuously.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
        pub struct LimitsSpec {$(
            $(#[doc = $doc])*
            #[serde(rename = $name, default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 0, max = $max))]
            pub $field: Option<i64>,
        )*}

        /// The limits an environment's sidecar enforces; absent means unlimited.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
        pub struct EffectiveLimitsStatus {$(
            #[serde(rename = $name, default, skip_serializing_if = "Option::is_none")]
            pub $field: Option<i64>,
        )*}

        impl From<domain::EffectiveLimits> for EffectiveLimitsStatus {
            fn from(limits: domain::EffectiveLimits) -> Self {
                // Unlimited stays absent; a limit beyond i64 (none is) would read as the largest one.
                let to_i64 = |value: Option<u64>| value.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
                EffectiveLimitsStatus { $($field: to_i64(limits.$field)),* }
            }
        }

        impl From<&LimitsSpec> for domain::LimitOverrides {
            fn from(spec: &LimitsSpec) -> Self {
                // The schema forbids negatives; should one slip through (a manifest that never met an API
                // server), treating it as zero is the safe reading of "no budget".
                let to_u64 = |value: Option<i64>| value.map(|n| u64::try_from(n).unwrap_or(0));
                domain::LimitOverrides { $($field: to_u64(spec.$field)),* }
            }
        }
    };
}

// The CRD's limit fields, one per entry of the domain's table of limits.
domain::limits::for_each_limit!(limit_types);

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
