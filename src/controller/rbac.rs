//! The Kubernetes side of the roles: for each organization, in its namespace, a Role and a RoleBinding per
//! role (`orgkeeper:ORG:member`, `orgkeeper:ORG:admin`) binding the Kubernetes users its Users authenticate as,
//! and a ConfigMap (`orgkeeper-admission.ORG`) that tells the chart's ValidatingAdmissionPolicy which
//! environments are production and how many live keys each has.
//!
//! Everything is built from what the store holds after the reconcile (so a User whose account does not exist
//! yet is bound to nothing), server-side applied with a forced field manager (an edit or deletion by hand is put
//! back within the resync interval), and owned by the Organization (garbage collection removes it with the
//! Organization). Subjects are the whole list each time, so a removed User or a changed role leaves the
//! bindings with the next reconcile. Each object is applied only when it differs from what was applied last.
//!
//! The Admin-only rights are custom verbs (`manage-production` on environments, `manage-users` on users,
//! `manage-organization` on organizations): RBAC does nothing with them by itself, the admission policy asks
//! the authorizer for them. The controller holds every right these Roles grant (Kubernetes lets it create and
//! bind a Role only then), so it needs neither `escalate` nor `bind`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role as K8sRole, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use super::FIELD_MANAGER;
use super::context::Context;
use super::view::OrgView;
use crate::crd::Organization;
use crate::domain::{
    Account, Collision, KeyState, KubernetesUserNames, MAX_LIVE_KEYS_PER_ENVIRONMENT, OrgKey, Permission, Role,
    StoredOrganization,
};

/// The label the admission policy's `paramRef` selects its parameter ConfigMaps by.
pub const ADMISSION_PARAMS_LABEL: &str = "orgkeeper.dev/admission-params";

/// Every orgkeeper resource, as RBAC names them.
const RESOURCES: [&str; 4] = ["organizations", "environments", "users", "apikeys"];

/// The Roles, RoleBindings and admission parameters one organization should have.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedAccess {
    pub roles: Vec<K8sRole>,
    pub bindings: Vec<RoleBinding>,
    pub admission_params: ConfigMap,
}

pub fn role_name(organization: &str, role: Role) -> String {
    format!("orgkeeper:{organization}:{}", role.as_str().to_ascii_lowercase())
}

pub fn admission_params_name(organization: &str) -> String {
    format!("orgkeeper-admission.{organization}")
}

fn rule(resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec!["orgkeeper.dev".to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    }
}

/// What a role may do, in RBAC terms. Members read everything and manage environments and keys (the policy
/// keeps them out of production); Admins also manage Users and the Organization and hold the custom verbs.
fn rules(role: Role) -> Vec<PolicyRule> {
    let mut rules = vec![
        rule(&RESOURCES, &["get", "list", "watch"]),
        rule(&["environments", "apikeys"], &["create", "update", "patch", "delete"]),
    ];
    if role.allows(Permission::ManageUsers) {
        rules.push(rule(&["users"], &["create", "update", "patch", "delete"]));
        rules.push(rule(&["users"], &[Permission::ManageUsers.rule()]));
    }
    if role.allows(Permission::ManageOrganization) {
        rules.push(rule(&["organizations"], &["update", "patch", "delete"]));
        rules.push(rule(&["organizations"], &[Permission::ManageOrganization.rule()]));
    }
    let production = Permission::ManageEnvironment { production: true };
    if role.allows(production) {
        rules.push(rule(&["environments"], &[production.rule()]));
    }
    rules
}

/// The Roles, bindings and admission parameters for `stored`, owned by `organization`. Refuses a Kubernetes
/// user name two Users share: binding it would hand one person the other's role.
pub fn desired(
    organization: &Organization,
    stored: &StoredOrganization,
    names: &KubernetesUserNames,
) -> Result<GeneratedAccess, Box<Collision>> {
    let namespace = stored.key.namespace.clone();
    let org = stored.key.name.clone();
    let mapped = names.map_all(stored.users.iter().map(|u| (u.resource_name.as_str(), &u.account)))?;
    let role_of: HashMap<&Account, Role> = stored.users.iter().map(|u| (&u.account, u.role)).collect();
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.clone()),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/managed-by".to_owned(), "orgkeeper".to_owned()),
            (
                "orgkeeper.dev/organization-uid".to_owned(),
                organization.uid().unwrap_or_default(),
            ),
        ])),
        owner_references: Some(vec![owner(organization)]),
        ..Default::default()
    };
    let mut roles = Vec::new();
    let mut bindings = Vec::new();
    for role in [Role::Member, Role::Admin] {
        let name = role_name(&org, role);
        roles.push(K8sRole {
            metadata: meta(name.clone()),
            rules: Some(rules(role)),
        });
        let subjects: Vec<Subject> = mapped
            .iter()
            .filter(|(_, account)| role_of.get(*account) == Some(&role))
            .map(|(user, _)| Subject {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "User".to_owned(),
                name: user.clone(),
                namespace: None,
            })
            .collect();
        bindings.push(RoleBinding {
            metadata: meta(name.clone()),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "Role".to_owned(),
                name,
            },
            subjects: Some(subjects),
        });
    }
    let mut params_meta = meta(admission_params_name(&org));
    params_meta
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(ADMISSION_PARAMS_LABEL.to_owned(), "true".to_owned());
    let mut data = BTreeMap::from([
        ("organization".to_owned(), org.clone()),
        ("maxLiveKeys".to_owned(), MAX_LIVE_KEYS_PER_ENVIRONMENT.to_string()),
    ]);
    for env in &stored.environments {
        if env.settings.production {
            data.insert(format!("production.{}", env.name), "true".to_owned());
        }
        let live = stored
            .api_keys
            .iter()
            .filter(|k| k.environment == env.name && k.state != KeyState::Revoked)
            .count();
        data.insert(format!("liveKeys.{}", env.name), live.to_string());
    }
    Ok(GeneratedAccess {
        roles,
        bindings,
        admission_params: ConfigMap {
            metadata: params_meta,
            data: Some(data),
            ..Default::default()
        },
    })
}

