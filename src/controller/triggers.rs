//! What wakes a reconcile besides the resync timer:
//!
//! - a change to the object's spec or its deletion (status and metadata-only updates, such as the
//!   controller's own status writes, are filtered out, so a status write never causes another write);
//! - a change to a resource it depends on (an Organization for its Environments, Users and ApiKeys; an
//!   Environment for its ApiKeys; a Secret for the ApiKey that names it);
//! - a change to the store made while reconciling another object of the same organization (a key issued
//!   or revoked on its behalf, the live-key count of an environment, the counts of an organization).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::future::{Ready, ready};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::view::OrgView;
use crate::crd::{ApiKey, Environment, Organization, User};
use crate::domain::Change;

/// Senders that schedule reconciles of each kind.
#[derive(Clone)]
pub struct Triggers {
    organizations: UnboundedSender<ObjectRef<Organization>>,
    environments: UnboundedSender<ObjectRef<Environment>>,
    users: UnboundedSender<ObjectRef<User>>,
    api_keys: UnboundedSender<ObjectRef<ApiKey>>,
}

/// The receiving ends, one per controller.
pub struct TriggerStreams {
    pub organizations: UnboundedReceiver<ObjectRef<Organization>>,
    pub environments: UnboundedReceiver<ObjectRef<Environment>>,
    pub users: UnboundedReceiver<ObjectRef<User>>,
    pub api_keys: UnboundedReceiver<ObjectRef<ApiKey>>,
}

pub fn channels() -> (Triggers, TriggerStreams) {
    let (organizations, organization_rx) = unbounded();
    let (environments, environment_rx) = unbounded();
    let (users, user_rx) = unbounded();
    let (api_keys, api_key_rx) = unbounded();
    (
        Triggers {
            organizations,
            environments,
            users,
            api_keys,
        },
        TriggerStreams {
            organizations: organization_rx,
            environments: environment_rx,
            users: user_rx,
            api_keys: api_key_rx,
        },
    )
}

fn within<K: Resource<DynamicType = ()>>(name: &str, namespace: &str) -> ObjectRef<K> {
    ObjectRef::new(name).within(namespace)
}

impl Triggers {
    pub fn api_keys(&self) -> UnboundedSender<ObjectRef<ApiKey>> {
        self.api_keys.clone()
    }

    /// After changes to an organization in the store: its Organization and Environments (their counts may
    /// have changed) and every object a change was about.
    pub fn after_changes(&self, view: &OrgView, changes: &[Change]) {
        let namespace = view.key.namespace.as_str();
        if let Some(org) = &view.organization {
            let _ = self.organizations.unbounded_send(ObjectRef::from_obj(org.as_ref()));
        }
        for env in &view.environments {
            let _ = self.environments.unbounded_send(ObjectRef::from_obj(env.as_ref()));
        }
        let mut keys = HashSet::new();
        for change in changes {
            match change {
                Change::IssueKey { api_key, .. }
                | Change::RevokeKey { api_key, .. }
                | Change::RemoveKey { api_key, .. } => {
                    keys.insert(api_key.clone());
                }
                Change::AddUser { resource, .. } | Change::UpdateUser { resource, .. } => {
                    let _ = self.users.unbounded_send(within(resource, namespace));
                }
                Change::DeleteEnvironment { environment, .. } | Change::ReleaseEnvironment { environment, .. } => {
                    keys.extend(
                        view.api_keys
                            .iter()
                            .filter(|k| &k.spec.environment == environment)
                            .map(|k| k.name_any()),
                    );
                }
                Change::DeleteOrganization { .. } | Change::ReleaseOrganization { .. } => {
                    keys.extend(view.api_keys.iter().map(|k| k.name_any()));
                    for user in &view.users {
                        let _ = self.users.unbounded_send(ObjectRef::from_obj(user.as_ref()));
                    }
                }
                _ => {}
            }
        }
        for key in keys {
            let _ = self.api_keys.unbounded_send(within(&key, namespace));
        }
    }
}

/// A stream filter that lets an object through when it is new, its spec changed (its generation) or its
/// deletion started; status writes and metadata-only updates are dropped.
pub fn spec_changes<K>(reader: Store<K>) -> impl FnMut(&Arc<K>) -> Ready<bool> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    const PRUNE_EVERY: usize = 4096;
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut inserted = 0usize;
    move |object: &Arc<K>| {
        let meta = object.meta();
        let mut hasher = DefaultHasher::new();
        // The pause annotation is metadata, not spec, but pausing and resuming must wake the object.
        let paused = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(super::resource::PAUSED_ANNOTATION));
        (meta.generation, meta.deletion_timestamp.is_some(), paused).hash(&mut hasher);
        let fingerprint = hasher.finish();
        let uid = meta.uid.clone().unwrap_or_default();
        let previous = seen.insert(uid, fingerprint);
        if previous.is_none() {
            inserted += 1;
            if inserted.is_multiple_of(PRUNE_EVERY) {
                // Deleted objects are never announced; forget those the cache no longer holds.
                let alive: HashSet<String> = reader.state().iter().filter_map(|o| o.uid()).collect();
                seen.retain(|uid, _| alive.contains(uid));
            }
        }
        ready(previous != Some(fingerprint))
    }
}

/// Maps an Organization to its dependents of kind `K` (those whose `organization_of` names it).
pub fn dependents_of_organization<K>(
    reader: Store<K>,
    organization_of: fn(&K) -> &str,
) -> impl Fn(Arc<Organization>) -> Vec<ObjectRef<K>> + Send + Sync + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    move |org: Arc<Organization>| {
        let (namespace, name) = (org.namespace(), org.name_any());
        reader
            .state()
            .iter()
            .filter(|o| o.namespace() == namespace && organization_of(o) == name)
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect()
    }
}

/// Maps an Environment to the ApiKeys that use it.
pub fn keys_of_environment(
    reader: Store<ApiKey>,
) -> impl Fn(Arc<Environment>) -> Vec<ObjectRef<ApiKey>> + Send + Sync + 'static {
    move |env: Arc<Environment>| {
        let (namespace, name) = (env.namespace(), env.name_any());
        reader
            .state()
            .iter()
            .filter(|k| {
                k.namespace() == namespace
                    && k.spec.environment == name
                    && k.spec.organization_ref.name == env.spec.organization_ref.name
            })
            .map(|k| ObjectRef::from_obj(k.as_ref()))
            .collect()
    }
}
