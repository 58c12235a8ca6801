//! Key Secrets in the cluster: which key a Secret holds for which ApiKey, and writing a new one.
//!
//! A Secret counts as orgkeeper's for an ApiKey only when both its labels (`crd::secret::key_id_for`) and
//! an owner reference to that ApiKey's uid say so; anything else of the same name is foreign and never
//! touched. Secrets are created, never updated (they are `immutable`), and garbage-collected with their
//! ApiKey through the owner reference.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use super::FIELD_MANAGER;
use crate::crd::ApiKey;
use crate::crd::secret::{KeySecretSpec, key_id_for, key_secret};
use crate::domain::issuance::secret_conflict;
use crate::domain::{Kind, ObjectRef as DomainRef, Problem, SecretState};
use crate::store::IssuedKey;

/// How long a Secret the controller created counts as present while the cache has not shown it yet.
const CACHE_GRACE: Duration = Duration::from_secs(120);

/// Whether the Secret was written by orgkeeper for this ApiKey (labels and owner reference agree).
pub fn is_written_for(secret: &Secret, key: &ApiKey) -> bool {
    matches!(classify(secret, Some(key)), SecretState::Holds(_))
}

/// What a Secret (its metadata is enough) holds for `key`; with no ApiKey, nothing is ours.
fn classify(secret: &Secret, key: Option<&ApiKey>) -> SecretState {
    let Some(key) = key else {
        return SecretState::Foreign;
    };
    let owned = key.uid().is_some_and(|uid| {
        secret
            .owner_references()
            .iter()
            .any(|owner| owner.uid == uid && owner.kind == "ApiKey")
    });
    match key_id_for(secret, &key.name_any()) {
        Some(key_id) if owned => SecretState::Holds(key_id),
        _ => SecretState::Foreign,
    }
}

/// Secrets this process created recently, which the cache may not show yet.
#[derive(Default)]
pub struct RecentSecrets {
    created: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl RecentSecrets {
    fn remember(&self, namespace: &str, name: &str, key_id: &str) {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        created.retain(|_, (_, at)| at.elapsed() < CACHE_GRACE);
        created.insert(
            (namespace.to_owned(), name.to_owned()),
            (key_id.to_owned(), Instant::now()),
        );
    }

    /// What the named Secret holds for `key`, from the cache of Secrets, or from this process's memory of
    /// creating it.
    pub fn state(&self, cached: &Store<Secret>, namespace: &str, name: &str, key: Option<&ApiKey>) -> SecretState {
        let id = (namespace.to_owned(), name.to_owned());
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(secret) = cached.get(&ObjectRef::new(name).within(namespace)) {
            created.remove(&id);
            return classify(&secret, key);
        }
        match created.get(&id) {
            Some((key_id, at)) if at.elapsed() < CACHE_GRACE => SecretState::Holds(key_id.clone()),
            _ => SecretState::Absent,
        }
    }
}

/// What writing a key's Secret came to.
pub enum Written {
    /// The Secret holds the key.
    Created,
    /// A Secret of that name that is not this key's was found instead; it was left alone.
    Conflict(Problem),
}

/// Reads a Secret straight from the API server, for decisions that must not rest on a cache.
pub async fn holds(client: &Client, namespace: &str, name: &str, key: &ApiKey) -> Result<SecretState, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    Ok(match api.get_metadata_opt(name).await? {
        Some(meta) => classify(
            &Secret {
                metadata: meta.metadata,
                ..Default::default()
            },
            Some(key),
        ),
        None => SecretState::Absent,
    })
}

/// Creates the immutable Secret for a freshly issued key, owned by its ApiKey. Never updates: when the name
/// is taken, the Secret found is checked and, unless it already holds this very key, left alone.
pub async fn create(
    client: &Client,
    recent: &RecentSecrets,
    issued: &IssuedKey,
    owner: &ApiKey,
    oso_url: &str,
) -> Result<Written, kube::Error> {
    let namespace = issued.organization.namespace.as_str();
    let template = owner
        .spec
        .secret
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let spec = KeySecretSpec {
        namespace: namespace.to_owned(),
        secret_name: issued.secret_name.clone(),
        api_key: issued.api_key.clone(),
        organization: issued.organization.name.clone(),
        environment: issued.environment.clone(),
        oso_url: oso_url.to_owned(),
        extra_labels: template.labels,
        extra_annotations: template.annotations,
        owner: Some(owner_reference(owner)),
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    match api.create(&params, &key_secret(&spec, &issued.token)).await {
        Ok(_) => {
            recent.remember(namespace, &issued.secret_name, issued.token.key_id());
            Ok(Written::Created)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            match holds(client, namespace, &issued.secret_name, owner).await? {
                SecretState::Holds(key_id) if key_id == issued.token.key_id() => Ok(Written::Created),
                _ => Ok(Written::Conflict(secret_conflict(
                    DomainRef::new(Kind::ApiKey, namespace, &issued.api_key),
                    &issued.secret_name,
                ))),
            }
        }
        Err(error) => Err(error),
    }
}

fn owner_reference(key: &ApiKey) -> OwnerReference {
    OwnerReference {
        api_version: ApiKey::api_version(&()).into_owned(),
        kind: ApiKey::kind(&()).into_owned(),
        name: key.name_any(),
        uid: key.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ApiKeySpec;
    use crate::domain::ApiKeyToken;

    fn api_key(uid: &str) -> ApiKey {
        let mut key = ApiKey::new(
            "backend",
            serde_json::from_value::<ApiKeySpec>(
                serde_json::json!({"organizationRef": {"name": "acme"}, "environment": "production"}),
            )
            .unwrap(),
        );
        key.metadata.namespace = Some("team".into());
        key.metadata.uid = Some(uid.into());
        key
    }

    fn written_for(key: &ApiKey, token: &ApiKeyToken) -> Secret {
        key_secret(
            &KeySecretSpec {
                namespace: "team".into(),
                secret_name: "backend".into(),
                api_key: "backend".into(),
                organization: "acme".into(),
                environment: "production".into(),
                oso_url: "http://sidecar".into(),
                extra_labels: Default::default(),
                extra_annotations: Default::default(),
                owner: Some(owner_reference(key)),
            },
            token,
        )
    }

    #[test]
    fn a_secret_is_ours_only_with_our_labels_and_an_owner_reference_to_this_very_apikey() {
        let key = api_key("uid-1");
        let token = ApiKeyToken::generate("env1");
        let secret = written_for(&key, &token);
        assert_eq!(
            classify(&secret, Some(&key)),
            SecretState::Holds(token.key_id().to_owned())
        );
        // A new ApiKey of the same name (another uid) does not own the old one's Secret.
        assert_eq!(classify(&secret, Some(&api_key("uid-2"))), SecretState::Foreign);
        // Labels copied onto a Secret someone else made do not make it ours.
        let mut copied = secret.clone();
        copied.metadata.owner_references = None;
        assert_eq!(classify(&copied, Some(&key)), SecretState::Foreign);
        assert_eq!(classify(&Secret::default(), Some(&key)), SecretState::Foreign);
    }
}
