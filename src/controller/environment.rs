//! Environments: the status shows the environment's id (the second part of its keys), whether it is a
//! production environment, the limits the sidecar enforces after plan defaults and overrides, and how many
//! live keys it has.

use super::resource::OrgkeeperResource;
use super::status::Outcome;
use super::sync::Synced;
use crate::crd::{Environment, EnvironmentStatus};
use crate::domain::{EffectiveLimits, KeyState, Kind, MAX_LIVE_KEYS_PER_ENVIRONMENT, Problem, StoredOrganization};

impl OrgkeeperResource for Environment {
    const KIND: Kind = Kind::Environment;

    fn organization_name(&self) -> &str {
        &self.spec.organization_ref.name
    }

    fn observe(&self, synced: &Synced) -> (Self::Status, Outcome) {
        let me = self.domain_ref();
        observe(&me.name, synced.problem_for(&me), synced.stored.as_ref())
    }
}

fn observe(name: &str, problem: Option<&Problem>, stored: Option<&StoredOrganization>) -> (EnvironmentStatus, Outcome) {
    let found = stored.and_then(|org| org.environments.iter().find(|e| e.name == name).map(|e| (org, e)));
    let Some((org, env)) = found.filter(|_| problem.is_none()) else {
        let outcome = match problem {
            Some(problem) => Outcome::from_problem(problem),
            None => Outcome::Progressing {
                reason: "Reconciling",
                message: "the environment is being written to the store".into(),
            },
        };
        return (EnvironmentStatus::default(), outcome);
    };
    let live = org
        .api_keys
        .iter()
        .filter(|k| k.environment == env.name && k.state == KeyState::Live)
        .count();
    let limits = EffectiveLimits::resolve(org.settings.plan, &org.settings.limits, &env.settings.limits);
    let status = EnvironmentStatus {
        environment_id: Some(env.id.clone()),
        production: Some(env.settings.production),
        effective_limits: Some(limits.into()),
        live_keys: Some(live as i32),
        ..Default::default()
    };
    let kind = if env.settings.production {
        "production"
    } else {
        "non-production"
    };
    let outcome = Outcome::Ready {
        reason: "Reconciled",
        message: format!(
            "{kind} environment {name} of organization {} has {live} of {MAX_LIVE_KEYS_PER_ENVIRONMENT} live keys",
            org.key.name
        ),
    };
    (status, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    #[test]
    fn the_status_shows_effective_limits_and_live_keys() {
        let key = |id: &str, state| StoredApiKey {
            key_id: id.into(),
            environment: "production".into(),
            resource_name: id.into(),
            secret_name: id.into(),
            access: Access::ReadWrite,
            state,
            fingerprint: String::new(),
        };
        let mut production = EnvironmentSettings::default_for("production").unwrap();
        production.limits.max_batch_facts = Some(5);
        let org = StoredOrganization {
            id: "o".into(),
            key: OrgKey::new("team", "acme"),
            settings: OrganizationSettings {
                display_name: "Acme".into(),
                plan: PlanTier::Developer,
                limits: LimitOverrides {
                    max_concurrent_requests: Some(8),
                    ..Default::default()
                },
                deletion_policy: DeletionPolicy::Retain,
            },
            managed: true,
            environments: vec![StoredEnvironment {
                id: "env1".into(),
                name: "production".into(),
                settings: production,
                managed: true,
            }],
            users: vec![],
            api_keys: vec![
                key("a", KeyState::Live),
                key("b", KeyState::Revoked),
                key("c", KeyState::Pending),
            ],
        };
        let (status, outcome) = observe("production", None, Some(&org));
        assert_eq!(status.environment_id.as_deref(), Some("env1"));
        assert_eq!(status.live_keys, Some(1));
        assert_eq!(status.production, Some(true));
        let limits = status.effective_limits.unwrap();
        assert_eq!(limits.max_concurrent_requests, Some(8), "organization override");
        assert_eq!(limits.max_batch_facts, Some(5), "environment override");
        assert_eq!(limits.requests_per_minute, Some(60_000), "plan default");
        assert!(outcome.message().contains("1 of 128 live keys"));
    }
}
