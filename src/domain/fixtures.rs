//! Test-only builders of what the store holds, shared by every test module that needs a stored
//! organization (domain rules and the controller's `observe()` functions), so that a new field on a stored
//! type is filled in one place. Override what a test cares about with struct update syntax.

use super::limits::{LimitOverrides, PlanTier};
use super::model::*;

/// The organization every fixture belongs to.
pub fn org_key() -> OrgKey {
    OrgKey::new("team", "acme")
}

/// Organization team/acme, managed, plan Developer, deletionPolicy Retain, with nothing in it.
pub fn organization() -> StoredOrganization {
    StoredOrganization {
        id: "o1".into(),
        key: org_key(),
        settings: OrganizationSettings {
            display_name: "Acme".into(),
            plan: PlanTier::Developer,
            limits: LimitOverrides::default(),
            deletion_policy: DeletionPolicy::Retain,
        },
        managed: true,
        environments: vec![],
        users: vec![],
        api_keys: vec![],
    }
}

/// The default production environment with its default settings.
pub fn production(id: &str) -> StoredEnvironment {
    StoredEnvironment {
        id: id.into(),
        name: "production".into(),
        settings: EnvironmentSettings::default_for("production").expect("production is a default environment"),
        managed: true,
    }
}

/// A ReadWrite key of ApiKey `name` in production, written to Secret `name`.
pub fn api_key(name: &str, key_id: &str, state: KeyState) -> StoredApiKey {
    StoredApiKey {
        key_id: key_id.into(),
        environment: "production".into(),
        resource_name: name.into(),
        secret_name: name.into(),
        access: Access::ReadWrite,
        state,
        fingerprint: String::new(),
        slot: KeySlot::Current,
        issued_at: 0,
        expires_at: None,
        trigger: None,
        superseded_at: None,
        last_used_at: None,
        revoked_outside_git: None,
    }
}
