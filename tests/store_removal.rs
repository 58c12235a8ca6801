//! Removing an organization (what the controller does when an Organization resource is deleted), on SQLite
//! and PostgreSQL alike: Delete removes everything, Retain keeps the data and users but revokes every key,
//! and declaring the organization again adopts what was retained.

mod support;

use orgkeeper::domain::*;
use orgkeeper::store::Store;

fn declarations(policy: DeletionPolicy) -> Declarations {
    Declarations {
        organizations: vec![OrganizationDecl {
            namespace: "team".into(),
            name: "acme".into(),
            settings: OrganizationSettings {
                display_name: "Acme".into(),
                plan: PlanTier::Growth,
                limits: LimitOverrides::default(),
                deletion_policy: policy,
            },
        }],
        environments: vec![EnvironmentDecl {
            namespace: "team".into(),
            name: "staging".into(),
            organization: "acme".into(),
            display_name: None,
            production: None,
            limits: LimitOverrides::default(),
            deletion_policy: DeletionPolicy::Retain,
        }],
        users: vec![UserDecl {
            namespace: "team".into(),
            name: "alice".into(),
            organization: "acme".into(),
            account: "github:alice".parse().unwrap(),
            role: Role::Admin,
        }],
        api_keys: vec![ApiKeyDecl {
            namespace: "team".into(),
            name: "backend".into(),
            organization: "acme".into(),
            environment: "staging".into(),
            access: Access::ReadWrite,
            secret_name: "backend".into(),
            revoked: false,
            rotation: None,
            expiry: None,
        }],
    }
}

fn key() -> OrgKey {
    OrgKey::new("team", "acme")
}

async fn apply(store: &Store, changes: &[Change]) {
    let mut tx = store.begin().await.unwrap();
    tx.apply(changes, KeyState::Live).await.unwrap();
    tx.commit().await.unwrap();
}

async fn converge(store: &Store, declarations: &Declarations) -> Plan {
    store.add_accounts(&["github:alice".parse().unwrap()]).await.unwrap();
    let stored = store.load_organizations(&[key()]).await.unwrap();
    let plan = plan(declarations, &stored, &store.known_accounts().await.unwrap());
    apply(store, &plan.changes).await;
    plan
}

async fn stored(store: &Store) -> Option<StoredOrganization> {
    store.load_organizations(&[key()]).await.unwrap().remove(&key())
}

async fn delete_removes_the_organization_and_everything_in_it(store: Store) {
    converge(&store, &declarations(DeletionPolicy::Delete)).await;
    let before = stored(&store).await;
    let changes = plan_organization_removal(before.as_ref(), DeletionPolicy::Delete);
    apply(&store, &changes).await;
    assert_eq!(stored(&store).await, None);
    assert!(store.load_auth_snapshot().await.unwrap().keys.is_empty());
    assert!(plan_organization_removal(stored(&store).await.as_ref(), DeletionPolicy::Delete).is_empty());
}

async fn retain_keeps_the_data_revokes_the_keys_and_can_be_adopted_again(store: Store) {
    let declarations = declarations(DeletionPolicy::Retain);
    converge(&store, &declarations).await;
    assert_eq!(store.load_auth_snapshot().await.unwrap().keys.len(), 1);
    let changes = plan_organization_removal(stored(&store).await.as_ref(), DeletionPolicy::Retain);
    apply(&store, &changes).await;

    let retained = stored(&store).await.expect("the organization is retained");
    assert!(!retained.managed);
    assert!(retained.environments.iter().all(|e| !e.managed));
    assert_eq!(retained.users.len(), 1, "users are kept");
    assert!(retained.api_keys.iter().all(|k| k.state == KeyState::Revoked));
    assert!(store.load_auth_snapshot().await.unwrap().keys.is_empty());
    let writes = store.writes();
    assert!(plan_organization_removal(Some(&retained), DeletionPolicy::Retain).is_empty());
    assert_eq!(store.writes(), writes);

    // Declared again: the organization and its environment are adopted; the revoked key stays revoked.
    let again = converge(&store, &declarations).await;
    assert!(
        again
            .changes
            .iter()
            .any(|c| matches!(c, Change::UpdateOrganization { adopt: true, .. }))
    );
    assert!(
        again.changes.iter().any(
            |c| matches!(c, Change::UpdateEnvironment { adopt: true, environment, .. } if environment == "staging")
        )
    );
    assert_eq!(again.problems.len(), 1);
    assert_eq!(again.problems[0].reason, Reason::ImmutableField);
    assert!(stored(&store).await.unwrap().managed);
}

on_both_backends!(
    delete_removes_the_organization_and_everything_in_it,
    retain_keeps_the_data_revokes_the_keys_and_can_be_adopted_again,
);
