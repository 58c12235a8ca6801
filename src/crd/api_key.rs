use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{AccessSpec, Condition, OrganizationRef, StringMap};

/// An API key for one environment. The key is generated once and written once into a Secret (data keys
/// `OSO_AUTH` and `OSO_URL`); the store keeps only its hash. Set `revoked: true` (or delete the resource) to
/// revoke it; `spec.rotation` replaces it in the same Secret (every so often, or when its trigger changes)
/// with the previous key working for an overlap; `spec.expiresAt`/`expireAfter` make it stop by itself.
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
    printcolumn(name = "Last Used", type_ = "date", json_path = ".status.lastUsedTime"),
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
#[x_kube(validation = Rule::new("!(has(self.expiresAt) && has(self.expireAfter))").message("set at most one of expiresAt and expireAfter"))]
pub struct ApiKeySpec {
    /// The organization the key belongs to. Immutable: a key never moves to another organization.
    #[x_kube(validation = Rule::new("self == oldSelf").message("organizationRef is immutable (a key never moves to another organization): delete this ApiKey and create it again with the organizationRef you want"))]
    pub organization_ref: OrganizationRef,
    /// The environment (its resource name, or production/development). Can be corrected until the key is
    /// issued; once it is, a change is refused in status (ImmutableField) and the key is left as it is.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub environment: String,
    /// ReadWrite (default) or ReadOnly. Can be corrected until the key is issued, like environment.
    #[serde(default)]
    pub access: AccessSpec,
    /// The Secret the key is written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ApiKeySecret>,
    /// Revokes the key. Revocation is permanent.
    #[serde(default)]
    #[x_kube(validation = Rule::new("!oldSelf || self").message("a revoked key cannot be un-revoked: create a new ApiKey"))]
    pub revoked: bool,
    /// Replaces the key with a new one in the same Secret, every so often and/or when `trigger` changes;
    /// the previous key keeps working for `overlap`, then stops by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<ApiKeyRotation>,
    /// The key stops working at this time (RFC 3339, e.g. 2027-01-31T00:00:00Z). Not with expireAfter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 64),
        regex(
            pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
        )
    )]
    pub expires_at: Option<String>,
    /// Each key stops working this long after it was issued (like 720h or 90m; units h, m, s). With
    /// rotation, every new key gets the same lifetime. Not with expiresAt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+[hms])+$"))]
    pub expire_after: Option<String>,
}

/// `spec.rotation`. Durations are written like Kubernetes durations: `720h`, `1h30m`, `90s`, `0s`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.every) || !has(self.overlap) || duration(self.overlap) <= duration(self.every)").message("rotation.overlap must not be longer than rotation.every: the previous key would still be working at the next rotation"),
    validation = Rule::new("!has(self.every) || duration(self.every) > duration('0s')").message("rotation.every must be more than 0s (leave it out to rotate only when trigger changes)")
)]
pub struct ApiKeyRotation {
    /// Rotate when the current key is this old (e.g. 720h). Leave out to rotate only on a trigger change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+[hms])+$"))]
    pub every: Option<String>,
    /// How long the previous key keeps working after a rotation (default 24h, or `every` when shorter);
    /// 0s revokes it at once (a compromised key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+[hms])+$"))]
    pub overlap: Option<String>,
    /// Any text: changing it rotates the key now (the GitOps way: a one-line pull request, e.g. a date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub trigger: Option<String>,
}

/// Where and how the key's Secret is written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySecret {
    /// Name of the Secret (in the ApiKey's namespace). Defaults to the ApiKey's name. Can be corrected until
    /// the key is issued; once it is, a change is refused in status (ImmutableField).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,
    /// Extra labels and annotations for the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<SecretTemplate>,
}

/// Labels and annotations added to the generated Secret (orgkeeper's own labels always win).
///
/// GitOps tracking metadata is refused: Argo CD and Flux would take a Secret that carries it for one of theirs,
/// report it as out of sync and prune it, because it is not in Git (it must never be: it holds the key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct SecretTemplate {
    /// Labels for the Secret. Not Argo CD's or Flux's tracking labels (app.kubernetes.io/instance,
    /// argocd.argoproj.io/*, kustomize.toolkit.fluxcd.io/*, helm.toolkit.fluxcd.io/*).
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    #[x_kube(validation = Rule::new(TRACKING_LABELS_RULE).message(TRACKING_LABELS_MESSAGE))]
    pub labels: StringMap,
    /// Annotations for the Secret. Not Argo CD's tracking annotation (argocd.argoproj.io/tracking-id).
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    #[x_kube(validation = Rule::new("!('argocd.argoproj.io/tracking-id' in self)")
        .message("a generated Secret must not carry Argo CD's tracking annotation argocd.argoproj.io/tracking-id: Argo CD would prune it, and its key with it"))]
    pub annotations: StringMap,
}

