//! ApiKeys: the status shows the key's public id and fingerprint (never the key), its environment's id and
//! Secret, when it was issued or revoked, and why it is not usable when it is not (`KeyLimitReached`,
//! `SecretConflict`, `SecretMissing`, `Revoked`, `Expired`, ...), and for rotating keys the previous key
//! and until when it works, and the last and next rotation times.

use std::time::Duration;

use kube::ResourceExt;

use super::resource::OrgkeeperResource;
use super::status::{self, Outcome};
use super::sync::Synced;
use crate::crd::{ApiKey, ApiKeyStatus};
use crate::domain::rotation::{format_rfc3339, parse_duration};
use crate::domain::{KeySlot, KeyState, Kind, Problem, StoredApiKey, StoredOrganization, unix_now};

impl OrgkeeperResource for ApiKey {
    const KIND: Kind = Kind::ApiKey;

    fn organization_name(&self) -> &str {
        &self.spec.organization_ref.name
    }

    fn observe(&self, synced: &Synced) -> (Self::Status, Outcome) {
        let me = self.domain_ref();
        observe(
            &Declared {
                name: &me.name,
                secret_name: &self.secret_name(),
                revoked: self.spec.revoked,
                every: self.rotation_every(),
            },
            self.status.as_ref(),
            synced.problem_for(&me),
            synced.stored.as_ref(),
            &status::now(),
            unix_now(),
        )
    }

    /// The next moment the key's life changes by the clock alone: a rotation by `every`, the end of the
    /// previous key's overlap, the key's expiry. The reconcile then comes no later than that.
    fn next_wake(&self, synced: &Synced) -> Option<Duration> {
        let now = unix_now();
        let keys = keys_of(synced.stored.as_ref(), &self.name_any());
        let every = self.rotation_every();
        let rotation = keys
            .current
            .filter(|k| k.state == KeyState::Live)
            .and_then(|k| every.map(|every| k.issued_at.saturating_add(every)));
        let expiries = keys
            .current
            .into_iter()
            .chain(keys.previous)
            .filter(|k| k.state == KeyState::Live)
            .filter_map(|k| k.expires_at);
        rotation
            .into_iter()
            .chain(expiries)
            .filter(|at| *at > now)
            .min()
            // A second late rather than early: at the exact time the key still counts as unexpired.
            .map(|at| Duration::from_secs((at - now + 1) as u64))
    }
}

impl ApiKey {
    /// `spec.rotation.every` in seconds (the CRD's schema has checked it).
    fn rotation_every(&self) -> Option<i64> {
        self.spec
            .rotation
            .as_ref()
            .and_then(|r| r.every.as_deref())
            .and_then(|every| parse_duration(every).ok())
    }
}

/// What the ApiKey declares that its status depends on.
struct Declared<'a> {
    name: &'a str,
    secret_name: &'a str,
    revoked: bool,
    every: Option<i64>,
}

/// An ApiKey's keys in the store: its current key and the most recently replaced one.
struct Keys<'a> {
    current: Option<&'a StoredApiKey>,
    previous: Option<&'a StoredApiKey>,
}

fn keys_of<'a>(stored: Option<&'a StoredOrganization>, name: &str) -> Keys<'a> {
    let mine = || {
        stored
            .into_iter()
            .flat_map(|org| &org.api_keys)
            .filter(move |k| k.resource_name == name)
    };
    Keys {
        current: mine().find(|k| k.slot == KeySlot::Current),
        previous: mine()
            .filter(|k| k.slot == KeySlot::Previous)
            .max_by_key(|k| (k.superseded_at, k.issued_at)),
    }
}

