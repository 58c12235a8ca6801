//! The planner: for each declared organization, the changes that make the store match its declarations.

use std::collections::{BTreeMap, BTreeSet};

use super::grouping::{Children, Grouped};
use super::{Change, Plan};
use crate::domain::account::{Account, KnownAccounts};
use crate::domain::model::*;
use crate::domain::rotation::{RotationCause, RotationPolicy, format_rfc3339};
use crate::domain::rules::{Problem, Reason};

/// Plans every declared organization. `stored` holds what the store has for those organizations (absent
/// ones are new); organizations that are only in the store are not touched: removing an organization is
/// an explicit act (the controller's finalizer), never a side effect of a folder missing a file.
pub fn plan(
    declarations: &Declarations,
    stored: &BTreeMap<OrgKey, StoredOrganization>,
    accounts: &KnownAccounts,
) -> Plan {
    plan_at(declarations, stored, accounts, unix_now())
}

/// Seconds since the Unix epoch, as the store and the data plane count time.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// [`plan`] at a given time (seconds since the epoch): rotations and expiries depend on it.
pub fn plan_at(
    declarations: &Declarations,
    stored: &BTreeMap<OrgKey, StoredOrganization>,
    accounts: &KnownAccounts,
    now: i64,
) -> Plan {
    let mut problems = Vec::new();
    let declared = Grouped::new(declarations, &mut problems);
    let mut steps = Steps::default();
    for (key, org) in &declared.organizations {
        let children = declared.children.get(key).cloned().unwrap_or_default();
        OrganizationPlanner {
            key,
            decl: org,
            children: &children,
            stored: stored.get(key),
            accounts,
            now,
        }
        .plan(&mut steps, &mut problems);
    }
    problems.sort_by(|a, b| a.object.cmp(&b.object));
    Plan {
        changes: steps.into_changes(),
        problems,
    }
}

/// Changes collected by phase, so that the plan reads (and executes) in a safe order: parents before
/// children, revocations before issuance (freeing slots), removals last.
#[derive(Default)]
struct Steps {
    organizations: Vec<Change>,
    environments: Vec<Change>,
    users: Vec<Change>,
    revocations: Vec<Change>,
    issuance: Vec<Change>,
    removals: Vec<Change>,
}

impl Steps {
    fn into_changes(self) -> Vec<Change> {
        [
            self.organizations,
            self.environments,
            self.users,
            self.revocations,
            self.issuance,
            self.removals,
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}
struct OrganizationPlanner<'a> {
    key: &'a OrgKey,
    decl: &'a OrganizationDecl,
    children: &'a Children<'a>,
    stored: Option<&'a StoredOrganization>,
    accounts: &'a KnownAccounts,
    now: i64,
}

impl OrganizationPlanner<'_> {
    fn plan(&self, steps: &mut Steps, problems: &mut Vec<Problem>) {
        self.plan_organization(steps);
        let environments = self.plan_environments(steps, problems);
        self.plan_users(steps, problems);
        self.plan_api_keys(&environments, steps, problems);
    }

    fn org(&self) -> OrgKey {
        self.key.clone()
    }

    fn plan_organization(&self, steps: &mut Steps) {
        let to = self.decl.settings.clone();
        match self.stored {
            None => steps.organizations.push(Change::CreateOrganization {
                organization: self.org(),
                settings: to,
            }),
            Some(stored) if stored.settings != to || !stored.managed => {
                steps.organizations.push(Change::UpdateOrganization {
                    organization: self.org(),
                    from: stored.settings.clone(),
                    to,
                    adopt: !stored.managed,
                });
            }
            Some(_) => {}
        }
    }

