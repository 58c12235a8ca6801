//! Key Secrets in the cluster: which key a Secret holds for which ApiKey, and writing a new one.
//!
//! A Secret counts as orgkeeper's for an ApiKey only when its labels (`crd::secret::identity_of`: the
//! organization, the ApiKey and the key) and an owner reference to that ApiKey's uid all say so; anything
//! else of the same name is foreign and never touched. A Secret orgkeeper wrote for another ApiKey (of
//! another organization in the same namespace, or an earlier ApiKey of the same name deleted without its
//! Secret) is reported naming both. Secrets are garbage-collected with their ApiKey through the owner
//! reference.
//!
//! A Secret is written once per key. Without `spec.rotation` it is `immutable` and never updated. With
//! it, the Secret stays where the app reads its key (same name) and a rotation rewrites its data in one
//! write (`rotate`), because apps cannot follow a new Secret name without a change of their own: mounted
//! Secret files update by themselves (kubelet swaps them atomically within its sync period, about a
//! minute); environment variables are read at start, so such pods need a restart (a rollout on the
//! `orgkeeper.dev/key-id` label / `orgkeeper.dev/fingerprint` annotation, or Reloader), which the
//! overlap leaves time for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use super::FIELD_MANAGER;
use super::view::OrgView;
use crate::crd::ApiKey;
use crate::crd::secret::KeySecretIdentity;
use crate::crd::secret::{KeySecretSpec, identity_of, key_secret};
use crate::domain::issuance::secret_conflict;
use crate::domain::{Kind, ObjectRef as DomainRef, Problem, Reason, SecretState};
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
    match identity_of(secret) {
        Some(identity) if is_owned_by(secret, key) && is_for(&identity, key) => SecretState::Holds(identity.key_id),
        _ => SecretState::Foreign,
    }
}

fn is_owned_by(secret: &Secret, key: &ApiKey) -> bool {
    key.uid().is_some_and(|uid| {
        secret
            .owner_references()
            .iter()
            .any(|owner| owner.uid == uid && owner.kind == "ApiKey")
    })
}

fn is_for(identity: &KeySecretIdentity, key: &ApiKey) -> bool {
    identity.api_key == key.name_any() && identity.organization == key.spec.organization_ref.name
}

/// The `SecretConflict` of `key` when `secret`, in its way, is one orgkeeper wrote for another ApiKey:
/// names both, so that whoever reads the status knows whose key is in the way. None for a Secret that is
/// this very ApiKey's or not orgkeeper's at all.
pub fn clash(secret: &Secret, key: &ApiKey) -> Option<Problem> {
    let identity = identity_of(secret)?;
    if is_owned_by(secret, key) && is_for(&identity, key) {
        return None;
    }
    let (me, organization) = (key.name_any(), &key.spec.organization_ref.name);
    let namespace = key.namespace().unwrap_or_default();
    let holder = if is_for(&identity, key) {
        format!("an earlier ApiKey {me} of organization {organization} (deleted without its Secret)")
    } else {
        format!("ApiKey {} of organization {}", identity.api_key, identity.organization)
    };
    Some(Problem {
        object: DomainRef::new(Kind::ApiKey, &namespace, &me),
        reason: Reason::SecretConflict,
        message: format!(
            "Secret {:?} holds key {} that orgkeeper wrote for {holder}; it is never touched, and no key of ApiKey {me} of organization {organization} is written into it: set spec.secret.name to a name of its own (or delete that Secret if its key is no longer needed)",
            secret.name_any(),
            identity.key_id,
        ),
    })
}