const TRACKING_LABELS_RULE: &str = "!self.exists(k, k == 'app.kubernetes.io/instance' \
    || k.startsWith('argocd.argoproj.io/') || k.startsWith('kustomize.toolkit.fluxcd.io/') \
    || k.startsWith('helm.toolkit.fluxcd.io/'))";
const TRACKING_LABELS_MESSAGE: &str = "a generated Secret must not carry Argo CD or Flux tracking labels \
    (app.kubernetes.io/instance, argocd.argoproj.io/*, kustomize.toolkit.fluxcd.io/*, helm.toolkit.fluxcd.io/*): \
    the GitOps tool would prune it, and its key with it; use app.kubernetes.io/part-of or your own labels";

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
    /// When a sidecar last saw the key in use (RFC 3339), as of the controller's last resync of the key: up
    /// to the sidecars' `--key-use-flush-interval` plus the controller's `--resync-interval` behind. Absent:
    /// never seen in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_time: Option<String>,
    /// When the current key stops working by itself (RFC 3339; spec.expiresAt or spec.expireAfter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The key the Secret held before the last rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    /// When the previous key stops (or stopped) working: the end of the rotation's overlap (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_expires_at: Option<String>,
    /// When the key was last rotated (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<String>,
    /// When `spec.rotation.every` rotates the key next (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<String>,
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::manifests::SchemaValidator;

    fn key_with_template(template: Value) -> Value {
        json!({"apiVersion": "orgkeeper.dev/v1alpha1", "kind": "ApiKey", "metadata": {"name": "backend"},
            "spec": {"organizationRef": {"name": "acme"}, "environment": "production",
                     "secret": {"name": "backend-oso", "template": template}}})
    }

    fn messages(template: Value) -> Vec<String> {
        SchemaValidator::new()
            .validate("ApiKey", &key_with_template(template))
            .into_iter()
            .map(|v| format!("{}: {}", v.field, v.message))
            .collect()
    }

    #[test]
    fn gitops_tracking_labels_are_refused_on_the_secret() {
        for label in [
            "app.kubernetes.io/instance",
            "argocd.argoproj.io/instance",
            "kustomize.toolkit.fluxcd.io/name",
            "helm.toolkit.fluxcd.io/namespace",
        ] {
            let found = messages(json!({"labels": {label: "x", "team": "a"}}));
            assert!(
                found.len() == 1 && found[0].contains("tracking labels"),
                "{label}: {found:?}"
            );
        }
        let found = messages(json!({"annotations": {"argocd.argoproj.io/tracking-id": "app:/Secret:acme/x"}}));
        assert!(
            found.len() == 1 && found[0].contains("tracking annotation"),
            "{found:?}"
        );
    }

    fn key_with(spec: Value) -> Vec<String> {
        let mut key = json!({"apiVersion": "orgkeeper.dev/v1alpha1", "kind": "ApiKey", "metadata": {"name": "backend"},
            "spec": {"organizationRef": {"name": "acme"}, "environment": "production"}});
        for (field, value) in spec.as_object().unwrap() {
            key["spec"][field] = value.clone();
        }
        SchemaValidator::new()
            .validate("ApiKey", &key)
            .into_iter()
            .map(|v| format!("{}: {}", v.field, v.message))
            .collect()
    }

    #[test]
    fn rotation_and_expiry_are_checked_by_the_crd() {
        let fine = [
            json!({"rotation": {"every": "720h", "overlap": "24h", "trigger": "2026-12-01"}}),
            json!({"rotation": {"trigger": "1", "overlap": "0s"}}),
            json!({"rotation": {"every": "1h30m"}, "expireAfter": "2160h"}),
            json!({"expiresAt": "2027-01-31T00:00:00Z"}),
        ];
        for spec in fine {
            assert_eq!(key_with(spec.clone()), Vec::<String>::new(), "{spec}");
        }
        let refused = [
            (
                json!({"rotation": {"every": "1h", "overlap": "2h"}}),
                "must not be longer than rotation.every",
            ),
            (json!({"rotation": {"every": "0s"}}), "more than 0s"),
            (json!({"rotation": {"every": "30 days"}}), "every"),
            (json!({"rotation": {"overlap": "1d"}}), "overlap"),
            (json!({"expireAfter": "soon"}), "expireAfter"),
            (json!({"expiresAt": "next tuesday"}), "expiresAt"),
            (
                json!({"expiresAt": "2027-01-31T00:00:00Z", "expireAfter": "1h"}),
                "at most one of expiresAt and expireAfter",
            ),
        ];
        for (spec, expected) in refused {
            let found = key_with(spec.clone());
            assert!(found.iter().any(|m| m.contains(expected)), "{spec}: {found:?}");
        }
    }

    #[test]
    fn other_labels_and_argo_cd_sync_options_are_fine() {
        let template = json!({
            "labels": {"app.kubernetes.io/part-of": "backend", "team": "a"},
            "annotations": {"argocd.argoproj.io/compare-options": "IgnoreExtraneous",
                            "argocd.argoproj.io/sync-options": "Prune=false"}
        });
        assert_eq!(messages(template), Vec::<String>::new());
    }
}
