//! The rules that make key issuance write-once and crash-safe, whatever holds the keys (Kubernetes Secrets
//! for the controller). Issuance runs in three steps: record the key `Pending` (hash only) and commit, write
//! its Secret (create, never update), then mark it `Live`. A crash between steps leaves a pending key,
//! which never authenticates; this module decides, from what the Secret holds, whether a pending key is
//! completed or discarded, which keys must not be issued because their Secret's name is taken, and which
//! live keys have lost their Secret.

use std::collections::BTreeSet;

use super::model::{KeySlot, KeyState, Kind, ObjectRef, OrgKey, StoredApiKey, StoredOrganization};
use super::plan::Change;
use super::rules::{Problem, Reason};

/// What the Secret a key is meant for holds, as seen by the adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretState {
    /// No Secret of that name.
    Absent,
    /// A Secret orgkeeper wrote for this very ApiKey, holding the key with this id.
    Holds(String),
    /// A Secret orgkeeper wrote for another ApiKey or another organization: named, so that the clash can say
    /// whose key is in the way.
    HoldsAnother { organization: OrgKey, api_key: String },
    /// A Secret of that name that orgkeeper did not write.
    Foreign,
}

/// When an adapter writes a key's Secret relative to recording the key, which decides what a Secret of
/// this ApiKey holding a key the store does not know as live means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOrder {
    /// The key is recorded pending before its Secret is written (the controller): no crash can leave a
    /// Secret holding a key the store does not know, so such a Secret is a conflict.
    RecordFirst,
    /// The Secret is written before the transaction that records the key commits (`orgkeeper apply`): a
    /// Secret of this ApiKey holding a key that never became live is what a crash leaves, and is replaced.
    WriteFirst,
}

/// A pending key whose Secret already holds it: the crash came after the Secret was written and before
/// the key was marked live, so marking it live completes the issuance ([`WriteOrder::RecordFirst`] only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCompletion {
    pub organization: OrgKey,
    pub api_key: String,
    pub key_id: String,
}

/// A Secret left by an interrupted [`WriteOrder::WriteFirst`] issuance: written for this ApiKey, holding a
/// key that never became live. The adapter replaces it with the key it issues now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleSecret {
    pub organization: OrgKey,
    pub api_key: String,
    pub secret_name: String,
    pub key_id: String,
}

/// A rotation interrupted after its Secret was rewritten: the Secret holds the incoming key (live), so only
/// the last step is left: the incoming key becomes current and `previous` starts its overlap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationCompletion {
    pub organization: OrgKey,
    pub api_key: String,
    pub incoming: String,
    pub previous: String,
    pub overlap: i64,
}

/// The plan's changes after checking every Secret involved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretReview {
    /// The changes to carry out: the plan's, minus issuance held back by a Secret in the way and minus
    /// pending keys that only need completing.
    pub changes: Vec<Change>,
    pub completions: Vec<PendingCompletion>,
    pub rotations: Vec<RotationCompletion>,
    /// Secrets to replace with a fresh key (only with [`WriteOrder::WriteFirst`]).
    pub stale: Vec<StaleSecret>,
    /// `SecretConflict` and `SecretMissing`, each on its ApiKey.
    pub problems: Vec<Problem>,
}

/// Checks the keys a plan issues and the live keys it keeps against their Secrets, for one organization
/// (the controller's unit of work). See [`review_secrets`].
pub fn review_key_secrets(
    changes: Vec<Change>,
    stored: Option<&StoredOrganization>,
    secret_of: impl Fn(&str, &str, &str) -> SecretState,
) -> SecretReview {
    review_secrets(
        changes,
        stored.into_iter(),
        WriteOrder::RecordFirst,
        |organization, secret_name, api_key| secret_of(&organization.namespace, secret_name, api_key),
    )
}

