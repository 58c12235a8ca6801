//! Who may make a change: the pull-request side of the roles (`orgkeeper plan --as ACCOUNT`).
//!
//! A change is judged by the role its author holds in the state *before* the change, never after: otherwise
//! a pull request that makes its author an Admin would approve itself. What each role may do is
//! [`Role::allows`]; this module only says which [`Permission`] each [`Change`] needs, using the state before
//! (and the plan itself, for what becomes production) to tell production from non-production.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::account::Account;
use super::model::*;
use super::plan::Change;

/// A change the account may not make, with the rule that refuses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub change: Change,
    /// The declared object the change comes from (to point at its file), when there is one.
    pub object: Option<ObjectRef>,
    /// `manage-production`, `manage-users`, `manage-organization`, or `member` (not a User of the organization).
    pub rule: &'static str,
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.message)
    }
}

/// The rule cited when the account holds no role in the organization at all.
pub const MEMBER_RULE: &str = "member";

/// Every change in `changes` that `account` may not make, judged by its role in `before`.
pub fn review(changes: &[Change], before: &BTreeMap<OrgKey, StoredOrganization>, account: &Account) -> Vec<Refusal> {
    let production_after = production_after(changes, before);
    changes
        .iter()
        .filter_map(|change| {
            let organization = change.organization();
            let stored = before.get(organization);
            let Some(user) = stored.and_then(|org| org.users.iter().find(|u| &u.account == account)) else {
                let message = match stored {
                    None => format!(
                        "{account} may not change organization {organization}: it does not exist before this change, so nobody holds a role in it yet (a platform administrator creates an organization)"
                    ),
                    Some(_) => format!(
                        "{account} is not a User of organization {organization} before this change, so it may change nothing in it"
                    ),
                };
                return Some(Refusal {
                    change: change.clone(),
                    object: object_of(change, stored),
                    rule: MEMBER_RULE,
                    message,
                });
            };
            let permission = needed(change, stored, &production_after);
            if user.role.allows(permission) {
                return None;
            }
            Some(Refusal {
                change: change.clone(),
                object: object_of(change, stored),
                rule: permission.rule(),
                message: format!(
                    "{account} is a {} of organization {organization} before this change; {} needs an Admin",
                    user.role,
                    what(permission)
                ),
            })
        })
        .collect()
}

/// The resource a change carries out. Removals point at the object as it was (its file is gone from the head).
fn object_of(change: &Change, stored: Option<&StoredOrganization>) -> Option<ObjectRef> {
    let namespace = &change.organization().namespace;
    let object = |kind, name: &str| Some(ObjectRef::new(kind, namespace, name));
    match change {
        Change::CreateOrganization { organization, .. }
        | Change::UpdateOrganization { organization, .. }
        | Change::DeleteOrganization { organization, .. }
        | Change::ReleaseOrganization { organization, .. } => object(Kind::Organization, &organization.name),
        Change::CreateEnvironment { environment, .. }
        | Change::UpdateEnvironment { environment, .. }
        | Change::ResetEnvironment { environment, .. }
        | Change::DeleteEnvironment { environment, .. }
        | Change::ReleaseEnvironment { environment, .. } => object(Kind::Environment, environment),
        Change::AddUser { resource, .. } | Change::UpdateUser { resource, .. } => object(Kind::User, resource),
        Change::RemoveUser { account, .. } => stored?
            .users
            .iter()
            .find(|u| &u.account == account)
            .and_then(|u| object(Kind::User, &u.resource_name)),
        Change::IssueKey { api_key, .. }
        | Change::RotateKey { api_key, .. }
        | Change::SetKeyExpiry { api_key, .. }
        | Change::RetireKey { api_key, .. }
        | Change::RevokeKey { api_key, .. }
        | Change::RemoveKey { api_key, .. } => object(Kind::ApiKey, api_key),
    }
}

