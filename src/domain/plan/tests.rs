//! One test per rule of the plan. Each builds declarations and a stored view by hand, plans, and checks the
//! changes and problems a user would see.

use super::*;
use std::collections::BTreeMap;

use crate::domain::Verdict;
use crate::domain::account::{Account, KnownAccounts};
use crate::domain::fixtures;
use crate::domain::limits::{LimitOverrides, PlanTier};
use crate::domain::model::*;
use crate::domain::rules::Reason;

const NS: &str = "team";

fn org_decl(name: &str) -> OrganizationDecl {
    OrganizationDecl {
        namespace: NS.into(),
        name: name.into(),
        settings: OrganizationSettings {
            display_name: "Acme".into(),
            plan: PlanTier::Developer,
            limits: LimitOverrides::default(),
            deletion_policy: DeletionPolicy::Retain,
        },
    }
}

fn env_decl(name: &str) -> EnvironmentDecl {
    EnvironmentDecl {
        namespace: NS.into(),
        name: name.into(),
        organization: "acme".into(),
        display_name: None,
        production: None,
        limits: LimitOverrides::default(),
        deletion_policy: DeletionPolicy::Retain,
    }
}

fn user_decl(name: &str, account: &str, role: Role) -> UserDecl {
    UserDecl {
        namespace: NS.into(),
        name: name.into(),
        organization: "acme".into(),
        account: account.parse().unwrap(),
        role,
    }
}

