//! One change to the store, and the facts about it every adapter needs (which organization, which keys).

use serde::Serialize;

use crate::domain::account::Account;
use crate::domain::model::*;
use crate::domain::rotation::{Expiry, RotationCause};

/// One change to the store. Serialised (for `plan -o json`) with an `action` tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Change {
    CreateOrganization {
        organization: OrgKey,
        settings: OrganizationSettings,
    },
    /// `adopt` is true when the store holds the organization unmanaged (retained earlier) and it is declared again.
    UpdateOrganization {
        organization: OrgKey,
        from: OrganizationSettings,
        to: OrganizationSettings,
        adopt: bool,
    },
    CreateEnvironment {
        organization: OrgKey,
        environment: String,
        settings: EnvironmentSettings,
    },
    UpdateEnvironment {
        organization: OrgKey,
        environment: String,
        from: EnvironmentSettings,
        to: EnvironmentSettings,
        adopt: bool,
    },
    /// A default environment whose resource is gone goes back to its default settings.
    ResetEnvironment {
        organization: OrgKey,
        environment: String,
        from: EnvironmentSettings,
        to: EnvironmentSettings,
    },
    /// Deletes the environment, its facts and its keys (deletionPolicy Delete).
    DeleteEnvironment {
        organization: OrgKey,
        environment: String,
        revoked_keys: Vec<String>,
    },
    /// Stops managing the environment and keeps its facts (deletionPolicy Retain); its keys are revoked,
    /// because credentials must not outlive their declaration.
    ReleaseEnvironment {
        organization: OrgKey,
        environment: String,
        revoked_keys: Vec<String>,
    },
    AddUser {
        organization: OrgKey,
        account: Account,
        role: Role,
        resource: String,
    },
    UpdateUser {
        organization: OrgKey,
        account: Account,
        from: Role,
        to: Role,
        resource: String,
    },
    RemoveUser {
        organization: OrgKey,
        account: Account,
    },
    /// Issues a key. `resume` names a pending key from an interrupted issuance, which the adapter either
    /// completes (its Secret exists) or discards before issuing afresh.
    IssueKey {
        organization: OrgKey,
        environment: String,
        api_key: String,
        access: Access,
        secret_name: String,
        resume: Option<String>,
        /// When the new key stops working: `spec.expiresAt`, or `spec.expireAfter` from the moment the store
        /// records it (so that the next plan finds exactly the expiry it would declare).
        #[serde(skip_serializing_if = "Option::is_none")]
        expiry: Option<Expiry>,
        /// `spec.rotation.trigger`, recorded with the key so that only a later change rotates it.
        #[serde(skip_serializing_if = "Option::is_none")]
        trigger: Option<String>,
    },
    /// Replaces the ApiKey's current key `current` with a new one written to the same Secret; `current`
    /// keeps working for `overlap` seconds after the Secret holds the new key (0: revoked at once).
    /// `resume` names the incoming key of an interrupted rotation, which the adapter either finishes (the
    /// Secret holds it) or forgets before rotating afresh (see `domain::rotation`).
    RotateKey {
        organization: OrgKey,
        environment: String,
        api_key: String,
        access: Access,
        secret_name: String,
        current: String,
        cause: RotationCause,
        overlap: i64,
        resume: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expiry: Option<Expiry>,
        #[serde(skip_serializing_if = "Option::is_none")]
        trigger: Option<String>,
    },
    /// Sets when a key stops working, as its ApiKey declares (`spec.expiresAt`, `spec.expireAfter`).
    SetKeyExpiry {
        organization: OrgKey,
        api_key: String,
        key_id: String,
        expires_at: i64,
    },
    /// A previous key whose overlap is over (it already no longer works): revoked, closing the rotation.
    RetireKey {
        organization: OrgKey,
        api_key: String,
        key_id: String,
    },
    RevokeKey {
        organization: OrgKey,
        environment: String,
        api_key: String,
        key_id: String,
    },
    /// The ApiKey is gone: its key is revoked (if it was not already) and its record removed.
    RemoveKey {
        organization: OrgKey,
        api_key: String,
        key_id: String,
    },
    /// The Organization resource is gone with deletionPolicy Delete: the organization, its environments
    /// (with their facts), users and keys are deleted.
    DeleteOrganization {
        organization: OrgKey,
        revoked_keys: Vec<String>,
    },
    /// The Organization resource is gone with deletionPolicy Retain: orgkeeper stops managing the
    /// organization and its environments and keeps their data and users; every key is revoked, because
    /// credentials must not outlive their declaration. Declaring the organization again adopts it.
    ReleaseOrganization {
        organization: OrgKey,
        revoked_keys: Vec<String>,
    },
}