    /// Returns the environments that will exist and be managed after the plan, by name.
    fn plan_environments(&self, steps: &mut Steps, problems: &mut Vec<Problem>) -> BTreeSet<String> {
        let stored: BTreeMap<&str, &StoredEnvironment> = self
            .stored
            .map(|org| org.environments.iter().map(|e| (e.name.as_str(), e)).collect())
            .unwrap_or_default();
        let mut declared: BTreeMap<&str, EnvironmentSettings> = BTreeMap::new();
        for env in &self.children.environments {
            match check_default_environment(env) {
                Some(problem) => problems.push(problem),
                None => {
                    declared.insert(&env.name, EnvironmentSettings::declared(env));
                }
            }
        }
        let mut existing = BTreeSet::new();
        // Default environments always exist, configured or not.
        for (name, _, _) in DEFAULT_ENVIRONMENTS {
            let settings = declared
                .remove(name)
                .unwrap_or_else(|| EnvironmentSettings::default_for(name).expect("default"));
            let configured = self.children.environments.iter().any(|e| e.name == name);
            self.converge_environment(name, settings, configured, stored.get(name).copied(), steps);
            existing.insert(name.to_owned());
        }
        for (name, settings) in declared {
            self.converge_environment(name, settings, true, stored.get(name).copied(), steps);
            existing.insert(name.to_owned());
        }
        for env in stored
            .values()
            .filter(|e| !e.is_default() && e.managed && !existing.contains(&e.name))
        {
            self.remove_environment(env, steps);
        }
        existing
    }

    fn converge_environment(
        &self,
        name: &str,
        to: EnvironmentSettings,
        declared: bool,
        stored: Option<&StoredEnvironment>,
        steps: &mut Steps,
    ) {
        let (organization, environment) = (self.org(), name.to_owned());
        let Some(stored) = stored else {
            steps.environments.push(Change::CreateEnvironment {
                organization,
                environment,
                settings: to,
            });
            return;
        };
        if !declared {
            // A default environment nobody configures: back to defaults, if it is not there already.
            if stored.settings != to {
                steps.removals.push(Change::ResetEnvironment {
                    organization,
                    environment,
                    from: stored.settings.clone(),
                    to,
                });
            }
            return;
        }
        let adopt = !stored.managed && !stored.is_default();
        if stored.settings != to || adopt {
            steps.environments.push(Change::UpdateEnvironment {
                organization,
                environment,
                from: stored.settings.clone(),
                to,
                adopt,
            });
        }
    }

    fn remove_environment(&self, env: &StoredEnvironment, steps: &mut Steps) {
        let revoked_keys: Vec<String> = self
            .stored
            .iter()
            .flat_map(|org| &org.api_keys)
            .filter(|k| k.environment == env.name && k.state != KeyState::Revoked)
            .map(|k| k.key_id.clone())
            .collect();
        let (organization, environment) = (self.org(), env.name.clone());
        steps.removals.push(match env.settings.deletion_policy {
            DeletionPolicy::Delete => Change::DeleteEnvironment {
                organization,
                environment,
                revoked_keys,
            },
            DeletionPolicy::Retain => Change::ReleaseEnvironment {
                organization,
                environment,
                revoked_keys,
            },
        });
    }

    fn plan_users(&self, steps: &mut Steps, problems: &mut Vec<Problem>) {
        let stored: BTreeMap<&Account, &StoredUser> = self
            .stored
            .map(|org| org.users.iter().map(|u| (&u.account, u)).collect())
            .unwrap_or_default();
        let mut declared: BTreeMap<&Account, &UserDecl> = BTreeMap::new();
        for user in &self.children.users {
            let object = ObjectRef::new(Kind::User, &user.namespace, &user.name);
            if let Some(other) = declared.get(&user.account) {
                problems.push(Problem {
                    object,
                    reason: Reason::Duplicate,
                    message: format!(
                        "account {} is already a user of organization {} through User {}",
                        user.account, self.key, other.name
                    ),
                });
                continue;
            }
            let existing = stored.get(&user.account);
            if let Some((reason, message)) = self.accounts.refusal(&user.account, existing.is_some()) {
                problems.push(Problem {
                    object,
                    reason,
                    message,
                });
                // A user already in the organization stays: a provider's answer never removes anyone.
                if existing.is_none() {
                    continue;
                }
            }
            declared.insert(&user.account, user);
            let organization = self.org();
            let (account, resource) = (user.account.clone(), user.name.clone());
            match existing {
                None => steps.users.push(Change::AddUser {
                    organization,
                    account,
                    role: user.role,
                    resource,
                }),
                Some(stored) if stored.role != user.role || stored.resource_name != user.name => {
                    steps.users.push(Change::UpdateUser {
                        organization,
                        account,
                        from: stored.role,
                        to: user.role,
                        resource,
                    });
                }
                Some(_) => {}
            }
        }
        for account in stored.keys().filter(|a| !declared.contains_key(*a)) {
            steps.removals.push(Change::RemoveUser {
                organization: self.org(),
                account: (*account).clone(),
            });
        }
    }