/// Checks the keys a plan issues and the live keys it keeps against their Secrets.
///
/// - An issuance goes ahead only when its Secret is absent; a pending key whose Secret holds it is
///   completed instead; a Secret that holds another key, belongs to another ApiKey or organization, or is
///   not orgkeeper's is never touched and the key is not issued (`SecretConflict`). The one exception is
///   a Secret of this very ApiKey holding a key that is not live, with [`WriteOrder::WriteFirst`].
/// - A live key whose Secret is gone is reported (`SecretMissing`) and not re-issued: clients may hold
///   the old key, and a silent re-issue would break them without a trace. The way out is rotation. A live
///   key whose Secret holds anything else is a `SecretConflict`.
///
/// `stored` holds what the store has for every organization the changes touch.
/// `secret_of(organization, secret_name, api_key)` tells what the named Secret, in the organization's
/// namespace, holds for that organization's ApiKey.
pub fn review_secrets<'a>(
    changes: Vec<Change>,
    stored: impl Iterator<Item = &'a StoredOrganization> + Clone,
    order: WriteOrder,
    secret_of: impl Fn(&OrgKey, &str, &str) -> SecretState,
) -> SecretReview {
    let mut review = SecretReview::default();
    let leaving: BTreeSet<String> = changes.iter().flat_map(Change::revoked_keys).cloned().collect();
    let is_live = |key_id: &str| {
        stored
            .clone()
            .flat_map(|org| &org.api_keys)
            .any(|k| k.key_id == key_id && k.state == KeyState::Live)
    };
    let mut rotating = BTreeSet::new();
    for change in changes {
        if let Change::RotateKey {
            organization,
            api_key,
            secret_name,
            current,
            resume,
            overlap,
            ..
        } = &change
        {
            rotating.insert(current.clone());
            let object = ObjectRef::new(Kind::ApiKey, &organization.namespace, api_key);
            match secret_of(organization, secret_name, api_key) {
                // The Secret holds the current key (or is gone: a rotation is how a lost Secret comes back).
                SecretState::Absent => review.changes.push(change),
                SecretState::Holds(held) if &held == current => review.changes.push(change),
                SecretState::Holds(held) if resume.as_ref() == Some(&held) => review.rotations.push(RotationCompletion {
                    organization: organization.clone(),
                    api_key: api_key.clone(),
                    incoming: held,
                    previous: current.clone(),
                    overlap: *overlap,
                }),
                SecretState::Holds(held) => review.problems.push(Problem {
                    object,
                    reason: Reason::SecretConflict,
                    message: format!(
                        "Secret {secret_name:?} holds key {held}, which is neither this ApiKey's current key {current} nor its incoming one; it is not rotated: delete the Secret and the rotation writes a new one"
                    ),
                }),
                SecretState::HoldsAnother { organization: owner, api_key: other } => {
                    review
                        .problems
                        .push(held_by_another(object, organization, secret_name, &owner, &other));
                }
                SecretState::Foreign => review.problems.push(secret_conflict(object, secret_name)),
            }
            continue;
        }
        let Change::IssueKey {
            organization,
            api_key,
            secret_name,
            resume,
            ..
        } = &change
        else {
            review.changes.push(change);
            continue;
        };
        let object = ObjectRef::new(Kind::ApiKey, &organization.namespace, api_key);
        match (secret_of(organization, secret_name, api_key), resume) {
            (SecretState::Absent, _) => review.changes.push(change),
            (SecretState::Holds(held), Some(pending)) if &held == pending && order == WriteOrder::RecordFirst => {
                review.completions.push(PendingCompletion {
                    organization: organization.clone(),
                    api_key: api_key.clone(),
                    key_id: held,
                });
            }
            (SecretState::Holds(held), _) if order == WriteOrder::WriteFirst && !is_live(&held) => {
                review.stale.push(StaleSecret {
                    organization: organization.clone(),
                    api_key: api_key.clone(),
                    secret_name: secret_name.clone(),
                    key_id: held,
                });
                review.changes.push(change);
            }
            (SecretState::Holds(held), _) => review.problems.push(Problem {
                object,
                reason: Reason::SecretConflict,
                message: format!(
                    "Secret {secret_name:?} already holds key {held}, which is not a key of this ApiKey in the store; orgkeeper never rewrites a Secret: delete the Secret and a new key is issued into a new one"
                ),
            }),
            (SecretState::HoldsAnother { organization: owner, api_key: other }, _) => {
                review
                    .problems
                    .push(held_by_another(object, organization, secret_name, &owner, &other));
            }
            (SecretState::Foreign, _) => review.problems.push(secret_conflict(object, secret_name)),
        }
    }
    for org in stored {
        for key in org.api_keys.iter().filter(|k| {
            k.state == KeyState::Live
                && k.slot == KeySlot::Current
                && !leaving.contains(&k.key_id)
                && !rotating.contains(&k.key_id)
        }) {
            if let Some(problem) = check_live_key(org, key, secret_of(&org.key, &key.secret_name, &key.resource_name)) {
                review.problems.push(problem);
            }
        }
    }
    review
}