/// Replaces the generic `SecretConflict` of each ApiKey whose Secret is another ApiKey's (as the cache
/// shows it) with one that names both.
pub fn name_the_other_key(problems: &mut [Problem], view: &OrgView, cached: &Store<Secret>) {
    for problem in problems
        .iter_mut()
        .filter(|p| p.reason == Reason::SecretConflict && p.object.kind == Kind::ApiKey)
    {
        let Some(key) = view.api_key(&problem.object.name) else {
            continue;
        };
        let secret = cached.get(&ObjectRef::new(&key.secret_name()).within(&problem.object.namespace));
        if let Some(named) = secret.and_then(|secret| clash(&secret, key)) {
            *problem = named;
        }
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
            let state = classify(&secret, key);
            // A Secret rewritten by a rotation shows its old key in the cache until the watch catches up.
            if let Some((key_id, at)) = created.get(&id)
                && at.elapsed() < CACHE_GRACE
                && matches!(&state, SecretState::Holds(held) if held != key_id)
            {
                return SecretState::Holds(key_id.clone());
            }
            created.remove(&id);
            return state;
        }
        match created.get(&id) {
            Some((key_id, at)) if at.elapsed() < CACHE_GRACE => SecretState::Holds(key_id.clone()),
            _ => SecretState::Absent,
        }
    }
}

/// What writing a key's Secret came to.
#[derive(Debug)]
pub enum Written {
    /// The Secret holds the key.
    Created,
    /// A Secret of that name that is not this key's was found instead; it was left alone.
    Conflict(Problem),
}

/// Reads a Secret straight from the API server, for decisions that must not rest on a cache.
pub async fn holds(client: &Client, namespace: &str, name: &str, key: &ApiKey) -> Result<SecretState, kube::Error> {
    Ok(match metadata(client, namespace, name).await? {
        Some(secret) => classify(&secret, Some(key)),
        None => SecretState::Absent,
    })
}

/// A Secret's metadata (never its data) from the API server, as a `Secret` without data.
async fn metadata(client: &Client, namespace: &str, name: &str) -> Result<Option<Secret>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    Ok(api.get_metadata_opt(name).await?.map(|meta| Secret {
        metadata: meta.metadata,
        ..Default::default()
    }))
}

/// Everything about the Secret of `issued` but the key: names, labels, annotations, owner.
fn secret_spec(issued: &IssuedKey, owner: &ApiKey, oso_url: &str) -> KeySecretSpec {
    let template = owner
        .spec
        .secret
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    KeySecretSpec {
        namespace: issued.organization.namespace.clone(),
        secret_name: issued.secret_name.clone(),
        api_key: issued.api_key.clone(),
        organization: issued.organization.name.clone(),
        environment: issued.environment.clone(),
        oso_url: oso_url.to_owned(),
        extra_labels: template.labels,
        extra_annotations: template.annotations,
        owner: Some(owner_reference(owner)),
    }
}

/// The Secret for `issued`: immutable, unless its ApiKey rotates (a rotation rewrites it in place).
fn secret_for(issued: &IssuedKey, owner: &ApiKey, oso_url: &str) -> Secret {
    let mut secret = key_secret(&secret_spec(issued, owner, oso_url), &issued.token);
    if owner.spec.rotation.is_some() {
        secret.immutable = None;
    }
    secret
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
}

/// Creates the Secret for a freshly issued key, owned by its ApiKey (immutable unless the ApiKey rotates).
/// Never updates: when the name is taken, the Secret found is checked and, unless it already holds this
/// very key, left alone.
pub async fn create(
    client: &Client,
    recent: &RecentSecrets,
    issued: &IssuedKey,
    owner: &ApiKey,
    oso_url: &str,
) -> Result<Written, kube::Error> {
    let namespace = issued.organization.namespace.as_str();
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.create(&post_params(), &secret_for(issued, owner, oso_url)).await {
        Ok(_) => {
            recent.remember(namespace, &issued.secret_name, issued.token.key_id());
            Ok(Written::Created)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let found = metadata(client, namespace, &issued.secret_name).await?;
            match found.as_ref().map(|secret| classify(secret, Some(owner))) {
                Some(SecretState::Holds(key_id)) if key_id == issued.token.key_id() => Ok(Written::Created),
                _ => Ok(Written::Conflict(conflict_of(found, owner, issued))),
            }
        }
        Err(error) => Err(error),
    }
}

fn conflict_of(found: Option<Secret>, owner: &ApiKey, issued: &IssuedKey) -> Problem {
    found.and_then(|secret| clash(&secret, owner)).unwrap_or_else(|| {
        secret_conflict(
            DomainRef::new(Kind::ApiKey, &issued.organization.namespace, &issued.api_key),
            &issued.secret_name,
        )
    })
}

