//! Pausing: a paused object keeps what the store holds for it while the rest of its organization is
//! carried out. The controller plans the whole organization at once (cross-object rules such as the key
//! limit need it), so pausing is a filter on the plan, not a skipped reconcile: every change that would
//! touch a paused object is held back, and carried out on the first reconcile after the pause ends.
//! Pausing the organization holds back every change in it.
//!
//! Removing a paused object is not held back: deleting a resource is an explicit request, and its
//! finalizer must be released.

use std::collections::BTreeSet;

use super::model::{Kind, ObjectRef, StoredOrganization};
use super::plan::Change;

/// The declared object a change carries out; organization-wide changes name the Organization. A user
/// removed by account is named by the resource the store recorded for it (`None` when it recorded none).
pub fn object_of(change: &Change, stored: Option<&StoredOrganization>) -> Option<ObjectRef> {
    let organization = change.organization();
    let object = |kind, name: &str| Some(ObjectRef::new(kind, &organization.namespace, name));
    match change {
        Change::CreateOrganization { .. }
        | Change::UpdateOrganization { .. }
        | Change::DeleteOrganization { .. }
        | Change::ReleaseOrganization { .. } => object(Kind::Organization, &organization.name),
        Change::CreateEnvironment { environment, .. }
        | Change::UpdateEnvironment { environment, .. }
        | Change::ResetEnvironment { environment, .. }
        | Change::DeleteEnvironment { environment, .. }
        | Change::ReleaseEnvironment { environment, .. } => object(Kind::Environment, environment),
        Change::AddUser { resource, .. } | Change::UpdateUser { resource, .. } => object(Kind::User, resource),
        Change::RemoveUser { account, .. } => stored
            .and_then(|org| org.users.iter().find(|u| &u.account == account))
            .and_then(|user| object(Kind::User, &user.resource_name)),
        Change::IssueKey { api_key, .. }
        | Change::RotateKey { api_key, .. }
        | Change::SetKeyExpiry { api_key, .. }
        | Change::RetireKey { api_key, .. }
        | Change::RevokeKey { api_key, .. }
        | Change::RemoveKey { api_key, .. } => object(Kind::ApiKey, api_key),
    }
}

/// Splits `changes` into those to carry out and those held back because they touch a paused object (or
/// any object of a paused organization). `paused` holds the paused objects that are not being deleted.
pub fn hold_paused(
    changes: Vec<Change>,
    stored: Option<&StoredOrganization>,
    paused: &BTreeSet<ObjectRef>,
) -> (Vec<Change>, Vec<Change>) {
    if paused.is_empty() {
        return (changes, Vec::new());
    }
    changes.into_iter().partition(|change| {
        let organization = change.organization();
        let whole = ObjectRef::new(Kind::Organization, &organization.namespace, &organization.name);
        !paused.contains(&whole) && object_of(change, stored).is_none_or(|object| !paused.contains(&object))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    fn key_change(api_key: &str) -> Change {
        Change::IssueKey {
            organization: fixtures::org_key(),
            environment: "production".into(),
            api_key: api_key.into(),
            access: Access::ReadWrite,
            secret_name: api_key.into(),
            resume: None,
            expiry: None,
            trigger: None,
        }
    }

    fn names(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .filter_map(|c| object_of(c, None))
            .map(|o| o.name)
            .collect()
    }

    #[test]
    fn only_the_paused_objects_changes_are_held_back() {
        let paused = BTreeSet::from([ObjectRef::new(Kind::ApiKey, "team", "frozen")]);
        let (kept, held) = hold_paused(vec![key_change("frozen"), key_change("other")], None, &paused);
        assert_eq!(names(&kept), ["other"]);
        assert_eq!(names(&held), ["frozen"]);
        let (kept, held) = hold_paused(vec![key_change("frozen")], None, &BTreeSet::new());
        assert_eq!((kept.len(), held.len()), (1, 0), "nothing paused: everything goes");
    }

    #[test]
    fn a_paused_organization_holds_back_everything_in_it() {
        let paused = BTreeSet::from([ObjectRef::new(Kind::Organization, "team", "acme")]);
        let (kept, held) = hold_paused(vec![key_change("a"), key_change("b")], None, &paused);
        assert!(kept.is_empty());
        assert_eq!(held.len(), 2);
    }

    #[test]
    fn a_user_removed_by_account_is_found_by_its_recorded_resource() {
        let account: Account = "github:alice".parse().unwrap();
        let stored = StoredOrganization {
            users: vec![StoredUser {
                account: account.clone(),
                role: Role::Member,
                resource_name: "alice".into(),
            }],
            ..fixtures::organization()
        };
        let removal = Change::RemoveUser {
            organization: fixtures::org_key(),
            account,
        };
        let paused = BTreeSet::from([ObjectRef::new(Kind::User, "team", "alice")]);
        let (kept, held) = hold_paused(vec![removal], Some(&stored), &paused);
        assert!(
            kept.is_empty() && held.len() == 1,
            "the paused User keeps its membership"
        );
    }
}
