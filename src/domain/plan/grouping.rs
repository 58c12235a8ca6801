//! Declarations sorted into organizations, before any planning: each object declared once, each child
//! attached to a declared organization; everything else becomes a problem.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::domain::model::*;
use crate::domain::rules::{Problem, Reason};

/// The declared objects of one organization, after duplicates and dangling references are set aside.
#[derive(Clone, Default)]
pub(super) struct Children<'a> {
    pub environments: Vec<&'a EnvironmentDecl>,
    pub users: Vec<&'a UserDecl>,
    pub api_keys: Vec<&'a ApiKeyDecl>,
}

pub(super) struct Grouped<'a> {
    pub organizations: BTreeMap<OrgKey, &'a OrganizationDecl>,
    pub children: HashMap<OrgKey, Children<'a>>,
}

impl<'a> Grouped<'a> {
    pub fn new(declarations: &'a Declarations, problems: &mut Vec<Problem>) -> Self {
        let mut seen = BTreeSet::new();
        let mut first = |kind: Kind, namespace: &str, name: &str, problems: &mut Vec<Problem>| {
            let object = ObjectRef::new(kind, namespace, name);
            let fresh = seen.insert(object.clone());
            if !fresh {
                problems.push(Problem {
                    object,
                    reason: Reason::Duplicate,
                    message: format!("{kind} {namespace}/{name} is declared more than once; keep exactly one"),
                });
            }
            fresh
        };
        let mut organizations = BTreeMap::new();
        for org in &declarations.organizations {
            if first(Kind::Organization, &org.namespace, &org.name, problems) {
                organizations.insert(org.key(), org);
            }
        }
        let mut children: HashMap<OrgKey, Children<'a>> = HashMap::new();
        let parent = |kind: Kind, namespace: &str, name: &str, organization: &str, problems: &mut Vec<Problem>| {
            let key = OrgKey::new(namespace, organization);
            if organizations.contains_key(&key) {
                return Some(key);
            }
            problems.push(Problem {
                object: ObjectRef::new(kind, namespace, name),
                reason: Reason::OrganizationNotFound,
                message: format!(
                    "organization {organization:?} is not declared in namespace {namespace:?}; create the Organization or fix organizationRef.name"
                ),
            });
            None
        };
        for env in sorted_by_name(&declarations.environments, |e| (&e.namespace, &e.name)) {
            if first(Kind::Environment, &env.namespace, &env.name, problems)
                && let Some(key) = parent(
                    Kind::Environment,
                    &env.namespace,
                    &env.name,
                    &env.organization,
                    problems,
                )
            {
                children.entry(key).or_default().environments.push(env);
            }
        }
        for user in sorted_by_name(&declarations.users, |u| (&u.namespace, &u.name)) {
            if first(Kind::User, &user.namespace, &user.name, problems)
                && let Some(key) = parent(Kind::User, &user.namespace, &user.name, &user.organization, problems)
            {
                children.entry(key).or_default().users.push(user);
            }
        }
        for api_key in sorted_by_name(&declarations.api_keys, |k| (&k.namespace, &k.name)) {
            if first(Kind::ApiKey, &api_key.namespace, &api_key.name, problems)
                && let Some(key) = parent(
                    Kind::ApiKey,
                    &api_key.namespace,
                    &api_key.name,
                    &api_key.organization,
                    problems,
                )
            {
                children.entry(key).or_default().api_keys.push(api_key);
            }
        }
        Grouped {
            organizations,
            children,
        }
    }
}

/// Sorting by name makes every tie-break (which duplicate wins, which key is the 129th) deterministic.
fn sorted_by_name<T>(items: &[T], key: impl Fn(&T) -> (&String, &String)) -> Vec<&T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by(|a, b| key(a).cmp(&key(b)));
    sorted
}
