//! Users: the status shows the normalised account; an account that does not exist yet is `UnknownAccount`
//! (with the provider's answer), one that could not be checked yet is `AccountUnverified`; both are retried
//! with backoff until the account directory (`crate::identity`) finds the account.

use super::resource::OrgkeeperResource;
use super::status::Outcome;
use super::sync::Synced;
use crate::crd::{User, UserStatus};
use crate::domain::{Account, Kind, Problem, Role, StoredOrganization};

impl OrgkeeperResource for User {
    const KIND: Kind = Kind::User;

    fn organization_name(&self) -> &str {
        &self.spec.organization_ref.name
    }

    fn observe(&self, synced: &Synced) -> (Self::Status, Outcome) {
        observe(
            self.account().ok(),
            self.spec.role.into(),
            synced.problem_for(&self.domain_ref()),
            synced.stored.as_ref(),
        )
    }
}

fn observe(
    account: Option<Account>,
    role: Role,
    problem: Option<&Problem>,
    stored: Option<&StoredOrganization>,
) -> (UserStatus, Outcome) {
    let status = UserStatus {
        account: account.as_ref().map(ToString::to_string),
        ..Default::default()
    };
    let in_store = stored.and_then(|org| {
        org.users
            .iter()
            .find(|u| Some(&u.account) == account.as_ref() && u.role == role)
            .map(|u| (org, u))
    });
    let outcome = match (problem, in_store) {
        (Some(problem), _) => Outcome::from_problem(problem),
        (None, Some((org, user))) => Outcome::Ready {
            reason: "Reconciled",
            message: format!(
                "{} is {} of organization {}",
                user.account,
                match user.role {
                    Role::Admin => "an Admin",
                    Role::Member => "a Member",
                },
                org.key.name
            ),
        },
        (None, None) => Outcome::Progressing {
            reason: "Reconciling",
            message: "the user is being added to the organization".into(),
        },
    };
    (status, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    #[test]
    fn an_unknown_account_waits_and_a_stored_user_is_ready() {
        let account: Account = "github:alice".parse().unwrap();
        let problem = Problem {
            object: ObjectRef::new(Kind::User, "team", "alice"),
            reason: Reason::UnknownAccount,
            message: "github:alice is not an existing account".into(),
        };
        let (status, outcome) = observe(Some(account.clone()), Role::Admin, Some(&problem), None);
        assert_eq!(status.account.as_deref(), Some("github:alice"));
        assert!(outcome.wants_retry());
        assert_eq!(outcome.reason(), "UnknownAccount");

        let org = StoredOrganization {
            users: vec![StoredUser {
                account: account.clone(),
                role: Role::Admin,
                resource_name: "alice".into(),
            }],
            ..fixtures::organization()
        };
        let (_, outcome) = observe(Some(account), Role::Admin, None, Some(&org));
        assert_eq!(outcome.message(), "github:alice is an Admin of organization acme");
    }
}