fn observe(
    declared: &Declared<'_>,
    previous: Option<&ApiKeyStatus>,
    problem: Option<&Problem>,
    stored: Option<&StoredOrganization>,
    now: &str,
    now_secs: i64,
) -> (ApiKeyStatus, Outcome) {
    let keys = keys_of(stored, declared.name);
    let key = keys.current;
    let mut status = ApiKeyStatus {
        secret_name: Some(key.map_or(declared.secret_name, |k| k.secret_name.as_str()).to_owned()),
        ..Default::default()
    };
    if let Some(key) = key {
        // The times are when the controller first saw the key live or revoked; kept as long as the key is.
        let same_key = previous.filter(|p| p.key_id.as_deref() == Some(key.key_id.as_str()));
        status.key_id = Some(key.key_id.clone());
        status.fingerprint = Some(key.fingerprint.clone());
        status.environment_id = stored
            .and_then(|org| org.environments.iter().find(|e| e.name == key.environment))
            .map(|e| e.id.clone());
        if key.state != KeyState::Pending {
            status.issued_at = Some(
                same_key
                    .and_then(|p| p.issued_at.clone())
                    .unwrap_or_else(|| now.to_owned()),
            );
        }
        status.last_used_time = key.last_used_at.and_then(status::rfc3339);
        if key.state == KeyState::Revoked {
            status.revoked_at = Some(
                same_key
                    .and_then(|p| p.revoked_at.clone())
                    .unwrap_or_else(|| now.to_owned()),
            );
        }
        status.expires_at = key.expires_at.map(format_rfc3339);
        if key.state == KeyState::Live {
            status.next_rotation_time = declared
                .every
                .map(|every| format_rfc3339(key.issued_at.saturating_add(every)));
        }
    }
    if let Some(old) = keys.previous {
        status.previous_key_id = Some(old.key_id.clone());
        // Revoked at once (overlap 0s): it stopped when it was replaced.
        status.previous_key_expires_at = old.expires_at.or(old.superseded_at).map(format_rfc3339);
        status.last_rotation_time = old.superseded_at.map(format_rfc3339);
    }
    let expired = key.and_then(|k| k.expires_at.filter(|at| *at <= now_secs).map(|at| (k, at)));
    let outcome = match (problem, key.map(|k| (k.state, k)), expired) {
        (Some(problem), _, _) => Outcome::from_problem(problem),
        (None, Some((KeyState::Live, _)), Some((key, at))) => Outcome::Ready {
            reason: "Expired",
            message: format!(
                "key {} expired at {} and no longer authenticates, as spec.expiresAt or spec.expireAfter declares; for a new key, set a later expiry and rotate (spec.rotation.trigger), or create a new ApiKey",
                key.key_id,
                format_rfc3339(at)
            ),
        },
        (None, Some((KeyState::Live, key)), None) => Outcome::Ready {
            reason: "Issued",
            message: match keys
                .previous
                .filter(|old| old.state == KeyState::Live && old.expires_at.is_some_and(|at| at > now_secs))
            {
                Some(old) => format!(
                    "key {} is live and Secret {:?} holds it (OSO_AUTH, OSO_URL); the previous key {} keeps working until {}",
                    key.key_id,
                    key.secret_name,
                    old.key_id,
                    old.expires_at.map(format_rfc3339).unwrap_or_default()
                ),
                None => format!(
                    "key {} is live and Secret {:?} holds it (OSO_AUTH, OSO_URL)",
                    key.key_id, key.secret_name
                ),
            },
        },
        (None, Some((KeyState::Revoked, key)), _) => Outcome::Revoked {
            message: format!(
                "key {} is revoked{} and no longer authenticates; revocation is permanent: create a new ApiKey for a new key",
                key.key_id,
                key.revoked_outside_git
                    .as_ref()
                    .map(|o| format!(" (outside Git by {:?}: {:?})", o.by, o.reason))
                    .unwrap_or_default()
            ),
        },
        (None, Some((KeyState::Pending, key)), _) => Outcome::Progressing {
            reason: "Issuing",
            message: format!("key {} is being written into Secret {:?}", key.key_id, key.secret_name),
        },
        (None, None, _) if declared.revoked => Outcome::Revoked {
            message: "the ApiKey was revoked before a key was issued; create a new ApiKey for a key".into(),
        },
        (None, None, _) => Outcome::Progressing {
            reason: "Issuing",
            message: "the key is being issued".into(),
        },
    };
    (status, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    fn declared(revoked: bool) -> Declared<'static> {
        Declared {
            name: "backend",
            secret_name: "backend-oso",
            revoked,
            every: Some(3600),
        }
    }

    #[test]
    fn a_rotated_key_shows_both_keys_and_the_times_and_an_expired_one_says_so() {
        let mut stored = org(KeyState::Live);
        stored.api_keys[0].issued_at = 1_000;
        stored.api_keys.push(StoredApiKey {
            slot: KeySlot::Previous,
            superseded_at: Some(1_000),
            expires_at: Some(1_600),
            ..fixtures::api_key("backend", "k0", KeyState::Live)
        });
        let (status, outcome) = observe(&declared(false), None, None, Some(&stored), "t", 1_100);
        assert_eq!(status.key_id.as_deref(), Some("k1"));
        assert_eq!(status.previous_key_id.as_deref(), Some("k0"));
        assert_eq!(status.previous_key_expires_at.as_deref(), Some("1970-01-01T00:26:40Z"));
        assert_eq!(status.last_rotation_time.as_deref(), Some("1970-01-01T00:16:40Z"));
        assert_eq!(status.next_rotation_time.as_deref(), Some("1970-01-01T01:16:40Z"));
        assert!(
            outcome.message().contains("previous key k0 keeps working until"),
            "{}",
            outcome.message()
        );
        let (_, after) = observe(&declared(false), None, None, Some(&stored), "t", 1_600);
        assert!(!after.message().contains("previous"), "{}", after.message());

        stored.api_keys[0].expires_at = Some(1_500);
        let (status, outcome) = observe(&declared(false), None, None, Some(&stored), "t", 1_500);
        assert_eq!(outcome.reason(), "Expired");
        assert!(
            outcome.message().contains("expired at 1970-01-01T00:25:00Z"),
            "{}",
            outcome.message()
        );
        assert_eq!(status.expires_at.as_deref(), Some("1970-01-01T00:25:00Z"));
    }

    fn org(state: KeyState) -> StoredOrganization {
        StoredOrganization {
            environments: vec![fixtures::production("env1")],
            api_keys: vec![StoredApiKey {
                secret_name: "backend-oso".into(),
                access: Access::ReadOnly,
                fingerprint: "sha256:0123".into(),
                ..fixtures::api_key("backend", "k1", state)
            }],
            ..fixtures::organization()
        }
    }

    #[test]
    fn a_live_key_is_ready_with_its_ids_and_the_issue_time_is_kept() {
        let stored = org(KeyState::Live);
        let (status, outcome) = observe(&declared(false), None, None, Some(&stored), "t1", 0);
        assert_eq!(outcome.reason(), "Issued");
        assert_eq!(status.key_id.as_deref(), Some("k1"));
        assert_eq!(status.fingerprint.as_deref(), Some("sha256:0123"));
        assert_eq!(status.environment_id.as_deref(), Some("env1"));
        assert_eq!(status.issued_at.as_deref(), Some("t1"));
        let (again, _) = observe(&declared(false), Some(&status), None, Some(&stored), "t2", 0);
        assert_eq!(again, status, "nothing changed, so the status is identical");
    }

    #[test]
    fn a_revoked_key_says_so_and_when() {
        let stored = org(KeyState::Revoked);
        let (status, outcome) = observe(&declared(true), None, None, Some(&stored), "t3", 0);
        assert_eq!(outcome.reason(), "Revoked");
        assert!(
            outcome.is_ready() && !outcome.wants_retry(),
            "revoked as declared: Ready"
        );
        assert_eq!(status.revoked_at.as_deref(), Some("t3"));
    }

    #[test]
    fn the_last_use_the_sidecars_recorded_shows_as_last_used_time() {
        let mut stored = org(KeyState::Live);
        let (status, _) = observe(&declared(false), None, None, Some(&stored), "t1", 0);
        assert_eq!(status.last_used_time, None, "never used: no time");
        stored.api_keys[0].last_used_at = Some(1_780_000_000);
        let (status, _) = observe(&declared(false), None, None, Some(&stored), "t1", 0);
        assert_eq!(status.last_used_time.as_deref(), Some("2026-05-28T20:26:40Z"));
    }

    #[test]
    fn a_key_revoked_outside_git_and_then_in_git_still_says_who_and_why() {
        let mut stored = org(KeyState::Revoked);
        stored.api_keys[0].revoked_outside_git = Some(OutsideRevocation {
            by: "alice".into(),
            reason: "leaked".into(),
        });
        let (_, outcome) = observe(&declared(true), None, None, Some(&stored), "t1", 0);
        assert_eq!(outcome.reason(), "Revoked");
        assert!(
            outcome.message().contains("outside Git by \"alice\": \"leaked\""),
            "{}",
            outcome.message()
        );
    }

    #[test]
    fn a_problem_wins_over_the_stored_state() {
        let stored = org(KeyState::Live);
        let problem = Problem {
            object: ObjectRef::new(Kind::ApiKey, "team", "backend"),
            reason: Reason::SecretMissing,
            message: "gone".into(),
        };
        let (status, outcome) = observe(&declared(false), None, Some(&problem), Some(&stored), "t", 0);
        assert_eq!(outcome.reason(), "SecretMissing");
        assert_eq!(
            status.key_id.as_deref(),
            Some("k1"),
            "the ids still show which key it is"
        );
    }
}