/// A live key must find its own key in its Secret.
fn check_live_key(org: &StoredOrganization, key: &StoredApiKey, state: SecretState) -> Option<Problem> {
    let object = ObjectRef::new(Kind::ApiKey, &org.key.namespace, &key.resource_name);
    let replaced = |object| Problem {
        object,
        reason: Reason::SecretConflict,
        message: format!(
            "Secret {:?} no longer holds this ApiKey's live key {} (it was replaced outside orgkeeper) and is never touched; delete that Secret, then rotate (set spec.rotation.trigger to a new value) for a new key in a new Secret",
            key.secret_name, key.key_id
        ),
    };
    match state {
        SecretState::Holds(held) if held == key.key_id => None,
        SecretState::Absent => Some(Problem {
            object,
            reason: Reason::SecretMissing,
            message: format!(
                "key {} is live but its Secret {:?} is gone, and a key is never re-issued silently; rotate: set spec.rotation.trigger to a new value and a new key is written into a new Secret (or set revoked: true)",
                key.key_id, key.secret_name
            ),
        }),
        SecretState::HoldsAnother { organization, api_key } => {
            let mut problem = held_by_another(object, &org.key, &key.secret_name, &organization, &api_key);
            problem.message = format!(
                "{}; this ApiKey's live key {} is no longer in it: rotate once the clash is resolved",
                problem.message, key.key_id
            );
            Some(problem)
        }
        SecretState::Holds(_) | SecretState::Foreign => Some(replaced(object)),
    }
}

/// The problem of a key whose Secret holds the key of another ApiKey or organization: names both.
fn held_by_another(
    object: ObjectRef,
    organization: &OrgKey,
    secret_name: &str,
    owner: &OrgKey,
    other: &str,
) -> Problem {
    Problem {
        message: format!(
            "Secret {secret_name:?} holds the key of ApiKey {}/{other} of organization {owner}, not of ApiKey {} of organization {organization}; it is never touched: give one of the two ApiKeys another spec.secret.name",
            owner.namespace, object.name
        ),
        object,
        reason: Reason::SecretConflict,
    }
}

/// The live keys (as stored) that these changes revoke; pending keys never worked, so they do not count.
pub fn live_keys_revoked<'a>(
    changes: &[Change],
    stored: impl IntoIterator<Item = &'a StoredOrganization>,
) -> Vec<(&'a OrgKey, &'a StoredApiKey)> {
    let revoked: BTreeSet<&str> = changes
        .iter()
        .flat_map(Change::revoked_keys)
        .map(String::as_str)
        .collect();
    stored
        .into_iter()
        .flat_map(|org| org.api_keys.iter().map(move |key| (&org.key, key)))
        .filter(|(_, k)| k.state == KeyState::Live && revoked.contains(k.key_id.as_str()))
        .collect()
}

