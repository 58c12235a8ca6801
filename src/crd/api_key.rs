use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{AccessSpec, Condition, OrganizationRef, StringMap};

/// An API key for one environment. The key is generated once and written once into a Secret (data keys
/// `OSO_AUTH` and `OSO_URL`); the store keeps only its hash. Set `revoked: true` (or delete the resource) to
/// revoke it; to rotate, create a new ApiKey, move clients to its Secret, then delete the old one.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orgkeeper.dev",
    version = "v1alpha1",
    kind = "ApiKey",
    namespaced,
    status = "ApiKeyStatus",
    shortname = "okkey",
    category = "orgkeeper",
    doc = "An API key for an environment, written once into a Secret.",
    printcolumn(name = "Organization", type_ = "string", json_path = ".spec.organizationRef.name"),
    printcolumn(name = "Environment", type_ = "string", json_path = ".spec.environment"),
    printcolumn(name = "Access", type_ = "string", json_path = ".spec.access"),
    printcolumn(name = "Key ID", type_ = "string", json_path = ".status.keyId"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
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
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// The organization the key belongs to. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("organizationRef is immutable: create a new ApiKey instead"))]
    pub organization_ref: OrganizationRef,
    /// The environment (its resource name, or production/development). Immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("environment is immutable: create a new ApiKey instead"))]
    pub environment: String,
    /// ReadWrite (default) or ReadOnly. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("access is immutable: create a new ApiKey instead"))]
    pub access: AccessSpec,
    /// The Secret the key is written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ApiKeySecret>,
    /// Revokes the key. Revocation is permanent.
    #[serde(default)]
    #[x_kube(validation = Rule::new("!oldSelf || self").message("a revoked key cannot be un-revoked: create a new ApiKey"))]
    pub revoked: bool,
}

/// Where and how the key's Secret is written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySecret {
    /// Name of the Secret (in the ApiKey's namespace). Defaults to the ApiKey's name. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("secret.name is immutable: create a new ApiKey instead"))]
    pub name: Option<String>,
    /// Extra labels and annotations for the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<SecretTemplate>,
}

/// Labels and annotations added to the generated Secret (orgkeeper's own labels always win).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SecretTemplate {
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub labels: StringMap,
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub annotations: StringMap,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The key's public id (the third part of e_<environmentId>_<keyId>_...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// A short fingerprint of the key's hash, to match a key to its record without revealing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The environment's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    /// The Secret holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the key was issued (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// When the key was revoked (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl ApiKey {
    /// The Secret's name: `spec.secret.name`, or the ApiKey's own name.
    pub fn secret_name(&self) -> String {
        self.spec
            .secret
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }
}
