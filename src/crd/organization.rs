use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Condition, DeletionPolicySpec, LimitsSpec, PlanSpec};

/// An organization: its plan, organization-wide limit overrides and what happens to its data on deletion.
/// It always has two environments, `production` and `development`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orgkeeper.dev",
    version = "v1alpha1",
    kind = "Organization",
    namespaced,
    status = "OrganizationStatus",
    shortname = "okorg",
    category = "orgkeeper",
    doc = "An organization of the authorization service: plan, limits, deletion policy.",
    printcolumn(name = "Display Name", type_ = "string", json_path = ".spec.displayName"),
    printcolumn(name = "Plan", type_ = "string", json_path = ".spec.plan"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit")
        .field_path(".metadata.name")
)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationSpec {
    /// The name people see.
    #[schemars(length(min = 1, max = 100))]
    pub display_name: String,
    /// Developer or Growth; decides the default limits of every environment.
    #[serde(default)]
    pub plan: PlanSpec,
    /// Organization-wide limit overrides, applied to every environment that does not override them itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Retain (default) keeps the organization's data when this resource is deleted; Delete removes it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicySpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The organization's id in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// Environments in the store, default ones included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<i32>,
    /// Users in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<i32>,
}
