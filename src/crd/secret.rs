//! The layout of the Secret an API key is written to, shared by the controller (which creates it in the
//! cluster) and `orgkeeper apply` (which writes it as a manifest file).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::domain::ApiKeyToken;

/// Data key holding the API key; the official clients read it as `OSO_AUTH`.
pub const DATA_KEY_AUTH: &str = "OSO_AUTH";
/// Data key holding the URL clients reach the sidecar at.
pub const DATA_KEY_URL: &str = "OSO_URL";

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "orgkeeper";
pub const LABEL_API_KEY: &str = "orgkeeper.dev/api-key";
pub const LABEL_ORGANIZATION: &str = "orgkeeper.dev/organization";
pub const LABEL_ENVIRONMENT: &str = "orgkeeper.dev/environment";
pub const LABEL_KEY_ID: &str = "orgkeeper.dev/key-id";
pub const ANNOTATION_FINGERPRINT: &str = "orgkeeper.dev/fingerprint";

/// Everything about a key's Secret except the key itself.
#[derive(Clone, Debug)]
pub struct KeySecretSpec {
    pub namespace: String,
    pub secret_name: String,
    pub api_key: String,
    pub organization: String,
    pub environment: String,
    pub oso_url: String,
    pub extra_labels: BTreeMap<String, String>,
    pub extra_annotations: BTreeMap<String, String>,
    pub owner: Option<OwnerReference>,
}

/// Builds the immutable Secret for a freshly issued key. orgkeeper's labels override template labels of the
/// same name, because ownership checks rely on them.
pub fn key_secret(spec: &KeySecretSpec, token: &ApiKeyToken) -> Secret {
    let mut labels = spec.extra_labels.clone();
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels.insert(LABEL_API_KEY.into(), spec.api_key.clone());
    labels.insert(LABEL_ORGANIZATION.into(), spec.organization.clone());
    labels.insert(LABEL_ENVIRONMENT.into(), spec.environment.clone());
    labels.insert(LABEL_KEY_ID.into(), token.key_id().to_owned());
    let mut annotations = spec.extra_annotations.clone();
    annotations.insert(ANNOTATION_FINGERPRINT.into(), token.hash().fingerprint());
    let data = BTreeMap::from([
        (DATA_KEY_AUTH.to_owned(), ByteString(token.expose().as_bytes().to_vec())),
        (DATA_KEY_URL.to_owned(), ByteString(spec.oso_url.as_bytes().to_vec())),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(spec.secret_name.clone()),
            namespace: Some(spec.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: spec.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        immutable: Some(true),
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

/// Whom orgkeeper wrote a key Secret for, from its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySecretIdentity {
    pub organization: String,
    pub api_key: String,
    pub key_id: String,
}

/// Which organization's ApiKey and which key a Secret holds, if orgkeeper wrote it (labels only: callers
/// that must be sure also check who owns it).
pub fn identity_of(secret: &Secret) -> Option<KeySecretIdentity> {
    let labels = secret.metadata.labels.as_ref()?;
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY) {
        return None;
    }
    Some(KeySecretIdentity {
        organization: labels.get(LABEL_ORGANIZATION)?.clone(),
        api_key: labels.get(LABEL_API_KEY)?.clone(),
        key_id: labels.get(LABEL_KEY_ID)?.clone(),
    })
}

/// Which issued key a Secret holds, if orgkeeper wrote it for the named ApiKey.
pub fn key_id_for(secret: &Secret, api_key: &str) -> Option<String> {
    let labels = secret.metadata.labels.as_ref()?;
    let ours = labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(LABEL_API_KEY).map(String::as_str) == Some(api_key);
    ours.then(|| labels.get(LABEL_KEY_ID).cloned()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KeySecretSpec {
        KeySecretSpec {
            namespace: "team".into(),
            secret_name: "backend-oso".into(),
            api_key: "backend".into(),
            organization: "acme".into(),
            environment: "production".into(),
            oso_url: "http://127.0.0.1:8080".into(),
            extra_labels: BTreeMap::from([
                (LABEL_API_KEY.to_owned(), "spoofed".to_owned()),
                ("team".into(), "a".into()),
            ]),
            extra_annotations: BTreeMap::new(),
            owner: None,
        }
    }

    #[test]
    fn the_secret_carries_the_key_the_url_and_orgkeepers_labels() {
        let token = ApiKeyToken::generate("env1");
        let secret = key_secret(&spec(), &token);
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data[DATA_KEY_AUTH].0, token.expose().as_bytes());
        assert_eq!(data[DATA_KEY_URL].0, b"http://127.0.0.1:8080");
        assert_eq!(secret.immutable, Some(true));
        assert_eq!(key_id_for(&secret, "backend").as_deref(), Some(token.key_id()));
        assert_eq!(key_id_for(&secret, "other"), None);
        assert_eq!(
            identity_of(&secret),
            Some(KeySecretIdentity {
                organization: "acme".into(),
                api_key: "backend".into(),
                key_id: token.key_id().to_owned(),
            })
        );
        assert_eq!(secret.metadata.labels.as_ref().unwrap()["team"], "a");
    }
}
