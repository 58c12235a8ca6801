//! ApiKeys: the status shows the key's public id and fingerprint (never the key), its environment's id and
//! Secret, when it was issued or revoked, and why it is not usable when it is not (`KeyLimitReached`,
//! `SecretConflict`, `SecretMissing`, `Revoked`, ...).

use super::resource::OrgkeeperResource;
use super::status::{self, Outcome};
use super::sync::Synced;
use crate::crd::{ApiKey, ApiKeyStatus};
use crate::domain::{KeyState, Kind, Problem, StoredOrganization};

impl OrgkeeperResource for ApiKey {
    const KIND: Kind = Kind::ApiKey;

    fn organization_name(&self) -> &str {
        &self.spec.organization_ref.name
    }

    fn observe(&self, synced: &Synced) -> (Self::Status, Outcome) {
        let me = self.domain_ref();
        observe(
            &me.name,
            &self.secret_name(),
            self.spec.revoked,
            self.status.as_ref(),
            synced.problem_for(&me),
            synced.stored.as_ref(),
            &status::now(),
        )
    }
}

fn observe(
    name: &str,
    secret_name: &str,
    revoked: bool,
    previous: Option<&ApiKeyStatus>,
    problem: Option<&Problem>,
    stored: Option<&StoredOrganization>,
    now: &str,
) -> (ApiKeyStatus, Outcome) {
    let key = stored.and_then(|org| org.api_keys.iter().find(|k| k.resource_name == name));
    let mut status = ApiKeyStatus {
        secret_name: Some(key.map_or(secret_name, |k| k.secret_name.as_str()).to_owned()),
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
    }
    let outcome = match (problem, key.map(|k| (k.state, k))) {
        (Some(problem), _) => Outcome::from_problem(problem),
        (None, Some((KeyState::Live, key))) => Outcome::Ready {
            reason: "Issued",
            message: format!(
                "key {} is live and Secret {:?} holds it (OSO_AUTH, OSO_URL)",
                key.key_id, key.secret_name
            ),
        },
        (None, Some((KeyState::Revoked, key))) => Outcome::Revoked {
            message: format!(
                "key {} is revoked{} and no longer authenticates; revocation is permanent: create a new ApiKey for a new key",
                key.key_id,
                key.revoked_outside_git
                    .as_ref()
                    .map(|o| format!(" (outside Git by {:?}: {:?})", o.by, o.reason))
                    .unwrap_or_default()
            ),
        },
        (None, Some((KeyState::Pending, key))) => Outcome::Progressing {
            reason: "Issuing",
            message: format!("key {} is being written into Secret {:?}", key.key_id, key.secret_name),
        },
        (None, None) if revoked => Outcome::Revoked {
            message: "the ApiKey was revoked before a key was issued; create a new ApiKey for a key".into(),
        },
        (None, None) => Outcome::Progressing {
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
        let (status, outcome) = observe("backend", "backend-oso", false, None, None, Some(&stored), "t1");
        assert_eq!(outcome.reason(), "Issued");
        assert_eq!(status.key_id.as_deref(), Some("k1"));
        assert_eq!(status.fingerprint.as_deref(), Some("sha256:0123"));
        assert_eq!(status.environment_id.as_deref(), Some("env1"));
        assert_eq!(status.issued_at.as_deref(), Some("t1"));
        let (again, _) = observe(
            "backend",
            "backend-oso",
            false,
            Some(&status),
            None,
            Some(&stored),
            "t2",
        );
        assert_eq!(again, status, "nothing changed, so the status is identical");
    }

    #[test]
    fn a_revoked_key_says_so_and_when() {
        let stored = org(KeyState::Revoked);
        let (status, outcome) = observe("backend", "backend-oso", true, None, None, Some(&stored), "t3");
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
        let (status, _) = observe("backend", "backend-oso", false, None, None, Some(&stored), "t1");
        assert_eq!(status.last_used_time, None, "never used: no time");
        stored.api_keys[0].last_used_at = Some(1_780_000_000);
        let (status, _) = observe("backend", "backend-oso", false, None, None, Some(&stored), "t1");
        assert_eq!(status.last_used_time.as_deref(), Some("2026-05-28T20:26:40Z"));
    }

    #[test]
    fn a_key_revoked_outside_git_and_then_in_git_still_says_who_and_why() {
        let mut stored = org(KeyState::Revoked);
        stored.api_keys[0].revoked_outside_git = Some(OutsideRevocation {
            by: "alice".into(),
            reason: "leaked".into(),
        });
        let (_, outcome) = observe("backend", "backend-oso", true, None, None, Some(&stored), "t1");
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
        let (status, outcome) = observe(
            "backend",
            "backend-oso",
            false,
            None,
            Some(&problem),
            Some(&stored),
            "t",
        );
        assert_eq!(outcome.reason(), "SecretMissing");
        assert_eq!(
            status.key_id.as_deref(),
            Some("k1"),
            "the ids still show which key it is"
        );
    }
}