/// The problem of a key whose Secret's name is taken by a Secret orgkeeper did not write for it.
pub fn secret_conflict(object: ObjectRef, secret_name: &str) -> Problem {
    Problem {
        object,
        reason: Reason::SecretConflict,
        message: format!(
            "a Secret named {secret_name:?} already exists and was not written by orgkeeper for this ApiKey; it is never touched: delete or rename that Secret, or set spec.secret.name to another name"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    fn org() -> OrgKey {
        fixtures::org_key()
    }

    fn issue(api_key: &str, resume: Option<&str>) -> Change {
        Change::IssueKey {
            organization: org(),
            environment: "production".into(),
            api_key: api_key.into(),
            access: Access::ReadWrite,
            secret_name: format!("{api_key}-secret"),
            resume: resume.map(Into::into),
            expiry: None,
            trigger: None,
        }
    }

    fn stored_with(keys: &[(&str, &str, KeyState)]) -> StoredOrganization {
        StoredOrganization {
            api_keys: keys
                .iter()
                .map(|(name, id, state)| StoredApiKey {
                    secret_name: format!("{name}-secret"),
                    ..fixtures::api_key(name, id, *state)
                })
                .collect(),
            ..fixtures::organization()
        }
    }

    fn reasons(review: &SecretReview) -> Vec<(&str, Reason)> {
        review
            .problems
            .iter()
            .map(|p| (p.object.name.as_str(), p.reason))
            .collect()
    }

    #[test]
    fn a_key_is_issued_only_into_an_absent_secret() {
        let review = review_key_secrets(vec![issue("a", None), issue("b", None)], None, |_, name, _| {
            if name == "b-secret" {
                SecretState::Foreign
            } else {
                SecretState::Absent
            }
        });
        assert_eq!(review.changes, vec![issue("a", None)]);
        assert_eq!(reasons(&review), vec![("b", Reason::SecretConflict)]);
        assert!(review.problems[0].message.contains("never touched"));
    }

    #[test]
    fn a_pending_key_whose_secret_holds_it_is_completed_not_reissued() {
        let stored = stored_with(&[("a", "k1", KeyState::Pending)]);
        let review = review_key_secrets(vec![issue("a", Some("k1"))], Some(&stored), |_, _, _| {
            SecretState::Holds("k1".into())
        });
        assert!(review.changes.is_empty());
        assert_eq!(
            review.completions,
            vec![PendingCompletion {
                organization: org(),
                api_key: "a".into(),
                key_id: "k1".into()
            }]
        );
        assert!(review.problems.is_empty());
    }

    #[test]
    fn a_pending_key_without_its_secret_is_discarded_and_issued_afresh() {
        let stored = stored_with(&[("a", "k1", KeyState::Pending)]);
        let review = review_key_secrets(vec![issue("a", Some("k1"))], Some(&stored), |_, _, _| {
            SecretState::Absent
        });
        assert_eq!(review.changes, vec![issue("a", Some("k1"))]);
        assert!(review.completions.is_empty());
    }

    #[test]
    fn a_secret_holding_another_key_is_never_rewritten() {
        let stored = stored_with(&[("a", "k1", KeyState::Pending)]);
        let review = review_key_secrets(vec![issue("a", Some("k1"))], Some(&stored), |_, _, _| {
            SecretState::Holds("old".into())
        });
        assert!(review.changes.is_empty() && review.completions.is_empty());
        assert_eq!(reasons(&review), vec![("a", Reason::SecretConflict)]);
        assert!(review.problems[0].message.contains("delete the Secret"));
    }

    #[test]
    fn a_live_key_whose_secret_is_gone_is_reported_and_not_reissued() {
        let stored = stored_with(&[
            ("a", "k1", KeyState::Live),
            ("b", "k2", KeyState::Live),
            ("c", "k3", KeyState::Revoked),
            ("d", "k4", KeyState::Live),
        ]);
        let review = review_key_secrets(vec![], Some(&stored), |_, name, _| match name {
            "a-secret" => SecretState::Holds("k1".into()),
            "d-secret" => SecretState::Foreign,
            _ => SecretState::Absent,
        });
        assert!(review.changes.is_empty());
        assert_eq!(
            reasons(&review),
            vec![("b", Reason::SecretMissing), ("d", Reason::SecretConflict)]
        );
        assert!(review.problems[0].message.contains("rotate"));
    }

    #[test]
    fn keys_being_revoked_need_no_secret() {
        let stored = stored_with(&[("a", "k1", KeyState::Live)]);
        let revoke = Change::RevokeKey {
            organization: org(),
            environment: "production".into(),
            api_key: "a".into(),
            key_id: "k1".into(),
        };
        let review = review_key_secrets(vec![revoke.clone()], Some(&stored), |_, _, _| SecretState::Absent);
        assert_eq!(review.changes, vec![revoke]);
        assert!(review.problems.is_empty());
    }

    #[test]
    fn a_secret_of_another_organization_is_never_touched_and_both_are_named() {
        let stored = stored_with(&[("a", "k1", KeyState::Live)]);
        let other = SecretState::HoldsAnother {
            organization: OrgKey::new("team", "globex"),
            api_key: "a".into(),
        };
        let review = review_secrets(
            vec![issue("b", None)],
            std::iter::once(&stored),
            WriteOrder::WriteFirst,
            |_, _, _| other.clone(),
        );
        assert!(review.changes.is_empty() && review.stale.is_empty());
        assert_eq!(
            reasons(&review),
            vec![("b", Reason::SecretConflict), ("a", Reason::SecretConflict)]
        );
        for problem in &review.problems {
            assert!(
                problem.message.contains("organization team/globex")
                    && problem.message.contains("organization team/acme"),
                "{}",
                problem.message
            );
        }
    }

    #[test]
    fn written_first_a_stale_secret_of_this_api_key_is_replaced_but_never_a_live_keys() {
        let stored = stored_with(&[("live", "k1", KeyState::Live)]);
        let review = review_secrets(
            vec![issue("a", None), issue("b", None)],
            std::iter::once(&stored),
            WriteOrder::WriteFirst,
            |_, secret, _| match secret {
                "a-secret" => SecretState::Holds("never-live".into()),
                "b-secret" => SecretState::Holds("k1".into()),
                _ => SecretState::Holds("k1".into()),
            },
        );
        assert_eq!(review.changes, vec![issue("a", None)]);
        assert_eq!(
            review.stale,
            vec![StaleSecret {
                organization: org(),
                api_key: "a".into(),
                secret_name: "a-secret".into(),
                key_id: "never-live".into(),
            }]
        );
        assert_eq!(reasons(&review), vec![("b", Reason::SecretConflict)]);
        // The controller records keys first, so the same Secret is a conflict there.
        let recorded_first = review_key_secrets(vec![issue("a", None)], Some(&stored), |_, _, _| {
            SecretState::Holds("never-live".into())
        });
        assert!(recorded_first.stale.is_empty() && recorded_first.changes.is_empty());
    }

    #[test]
    fn the_live_keys_a_plan_revokes_are_counted_once_and_pending_ones_not_at_all() {
        let stored = stored_with(&[
            ("a", "k1", KeyState::Live),
            ("b", "k2", KeyState::Pending),
            ("c", "k3", KeyState::Live),
        ]);
        let changes = vec![
            Change::RevokeKey {
                organization: org(),
                environment: "production".into(),
                api_key: "a".into(),
                key_id: "k1".into(),
            },
            Change::ReleaseOrganization {
                organization: org(),
                revoked_keys: vec!["k1".into(), "k2".into()],
            },
        ];
        let revoked: Vec<&str> = live_keys_revoked(&changes, [&stored])
            .into_iter()
            .map(|(_, key)| key.key_id.as_str())
            .collect();
        assert_eq!(revoked, vec!["k1"]);
    }

    fn rotate(resume: Option<&str>) -> Change {
        Change::RotateKey {
            organization: org(),
            environment: "production".into(),
            api_key: "a".into(),
            access: Access::ReadWrite,
            secret_name: "a-secret".into(),
            current: "k1".into(),
            cause: RotationCause::Trigger,
            overlap: 60,
            resume: resume.map(Into::into),
            expiry: None,
            trigger: Some("t2".into()),
        }
    }

    #[test]
    fn a_rotation_goes_ahead_from_the_current_key_and_is_only_finished_once_the_secret_holds_the_new_one() {
        let stored = stored_with(&[("a", "k1", KeyState::Live)]);
        let holding = |held: &'static str| move |_: &str, _: &str, _: &str| SecretState::Holds(held.into());
        for order in [WriteOrder::RecordFirst, WriteOrder::WriteFirst] {
            let review = review_secrets(vec![rotate(None)], std::iter::once(&stored), order, |_, _, _| {
                SecretState::Holds("k1".into())
            });
            assert_eq!(review.changes, vec![rotate(None)], "{order:?}");
            assert!(
                review.problems.is_empty(),
                "the current key is where it should be: {:?}",
                review.problems
            );
        }
        // Crash after step 2: the Secret holds the incoming key; only step 3 is left, and no conflict.
        let review = review_key_secrets(vec![rotate(Some("k2"))], Some(&stored), holding("k2"));
        assert!(review.changes.is_empty() && review.problems.is_empty(), "{review:?}");
        assert_eq!(
            review.rotations,
            vec![RotationCompletion {
                organization: org(),
                api_key: "a".into(),
                incoming: "k2".into(),
                previous: "k1".into(),
                overlap: 60,
            }]
        );
        // Crash after step 1: the Secret still holds the current key: start over.
        let review = review_key_secrets(vec![rotate(Some("k2"))], Some(&stored), holding("k1"));
        assert_eq!(review.changes, vec![rotate(Some("k2"))]);
        // A Secret that is gone comes back with the new key.
        let review = review_key_secrets(vec![rotate(None)], Some(&stored), |_, _, _| SecretState::Absent);
        assert_eq!(review.changes, vec![rotate(None)]);
        assert!(review.problems.is_empty(), "{:?}", review.problems);
        // Anything else in the Secret is never touched.
        let review = review_key_secrets(vec![rotate(Some("k2"))], Some(&stored), holding("k7"));
        assert!(review.changes.is_empty() && review.rotations.is_empty());
        assert_eq!(reasons(&review), vec![("a", Reason::SecretConflict)]);
    }
}
