use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Condition, OrganizationRef, RoleSpec};

/// A person in an organization, identified by exactly one existing account: a GitHub username or a Google
/// Workspace email. An account that does not exist yet is reported in status and retried until it does.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orgkeeper.dev",
    version = "v1alpha1",
    kind = "User",
    namespaced,
    status = "UserStatus",
    shortname = "okuser",
    category = "orgkeeper",
    doc = "A user of an organization: one GitHub or Google account and a role.",
    printcolumn(name = "Organization", type_ = "string", json_path = ".spec.organizationRef.name"),
    printcolumn(name = "Account", type_ = "string", json_path = ".status.account"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.github) != has(self.google)").message("set exactly one of github or google"))]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    /// The organization this user belongs to. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("organizationRef is immutable: create a new User instead"))]
    pub organization_ref: OrganizationRef,
    /// GitHub username (1 to 39 letters, digits or single hyphens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 39), regex(pattern = r"^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$"))]
    pub github: Option<String>,
    /// Google Workspace email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(email, length(min = 3, max = 254))]
    pub google: Option<String>,
    /// Member (default) or Admin.
    #[serde(default)]
    pub role: RoleSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The account, normalised (e.g. github:alice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}