fn what(permission: Permission) -> &'static str {
    match permission {
        Permission::ManageEnvironment { production: true } => "changing a production environment or its API keys",
        Permission::ManageUsers => "adding, removing or changing a User (and their role)",
        Permission::ManageOrganization => "changing the Organization",
        Permission::ManageEnvironment { production: false } | Permission::ReadEnvironment { .. } => "this change",
    }
}

/// The environments that are production after the plan (or before it, for the ones it removes).
fn production_after(changes: &[Change], before: &BTreeMap<OrgKey, StoredOrganization>) -> BTreeSet<(OrgKey, String)> {
    let mut production: BTreeMap<(OrgKey, String), bool> = before
        .iter()
        .flat_map(|(key, org)| {
            org.environments
                .iter()
                .map(move |e| ((key.clone(), e.name.clone()), e.settings.production))
        })
        .collect();
    for change in changes {
        let (organization, environment, settings) = match change {
            Change::CreateEnvironment {
                organization,
                environment,
                settings,
            } => (organization, environment, settings),
            Change::UpdateEnvironment {
                organization,
                environment,
                to,
                ..
            }
            | Change::ResetEnvironment {
                organization,
                environment,
                to,
                ..
            } => (organization, environment, to),
            _ => continue,
        };
        production.insert((organization.clone(), environment.clone()), settings.production);
    }
    production
        .into_iter()
        .filter(|(_, production)| *production)
        .map(|(key, _)| key)
        .collect()
}

/// The permission a change needs. An environment counts as production when it is production before or
/// after the change: making an environment non-production is as much a production change as the reverse.
fn needed(
    change: &Change,
    stored: Option<&StoredOrganization>,
    production_after: &BTreeSet<(OrgKey, String)>,
) -> Permission {
    let production_before = |environment: &str| {
        stored
            .and_then(|org| org.environments.iter().find(|e| e.name == environment))
            .is_some_and(|e| e.settings.production)
    };
    let production = |environment: &str| {
        production_before(environment)
            || production_after.contains(&(change.organization().clone(), environment.to_owned()))
    };
    match change {
        Change::CreateOrganization { .. }
        | Change::UpdateOrganization { .. }
        | Change::DeleteOrganization { .. }
        | Change::ReleaseOrganization { .. } => Permission::ManageOrganization,
        Change::AddUser { .. } | Change::UpdateUser { .. } | Change::RemoveUser { .. } => Permission::ManageUsers,
        Change::CreateEnvironment { environment, .. }
        | Change::UpdateEnvironment { environment, .. }
        | Change::ResetEnvironment { environment, .. }
        | Change::DeleteEnvironment { environment, .. }
        | Change::ReleaseEnvironment { environment, .. }
        | Change::IssueKey { environment, .. }
        | Change::RotateKey { environment, .. }
        | Change::RevokeKey { environment, .. } => Permission::ManageEnvironment {
            production: production(environment),
        },
        Change::RemoveKey { api_key, .. }
        | Change::SetKeyExpiry { api_key, .. }
        | Change::RetireKey { api_key, .. } => {
            let environment = stored
                .and_then(|org| org.api_keys.iter().find(|k| &k.resource_name == api_key))
                .map(|k| k.environment.as_str());
            Permission::ManageEnvironment {
                // A key whose environment is unknown is judged as the stricter case.
                production: environment.is_none_or(production),
            }
        }
    }
}

/// The key id of a key known only from manifests (shown where a plan names the key it revokes).
pub const UNKNOWN_KEY_ID: &str = "(not known from manifests)";

