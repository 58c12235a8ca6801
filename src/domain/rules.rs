//! Why a declared object cannot be carried out as written. Problems are data, not errors: `apply` refuses to
//! change anything while there is one, and the controller reports each on its own object's status and
//! carries out the rest.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::model::ObjectRef;

/// A machine-readable reason, used verbatim as the `reason` of a status condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// The account is not registered; only existing accounts can join an organization.
    UnknownAccount,
    /// The account's provider could not be asked yet (rate limit, timeout, outage); checked again.
    AccountUnverified,
    /// The referenced organization is not declared.
    OrganizationNotFound,
    /// The referenced environment is neither declared nor a default environment.
    EnvironmentNotFound,
    /// The environment already has the most live keys it may have.
    KeyLimitReached,
    /// Another object already declares the same thing.
    Duplicate,
    /// The object changes a field that cannot change after creation.
    ImmutableField,
    /// The object breaks a rule that the CRD schema also enforces (caught here for manifests that never
    /// reached an API server).
    InvalidSpec,
    /// A Secret of the key's name exists and does not belong to this key.
    SecretConflict,
    /// The key is live but its Secret is gone; it is not re-issued silently.
    SecretMissing,
    /// The key has been revoked.
    Revoked,
    /// The key was revoked by id outside Git (`orgkeeper keys revoke`) while Git still declares it
    /// unrevoked: final, and Git should be brought in line.
    RevokedOutsideGit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownAccount => "UnknownAccount",
            Reason::AccountUnverified => "AccountUnverified",
            Reason::OrganizationNotFound => "OrganizationNotFound",
            Reason::EnvironmentNotFound => "EnvironmentNotFound",
            Reason::KeyLimitReached => "KeyLimitReached",
            Reason::Duplicate => "Duplicate",
            Reason::ImmutableField => "ImmutableField",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretConflict => "SecretConflict",
            Reason::SecretMissing => "SecretMissing",
            Reason::Revoked => "Revoked",
            Reason::RevokedOutsideGit => "RevokedOutsideGit",
        }
    }

    /// Whether waiting can fix it (the controller retries with backoff) or only a change to the resource can.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Reason::UnknownAccount
                | Reason::AccountUnverified
                | Reason::OrganizationNotFound
                | Reason::EnvironmentNotFound
                | Reason::KeyLimitReached
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One declared object that cannot be carried out, with a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub object: ObjectRef,
    pub reason: Reason,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.reason, self.message)
    }
}
