use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Condition, DeletionPolicySpec, EffectiveLimitsStatus, LimitsSpec, OrganizationRef};

/// An environment of an organization. The resource's name is the environment's name; a resource named
/// `production` or `development` configures that default environment, and deleting it resets the
/// environment to its defaults instead of deleting it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orgkeeper.dev",
    version = "v1alpha1",
    kind = "Environment",
    namespaced,
    status = "EnvironmentStatus",
    shortname = "okenv",
    category = "orgkeeper",
    doc = "An environment of an organization: production flag, limits, deletion policy.",
    printcolumn(name = "Organization", type_ = "string", json_path = ".spec.organizationRef.name"),
    printcolumn(name = "Production", type_ = "boolean", json_path = ".status.production"),
    printcolumn(name = "Keys", type_ = "integer", json_path = ".status.liveKeys"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name is the environment's name and must be a DNS label: at most 63 lowercase letters, digits and '-'")
        .field_path(".metadata.name"),
    validation = Rule::new("self.metadata.name != 'production' || !has(self.spec.production) || self.spec.production")
        .message("production is a default environment and is always a production environment: remove spec.production or set it to true")
        .field_path(".spec.production"),
    validation = Rule::new("self.metadata.name != 'development' || !has(self.spec.production) || !self.spec.production")
        .message("development is a default environment and is never a production environment: remove spec.production or set it to false")
        .field_path(".spec.production"),
    validation = Rule::new("!(self.metadata.name in ['production', 'development']) || !has(self.spec.deletionPolicy) || self.spec.deletionPolicy != 'Delete'")
        .message("default environments can never be deleted: deletionPolicy Delete is not allowed on production or development (deleting the resource resets the environment)")
        .field_path(".spec.deletionPolicy")
)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSpec {
    /// The organization this environment belongs to. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("organizationRef is immutable: create a new Environment instead"))]
    pub organization_ref: OrganizationRef,
    /// The name people see. Defaults to the resource name (Production/Development for default environments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub display_name: Option<String>,
    /// Whether this is a production environment (only admins manage those). Defaults to false, and is
    /// fixed for the default environments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production: Option<bool>,
    /// Limit overrides for this environment; they win over the organization's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Retain (default) keeps the environment's facts when this resource is deleted; Delete removes them.
    /// Its keys are revoked either way. Default environments are never deleted, only reset.
    #[serde(default)]
    pub deletion_policy: DeletionPolicySpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The environment's id, which is also the second part of its keys (e_<environmentId>_...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    /// Whether it is a production environment, after defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production: Option<bool>,
    /// The limits the sidecar enforces, after plan defaults and organization overrides; absent is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_limits: Option<EffectiveLimitsStatus>,
    /// Live keys in this environment (at most 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_keys: Option<i32>,
}
