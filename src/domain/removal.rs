//! What removing an organization does to the store. `plan` never removes an organization (a folder missing a
//! file must not delete a tenant); removal is an explicit act, which the controller performs when an
//! Organization resource is deleted, and this module decides what it means.

use super::model::{DeletionPolicy, KeyState, StoredOrganization};
use super::plan::Change;

/// The changes that remove `stored` under `policy` (the deleted resource's own `deletionPolicy`):
///
/// - `Delete` deletes the organization with its environments, facts, users and keys;
/// - `Retain` stops managing the organization and its environments, keeps their data and users, and
///   revokes every key: credentials must not outlive their declaration.
///
/// Removing what is already removed (retained once before, nothing left to revoke) plans nothing, so a
/// repeated reconcile of a deleting resource is harmless.
pub fn plan_organization_removal(stored: Option<&StoredOrganization>, policy: DeletionPolicy) -> Vec<Change> {
    let Some(stored) = stored else {
        return Vec::new();
    };
    let revoked_keys: Vec<String> = stored
        .api_keys
        .iter()
        .filter(|k| k.state != KeyState::Revoked)
        .map(|k| k.key_id.clone())
        .collect();
    let organization = stored.key.clone();
    match policy {
        DeletionPolicy::Delete => vec![Change::DeleteOrganization {
            organization,
            revoked_keys,
        }],
        DeletionPolicy::Retain => {
            let still_managed = stored.managed || stored.environments.iter().any(|e| e.managed);
            if still_managed || !revoked_keys.is_empty() {
                vec![Change::ReleaseOrganization {
                    organization,
                    revoked_keys,
                }]
            } else {
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    fn stored(key_states: &[KeyState]) -> StoredOrganization {
        StoredOrganization {
            environments: vec![fixtures::production("e1")],
            api_keys: key_states
                .iter()
                .enumerate()
                .map(|(i, state)| fixtures::api_key(&format!("key{i}"), &format!("k{i}"), *state))
                .collect(),
            ..fixtures::organization()
        }
    }

    #[test]
    fn delete_removes_the_organization_and_counts_the_keys_it_revokes() {
        let org = stored(&[KeyState::Live, KeyState::Revoked, KeyState::Pending]);
        let changes = plan_organization_removal(Some(&org), DeletionPolicy::Delete);
        assert_eq!(
            changes,
            vec![Change::DeleteOrganization {
                organization: OrgKey::new("team", "acme"),
                revoked_keys: vec!["k0".into(), "k2".into()],
            }]
        );
        assert_eq!(
            changes[0].to_string(),
            "- organization team/acme (deletionPolicy Delete: delete it with its environments, facts and users; revokes 2 keys)"
        );
    }

    #[test]
    fn retain_releases_the_organization_and_revokes_its_keys() {
        let org = stored(&[KeyState::Live]);
        let changes = plan_organization_removal(Some(&org), DeletionPolicy::Retain);
        assert_eq!(
            changes,
            vec![Change::ReleaseOrganization {
                organization: OrgKey::new("team", "acme"),
                revoked_keys: vec!["k0".into()],
            }]
        );
    }

    #[test]
    fn removing_a_released_or_absent_organization_plans_nothing() {
        let mut org = stored(&[KeyState::Revoked]);
        org.managed = false;
        org.environments[0].managed = false;
        assert!(plan_organization_removal(Some(&org), DeletionPolicy::Retain).is_empty());
        assert!(plan_organization_removal(None, DeletionPolicy::Delete).is_empty());
        // A retained organization can still be deleted for good later.
        assert_eq!(plan_organization_removal(Some(&org), DeletionPolicy::Delete).len(), 1);
    }
}