    fn plan_api_keys(&self, environments: &BTreeSet<String>, steps: &mut Steps, problems: &mut Vec<Problem>) {
        let all_keys: &[StoredApiKey] = self.stored.map_or(&[], |org| org.api_keys.as_slice());
        let stored: BTreeMap<&str, &StoredApiKey> = all_keys
            .iter()
            .filter(|k| k.slot == KeySlot::Current)
            .map(|k| (k.resource_name.as_str(), k))
            .collect();
        fn others_of<'k>(
            all_keys: &'k [StoredApiKey],
            name: &'k str,
            slot: KeySlot,
        ) -> impl Iterator<Item = &'k StoredApiKey> {
            all_keys
                .iter()
                .filter(move |k| k.slot == slot && k.resource_name == name && k.state != KeyState::Revoked)
        }
        let mut live_per_environment: BTreeMap<&str, usize> = BTreeMap::new();
        let mut secrets: BTreeMap<&str, &str> = BTreeMap::new();
        let mut wanted = Vec::new();
        let mut declared = BTreeSet::new();
        for decl in &self.children.api_keys {
            declared.insert(decl.name.as_str());
            let object = ObjectRef::new(Kind::ApiKey, &decl.namespace, &decl.name);
            if let Some(other) = secrets.insert(&decl.secret_name, &decl.name) {
                problems.push(Problem {
                    object,
                    reason: Reason::Duplicate,
                    message: format!(
                        "Secret {:?} is already the target of ApiKey {other}; give each key its own Secret",
                        decl.secret_name
                    ),
                });
                continue;
            }
            if !environments.contains(&decl.environment) {
                problems.push(Problem {
                    object,
                    reason: Reason::EnvironmentNotFound,
                    message: format!(
                        "environment {:?} is not declared for organization {}; create the Environment or use production or development",
                        decl.environment, self.key
                    ),
                });
                continue;
            }
            // A previous key whose overlap is over no longer works (the data plane refuses it as expired);
            // revoking it records the end of the rotation and frees its slot.
            for previous in others_of(all_keys, &decl.name, KeySlot::Previous)
                .filter(|k| k.expires_at.is_some_and(|t| t <= self.now))
            {
                steps.revocations.push(Change::RetireKey {
                    organization: self.org(),
                    api_key: decl.name.clone(),
                    key_id: previous.key_id.clone(),
                });
            }
            match stored.get(decl.name.as_str()) {
                Some(key) => {
                    if let Some(problem) = check_immutable(decl, key) {
                        problems.push(problem);
                        continue;
                    }
                    match (key.state, decl.revoked) {
                        (KeyState::Live, true) => {
                            steps.revocations.push(Change::RevokeKey {
                                organization: self.org(),
                                environment: key.environment.clone(),
                                api_key: decl.name.clone(),
                                key_id: key.key_id.clone(),
                            });
                            // Every key of a revoked ApiKey stops: the previous one of a rotation too.
                            for other in others_of(all_keys, &decl.name, KeySlot::Previous)
                                .chain(others_of(all_keys, &decl.name, KeySlot::Incoming))
                                .filter(|k| k.expires_at.is_none_or(|t| t > self.now))
                            {
                                steps.revocations.push(Change::RevokeKey {
                                    organization: self.org(),
                                    environment: other.environment.clone(),
                                    api_key: decl.name.clone(),
                                    key_id: other.key_id.clone(),
                                });
                            }
                        }
                        (KeyState::Live, false) => {
                            *live_per_environment.entry(&key.environment).or_default() += 1;
                            let incoming = others_of(all_keys, &decl.name, KeySlot::Incoming).next();
                            self.plan_key_life(decl, key, incoming, steps, problems);
                        }
                        (KeyState::Pending, false) => wanted.push((decl, Some(key.key_id.clone()))),
                        (KeyState::Pending, true) => steps.revocations.push(Change::RemoveKey {
                            organization: self.org(),
                            api_key: decl.name.clone(),
                            key_id: key.key_id.clone(),
                        }),
                        (KeyState::Revoked, _) => {}
                    }
                }
                None if decl.revoked => {}
                None => wanted.push((decl, None)),
            }
        }
        for (decl, resume) in wanted {
            let object = ObjectRef::new(Kind::ApiKey, &decl.namespace, &decl.name);
            let expires_at = decl.expiry.map(|e| e.for_key_issued_at(self.now));
            if let Some(problem) = past_expiry(&object, expires_at, self.now) {
                problems.push(problem);
                continue;
            }
            let live = live_per_environment.entry(&decl.environment).or_default();
            if *live >= MAX_LIVE_KEYS_PER_ENVIRONMENT {
                problems.push(Problem {
                    object,
                    reason: Reason::KeyLimitReached,
                    message: format!(
                        "environment {:?} of organization {} already has {MAX_LIVE_KEYS_PER_ENVIRONMENT} live keys, the most an environment may have; revoke or delete a key to make room",
                        decl.environment, self.key
                    ),
                });
                continue;
            }
            *live += 1;
            steps.issuance.push(Change::IssueKey {
                organization: self.org(),
                environment: decl.environment.clone(),
                api_key: decl.name.clone(),
                access: decl.access,
                secret_name: decl.secret_name.clone(),
                resume,
                expiry: decl.expiry,
                trigger: decl.rotation.as_ref().and_then(|r| r.trigger.clone()),
            });
        }
        // Every key record of an ApiKey that is gone: current, incoming and previous.
        for key in all_keys.iter().filter(|k| !declared.contains(k.resource_name.as_str())) {
            steps.revocations.push(Change::RemoveKey {
                organization: self.org(),
                api_key: key.resource_name.clone(),
                key_id: key.key_id.clone(),
            });
        }
    }

    /// A live current key's expiry and rotation, as its ApiKey declares them (see `domain::rotation`).
    fn plan_key_life(
        &self,
        decl: &ApiKeyDecl,
        key: &StoredApiKey,
        incoming: Option<&StoredApiKey>,
        steps: &mut Steps,
        problems: &mut Vec<Problem>,
    ) {
        let object = ObjectRef::new(Kind::ApiKey, &decl.namespace, &decl.name);
        if let Some(at) = decl.expiry.map(|e| e.for_key_issued_at(key.issued_at))
            && key.expires_at != Some(at)
        {
            match past_expiry(&object, Some(at), self.now) {
                Some(problem) => {
                    problems.push(problem);
                    return;
                }
                None => steps.issuance.push(Change::SetKeyExpiry {
                    organization: self.org(),
                    api_key: decl.name.clone(),
                    key_id: key.key_id.clone(),
                    expires_at: at,
                }),
            }
        }
        // A rotation interrupted before spec.rotation was removed is still finished: its incoming key may
        // already be in the Secret.
        let unrotated;
        let policy = match (&decl.rotation, incoming) {
            (Some(policy), _) => policy,
            (None, Some(_)) => {
                unrotated = RotationPolicy {
                    trigger: key.trigger.clone(),
                    ..RotationPolicy::parse(None, None, None).expect("the defaults are valid")
                };
                &unrotated
            }
            (None, None) => return,
        };
        let due = policy.due(key.issued_at, key.trigger.as_deref(), self.now);
        let cause = match (incoming, due) {
            (Some(_), due) => due.unwrap_or(RotationCause::Trigger),
            (None, Some(cause)) => cause,
            (None, None) => return,
        };
        let expires_at = decl.expiry.map(|e| e.for_key_issued_at(self.now));
        if let Some(mut problem) = past_expiry(&object, expires_at, self.now) {
            problem.message = format!(
                "the key is due for rotation ({cause}), but {}; the current key is left as it is",
                problem.message
            );
            problems.push(problem);
            return;
        }
        steps.issuance.push(Change::RotateKey {
            organization: self.org(),
            environment: decl.environment.clone(),
            api_key: decl.name.clone(),
            access: decl.access,
            secret_name: decl.secret_name.clone(),
            current: key.key_id.clone(),
            cause,
            overlap: policy.overlap,
            resume: incoming.map(|k| k.key_id.clone()),
            expiry: decl.expiry,
            trigger: policy.trigger.clone(),
        });
    }
}

