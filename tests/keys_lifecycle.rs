//! A key's life outside Git, through a real sidecar on both backends: revoked by id it is refused within
//! seconds and stays revoked whatever Git still says; given an expiry it is refused from that time by the
//! sidecar alone; and every issuance, revocation, expiry change and removal is in the audit trail.

mod keys_support;
mod sidecar_support;
mod support;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use keys_support::{now, record};
use orgkeeper::domain::*;
use orgkeeper::store::{KeyEvent, KeyEventKind, Revocation, Store, StoreError};
use sidecar_support::*;

/// Refusal of a revoked or expired key: the sidecar's refresh is 1 s, the promise 5 s.
const WITHIN: Duration = Duration::from_secs(5);

/// Waits until `key` is refused with 401; returns how long that took and the message.
async fn until_refused(http: &Http, key: &str) -> (Duration, String) {
    let started = Instant::now();
    loop {
        let reply = http.get("/api/facts?predicate=has_role", Some(key)).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            return (started.elapsed(), reply.message());
        }
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            started.elapsed() < WITHIN * 2,
            "still accepted after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Plans `declarations` against the store and applies what the plan allows, as the controller does (it
/// reports problems per resource and carries on with the rest).
async fn reconcile(store: &Store, declarations: &Declarations, git_revision: Option<&str>) -> Vec<Problem> {
    let stored = store.load_organizations(&[OrgKey::new(NS, ORG)]).await.unwrap();
    let plan = plan(declarations, &stored, &KnownAccounts::default());
    let mut tx = store.begin().await.unwrap();
    tx.set_git_revision(git_revision.map(str::to_owned));
    tx.apply(&plan.changes, KeyState::Live).await.unwrap();
    tx.commit().await.unwrap();
    plan.problems
}

fn events(history: &[KeyEvent]) -> Vec<KeyEventKind> {
    history.iter().map(|event| event.event).collect()
}

async fn a_key_revoked_by_id_is_refused_within_seconds_and_stays_revoked(store: Store) {
    let tenancy = Tenancy::new(
        store.clone(),
        &[Env("staging", limits())],
        &[
            Key("leaked", "staging", Access::ReadWrite),
            Key("other", "staging", Access::ReadWrite),
        ],
    )
    .await;
    let upstream = Upstream::start().await;
    let running = start(&store, Options::new(&upstream)).await;
    let http = Http::new(&running);
    let leaked = record(&store, "leaked").await;

    let operator = store.clone().acting_as("alice");
    let revocation = operator
        .revoke_key_by_id(&leaked.key_id, "leaked in a CI log")
        .await
        .unwrap();
    assert_eq!(revocation, Revocation::Revoked);
    let (after, message) = until_refused(&http, tenancy.key("leaked")).await;
    println!("revoked by id: refused after {after:?}");
    assert!(after < WITHIN, "refused only after {after:?}");
    assert_eq!(message, "invalid API key");
    let other = http
        .get("/api/facts?predicate=has_role", Some(tenancy.key("other")))
        .await;
    assert_eq!(other.status, StatusCode::OK, "only that key");

    let revoked = record(&store, "leaked").await;
    assert_eq!(revoked.state, KeyState::Revoked);
    assert_eq!(revoked.revoked_by.as_deref(), Some("alice"));
    assert_eq!(revoked.revoked_reason.as_deref(), Some("leaked in a CI log"));

    // Git still declares the key live: the plan refuses to bring it back, and changes nothing for it.
    let problems = reconcile(&store, tenancy.declarations(), None).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].object.name, "leaked");
    assert_eq!(problems[0].reason, Reason::RevokedOutsideGit);
    for part in [
        "revoked outside Git",
        "\"alice\"",
        "leaked in a CI log",
        "revoked: true",
    ] {
        assert!(problems[0].message.contains(part), "{part}: {}", problems[0].message);
    }
    assert_eq!(record(&store, "leaked").await, revoked, "still revoked, same record");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reply = http
        .get("/api/facts?predicate=has_role", Some(tenancy.key("leaked")))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // Revoking again is harmless and keeps the first record; an unknown id changes nothing.
    let again = operator.revoke_key_by_id(&leaked.key_id, "again").await.unwrap();
    assert_eq!(again, Revocation::AlreadyRevoked { at: revoked.revoked_at });
    let revision = store.revision().await.unwrap();
    let unknown = operator.revoke_key_by_id("nosuchkey000", "typo").await.unwrap_err();
    assert!(matches!(unknown, StoreError::UnknownKey { .. }), "{unknown}");
    assert!(unknown.to_string().contains("nosuchkey000"), "{unknown}");
    assert_eq!(store.revision().await.unwrap(), revision, "nothing changed");

    let history = store.key_history(Some(&leaked.key_id)).await.unwrap();
    assert_eq!(events(&history), [KeyEventKind::Issued, KeyEventKind::RevokedById]);
    let revocation = &history[1];
    assert_eq!(revocation.actor, "alice");
    assert_eq!(revocation.reason.as_deref(), Some("leaked in a CI log"));
    assert_eq!(
        (revocation.organization.to_string(), revocation.environment.as_str()),
        (format!("{NS}/{ORG}"), "staging")
    );
    assert_eq!(revocation.api_key, "leaked");
}

