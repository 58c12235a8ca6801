//! Environments: the status shows the environment's id (the second part of its keys), whether it is a
//! production environment, the limits the sidecar enforces after plan defaults and overrides, and how many
//! live keys it has.

use kube::ResourceExt;

use super::resource::OrgkeeperResource;
use super::status::Outcome;
use super::sync::Synced;
use crate::crd::{Environment, EnvironmentSpec, EnvironmentStatus};
use crate::domain::{
    EffectiveLimits, EnvironmentSettings, KeyState, Kind, MAX_LIVE_KEYS_PER_ENVIRONMENT, Problem, StoredOrganization,
};

impl OrgkeeperResource for Environment {
    const KIND: Kind = Kind::Environment;

    fn organization_name(&self) -> &str {
        &self.spec.organization_ref.name
    }

    fn observe(&self, synced: &Synced) -> (Self::Status, Outcome) {
        let me = self.domain_ref();
        observe(&me.name, synced.problem_for(&me), synced.stored.as_ref())
    }

    fn deletion_note(&self) -> Option<String> {
        reset_note(&self.name_any(), &self.spec)
    }
}

/// What deleting the resource of a default environment (production, development) reset: it is never
/// deleted, and what its resource declared goes back to the defaults. None for other environments.
fn reset_note(name: &str, spec: &EnvironmentSpec) -> Option<String> {
    EnvironmentSettings::default_for(name)?;
    let mut reset = Vec::new();
    if spec.display_name.is_some() {
        reset.push("displayName".to_owned());
    }
    // Listed from the limits as written, so that a new limit field needs no change here.
    if let Some(serde_json::Value::Object(limits)) = spec.limits.as_ref().and_then(|l| serde_json::to_value(l).ok()) {
        reset.extend(limits.keys().map(|field| format!("limits.{field}")));
    }
    let organization = &spec.organization_ref.name;
    let what = if reset.is_empty() {
        "it declared no overrides, so nothing changed".to_owned()
    } else {
        format!("{} now come from the organization and plan defaults", reset.join(", "))
    };
    Some(format!(
        "the resource of default environment {name} of organization {organization} was deleted: the environment is never deleted, it was reset to its defaults ({what}); its keys keep working. Create an Environment named {name} again to configure it"
    ))
}

#[cfg(test)]
mod reset_tests {
    use super::*;

    fn spec(yaml: &str) -> EnvironmentSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn deleting_a_default_environments_resource_says_what_was_reset() {
        let overridden = spec(
            "organizationRef: {name: acme}\ndisplayName: Prod\nlimits: {maxBatchFacts: 5, requestsPerMinute: 100}\n",
        );
        let note = reset_note("production", &overridden).expect("production is a default environment");
        assert!(
            note.contains("default environment production of organization acme"),
            "{note}"
        );
        assert!(
            note.contains("displayName, limits.maxBatchFacts, limits.requestsPerMinute now come from"),
            "{note}"
        );
        assert!(note.contains("keys keep working"), "{note}");
        let plain = reset_note("development", &spec("organizationRef: {name: acme}\n")).unwrap();
        assert!(plain.contains("nothing changed"), "{plain}");
        assert_eq!(
            reset_note("staging", &overridden),
            None,
            "other environments are deleted, not reset"
        );
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
        let key = |id: &str, state| fixtures::api_key(id, id, state);
        let mut production = fixtures::production("env1");
        production.settings.limits.max_batch_facts = Some(5);
        let mut org = fixtures::organization();
        org.settings.limits.max_concurrent_requests = Some(8);
        org.environments = vec![production];
        org.api_keys = vec![
            key("a", KeyState::Live),
            key("b", KeyState::Revoked),
            key("c", KeyState::Pending),
        ];
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