/// An expiry that is already over when it is declared is refused: a key that never works is a typo.
fn past_expiry(object: &ObjectRef, expires_at: Option<i64>, now: i64) -> Option<Problem> {
    let at = expires_at.filter(|at| *at <= now)?;
    Some(Problem {
        object: object.clone(),
        reason: Reason::InvalidSpec,
        message: format!(
            "the declared expiry {} is in the past (it is {} now): a key that expires before it is used is refused and nothing was changed; set spec.expiresAt to a later time or spec.expireAfter to a longer duration",
            format_rfc3339(at),
            format_rfc3339(now)
        ),
    })
}

/// A default environment keeps its production flag (production is always production, development never)
/// and can never be deleted.
fn check_default_environment(env: &EnvironmentDecl) -> Option<Problem> {
    let (_, production) = default_environment(&env.name)?;
    if env.deletion_policy == DeletionPolicy::Delete {
        return Some(Problem {
            object: ObjectRef::new(Kind::Environment, &env.namespace, &env.name),
            reason: Reason::InvalidSpec,
            message: format!(
                "{:?} is a default environment and can never be deleted: deletionPolicy Delete is not allowed (deleting the resource resets it)",
                env.name
            ),
        });
    }
    match env.production {
        Some(declared) if declared != production => Some(Problem {
            object: ObjectRef::new(Kind::Environment, &env.namespace, &env.name),
            reason: Reason::InvalidSpec,
            message: format!(
                "{:?} is a default environment and is always {}; remove spec.production or set it to {production}",
                env.name,
                if production {
                    "a production environment"
                } else {
                    "a non-production environment"
                }
            ),
        }),
        _ => None,
    }
}

