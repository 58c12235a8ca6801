//! One organization as the caches show it: its Organization resource and every Environment, User and ApiKey
//! that references it, turned into the domain's declarations exactly as `orgkeeper apply` does with files.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use kube::ResourceExt;

use super::caches::Caches;
use super::resource::is_paused;
use crate::crd::{ApiKey, Environment, Organization, ToDeclaration, User};
use crate::domain::{Declarations, Kind, ObjectRef, OrgKey, Problem, Reason};

/// The resources of one organization. Resources being deleted are included (their finalizers must be
/// released) but declare nothing.
#[derive(Clone, Debug)]
pub struct OrgView {
    pub key: OrgKey,
    pub organization: Option<Arc<Organization>>,
    pub environments: Vec<Arc<Environment>>,
    pub users: Vec<Arc<User>>,
    pub api_keys: Vec<Arc<ApiKey>>,
    /// `api_keys` by name: reconciles look keys up once per key, which must not cost a scan each.
    keys_by_name: HashMap<String, Arc<ApiKey>>,
}

pub fn is_deleting<K: ResourceExt>(object: &K) -> bool {
    object.meta().deletion_timestamp.is_some()
}

impl Caches {
    pub fn view(&self, key: &OrgKey) -> OrgView {
        let ours = |namespace: Option<String>, organization: &str| {
            namespace.as_deref() == Some(key.namespace.as_str()) && organization == key.name
        };
        let api_keys = self
            .api_keys
            .state_filter(|k| ours(k.namespace(), &k.spec.organization_ref.name));
        OrgView {
            key: key.clone(),
            keys_by_name: api_keys.iter().map(|k| (k.name_any(), k.clone())).collect(),
            api_keys,
            organization: self
                .organizations
                .find(|o| o.namespace().as_deref() == Some(key.namespace.as_str()) && o.name_any() == key.name),
            environments: self
                .environments
                .state_filter(|e| ours(e.namespace(), &e.spec.organization_ref.name)),
            users: self
                .users
                .state_filter(|u| ours(u.namespace(), &u.spec.organization_ref.name)),
        }
    }
}

impl OrgView {
    /// The Organization resource, unless it is absent or being deleted.
    pub fn declared_organization(&self) -> Option<&Arc<Organization>> {
        self.organization.as_ref().filter(|o| !is_deleting(o.as_ref()))
    }

    /// The Organization resource when it is being deleted.
    pub fn deleted_organization(&self) -> Option<&Arc<Organization>> {
        self.organization.as_ref().filter(|o| is_deleting(o.as_ref()))
    }

    pub fn api_key(&self, name: &str) -> Option<&Arc<ApiKey>> {
        self.keys_by_name.get(name)
    }

    /// The paused resources (see [`is_paused`]), whose changes the sync holds back.
    pub fn paused(&self) -> BTreeSet<ObjectRef> {
        let namespace = &self.key.namespace;
        let mut paused = BTreeSet::new();
        let mut add = |kind, object: &dyn PausedObject| {
            if object.paused() {
                paused.insert(ObjectRef::new(kind, namespace, &object.name()));
            }
        };
        if let Some(org) = &self.organization {
            add(Kind::Organization, org.as_ref());
        }
        self.environments
            .iter()
            .for_each(|e| add(Kind::Environment, e.as_ref()));
        self.users.iter().for_each(|u| add(Kind::User, u.as_ref()));
        self.api_keys.iter().for_each(|k| add(Kind::ApiKey, k.as_ref()));
        paused
    }

    /// What the live (not deleting) resources declare, and the resources that declare nothing usable.
    pub fn declarations(&self) -> (Declarations, Vec<Problem>) {
        let mut declarations = Declarations::default();
        let mut problems = Vec::new();
        if let Some(org) = self.declared_organization() {
            collect(
                org.as_ref(),
                Kind::Organization,
                &mut declarations.organizations,
                &mut problems,
            );
        }
        for env in self.environments.iter().filter(|e| !is_deleting(e.as_ref())) {
            collect(
                env.as_ref(),
                Kind::Environment,
                &mut declarations.environments,
                &mut problems,
            );
        }
        for user in self.users.iter().filter(|u| !is_deleting(u.as_ref())) {
            collect(user.as_ref(), Kind::User, &mut declarations.users, &mut problems);
        }
        for key in self.api_keys.iter().filter(|k| !is_deleting(k.as_ref())) {
            collect(key.as_ref(), Kind::ApiKey, &mut declarations.api_keys, &mut problems);
        }
        (declarations, problems)
    }
}

/// The two things [`OrgView::paused`] asks of each kind.
trait PausedObject {
    fn paused(&self) -> bool;
    fn name(&self) -> String;
}

impl<K: ResourceExt> PausedObject for K {
    fn paused(&self) -> bool {
        is_paused(self)
    }

    fn name(&self) -> String {
        self.name_any()
    }
}

fn collect<R: ToDeclaration + ResourceExt>(
    resource: &R,
    kind: Kind,
    into: &mut Vec<R::Declaration>,
    problems: &mut Vec<Problem>,
) {
    match resource.to_declaration() {
        Ok(declaration) => into.push(declaration),
        Err(error) => problems.push(Problem {
            object: ObjectRef::new(kind, &resource.namespace().unwrap_or_default(), &resource.name_any()),
            reason: Reason::InvalidSpec,
            message: error.to_string(),
        }),
    }
}