fn key_decl(name: &str, environment: &str) -> ApiKeyDecl {
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

fn acme() -> Declarations {
    Declarations {
        organizations: vec![org_decl("acme")],
        ..Default::default()
    }
}

fn accounts(list: &[&str]) -> KnownAccounts {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// What the store would hold after carrying out a plan, built by hand so these tests need no store.
fn stored_after(declarations: &Declarations, known: &KnownAccounts) -> BTreeMap<OrgKey, StoredOrganization> {
    let mut stored = BTreeMap::new();
    let plan = plan(declarations, &stored, known);
    let mut org: Option<StoredOrganization> = None;
    for change in plan.changes {
        match change {
            Change::CreateOrganization { organization, settings } => {
                org = Some(StoredOrganization {
                    key: organization,
                    settings,
                    ..crate::domain::fixtures::organization()
                })
            }
            Change::CreateEnvironment {
                environment, settings, ..
            } => {
                let org = org.as_mut().unwrap();
                let id = format!("env{}", org.environments.len());
                org.environments.push(StoredEnvironment {
                    id,
                    name: environment,
                    settings,
                    managed: true,
                });
            }
            Change::AddUser {
                account,
                role,
                resource,
                ..
            } => {
                org.as_mut().unwrap().users.push(StoredUser {
                    account,
                    role,
                    resource_name: resource,
                });
            }
            Change::IssueKey {
                environment,
                api_key,
                access,
                secret_name,
                ..
            } => {
                let org = org.as_mut().unwrap();
                let key_id = format!("k{}", org.api_keys.len());
                org.api_keys.push(StoredApiKey {
                    key_id,
                    environment,
                    resource_name: api_key,
                    secret_name,
                    access,
                    state: KeyState::Live,
                    ..fixtures::api_key("", "", KeyState::Live)
                });
            }
            other => panic!("unexpected change on a fresh store: {other}"),
        }
    }
    if let Some(org) = org {
        stored.insert(org.key.clone(), org);
    }
    stored
}

fn reasons(plan: &Plan) -> Vec<(String, Reason)> {
    plan.problems
        .iter()
        .map(|p| (p.object.name.clone(), p.reason))
        .collect()
}

#[test]
fn a_new_organization_gets_both_default_environments() {
    let plan = plan(&acme(), &BTreeMap::new(), &KnownAccounts::default());
    assert!(plan.problems.is_empty());
    let text: Vec<String> = plan.changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        text[0],
        "+ organization team/acme (plan Developer, deletionPolicy Retain)"
    );
    assert_eq!(
        text[1],
        r#"+ environment team/acme/production ("Production", production)"#
    );
    assert_eq!(text[2], r#"+ environment team/acme/development ("Development")"#);
    assert_eq!(plan.changes.len(), 3);
}

#[test]
fn planning_what_the_store_already_holds_changes_nothing() {
    let mut decl = acme();
    decl.environments.push(env_decl("staging"));
    decl.users.push(user_decl("alice", "github:alice", Role::Admin));
    decl.api_keys.push(key_decl("backend", "staging"));
    let known = accounts(&["github:alice"]);
    let stored = stored_after(&decl, &known);
    let again = plan(&decl, &stored, &known);
    assert!(again.is_empty(), "{:?}", again.changes);
    assert!(again.problems.is_empty());
}

#[test]
fn unknown_accounts_are_a_problem_and_known_ones_are_added() {
    let mut decl = acme();
    decl.users.push(user_decl("alice", "github:alice", Role::Admin));
    decl.users.push(user_decl("mallory", "github:mallory", Role::Member));
    let plan = plan(&decl, &BTreeMap::new(), &accounts(&["github:alice"]));
    assert_eq!(reasons(&plan), vec![("mallory".into(), Reason::UnknownAccount)]);
    assert!(plan.problems[0].message.contains("github:mallory"));
    assert!(
        plan.changes
            .iter()
            .any(|c| matches!(c, Change::AddUser { role: Role::Admin, .. }))
    );
    assert!(
        !plan
            .changes
            .iter()
            .any(|c| matches!(c, Change::AddUser { account, .. } if account.login() == "mallory"))
    );
}

#[test]
fn an_existing_user_keeps_working_when_its_account_is_unregistered() {
    let mut decl = acme();
    decl.users.push(user_decl("alice", "github:alice", Role::Member));
    let stored = stored_after(&decl, &accounts(&["github:alice"]));
    decl.users[0].role = Role::Admin;
    let plan = plan(&decl, &stored, &KnownAccounts::default());
    assert!(plan.problems.is_empty());
    assert!(matches!(
        &plan.changes[..],
        [Change::UpdateUser {
            from: Role::Member,
            to: Role::Admin,
            ..
        }]
    ));
}

#[test]
fn a_provider_refusing_a_stored_user_reports_it_and_removes_nothing() {
    let mut decl = acme();
    decl.users.push(user_decl("alice", "github:alice", Role::Member));
    let stored = stored_after(&decl, &accounts(&["github:alice"]));
    let alice: Account = "github:alice".parse().unwrap();
    let mut known = KnownAccounts::default();
    known.insert(
        alice.clone(),
        Verdict::Refused {
            message: "GitHub has no user alice (404 Not Found at GET /users/alice)".into(),
        },
    );
    let refused = plan(&decl, &stored, &known);
    assert_eq!(reasons(&refused), vec![("alice".into(), Reason::UnknownAccount)]);
    assert!(refused.problems[0].message.contains("404 Not Found"));
    assert!(refused.changes.is_empty(), "{:?}", refused.changes);

    known.insert(
        alice,
        Verdict::Unverified {
            message: "GitHub rate limit reached".into(),
        },
    );
    let outage = plan(&decl, &stored, &known);
    assert!(outage.problems.is_empty() && outage.changes.is_empty());
}

#[test]
fn the_same_account_twice_in_one_organization_is_a_duplicate() {
    let mut decl = acme();
    decl.users.push(user_decl("alice", "github:alice", Role::Admin));
    decl.users.push(user_decl("alice-again", "github:Alice", Role::Member));
    let plan = plan(&decl, &BTreeMap::new(), &accounts(&["github:alice"]));
    assert_eq!(reasons(&plan), vec![("alice-again".into(), Reason::Duplicate)]);
}

#[test]
fn objects_declared_twice_are_duplicates() {
    let mut decl = acme();
    decl.organizations.push(org_decl("acme"));
    decl.environments.push(env_decl("staging"));
    decl.environments.push(env_decl("staging"));
    let plan = plan(&decl, &BTreeMap::new(), &KnownAccounts::default());
    assert_eq!(
        reasons(&plan),
        vec![
            ("acme".into(), Reason::Duplicate),
            ("staging".into(), Reason::Duplicate)
        ]
    );
}

#[test]
fn children_of_a_missing_organization_are_reported() {
    let mut decl = acme();
    let mut env = env_decl("staging");
    env.organization = "globex".into();
    decl.environments.push(env);
    let mut key = key_decl("k", "production");
    key.organization = "globex".into();
    decl.api_keys.push(key);
    let plan = plan(&decl, &BTreeMap::new(), &KnownAccounts::default());
    assert_eq!(
        reasons(&plan),
        vec![
            ("staging".into(), Reason::OrganizationNotFound),
            ("k".into(), Reason::OrganizationNotFound)
        ]
    );
}

#[test]
fn keys_need_a_declared_or_default_environment() {
    let mut decl = acme();
    decl.api_keys.push(key_decl("ok", "development"));
    decl.api_keys.push(key_decl("lost", "staging"));
    let plan = plan(&decl, &BTreeMap::new(), &KnownAccounts::default());
    assert_eq!(reasons(&plan), vec![("lost".into(), Reason::EnvironmentNotFound)]);
    assert!(
        plan.changes
            .iter()
            .any(|c| matches!(c, Change::IssueKey { api_key, .. } if api_key == "ok"))
    );
}

#[test]
fn an_environment_holds_at_most_128_live_keys() {
    let mut decl = acme();
    for i in 0..130 {
        decl.api_keys.push(key_decl(&format!("key-{i:03}"), "production"));
    }
    let plan = plan(&decl, &BTreeMap::new(), &KnownAccounts::default());
    let issued = plan
        .changes
        .iter()
        .filter(|c| matches!(c, Change::IssueKey { .. }))
        .count();
    assert_eq!(issued, 128);
    assert_eq!(
        reasons(&plan),
        vec![
            ("key-128".into(), Reason::KeyLimitReached),
            ("key-129".into(), Reason::KeyLimitReached)
        ]
    );
    // Other environments have their own budget.
    let mut decl = acme();
    for i in 0..128 {
        decl.api_keys.push(key_decl(&format!("p-{i:03}"), "production"));
        decl.api_keys.push(key_decl(&format!("d-{i:03}"), "development"));
    }
    assert!(
        super::plan(&decl, &BTreeMap::new(), &KnownAccounts::default())
            .problems
            .is_empty()
    );
}

#[test]
fn revoked_keys_free_their_slot() {
    let mut decl = acme();
    for i in 0..128 {
        decl.api_keys.push(key_decl(&format!("key-{i:03}"), "production"));
    }
    let stored = stored_after(&decl, &KnownAccounts::default());
    decl.api_keys[0].revoked = true;
    decl.api_keys.push(key_decl("key-new", "production"));
    let plan = plan(&decl, &stored, &KnownAccounts::default());
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert!(matches!(&plan.changes[0], Change::RevokeKey { api_key, .. } if api_key == "key-000"));
    assert!(matches!(&plan.changes[1], Change::IssueKey { api_key, .. } if api_key == "key-new"));
}

#[test]
fn a_revoked_key_stays_revoked() {
    let mut decl = acme();
    decl.api_keys.push(key_decl("k", "production"));
    let mut stored = stored_after(&decl, &KnownAccounts::default());
    stored.values_mut().next().unwrap().api_keys[0].state = KeyState::Revoked;
    let plan = plan(&decl, &stored, &KnownAccounts::default());
    assert_eq!(reasons(&plan), vec![("k".into(), Reason::ImmutableField)]);
    assert!(plan.is_empty());
    decl.api_keys[0].revoked = true;
    let plan = super::plan(&decl, &stored, &KnownAccounts::default());
    assert!(plan.is_empty() && plan.problems.is_empty());
}

#[test]
fn a_key_revoked_outside_git_says_so_with_its_reason_and_stays_revoked() {
    let mut decl = acme();
    decl.api_keys.push(key_decl("k", "production"));
    let mut stored = stored_after(&decl, &KnownAccounts::default());
    let key = &mut stored.values_mut().next().unwrap().api_keys[0];
    key.state = KeyState::Revoked;
    key.revoked_outside_git = Some(OutsideRevocation {
        by: "alice".into(),
        reason: "leaked in a CI log".into(),
    });
    let plan = plan(&decl, &stored, &KnownAccounts::default());
    assert_eq!(reasons(&plan), vec![("k".into(), Reason::RevokedOutsideGit)]);
    let message = &plan.problems[0].message;
    for part in [
        "outside Git",
        "\"alice\"",
        "leaked in a CI log",
        "revoked: true",
        "another name",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message}");
    }
    assert!(plan.is_empty(), "nothing re-issued, nothing changed");
    decl.api_keys[0].revoked = true;
    let plan = super::plan(&decl, &stored, &KnownAccounts::default());
    assert!(
        plan.is_empty() && plan.problems.is_empty(),
        "Git in line: nothing to say"
    );
}

#[test]
fn an_issued_keys_access_environment_and_secret_are_immutable() {
    let mut decl = acme();
    decl.api_keys.push(key_decl("k", "production"));
    let stored = stored_after(&decl, &KnownAccounts::default());
    for change in [
        |k: &mut ApiKeyDecl| k.access = Access::ReadOnly,
        |k: &mut ApiKeyDecl| k.environment = "development".into(),
        |k: &mut ApiKeyDecl| k.secret_name = "other".into(),
    ] {
        let mut changed = decl.clone();
        change(&mut changed.api_keys[0]);
        let plan = plan(&changed, &stored, &KnownAccounts::default());
        assert_eq!(reasons(&plan), vec![("k".into(), Reason::ImmutableField)]);
        assert!(plan.is_empty(), "the issued key is left alone");
    }
}

#[test]
fn a_pending_key_is_resumed_not_duplicated() {
    let mut decl = acme();
    decl.api_keys.push(key_decl("k", "production"));
    let mut stored = stored_after(&decl, &KnownAccounts::default());
    stored.values_mut().next().unwrap().api_keys[0].state = KeyState::Pending;
    let plan = plan(&decl, &stored, &KnownAccounts::default());
    assert!(matches!(&plan.changes[..], [Change::IssueKey { resume: Some(id), .. }] if id == "k0"));
}

#[test]
fn keys_whose_resource_is_gone_are_revoked_and_forgotten() {
    let mut decl = acme();
    decl.api_keys.push(key_decl("k", "production"));
    let stored = stored_after(&decl, &KnownAccounts::default());
    decl.api_keys.clear();
    let plan = plan(&decl, &stored, &KnownAccounts::default());
    assert!(matches!(&plan.changes[..], [Change::RemoveKey { api_key, .. }] if api_key == "k"));
}

#[test]
fn default_environments_are_reset_never_deleted() {
    let mut decl = acme();
    let mut prod = env_decl("production");
    prod.display_name = Some("Prod".into());
    prod.limits.max_batch_facts = Some(5);
    decl.environments.push(prod);
    let stored = stored_after(&decl, &KnownAccounts::default());
    decl.environments.clear();
    let plan = plan(&decl, &stored, &KnownAccounts::default());
    match &plan.changes[..] {
        [Change::ResetEnvironment { environment, to, .. }] => {
            assert_eq!(environment, "production");
            assert_eq!(to, &EnvironmentSettings::default_for("production").unwrap());
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    assert!(
        plan.changes[0]
            .to_string()
            .contains("limits.maxBatchFacts: 5 -> inherited")
    );
}

#[test]
fn a_default_environment_keeps_its_production_flag() {
    let mut decl = acme();
    let mut prod = env_decl("production");
    prod.production = Some(false);
    decl.environments.push(prod);
    let mut dev = env_decl("development");
    dev.production = Some(true);
    decl.environments.push(dev);
    let plan = plan(&decl, &BTreeMap::new(), &KnownAccounts::default());
    assert_eq!(
        reasons(&plan),
        vec![
            ("development".into(), Reason::InvalidSpec),
            ("production".into(), Reason::InvalidSpec)
        ]
    );
    // The environments still exist with their default settings.
    assert_eq!(
        plan.changes
            .iter()
            .filter(|c| matches!(c, Change::CreateEnvironment { .. }))
            .count(),
        2
    );
}

#[test]
fn removed_environments_follow_their_deletion_policy() {
    let mut decl = acme();
    let mut kept = env_decl("kept");
    kept.deletion_policy = DeletionPolicy::Retain;
    let mut gone = env_decl("gone");
    gone.deletion_policy = DeletionPolicy::Delete;
    decl.environments.extend([kept, gone]);
    decl.api_keys.push(key_decl("k", "kept"));
    let stored = stored_after(&decl, &KnownAccounts::default());
    decl.environments.clear();
    decl.api_keys.clear();
    let plan = plan(&decl, &stored, &KnownAccounts::default());
    assert!(plan.changes.iter().any(|c| matches!(c, Change::ReleaseEnvironment { environment, revoked_keys, .. } if environment == "kept" && revoked_keys.len() == 1)));
    assert!(
        plan.changes
            .iter()
            .any(|c| matches!(c, Change::DeleteEnvironment { environment, .. } if environment == "gone"))
    );
}

#[test]
fn a_retained_environment_is_adopted_when_declared_again() {
    let mut decl = acme();
    decl.environments.push(env_decl("staging"));
    let mut stored = stored_after(&decl, &KnownAccounts::default());
    let org = stored.values_mut().next().unwrap();
    org.environments
        .iter_mut()
        .find(|e| e.name == "staging")
        .unwrap()
        .managed = false;
    let plan = plan(&decl, &stored, &KnownAccounts::default());
    assert!(matches!(
        &plan.changes[..],
        [Change::UpdateEnvironment { adopt: true, .. }]
    ));
    // And while it is not declared, a released environment is left alone.
    decl.environments.clear();
    assert!(super::plan(&decl, &stored, &KnownAccounts::default()).is_empty());
}

#[test]
fn removed_users_are_removed_last() {
    let mut decl = acme();
    decl.users.push(user_decl("alice", "github:alice", Role::Admin));
    decl.users
        .push(user_decl("bob", "google:bob@example.com", Role::Member));
    let known = accounts(&["github:alice", "google:bob@example.com"]);
    let stored = stored_after(&decl, &known);
    decl.users.remove(1);
    decl.api_keys.push(key_decl("k", "production"));
    let plan = plan(&decl, &stored, &known);
    assert!(
        matches!(plan.changes.last(), Some(Change::RemoveUser { account, .. }) if account.login() == "bob@example.com")
    );
}

#[test]
fn limit_and_setting_changes_are_planned_as_updates() {
    let mut decl = acme();
    decl.environments.push(env_decl("staging"));
    let stored = stored_after(&decl, &KnownAccounts::default());
    decl.organizations[0].settings.plan = PlanTier::Growth;
    decl.environments[0].limits.requests_per_minute = Some(100);
    let plan = plan(&decl, &stored, &KnownAccounts::default());
    let text: Vec<String> = plan.changes.iter().map(ToString::to_string).collect();
    assert_eq!(text[0], "~ organization team/acme\n    plan: Developer -> Growth");
    assert_eq!(
        text[1],
        "~ environment team/acme/staging\n    limits.requestsPerMinute: inherited -> 100"
    );
}

#[test]
fn two_secrets_of_the_same_name_are_a_duplicate() {
    let mut decl = acme();
    decl.api_keys.push(key_decl("a", "production"));
    let mut b = key_decl("b", "production");
    b.secret_name = "a".into();
    decl.api_keys.push(b);
    let plan = plan(&decl, &BTreeMap::new(), &KnownAccounts::default());
    assert_eq!(reasons(&plan), vec![("b".into(), Reason::Duplicate)]);
}

#[test]
fn organizations_only_in_the_store_are_left_alone() {
    let stored = stored_after(&acme(), &KnownAccounts::default());
    let plan = plan(&Declarations::default(), &stored, &KnownAccounts::default());
    assert!(plan.is_empty());
}

#[test]
fn the_plan_serialises_with_an_action_tag() {
    let plan = plan(&acme(), &BTreeMap::new(), &KnownAccounts::default());
    let json = serde_json::to_value(&plan.changes[0]).unwrap();
    assert_eq!(json["action"], "createOrganization");
    assert_eq!(json["organization"]["name"], "acme");
    assert_eq!(json["settings"]["plan"], "Developer");
}

#[test]
fn a_default_environment_cannot_be_declared_for_deletion() {
    let mut decl = acme();
    let mut dev = env_decl("development");
    dev.deletion_policy = DeletionPolicy::Delete;
    decl.environments.push(dev);
    let plan = plan(&decl, &BTreeMap::new(), &KnownAccounts::default());
    assert_eq!(reasons(&plan), vec![("development".into(), Reason::InvalidSpec)]);
    assert!(plan.problems[0].message.contains("can never be deleted"));
}

// ----- rotation and expiry -----

use crate::domain::rotation::{Expiry, RotationCause, RotationPolicy};

/// acme with ApiKey k (rotation as given), issued at t=1000 under trigger "r1", and the store after it.
fn rotating(policy: RotationPolicy) -> (Declarations, BTreeMap<OrgKey, StoredOrganization>) {
    let mut decl = acme();
    decl.api_keys.push(ApiKeyDecl {
        rotation: Some(policy),
        ..key_decl("k", "production")
    });
    let mut stored = stored_after(&decl, &KnownAccounts::default());
    let key = &mut stored.values_mut().next().unwrap().api_keys[0];
    key.issued_at = 1000;
    key.trigger = Some("r1".into());
    (decl, stored)
}

fn policy(every: Option<&str>, overlap: Option<&str>, trigger: &str) -> RotationPolicy {
    RotationPolicy::parse(every, overlap, Some(trigger)).unwrap()
}

#[test]
fn a_new_trigger_rotates_the_current_key_once() {
    let (decl, stored) = rotating(policy(None, Some("10m"), "r2"));
    let plan = plan_at(&decl, &stored, &KnownAccounts::default(), 2000);
    match &plan.changes[..] {
        [
            Change::RotateKey {
                current,
                cause: RotationCause::Trigger,
                overlap: 600,
                resume: None,
                trigger: Some(trigger),
                ..
            },
        ] => assert_eq!((current.as_str(), trigger.as_str()), ("k0", "r2")),
        other => panic!("{other:?}"),
    }
    assert!(
        plan.changes[0].to_string().contains("keeps working for 10m"),
        "{}",
        plan.changes[0]
    );
    let (same, stored) = rotating(policy(None, Some("10m"), "r1"));
    assert!(
        plan_at(&same, &stored, &KnownAccounts::default(), 2000).is_empty(),
        "same trigger: nothing"
    );
}

#[test]
fn every_rotates_when_the_key_is_that_old_and_not_before() {
    let (decl, stored) = rotating(policy(Some("1h"), Some("0s"), "r1"));
    assert!(plan_at(&decl, &stored, &KnownAccounts::default(), 1000 + 3599).is_empty());
    let plan = plan_at(&decl, &stored, &KnownAccounts::default(), 1000 + 3600);
    assert!(
        matches!(
            &plan.changes[..],
            [Change::RotateKey {
                cause: RotationCause::Every,
                overlap: 0,
                ..
            }]
        ),
        "{:?}",
        plan.changes
    );
    assert!(plan.changes[0].to_string().contains("revoked at once"));
}

#[test]
fn an_interrupted_rotation_is_resumed_with_its_incoming_key() {
    let (decl, mut stored) = rotating(policy(None, None, "r1"));
    let org = stored.values_mut().next().unwrap();
    org.api_keys.push(StoredApiKey {
        slot: KeySlot::Incoming,
        trigger: Some("r1".into()),
        ..fixtures::api_key("k", "k9", KeyState::Live)
    });
    let plan = plan_at(&decl, &stored, &KnownAccounts::default(), 2000);
    assert!(
        matches!(&plan.changes[..], [Change::RotateKey { resume: Some(id), current, .. }] if id == "k9" && current == "k0"),
        "{:?}",
        plan.changes
    );
    // spec.rotation removed meanwhile: the rotation is still finished (the Secret may hold the new key).
    let mut unrotated = decl.clone();
    unrotated.api_keys[0].rotation = None;
    let plan = plan_at(&unrotated, &stored, &KnownAccounts::default(), 2000);
    assert!(
        matches!(&plan.changes[..], [Change::RotateKey { resume: Some(id), overlap: 86_400, .. }] if id == "k9"),
        "{:?}",
        plan.changes
    );
}

#[test]
fn a_previous_key_is_revoked_once_its_overlap_is_over_and_every_key_goes_with_its_api_key() {
    let (mut decl, mut stored) = rotating(policy(None, None, "r1"));
    let org = stored.values_mut().next().unwrap();
    org.api_keys.push(StoredApiKey {
        slot: KeySlot::Previous,
        expires_at: Some(1500),
        ..fixtures::api_key("k", "old", KeyState::Live)
    });
    assert!(
        plan_at(&decl, &stored, &KnownAccounts::default(), 1499).is_empty(),
        "still in its overlap"
    );
    let plan = plan_at(&decl, &stored, &KnownAccounts::default(), 1500);
    assert!(matches!(&plan.changes[..], [Change::RetireKey { key_id, .. }] if key_id == "old"));
    assert!(plan.changes[0].to_string().contains("overlap is over"));
    decl.api_keys.clear();
    let plan = plan_at(&decl, &stored, &KnownAccounts::default(), 1499);
    let removed: Vec<&str> = plan
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::RemoveKey { key_id, .. } => Some(key_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(removed, vec!["k0", "old"]);
}

#[test]
fn a_declared_expiry_is_set_once_and_one_in_the_past_is_refused_with_nothing_changed() {
    let (mut decl, stored) = rotating(policy(None, None, "r1"));
    decl.api_keys[0].expiry = Some(Expiry::After(3600));
    let plan = plan_at(&decl, &stored, &KnownAccounts::default(), 2000);
    assert!(
        matches!(&plan.changes[..], [Change::SetKeyExpiry { expires_at: 4600, .. }]),
        "issuance + expireAfter: {:?}",
        plan.changes
    );
    let mut expired = stored.clone();
    expired.values_mut().next().unwrap().api_keys[0].expires_at = Some(4600);
    assert!(
        plan_at(&decl, &expired, &KnownAccounts::default(), 9999).is_empty(),
        "already set: nothing"
    );

    decl.api_keys[0].expiry = Some(Expiry::At(1999));
    let plan = plan_at(&decl, &stored, &KnownAccounts::default(), 2000);
    assert!(plan.is_empty());
    assert_eq!(reasons(&plan), vec![("k".into(), Reason::InvalidSpec)]);
    assert!(
        plan.problems[0].message.contains("in the past"),
        "{}",
        plan.problems[0].message
    );

    let mut fresh = acme();
    fresh.api_keys.push(ApiKeyDecl {
        expiry: Some(Expiry::At(1999)),
        ..key_decl("new", "production")
    });
    let plan = plan_at(&fresh, &BTreeMap::new(), &KnownAccounts::default(), 2000);
    assert!(
        !plan.changes.iter().any(|c| matches!(c, Change::IssueKey { .. })),
        "not issued"
    );
    assert_eq!(reasons(&plan), vec![("new".into(), Reason::InvalidSpec)]);
}
