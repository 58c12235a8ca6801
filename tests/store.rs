//! The store, on SQLite and PostgreSQL alike: plans carried out through it converge, keys are stored only
//! as hashes, transactions are all or nothing, and a no-change reconcile writes nothing.

mod support;

use std::collections::BTreeMap;

use orgkeeper::domain::*;
use orgkeeper::store::Store;

const NS: &str = "team";

fn declarations() -> Declarations {
    let org = OrganizationDecl {
        namespace: NS.into(),
        name: "acme".into(),
        settings: OrganizationSettings {
            display_name: "Acme".into(),
            plan: PlanTier::Developer,
            limits: LimitOverrides {
                max_batch_facts: Some(50),
                ..Default::default()
            },
            deletion_policy: DeletionPolicy::Retain,
        },
    };
    let env = |name: &str, policy: DeletionPolicy| EnvironmentDecl {
        namespace: NS.into(),
        name: name.into(),
        organization: "acme".into(),
        display_name: None,
        production: None,
        limits: LimitOverrides {
            requests_per_minute: Some(100),
            ..Default::default()
        },
        deletion_policy: policy,
    };
    let key = |name: &str, env: &str, access: Access| ApiKeyDecl {
        namespace: NS.into(),
        name: name.into(),
        organization: "acme".into(),
        environment: env.into(),
        access,
        secret_name: format!("{name}-secret"),
        revoked: false,
    };
    Declarations {
        organizations: vec![org],
        environments: vec![
            env("staging", DeletionPolicy::Delete),
            env("qa", DeletionPolicy::Retain),
        ],
        users: vec![UserDecl {
            namespace: NS.into(),
            name: "alice".into(),
            organization: "acme".into(),
            account: "github:alice".parse().unwrap(),
            role: Role::Admin,
        }],
        api_keys: vec![
            key("rw", "staging", Access::ReadWrite),
            key("ro", "production", Access::ReadOnly),
            key("qa", "qa", Access::ReadWrite),
        ],
    }
}

async fn register_accounts(store: &Store) {
    let accounts: Vec<Account> = declarations().users.iter().map(|u| u.account.clone()).collect();
    store.add_accounts(&accounts).await.unwrap();
}

async fn reconcile(store: &Store, declarations: &Declarations) -> (Plan, Vec<orgkeeper::store::IssuedKey>) {
    let keys: Vec<OrgKey> = declarations.organizations.iter().map(|o| o.key()).collect();
    let stored = store.load_organizations(&keys).await.unwrap();
    let accounts = store.known_accounts().await.unwrap();
    let plan = plan(declarations, &stored, &accounts);
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let mut tx = store.begin().await.unwrap();
    let outcome = tx.apply(&plan.changes, KeyState::Live).await.unwrap();
    tx.commit().await.unwrap();
    (plan, outcome.issued)
}

async fn stored(store: &Store) -> StoredOrganization {
    store
        .load_organizations(&[OrgKey::new(NS, "acme")])
        .await
        .unwrap()
        .remove(&OrgKey::new(NS, "acme"))
        .unwrap()
}

async fn a_reconciled_store_plans_nothing_and_writes_nothing(store: Store) {
    register_accounts(&store).await;
    let (first, issued) = reconcile(&store, &declarations()).await;
    assert!(!first.is_empty());
    assert_eq!(issued.len(), 3);
    let org = stored(&store).await;
    assert_eq!(org.settings.limits.max_batch_facts, Some(50));
    assert_eq!(
        org.environments.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["development", "production", "qa", "staging"]
    );
    let staging = org.environments.iter().find(|e| e.name == "staging").unwrap();
    assert_eq!(staging.settings.limits.requests_per_minute, Some(100));
    assert_eq!(org.users.len(), 1);
    assert_eq!(org.users[0].role, Role::Admin);
    let ro = org.api_keys.iter().find(|k| k.resource_name == "ro").unwrap();
    assert_eq!(
        (ro.access, ro.state, ro.environment.as_str()),
        (Access::ReadOnly, KeyState::Live, "production")
    );

    let revision = store.revision().await.unwrap();
    let writes = store.writes();
    let (second, issued) = reconcile(&store, &declarations()).await;
    assert!(second.is_empty(), "{:?}", second.changes);
    assert!(issued.is_empty());
    assert_eq!(store.writes(), writes, "a no-change reconcile issues no writes");
    assert_eq!(
        store.revision().await.unwrap(),
        revision,
        "and does not bump the revision"
    );
}

async fn only_a_hash_of_each_key_is_stored(store: Store) {
    register_accounts(&store).await;
    let (_, issued) = reconcile(&store, &declarations()).await;
    let rows: Vec<(String, String, String, String, String)> =
        sqlx::query_as("SELECT key_id, resource_name, secret_name, access, secret_hash FROM api_keys")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let dump = format!("{rows:?}");
    let org = stored(&store).await;
    for key in &issued {
        let secret = key.token.expose().rsplit('_').next().unwrap().to_owned();
        assert!(!dump.contains(&secret), "the plaintext secret must not be in the store");
        assert!(dump.contains(&key.token.hash().to_hex()), "its hash is");
        let record = org.api_keys.iter().find(|k| k.key_id == key.token.key_id()).unwrap();
        assert_eq!(record.fingerprint, key.token.hash().fingerprint());
    }
}