/// A key revoked by id (incident response) stays revoked whatever Git says; the problem tells the ApiKey's
/// owner what happened and how to bring Git in line.
fn revoked_outside_git(object: ObjectRef, key_id: &str, outside: &OutsideRevocation) -> Problem {
    Problem {
        object,
        reason: Reason::RevokedOutsideGit,
        message: format!(
            "key {key_id} was revoked outside Git by {:?} (orgkeeper keys revoke), reason: {:?}; the revocation is final and nothing was re-issued. Set `revoked: true` on this ApiKey in Git to record it, and for a new key create an ApiKey with another name (a revoked key is not rotated)",
            outside.by, outside.reason
        ),
    }
}

/// An issued key's environment, access and Secret are fixed; changing them means a new key.
fn check_immutable(decl: &ApiKeyDecl, key: &StoredApiKey) -> Option<Problem> {
    let object = ObjectRef::new(Kind::ApiKey, &decl.namespace, &decl.name);
    let immutable = |field: &str, was: &str, now: &str| Problem {
        object: object.clone(),
        reason: Reason::ImmutableField,
        message: format!(
            "{field} cannot change after the key is issued (it is {was:?}, the resource now says {now:?}); create a new ApiKey and delete this one"
        ),
    };
    if key.environment != decl.environment {
        return Some(immutable("spec.environment", &key.environment, &decl.environment));
    }
    if key.access != decl.access {
        return Some(immutable("spec.access", key.access.as_str(), decl.access.as_str()));
    }
    if key.secret_name != decl.secret_name {
        return Some(immutable("spec.secret.name", &key.secret_name, &decl.secret_name));
    }
    if key.state == KeyState::Revoked && !decl.revoked {
        if let Some(outside) = &key.revoked_outside_git {
            return Some(revoked_outside_git(object, &key.key_id, outside));
        }
        return Some(Problem {
            object,
            reason: Reason::ImmutableField,
            message: "the key was revoked and revocation cannot be undone; create a new ApiKey for a new key"
                .to_owned(),
        });
    }
    None
}
