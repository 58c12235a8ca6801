//! Organizations: the status shows the organization's store id and how many environments and users it has.

use super::resource::OrgkeeperResource;
use super::status::Outcome;
use super::sync::Synced;
use crate::crd::{Organization, OrganizationStatus};
use crate::domain::{Kind, StoredOrganization};

impl OrgkeeperResource for Organization {
    const KIND: Kind = Kind::Organization;

    fn organization_name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    fn observe(&self, synced: &Synced) -> (Self::Status, Outcome) {
        observe(
            &self.domain_ref(),
            synced.problem_for(&self.domain_ref()),
            synced.stored.as_ref(),
        )
    }
}

fn observe(
    me: &crate::domain::ObjectRef,
    problem: Option<&crate::domain::Problem>,
    stored: Option<&StoredOrganization>,
) -> (OrganizationStatus, Outcome) {
    let status = OrganizationStatus {
        organization_id: stored.map(|o| o.id.clone()),
        environments: stored.map(|o| o.environments.len() as i32),
        users: stored.map(|o| o.users.len() as i32),
        ..Default::default()
    };
    let outcome = match (problem, stored) {
        (Some(problem), _) => Outcome::from_problem(problem),
        (None, Some(org)) if org.managed => Outcome::Ready {
            reason: "Reconciled",
            message: format!(
                "organization {} is in the store on plan {} with {} environment(s) and {} user(s)",
                me.name,
                org.settings.plan,
                org.environments.len(),
                org.users.len()
            ),
        },
        _ => Outcome::Progressing {
            reason: "Reconciling",
            message: "the organization is being written to the store".into(),
        },
    };
    (status, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    #[test]
    fn a_stored_organization_is_ready_with_its_counts() {
        let me = ObjectRef::new(Kind::Organization, "team", "acme");
        let mut org = fixtures::organization();
        org.id = "org1".into();
        org.settings.plan = PlanTier::Growth;
        let (status, outcome) = observe(&me, None, Some(&org));
        assert_eq!(status.organization_id.as_deref(), Some("org1"));
        assert_eq!(status.environments, Some(0));
        assert!(outcome.is_ready());
        assert!(outcome.message().contains("plan Growth"), "{}", outcome.message());
        let (_, outcome) = observe(&me, None, None);
        assert_eq!(outcome.reason(), "Reconciling");
    }
}