/// Rotation step 2: rewrites the ApiKey's Secret to hold the incoming key `issued`, in one write, only
/// while it still holds `previous` (the resourceVersion is the precondition), so at every moment it holds
/// one live key. A Secret written immutable (before the ApiKey declared `spec.rotation`) cannot be
/// rewritten: a `SecretConflict` says to delete it, once. A Secret that is gone is created.
pub async fn rotate(
    client: &Client,
    recent: &RecentSecrets,
    issued: &IssuedKey,
    previous: &str,
    owner: &ApiKey,
    oso_url: &str,
) -> Result<Written, kube::Error> {
    let namespace = issued.organization.namespace.as_str();
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(found) = metadata(client, namespace, &issued.secret_name).await? else {
        return create(client, recent, issued, owner, oso_url).await;
    };
    match classify(&found, Some(owner)) {
        SecretState::Holds(held) if held == issued.token.key_id() => return Ok(Written::Created),
        SecretState::Holds(held) if held == previous => {}
        _ => return Ok(Written::Conflict(conflict_of(Some(found), owner, issued))),
    }
    let mut secret = secret_for(issued, owner, oso_url);
    // The version guards against a concurrent writer: the Secret is rewritten only as it was just seen.
    secret.metadata.resource_version = found.metadata.resource_version.clone();
    match api.replace(&issued.secret_name, &post_params(), &secret).await {
        Ok(_) => {
            recent.remember(namespace, &issued.secret_name, issued.token.key_id());
            Ok(Written::Created)
        }
        // Written immutable, before the ApiKey declared spec.rotation. The controller may not delete Secrets
        // (a right over every Secret of the namespace), so a person replaces it, once.
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(Written::Conflict(Problem {
            object: DomainRef::new(Kind::ApiKey, namespace, &issued.api_key),
            reason: Reason::SecretConflict,
            message: format!(
                "Secret {:?} was written immutable, before this ApiKey declared spec.rotation, so it cannot be rotated in place; nothing was changed and key {previous} keeps working: delete the Secret (kubectl delete secret {}) and the rotation writes a new, rewritable one with a new key (pods starting in between wait for it)",
                issued.secret_name, issued.secret_name
            ),
        })),
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
        assert_eq!(clash(&secret, &key), None, "its own Secret is no clash");
        assert_eq!(
            clash(&Secret::default(), &key),
            None,
            "a foreign Secret is not orgkeeper's to explain"
        );
    }

    #[test]
    fn a_secret_written_for_another_organizations_key_is_never_ours_and_the_clash_names_both() {
        // ApiKey backend of organization acme wrote Secret "backend"; ApiKey backend of beta (the same name
        // after acme's was deleted without its Secret, or another key pointing spec.secret.name at it).
        let acme = api_key("uid-1");
        let secret = written_for(&acme, &ApiKeyToken::generate("env1"));
        let mut beta = api_key("uid-1");
        beta.spec.organization_ref.name = "beta".into();
        assert_eq!(
            classify(&secret, Some(&beta)),
            SecretState::Foreign,
            "even with the owner's uid"
        );
        let problem = clash(&secret, &beta).expect("a clash");
        assert_eq!(problem.reason, Reason::SecretConflict);
        assert_eq!(problem.object, DomainRef::new(Kind::ApiKey, "team", "backend"));
        assert!(
            problem.message.contains("ApiKey backend of organization acme"),
            "{}",
            problem.message
        );
        assert!(
            problem.message.contains("ApiKey backend of organization beta"),
            "{}",
            problem.message
        );
        assert!(problem.message.contains("never touched"), "{}", problem.message);

        // The same organization and name, but not the owner: an earlier ApiKey's Secret left behind.
        let mut orphan = secret.clone();
        orphan.metadata.owner_references = None;
        let problem = clash(&orphan, &acme).expect("a clash");
        assert!(
            problem
                .message
                .contains("an earlier ApiKey backend of organization acme"),
            "{}",
            problem.message
        );
    }
}
