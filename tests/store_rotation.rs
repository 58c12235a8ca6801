//! Key rotation and declared expiry through the store, on SQLite and PostgreSQL alike: a rotation records
//! the new key live before anything holds it, both keys authenticate during the overlap, the old one stops
//! by itself at the overlap's end (an expiry the data plane enforces) and is revoked by the next plan;
//! overlap 0 revokes at once; the audit trail records each step.

mod support;

use std::collections::BTreeMap;

use orgkeeper::auth::KeyRing;
use orgkeeper::domain::*;
use orgkeeper::store::{IssuedKey, KeyEventKind, Store};

const NS: &str = "team";

fn declarations(rotation: Option<RotationPolicy>, expiry: Option<Expiry>) -> Declarations {
    Declarations {
        organizations: vec![OrganizationDecl {
            namespace: NS.into(),
            name: "acme".into(),
            settings: OrganizationSettings {
                display_name: "Acme".into(),
                plan: PlanTier::Developer,
                limits: LimitOverrides::default(),
                deletion_policy: DeletionPolicy::Retain,
            },
        }],
        api_keys: vec![ApiKeyDecl {
            namespace: NS.into(),
            name: "backend".into(),
            organization: "acme".into(),
            environment: "production".into(),
            access: Access::ReadWrite,
            secret_name: "backend-oso".into(),
            revoked: false,
            rotation,
            expiry,
        }],
        ..Default::default()
    }
}

fn trigger(value: &str, overlap: &str) -> Option<RotationPolicy> {
    Some(RotationPolicy::parse(None, Some(overlap), Some(value)).unwrap())
}

async fn stored(store: &Store) -> BTreeMap<OrgKey, StoredOrganization> {
    store.load_organizations(&[OrgKey::new(NS, "acme")]).await.unwrap()
}

/// Plans at `now` and carries the plan out; returns the plan and the keys it issued.
async fn apply_at(store: &Store, declarations: &Declarations, now: i64) -> (Plan, Vec<IssuedKey>) {
    let plan = plan_at(declarations, &stored(store).await, &KnownAccounts::default(), now);
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let mut tx = store.begin().await.unwrap();
    let outcome = tx.apply(&plan.changes, KeyState::Live).await.unwrap();
    tx.commit().await.unwrap();
    (plan, outcome.issued)
}

fn accepts(ring: &KeyRing, key: &IssuedKey) -> bool {
    ring.authenticate(Some(&format!("Bearer {}", key.token.expose())))
        .is_ok()
}

async fn refreshed(store: &Store) -> KeyRing {
    let ring = KeyRing::default();
    ring.refresh(store).await.unwrap();
    ring
}

async fn keys(store: &Store) -> Vec<StoredApiKey> {
    stored(store).await.into_values().next().unwrap().api_keys
}

async fn a_rotation_keeps_both_keys_working_for_the_overlap_then_only_the_new_one(store: Store) {
    let now = unix_now();
    let (_, first) = apply_at(&store, &declarations(trigger("r1", "1h"), None), now).await;
    let old = &first[0];
    assert!(old.rotation.is_none());
    assert_eq!(keys(&store).await[0].trigger.as_deref(), Some("r1"));

    let rotating = declarations(trigger("r2", "1h"), None);
    let (plan, issued) = apply_at(&store, &rotating, now).await;
    assert!(matches!(
        &plan.changes[..],
        [Change::RotateKey {
            cause: RotationCause::Trigger,
            ..
        }]
    ));
    let new = &issued[0];
    assert_eq!(new.rotation.as_ref().unwrap().previous, old.token.key_id());
    // Step 1 done: the new key already works (before any Secret holds it), the old one is still current.
    let ring = refreshed(&store).await;
    assert!(accepts(&ring, old) && accepts(&ring, new));
    let slots: Vec<(String, KeySlot)> = keys(&store).await.into_iter().map(|k| (k.key_id, k.slot)).collect();
    assert!(
        slots.contains(&(old.token.key_id().to_owned(), KeySlot::Current)),
        "{slots:?}"
    );
    assert!(
        slots.contains(&(new.token.key_id().to_owned(), KeySlot::Incoming)),
        "{slots:?}"
    );

    // Step 3: the new key is current, the old one previous with an expiry at the end of the overlap.
    let mut tx = store.begin().await.unwrap();
    assert!(
        tx.complete_rotation(new.token.key_id(), old.token.key_id(), 3600)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert!(
        !tx.complete_rotation(new.token.key_id(), old.token.key_id(), 3600)
            .await
            .unwrap(),
        "finishing twice changes nothing"
    );
    drop(tx);
    let after = keys(&store).await;
    let previous = after.iter().find(|k| k.key_id == old.token.key_id()).unwrap();
    assert_eq!(previous.slot, KeySlot::Previous);
    let until = previous.expires_at.expect("the overlap ends");
    assert!((now + 3600..now + 3600 + 60).contains(&until), "{until} vs {now}");
    let ring = refreshed(&store).await;
    assert!(
        accepts(&ring, old) && accepts(&ring, new),
        "both work during the overlap"
    );
    assert!(
        apply_at(&store, &rotating, now).await.0.is_empty(),
        "nothing more to do during the overlap"
    );

    // At the end of the overlap the data plane refuses the old key by itself; the next plan revokes it.
    let (plan, _) = apply_at(&store, &rotating, until).await;
    assert!(matches!(&plan.changes[..], [Change::RetireKey { key_id, .. }] if key_id == old.token.key_id()));
    let ring = refreshed(&store).await;
    assert!(!accepts(&ring, old) && accepts(&ring, new));
    let history: Vec<KeyEventKind> = store
        .key_history(Some(old.token.key_id()))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        history,
        [KeyEventKind::Issued, KeyEventKind::Rotated, KeyEventKind::Revoked]
    );
}