async fn an_uncommitted_transaction_changes_nothing(store: Store) {
    let keys = [OrgKey::new(NS, "acme")];
    let plan = plan(&declarations(), &BTreeMap::new(), &KnownAccounts::default());
    let mut tx = store.begin().await.unwrap();
    tx.apply(&plan.changes, KeyState::Live).await.unwrap();
    drop(tx);
    assert!(store.load_organizations(&keys).await.unwrap().is_empty());
    assert_eq!(store.revision().await.unwrap(), 0);
}

async fn removing_environments_follows_their_policy(store: Store) {
    register_accounts(&store).await;
    reconcile(&store, &declarations()).await;
    let mut declarations = declarations();
    declarations.environments.clear();
    declarations.api_keys.retain(|k| k.environment == "production");
    reconcile(&store, &declarations).await;
    let org = stored(&store).await;
    let names: Vec<&str> = org.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["development", "production", "qa"],
        "staging (Delete) is gone, qa (Retain) kept"
    );
    let qa = org.environments.iter().find(|e| e.name == "qa").unwrap();
    assert!(!qa.managed);
    assert!(
        org.api_keys.iter().all(|k| k.resource_name == "ro"),
        "removed keys are forgotten: {:?}",
        org.api_keys
    );
    // Declared again, the retained environment is adopted.
    reconcile(&store, &self::declarations()).await;
    assert!(
        stored(&store)
            .await
            .environments
            .iter()
            .find(|e| e.name == "qa")
            .unwrap()
            .managed
    );
}

async fn revoked_keys_stay_revoked(store: Store) {
    register_accounts(&store).await;
    reconcile(&store, &declarations()).await;
    let mut declarations = declarations();
    declarations.api_keys[0].revoked = true;
    let (plan, _) = reconcile(&store, &declarations).await;
    assert!(matches!(&plan.changes[..], [Change::RevokeKey { .. }]));
    let org = stored(&store).await;
    assert_eq!(
        org.api_keys.iter().find(|k| k.resource_name == "rw").unwrap().state,
        KeyState::Revoked
    );
    assert!(reconcile(&store, &declarations).await.0.is_empty());
}

async fn pending_keys_move_to_live_once(store: Store) {
    let plan = plan(&declarations(), &BTreeMap::new(), &KnownAccounts::default());
    let mut tx = store.begin().await.unwrap();
    let outcome = tx.apply(&plan.changes, KeyState::Pending).await.unwrap();
    tx.commit().await.unwrap();
    let key_id = outcome.issued[0].token.key_id().to_owned();
    assert_eq!(
        stored(&store)
            .await
            .api_keys
            .iter()
            .find(|k| k.key_id == key_id)
            .unwrap()
            .state,
        KeyState::Pending
    );
    let mut tx = store.begin().await.unwrap();
    assert!(
        tx.set_key_state(&key_id, KeyState::Pending, KeyState::Live)
            .await
            .unwrap()
    );
    assert!(
        !tx.set_key_state(&key_id, KeyState::Pending, KeyState::Live)
            .await
            .unwrap(),
        "only once"
    );
    tx.commit().await.unwrap();
}

async fn accounts_register_idempotently(store: Store) {
    let alice: Account = "github:Alice".parse().unwrap();
    let bob: Account = "google:bob@example.com".parse().unwrap();
    assert_eq!(store.add_accounts(&[alice.clone(), bob.clone()]).await.unwrap(), 2);
    assert_eq!(store.add_accounts(std::slice::from_ref(&alice)).await.unwrap(), 0);
    assert_eq!(store.list_accounts().await.unwrap(), vec![alice.clone(), bob.clone()]);
    assert!(store.remove_account(&alice).await.unwrap());
    assert!(!store.remove_account(&alice).await.unwrap());
    assert!(!store.known_accounts().await.unwrap().contains(&alice));
}

async fn the_data_plane_sees_live_keys_and_effective_limits(store: Store) {
    register_accounts(&store).await;
    let (_, issued) = reconcile(&store, &declarations()).await;
    let ring = orgkeeper::auth::KeyRing::default();
    assert!(ring.refresh(&store).await.unwrap());
    assert!(
        !ring.refresh(&store).await.unwrap(),
        "nothing changed, nothing reloaded"
    );
    let rw = issued.iter().find(|k| k.api_key == "rw").unwrap();
    let principal = ring
        .authenticate(Some(&format!("Bearer {}", rw.token.expose())))
        .unwrap();
    assert_eq!(principal.access, Access::ReadWrite);
    let limits = principal.limits();
    assert_eq!(limits.requests_per_minute, Some(100), "environment override");
    assert_eq!(limits.max_batch_facts, Some(50), "organization override");
    assert_eq!(limits.fact_writes_per_minute, Some(1_000), "plan default");
    assert_eq!(principal.environment.label, "team/acme/staging");
    // Revoking is visible after the next refresh.
    let mut declarations = declarations();
    declarations.api_keys[0].revoked = true;
    reconcile(&store, &declarations).await;
    assert!(ring.refresh(&store).await.unwrap());
    assert!(
        ring.authenticate(Some(&format!("Bearer {}", rw.token.expose())))
            .is_err()
    );
}

on_both_backends!(
    the_data_plane_sees_live_keys_and_effective_limits,
    a_reconciled_store_plans_nothing_and_writes_nothing,
    only_a_hash_of_each_key_is_stored,
    an_uncommitted_transaction_changes_nothing,
    removing_environments_follows_their_policy,
    revoked_keys_stay_revoked,
    pending_keys_move_to_live_once,
    accounts_register_idempotently,
);