/// What the store would hold after applying `declarations` to an empty store: the state before a pull
/// request when the target branch's manifests (`--base`) stand in for the store. Keys are live (or revoked)
/// with the key id [`UNKNOWN_KEY_ID`], because no key was ever issued from them.
pub fn state_declared_by(declarations: &Declarations) -> BTreeMap<OrgKey, StoredOrganization> {
    let mut organizations: BTreeMap<OrgKey, StoredOrganization> = BTreeMap::new();
    for decl in &declarations.organizations {
        organizations.entry(decl.key()).or_insert_with(|| StoredOrganization {
            id: String::new(),
            key: decl.key(),
            settings: decl.settings.clone(),
            managed: true,
            environments: DEFAULT_ENVIRONMENTS
                .iter()
                .map(|(name, _, _)| StoredEnvironment {
                    id: String::new(),
                    name: (*name).to_owned(),
                    settings: EnvironmentSettings::default_for(name).expect("a default environment"),
                    managed: true,
                })
                .collect(),
            users: Vec::new(),
            api_keys: Vec::new(),
        });
    }
    for env in &declarations.environments {
        if let Some(org) = organizations.get_mut(&OrgKey::new(&env.namespace, &env.organization)) {
            let settings = EnvironmentSettings::declared(env);
            match org.environments.iter_mut().find(|e| e.name == env.name) {
                Some(existing) => existing.settings = settings,
                None => org.environments.push(StoredEnvironment {
                    id: String::new(),
                    name: env.name.clone(),
                    settings,
                    managed: true,
                }),
            }
        }
    }
    for user in &declarations.users {
        if let Some(org) = organizations.get_mut(&OrgKey::new(&user.namespace, &user.organization))
            && !org.users.iter().any(|u| u.account == user.account)
        {
            org.users.push(StoredUser {
                account: user.account.clone(),
                role: user.role,
                resource_name: user.name.clone(),
            });
        }
    }
    let now = super::plan::unix_now();
    for key in &declarations.api_keys {
        if let Some(org) = organizations.get_mut(&OrgKey::new(&key.namespace, &key.organization)) {
            org.api_keys.push(StoredApiKey {
                key_id: UNKNOWN_KEY_ID.to_owned(),
                environment: key.environment.clone(),
                resource_name: key.name.clone(),
                secret_name: key.secret_name.clone(),
                access: key.access,
                state: if key.revoked { KeyState::Revoked } else { KeyState::Live },
                fingerprint: String::new(),
                // As if issued now under the declared trigger: the base branch's keys are not due.
                slot: KeySlot::Current,
                issued_at: now,
                expires_at: key.expiry.map(|e| e.for_key_issued_at(now)),
                trigger: key.rotation.as_ref().and_then(|r| r.trigger.clone()),
                superseded_at: None,
                last_used_at: None,
                revoked_outside_git: None,
            });
        }
    }
    organizations
}

/// The declared objects only an Admin may change, with their organization: the Organization, its Users, its
/// production Environments and the ApiKeys in them. `orgkeeper codeowners` asks an Admin's review for their files.
pub fn admin_only_objects(declarations: &Declarations) -> Vec<(ObjectRef, OrgKey)> {
    let state = state_declared_by(declarations);
    let production = |org: &OrgKey, environment: &str| {
        state
            .get(org)
            .and_then(|o| o.environments.iter().find(|e| e.name == environment))
            .is_some_and(|e| e.settings.production)
    };
    let mut objects = Vec::new();
    let mut add = |permission: Permission, kind, namespace: &str, name: &str, organization: OrgKey| {
        if !Role::Member.allows(permission) {
            objects.push((ObjectRef::new(kind, namespace, name), organization));
        }
    };
    for org in &declarations.organizations {
        add(
            Permission::ManageOrganization,
            Kind::Organization,
            &org.namespace,
            &org.name,
            org.key(),
        );
    }
    for user in &declarations.users {
        let org = OrgKey::new(&user.namespace, &user.organization);
        add(Permission::ManageUsers, Kind::User, &user.namespace, &user.name, org);
    }
    for env in &declarations.environments {
        let org = OrgKey::new(&env.namespace, &env.organization);
        let permission = Permission::ManageEnvironment {
            production: EnvironmentSettings::declared(env).production,
        };
        add(permission, Kind::Environment, &env.namespace, &env.name, org);
    }
    for key in &declarations.api_keys {
        let org = OrgKey::new(&key.namespace, &key.organization);
        let permission = Permission::ManageEnvironment {
            production: production(&org, &key.environment),
        };
        add(permission, Kind::ApiKey, &key.namespace, &key.name, org);
    }
    objects
}