fn owner(organization: &Organization) -> OwnerReference {
    OwnerReference {
        api_version: Organization::api_version(&()).into_owned(),
        kind: Organization::kind(&()).into_owned(),
        name: organization.name_any(),
        uid: organization.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// What was last applied, per object, and when: a reconcile that changes nothing costs no API calls, and an
/// object is applied again at least once per resync interval, which puts back a hand edit or deletion.
#[derive(Default)]
pub struct Applied(Mutex<HashMap<Slot, (u64, Instant)>>);

/// An organization's object by kind and name.
type Slot = (OrgKey, &'static str, String);

impl Applied {
    fn unchanged(&self, slot: &Slot, fingerprint: u64, max_age: Duration) -> bool {
        let applied = self.0.lock().unwrap_or_else(|e| e.into_inner());
        applied
            .get(slot)
            .is_some_and(|(last, at)| *last == fingerprint && at.elapsed() < max_age)
    }

    fn record(&self, slot: Slot, fingerprint: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot, (fingerprint, Instant::now()));
    }
}

/// Brings the organization's Roles, bindings and admission parameters in line with the store. Called after
/// every reconcile of the organization; applies only the objects that differ from what it applied last.
pub async fn keep(ctx: &Context, view: &OrgView, stored: Option<&StoredOrganization>) -> Result<(), Error> {
    let (Some(organization), Some(stored)) = (view.declared_organization(), stored) else {
        return Ok(());
    };
    if !stored.managed || organization.uid().is_none() {
        return Ok(());
    }
    let max_age = ctx.settings.resync_interval;
    let access = match desired(organization, stored, &ctx.settings.kubernetes_users) {
        Ok(access) => access,
        Err(collision) => {
            // Nothing is applied: the bindings stay as they were until the Users or the templates change.
            tracing::warn!(organization = %view.key, %collision, "not updating the generated RBAC");
            let slot = (view.key.clone(), "KubernetesUserCollision", String::new());
            let fingerprint = fingerprint(&collision.to_string());
            if !ctx.rbac.unchanged(&slot, fingerprint, max_age) {
                let event = Event {
                    type_: EventType::Warning,
                    reason: "KubernetesUserCollision".to_owned(),
                    note: Some(format!("{collision}; the generated RBAC is left as it was")),
                    action: "GenerateRBAC".to_owned(),
                    secondary: None,
                };
                if let Err(error) = ctx.recorder.publish(&event, &organization.object_ref(&())).await {
                    tracing::warn!(%error, "could not record an event");
                }
                ctx.rbac.record(slot, fingerprint);
            }
            return Ok(());
        }
    };
    // Roles before the bindings that refer to them.
    for role in &access.roles {
        apply(ctx, &view.key, role).await?;
    }
    for binding in &access.bindings {
        apply(ctx, &view.key, binding).await?;
    }
    apply(ctx, &view.key, &access.admission_params).await
}

/// Server-side applies one object in the organization's namespace, unless it is unchanged and applied recently.
async fn apply<K>(ctx: &Context, organization: &OrgKey, object: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object.name_any();
    let slot = (organization.clone(), <K as k8s_openapi::Resource>::KIND, name.clone());
    let fingerprint = fingerprint(&serde_json::to_string(object).unwrap_or_default());
    if ctx.rbac.unchanged(&slot, fingerprint, ctx.settings.resync_interval) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &organization.namespace);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
        .await?;
    tracing::debug!(%organization, kind = <K as k8s_openapi::Resource>::KIND, %name, "generated object applied");
    ctx.rbac.record(slot, fingerprint);
    Ok(())
}

fn fingerprint(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    fn organization() -> Organization {
        let mut org = Organization::new(
            "acme",
            serde_json::from_value(serde_json::json!({"displayName": "Acme"})).unwrap(),
        );
        org.metadata.namespace = Some("team".into());
        org.metadata.uid = Some("uid-1".into());
        org
    }

    fn stored(users: &[(&str, Role)]) -> StoredOrganization {
        let env = |name: &str, production: bool| StoredEnvironment {
            id: name.into(),
            name: name.into(),
            settings: EnvironmentSettings {
                display_name: name.into(),
                production,
                limits: LimitOverrides::default(),
                deletion_policy: DeletionPolicy::Retain,
            },
            managed: true,
        };
        let key = |name: &str, environment: &str, state| StoredApiKey {
            key_id: name.into(),
            environment: environment.into(),
            resource_name: name.into(),
            secret_name: name.into(),
            access: Access::ReadWrite,
            state,
            ..crate::domain::fixtures::api_key(name, name, state)
        };
        StoredOrganization {
            id: "org".into(),
            key: OrgKey::new("team", "acme"),
            settings: OrganizationSettings {
                display_name: "Acme".into(),
                plan: PlanTier::Developer,
                limits: LimitOverrides::default(),
                deletion_policy: DeletionPolicy::Retain,
            },
            managed: true,
            environments: vec![env("production", true), env("development", false), env("eu", true)],
            users: users
                .iter()
                .map(|(account, role)| StoredUser {
                    account: account.parse().unwrap(),
                    role: *role,
                    resource_name: account.split(':').nth(1).unwrap().split('@').next().unwrap().into(),
                })
                .collect(),
            api_keys: vec![
                key("a", "production", KeyState::Live),
                key("b", "production", KeyState::Pending),
                key("c", "production", KeyState::Revoked),
            ],
        }
    }

    fn subjects(access: &GeneratedAccess, role: Role) -> Vec<String> {
        let name = role_name("acme", role);
        let binding = access.bindings.iter().find(|b| b.name_any() == name).unwrap();
        binding.subjects.iter().flatten().map(|s| s.name.clone()).collect()
    }

    fn verbs(access: &GeneratedAccess, role: Role, resource: &str) -> Vec<String> {
        let name = role_name("acme", role);
        let role = access.roles.iter().find(|r| r.name_any() == name).unwrap();
        role.rules
            .iter()
            .flatten()
            .filter(|r| r.resources.iter().flatten().any(|x| x == resource))
            .flat_map(|r| r.verbs.clone())
            .collect()
    }

    #[test]
    fn each_role_binds_its_users_by_their_kubernetes_names() {
        let names = KubernetesUserNames::new("oidc:{login}", "{email}").unwrap();
        let stored = stored(&[
            ("github:ada", Role::Admin),
            ("github:mel", Role::Member),
            ("google:gus@acme.example", Role::Member),
        ]);
        let access = desired(&organization(), &stored, &names).unwrap();
        assert_eq!(subjects(&access, Role::Admin), ["oidc:ada"]);
        assert_eq!(subjects(&access, Role::Member), ["gus@acme.example", "oidc:mel"]);
        let owner = &access.bindings[0].metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Organization", "uid-1"));
    }

    #[test]
    fn only_admins_hold_the_custom_verbs_and_the_user_rights() {
        let access = desired(&organization(), &stored(&[]), &KubernetesUserNames::default()).unwrap();
        assert_eq!(
            subjects(&access, Role::Admin),
            Vec::<String>::new(),
            "no users, nobody bound"
        );
        let member_env = verbs(&access, Role::Member, "environments");
        assert!(member_env.contains(&"create".into()) && !member_env.contains(&"manage-production".into()));
        assert_eq!(verbs(&access, Role::Member, "users"), ["get", "list", "watch"]);
        assert!(verbs(&access, Role::Admin, "environments").contains(&"manage-production".into()));
        assert!(verbs(&access, Role::Admin, "users").contains(&"manage-users".into()));
        assert!(verbs(&access, Role::Admin, "organizations").contains(&"manage-organization".into()));
    }

    #[test]
    fn admission_params_name_production_environments_and_count_live_keys() {
        let access = desired(&organization(), &stored(&[]), &KubernetesUserNames::default()).unwrap();
        let data = access.admission_params.data.unwrap();
        assert_eq!(data["organization"], "acme");
        assert_eq!(data["production.production"], "true");
        assert_eq!(data["production.eu"], "true");
        assert!(!data.contains_key("production.development"));
        assert_eq!(
            data["liveKeys.production"], "2",
            "pending keys hold a slot, revoked ones do not"
        );
        assert_eq!(data["liveKeys.eu"], "0");
        assert_eq!(data["maxLiveKeys"], "128");
        let labels = access.admission_params.metadata.labels.unwrap();
        assert_eq!(labels[ADMISSION_PARAMS_LABEL], "true");
    }

    #[test]
    fn a_shared_kubernetes_name_is_refused() {
        let names = KubernetesUserNames::new("{login}@acme.example", "{email}").unwrap();
        let stored = stored(&[("github:gus", Role::Member), ("google:gus@acme.example", Role::Admin)]);
        let collision = desired(&organization(), &stored, &names).unwrap_err();
        assert_eq!(collision.kubernetes_user, "gus@acme.example");
    }
}