async fn history_records_issuance_declared_revocation_and_removal(store: Store) {
    let tenancy = Tenancy::new(
        store.clone(),
        &[Env("staging", limits())],
        &[
            Key("backend", "staging", Access::ReadWrite),
            Key("reports", "staging", Access::ReadOnly),
        ],
    )
    .await;
    let backend = record(&store, "backend").await;
    let reports = record(&store, "reports").await;
    let mut declarations = tenancy.declarations().clone();
    declarations.api_keys[0].revoked = true;
    let store = store.acting_as("argocd");
    assert!(reconcile(&store, &declarations, Some("4f1c2e9")).await.is_empty());
    // Declared once more: already revoked, nothing recorded twice.
    assert!(reconcile(&store, &declarations, Some("4f1c2e9")).await.is_empty());
    declarations.api_keys.remove(1);
    assert!(reconcile(&store, &declarations, Some("77aa0b1")).await.is_empty());

    let history = store.key_history(None).await.unwrap();
    let of = |key_id: &str| -> Vec<&KeyEvent> { history.iter().filter(|e| e.key_id == key_id).collect() };
    let backend_events = of(&backend.key_id);
    assert_eq!(
        backend_events.iter().map(|e| e.event).collect::<Vec<_>>(),
        [KeyEventKind::Issued, KeyEventKind::Revoked]
    );
    assert_eq!(backend_events[1].actor, "argocd");
    assert_eq!(backend_events[1].git_revision.as_deref(), Some("4f1c2e9"));
    assert_eq!(backend_events[1].reason.as_deref(), Some("revoked: true in its ApiKey"));
    let reports_events = of(&reports.key_id);
    assert_eq!(
        reports_events.iter().map(|e| e.event).collect::<Vec<_>>(),
        [KeyEventKind::Issued, KeyEventKind::Removed]
    );
    assert_eq!(reports_events[1].git_revision.as_deref(), Some("77aa0b1"));
    assert!(
        store
            .list_keys()
            .await
            .unwrap()
            .iter()
            .all(|k| k.key_id != reports.key_id)
    );
    assert_eq!(
        store.key_history(Some(&reports.key_id)).await.unwrap().len(),
        2,
        "outlives the key"
    );
    let secret = tenancy.key("backend");
    for event in &history {
        let text = format!("{event:?}");
        assert!(!text.contains(secret), "an audit row holds the key");
    }
}

async fn an_expired_key_is_refused_by_the_sidecar_alone(store: Store) {
    let tenancy = Tenancy::new(
        store.clone(),
        &[Env("staging", limits())],
        &[Key("temporary", "staging", Access::ReadWrite)],
    )
    .await;
    let upstream = Upstream::start().await;
    let running = start(&store, Options::new(&upstream)).await;
    let http = Http::new(&running);
    let key = record(&store, "temporary").await;
    let expires_at = now() + 3;
    store
        .set_key_expiry(&key.key_id, Some(expires_at), "contractor access until Friday")
        .await
        .unwrap();
    // The ring picks up the expiry with the revision; from then on no store round trip is needed.
    let revision = store.revision().await.unwrap();
    wait_for("the sidecar to load the expiry", WITHIN, || {
        running.ring.status().revision == revision
    })
    .await;
    let reply = http
        .get("/api/facts?predicate=has_role", Some(tenancy.key("temporary")))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "not expired yet");
    let (_, message) = until_refused(&http, tenancy.key("temporary")).await;
    let late = now() - expires_at;
    println!("expired key refused {late} s after its time");
    assert!((0..=1).contains(&late), "refused {late} s after its expiry");
    assert!(message.contains("expired at"), "{message}");
    assert!(!message.contains(tenancy.key("temporary")), "{message}");
    assert_eq!(
        store.revision().await.unwrap(),
        revision,
        "no controller, apply or store change was needed"
    );
    assert_eq!(record(&store, "temporary").await.expires_at, Some(expires_at));

    let history = store.key_history(Some(&key.key_id)).await.unwrap();
    assert_eq!(events(&history), [KeyEventKind::Issued, KeyEventKind::ExpirySet]);
    assert_eq!(history[1].reason.as_deref(), Some("contractor access until Friday"));
    let unknown = store.set_key_expiry("nosuchkey000", Some(now() + 60), "x").await;
    assert!(matches!(unknown, Err(StoreError::UnknownKey { .. })));
}

on_both_backends!(
    a_key_revoked_by_id_is_refused_within_seconds_and_stays_revoked,
    history_records_issuance_declared_revocation_and_removal,
    an_expired_key_is_refused_by_the_sidecar_alone,
);