/// Each declared organization's Admins.
pub fn admins(declarations: &Declarations) -> BTreeMap<OrgKey, Vec<Account>> {
    let mut admins: BTreeMap<OrgKey, Vec<Account>> = declarations
        .organizations
        .iter()
        .map(|o| (o.key(), Vec::new()))
        .collect();
    for user in declarations.users.iter().filter(|u| u.role == Role::Admin) {
        if let Some(accounts) = admins.get_mut(&OrgKey::new(&user.namespace, &user.organization)) {
            accounts.push(user.account.clone());
        }
    }
    admins
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::KnownAccounts;
    use crate::domain::limits::{LimitOverrides, PlanTier};
    use crate::domain::plan::plan;

    const NS: &str = "team";

    fn org() -> OrganizationDecl {
        OrganizationDecl {
            namespace: NS.into(),
            name: "acme".into(),
            settings: OrganizationSettings {
                display_name: "Acme".into(),
                plan: PlanTier::Developer,
                limits: LimitOverrides::default(),
                deletion_policy: DeletionPolicy::Retain,
            },
        }
    }

    fn env(name: &str, production: Option<bool>) -> EnvironmentDecl {
        EnvironmentDecl {
            namespace: NS.into(),
            name: name.into(),
            organization: "acme".into(),
            display_name: None,
            production,
            limits: LimitOverrides::default(),
            deletion_policy: DeletionPolicy::Retain,
        }
    }

    fn user(name: &str, role: Role) -> UserDecl {
        UserDecl {
            namespace: NS.into(),
            name: name.into(),
            organization: "acme".into(),
            account: format!("github:{name}").parse().unwrap(),
            role,
        }
    }

    fn key(name: &str, environment: &str) -> ApiKeyDecl {
        ApiKeyDecl {
            namespace: NS.into(),
            name: name.into(),
            organization: "acme".into(),
            environment: environment.into(),
            access: Access::ReadWrite,
            secret_name: name.into(),
            revoked: false,
            rotation: None,
            expiry: None,
        }
    }

    /// acme with an Admin (ada), a Member (mel) and a non-production `staging`.
    fn base() -> Declarations {
        Declarations {
            organizations: vec![org()],
            environments: vec![env("staging", None)],
            users: vec![user("ada", Role::Admin), user("mel", Role::Member)],
            api_keys: vec![key("ci", "staging"), key("backend", "production")],
        }
    }

    /// The rules of each refusal when `author` proposes `head` on top of `base()`.
    fn refused(head: &Declarations, author: &str) -> Vec<&'static str> {
        let before = state_declared_by(&base());
        let accounts: KnownAccounts = head.users.iter().map(|u| u.account.clone()).collect();
        let plan = plan(head, &before, &accounts);
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        assert!(!plan.changes.is_empty(), "the head must change something");
        review(&plan.changes, &before, &author.parse().unwrap())
            .into_iter()
            .map(|r| r.rule)
            .collect()
    }

    #[test]
    fn the_base_declares_what_a_store_would_hold() {
        let before = state_declared_by(&base());
        let plan = plan(&base(), &before, &KnownAccounts::default());
        assert!(plan.is_empty() && plan.problems.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_member_manages_non_production_environments_and_their_keys() {
        let mut head = base();
        head.environments.push(env("preview", Some(false)));
        head.api_keys.push(key("preview-ci", "preview"));
        head.api_keys.retain(|k| k.name != "ci");
        assert_eq!(refused(&head, "github:mel"), Vec::<&str>::new());
    }

    #[test]
    fn a_member_may_not_add_a_production_key_and_an_admin_may() {
        let mut head = base();
        head.api_keys.push(key("backend-2", "production"));
        assert_eq!(refused(&head, "github:mel"), ["manage-production"]);
        assert_eq!(refused(&head, "github:ada"), Vec::<&str>::new());
    }

    #[test]
    fn removing_a_production_key_is_a_production_change() {
        let mut head = base();
        head.api_keys.retain(|k| k.name != "backend");
        assert_eq!(refused(&head, "github:mel"), ["manage-production"]);
    }

    #[test]
    fn making_an_environment_production_or_not_needs_an_admin() {
        let mut promote = base();
        promote.environments = vec![env("staging", Some(true))];
        assert_eq!(refused(&promote, "github:mel"), ["manage-production"]);
        let mut new_production = base();
        new_production.environments.push(env("eu", Some(true)));
        new_production.api_keys.push(key("eu-backend", "eu"));
        assert_eq!(
            refused(&new_production, "github:mel"),
            ["manage-production", "manage-production"]
        );
    }

    #[test]
    fn a_member_cannot_promote_themselves_and_the_role_before_counts() {
        let mut head = base();
        head.users = vec![user("ada", Role::Admin), user("mel", Role::Admin)];
        head.api_keys.push(key("backend-2", "production"));
        assert_eq!(refused(&head, "github:mel"), ["manage-users", "manage-production"]);
        assert_eq!(refused(&head, "github:ada"), Vec::<&str>::new());
    }

    #[test]
    fn users_and_the_organization_need_an_admin() {
        let mut head = base();
        head.users.push(user("newcomer", Role::Member));
        assert_eq!(refused(&head, "github:mel"), ["manage-users"]);
        let mut renamed = base();
        renamed.organizations[0].settings.display_name = "Acme Corp".into();
        assert_eq!(refused(&renamed, "github:mel"), ["manage-organization"]);
        assert_eq!(refused(&renamed, "github:ada"), Vec::<&str>::new());
    }

    #[test]
    fn someone_who_is_not_a_user_may_change_nothing() {
        let mut head = base();
        head.environments.push(env("preview", None));
        assert_eq!(refused(&head, "github:stranger"), [MEMBER_RULE]);
        let before = state_declared_by(&base());
        let change = plan(&head, &before, &KnownAccounts::default()).changes[0].clone();
        let refusal = &review(&[change], &before, &"github:stranger".parse().unwrap())[0];
        assert!(
            refusal.message.contains("not a User of organization team/acme"),
            "{refusal}"
        );
    }

    #[test]
    fn admin_only_objects_are_the_organization_users_and_production() {
        let mut declarations = base();
        declarations.environments.push(env("eu", Some(true)));
        declarations.api_keys.push(key("eu-backend", "eu"));
        let names: Vec<String> = admin_only_objects(&declarations)
            .into_iter()
            .map(|(object, _)| object.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "Organization team/acme",
                "User team/ada",
                "User team/mel",
                "Environment team/eu",
                "ApiKey team/backend",
                "ApiKey team/eu-backend",
            ]
        );
        let admins = admins(&declarations);
        assert_eq!(
            admins[&OrgKey::new(NS, "acme")],
            ["github:ada".parse::<Account>().unwrap()]
        );
    }

    #[test]
    fn a_new_organization_has_nobody_to_approve_it() {
        let head = base();
        let plan = plan(
            &head,
            &BTreeMap::new(),
            &head.users.iter().map(|u| u.account.clone()).collect(),
        );
        let refusals = review(&plan.changes, &BTreeMap::new(), &"github:ada".parse().unwrap());
        assert_eq!(refusals.len(), plan.changes.len());
        assert!(
            refusals[0].message.contains("does not exist before this change"),
            "{}",
            refusals[0]
        );
    }
}