async fn overlap_zero_revokes_the_old_key_at_once(store: Store) {
    let now = unix_now();
    let (_, first) = apply_at(&store, &declarations(trigger("r1", "0s"), None), now).await;
    let (_, issued) = apply_at(&store, &declarations(trigger("compromised", "0s"), None), now).await;
    let mut tx = store.begin().await.unwrap();
    tx.complete_rotation(issued[0].token.key_id(), first[0].token.key_id(), 0)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ring = refreshed(&store).await;
    assert!(!accepts(&ring, &first[0]) && accepts(&ring, &issued[0]));
    let old = keys(&store)
        .await
        .into_iter()
        .find(|k| k.key_id == first[0].token.key_id())
        .unwrap();
    assert_eq!((old.state, old.slot), (KeyState::Revoked, KeySlot::Previous));
}

async fn an_interrupted_rotation_forgets_its_incoming_key_and_starts_over(store: Store) {
    let now = unix_now();
    apply_at(&store, &declarations(trigger("r1", "1h"), None), now).await;
    let rotating = declarations(trigger("r2", "1h"), None);
    let (_, lost) = apply_at(&store, &rotating, now).await;
    // A crash here: the incoming key never reached a Secret. The next plan resumes with it.
    let (plan, issued) = apply_at(&store, &rotating, now).await;
    assert!(matches!(&plan.changes[..], [Change::RotateKey { resume: Some(id), .. }] if id == lost[0].token.key_id()));
    let ids: Vec<String> = keys(&store).await.into_iter().map(|k| k.key_id).collect();
    assert!(!ids.contains(&lost[0].token.key_id().to_owned()), "forgotten: {ids:?}");
    assert!(ids.contains(&issued[0].token.key_id().to_owned()));
    assert!(!accepts(&refreshed(&store).await, &lost[0]));
}

async fn a_declared_expiry_is_enforced_by_the_data_plane(store: Store) {
    let now = unix_now();
    let (_, issued) = apply_at(&store, &declarations(None, Some(Expiry::After(3600))), now).await;
    let key = &keys(&store).await[0];
    assert!((now + 3600..now + 3660).contains(&key.expires_at.unwrap()));
    assert!(accepts(&refreshed(&store).await, &issued[0]));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = declarations(None, Some(Expiry::After(3600)));
    assert!(
        plan_at(&again, &stored(&store).await, &KnownAccounts::default(), unix_now()).is_empty(),
        "the expiry is counted from the recorded issuance: a later plan finds nothing to change"
    );
    // Declared again to expire in one second: set, and refused by the ring once it passes.
    let soon = Expiry::At(unix_now() + 1);
    apply_at(&store, &declarations(None, Some(soon)), unix_now()).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(!accepts(&refreshed(&store).await, &issued[0]));
}

on_both_backends!(
    a_rotation_keeps_both_keys_working_for_the_overlap_then_only_the_new_one,
    overlap_zero_revokes_the_old_key_at_once,
    an_interrupted_rotation_forgets_its_incoming_key_and_starts_over,
    a_declared_expiry_is_enforced_by_the_data_plane,
);