impl Change {
    pub fn organization(&self) -> &OrgKey {
        match self {
            Change::CreateOrganization { organization, .. }
            | Change::UpdateOrganization { organization, .. }
            | Change::CreateEnvironment { organization, .. }
            | Change::UpdateEnvironment { organization, .. }
            | Change::ResetEnvironment { organization, .. }
            | Change::DeleteEnvironment { organization, .. }
            | Change::ReleaseEnvironment { organization, .. }
            | Change::AddUser { organization, .. }
            | Change::UpdateUser { organization, .. }
            | Change::RemoveUser { organization, .. }
            | Change::IssueKey { organization, .. }
            | Change::RotateKey { organization, .. }
            | Change::SetKeyExpiry { organization, .. }
            | Change::RetireKey { organization, .. }
            | Change::RevokeKey { organization, .. }
            | Change::RemoveKey { organization, .. }
            | Change::DeleteOrganization { organization, .. }
            | Change::ReleaseOrganization { organization, .. } => organization,
        }
    }

    /// The ids of the keys this change revokes or forgets, whatever state they are in. The one answer to
    /// "which keys does this change take away", for secrets checks, metrics and the plan's warning.
    pub fn revoked_keys(&self) -> &[String] {
        match self {
            Change::RevokeKey { key_id, .. } | Change::RemoveKey { key_id, .. } => std::slice::from_ref(key_id),
            Change::DeleteEnvironment { revoked_keys, .. }
            | Change::ReleaseEnvironment { revoked_keys, .. }
            | Change::DeleteOrganization { revoked_keys, .. }
            | Change::ReleaseOrganization { revoked_keys, .. } => revoked_keys,
            Change::CreateOrganization { .. }
            | Change::UpdateOrganization { .. }
            | Change::CreateEnvironment { .. }
            | Change::UpdateEnvironment { .. }
            | Change::ResetEnvironment { .. }
            | Change::AddUser { .. }
            | Change::UpdateUser { .. }
            | Change::RemoveUser { .. }
            | Change::IssueKey { .. }
            | Change::RotateKey { .. }
            | Change::SetKeyExpiry { .. }
            | Change::RetireKey { .. } => &[],
        }
    }

    /// `+` adds, `~` changes, `-` removes: the symbols people know from other plan tools.
    pub fn symbol(&self) -> char {
        match self {
            Change::CreateOrganization { .. }
            | Change::CreateEnvironment { .. }
            | Change::AddUser { .. }
            | Change::IssueKey { .. } => '+',
            Change::UpdateOrganization { .. }
            | Change::UpdateEnvironment { .. }
            | Change::ResetEnvironment { .. }
            | Change::UpdateUser { .. }
            | Change::RotateKey { .. }
            | Change::SetKeyExpiry { .. }
            | Change::RevokeKey { .. } => '~',
            Change::DeleteEnvironment { .. }
            | Change::ReleaseEnvironment { .. }
            | Change::RemoveUser { .. }
            | Change::RetireKey { .. }
            | Change::RemoveKey { .. }
            | Change::DeleteOrganization { .. }
            | Change::ReleaseOrganization { .. } => '-',
        }
    }
}
