//! The things orgkeeper manages, as declared by resources and as held by the store.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::account::Account;
use super::limits::{LimitOverrides, PlanTier};
use super::rotation::{Expiry, RotationPolicy};

/// The kinds of declared objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Organization,
    Environment,
    User,
    ApiKey,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Organization => "Organization",
            Kind::Environment => "Environment",
            Kind::User => "User",
            Kind::ApiKey => "ApiKey",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which declared object something is about: kind, namespace and name, as a person would write it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        ObjectRef {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// An organization is identified by its resource's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrgKey {
    pub namespace: String,
    pub name: String,
}

impl OrgKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        OrgKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for OrgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant),)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $(stringify!($variant) => Ok($name::$variant),)+
                    other => Err(format!(concat!("unknown ", stringify!($name), " {:?}"), other)),
                }
            }
        }
    };
}

text_enum! {
    /// A user's role. Members read every environment and manage non-production ones; admins also manage
    /// production environments, users and roles.
    Role { #[default] Member, Admin }
}

text_enum! {
    /// What an API key may do: read-write keys may write facts, read-only keys only query.
    Access { #[default] ReadWrite, ReadOnly }
}

text_enum! {
    /// What happens to the stored data when its resource goes away. `Retain` stops managing it and keeps the
    /// data (the safe default: facts are hard to rebuild); `Delete` removes it.
    DeletionPolicy { #[default] Retain, Delete }
}

/// What a role may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    ReadEnvironment { production: bool },
    ManageEnvironment { production: bool },
    ManageUsers,
    ManageOrganization,
}

impl Permission {
    /// The name of the rule a refusal cites. The Admin-only ones are also the custom RBAC verbs the generated
    /// Roles grant and the admission policy asks the authorizer about, so one name means one rule everywhere.
    pub fn rule(self) -> &'static str {
        match self {
            Permission::ReadEnvironment { .. } => "read",
            Permission::ManageEnvironment { production: false } => "manage-environments",
            Permission::ManageEnvironment { production: true } => "manage-production",
            Permission::ManageUsers => "manage-users",
            Permission::ManageOrganization => "manage-organization",
        }
    }
}

impl Role {
    pub fn allows(self, permission: Permission) -> bool {
        match (self, permission) {
            (_, Permission::ReadEnvironment { .. }) => true,
            (_, Permission::ManageEnvironment { production: false }) => true,
            (Role::Admin, _) => true,
            (Role::Member, _) => false,
        }
    }
}

/// The two environments every organization has. They can be configured but never deleted.
pub const DEFAULT_ENVIRONMENTS: [(&str, &str, bool); 2] = [
    ("production", "Production", true),
    ("development", "Development", false),
];

/// Whether `name` is one of the default environments, and if so whether it is the production one.
pub fn default_environment(name: &str) -> Option<(&'static str, bool)> {
    DEFAULT_ENVIRONMENTS
        .iter()
        .find(|(default_name, _, _)| *default_name == name)
        .map(|(_, display, production)| (*display, *production))
}

/// The most live API keys one environment may have.
pub const MAX_LIVE_KEYS_PER_ENVIRONMENT: usize = 128;

// ----- declarations: what the resources say -----

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrganizationDecl {
    pub namespace: String,
    pub name: String,
    pub settings: OrganizationSettings,
}

impl OrganizationDecl {
    pub fn key(&self) -> OrgKey {
        OrgKey::new(&self.namespace, &self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvironmentDecl {
    pub namespace: String,
    pub name: String,
    pub organization: String,
    pub display_name: Option<String>,
    pub production: Option<bool>,
    pub limits: LimitOverrides,
    pub deletion_policy: DeletionPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserDecl {
    pub namespace: String,
    pub name: String,
    pub organization: String,
    pub account: Account,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyDecl {
    pub namespace: String,
    pub name: String,
    pub organization: String,
    pub environment: String,
    pub access: Access,
    pub secret_name: String,
    pub revoked: bool,
    /// `spec.rotation`, read.
    pub rotation: Option<RotationPolicy>,
    /// `spec.expiresAt` / `spec.expireAfter`, read.
    pub expiry: Option<Expiry>,
}

/// Everything a set of resources declares.
#[derive(Clone, Debug, Default)]
pub struct Declarations {
    pub organizations: Vec<OrganizationDecl>,
    pub environments: Vec<EnvironmentDecl>,
    pub users: Vec<UserDecl>,
    pub api_keys: Vec<ApiKeyDecl>,
}

impl Declarations {
    pub fn object_count(&self) -> usize {
        self.organizations.len() + self.environments.len() + self.users.len() + self.api_keys.len()
    }
}

// ----- settings: the comparable part of an organization or environment -----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationSettings {
    pub display_name: String,
    pub plan: PlanTier,
    pub limits: LimitOverrides,
    pub deletion_policy: DeletionPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSettings {
    pub display_name: String,
    pub production: bool,
    pub limits: LimitOverrides,
    pub deletion_policy: DeletionPolicy,
}

impl EnvironmentSettings {
    /// The settings a default environment has when no resource configures it.
    pub fn default_for(name: &str) -> Option<Self> {
        let (display_name, production) = default_environment(name)?;
        Some(EnvironmentSettings {
            display_name: display_name.to_owned(),
            production,
            limits: LimitOverrides::default(),
            deletion_policy: DeletionPolicy::Retain,
        })
    }

    /// The settings an environment declaration asks for; unset fields fall back to the default
    /// environment's values, or to the name and non-production for other environments.
    pub fn declared(decl: &EnvironmentDecl) -> Self {
        let base = EnvironmentSettings::default_for(&decl.name).unwrap_or_else(|| EnvironmentSettings {
            display_name: decl.name.clone(),
            production: false,
            limits: LimitOverrides::default(),
            deletion_policy: DeletionPolicy::Retain,
        });
        EnvironmentSettings {
            display_name: decl.display_name.clone().unwrap_or(base.display_name),
            production: decl.production.unwrap_or(base.production),
            limits: decl.limits,
            deletion_policy: decl.deletion_policy,
        }
    }
}

// ----- the store's view -----

/// The life of an issued key: `Pending` between recording its hash and writing its Secret, then `Live`,
/// and finally `Revoked`. A pending key never authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Pending,
    Live,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Live => "live",
            KeyState::Revoked => "revoked",
        }
    }
}

impl FromStr for KeyState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(KeyState::Pending),
            "live" => Ok(KeyState::Live),
            "revoked" => Ok(KeyState::Revoked),
            other => Err(format!("unknown key state {other:?}")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOrganization {
    pub id: String,
    pub key: OrgKey,
    pub settings: OrganizationSettings,
    pub managed: bool,
    pub environments: Vec<StoredEnvironment>,
    pub users: Vec<StoredUser>,
    pub api_keys: Vec<StoredApiKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvironment {
    pub id: String,
    pub name: String,
    pub settings: EnvironmentSettings,
    pub managed: bool,
}

impl StoredEnvironment {
    pub fn is_default(&self) -> bool {
        default_environment(&self.name).is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredUser {
    pub account: Account,
    pub role: Role,
    pub resource_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredApiKey {
    pub key_id: String,
    pub environment: String,
    pub resource_name: String,
    pub secret_name: String,
    pub access: Access,
    pub state: KeyState,
    pub fingerprint: String,
    /// Where the key stands in its ApiKey's rotation.
    pub slot: KeySlot,
    /// When it was recorded (seconds since the epoch).
    pub issued_at: i64,
    /// From when the data plane refuses it by itself.
    pub expires_at: Option<i64>,
    /// `spec.rotation.trigger` as it was when this key was issued.
    pub trigger: Option<String>,
    /// When a newer key replaced it (previous keys only).
    pub superseded_at: Option<i64>,
    /// When a data plane last saw the key in use (coarse: to the minute); `None`: never.
    pub last_used_at: Option<i64>,
    /// Set when the key was revoked by id outside Git (`orgkeeper keys revoke`) rather than by a plan.
    pub revoked_outside_git: Option<OutsideRevocation>,
}

/// Who revoked a key outside Git, and why, as they said it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutsideRevocation {
    pub by: String,
    pub reason: String,
}

/// An ApiKey has one current key; during a rotation also an incoming one (live, being written to the
/// Secret) and afterwards previous ones (live until their overlap ends, then revoked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeySlot {
    #[default]
    Current,
    Incoming,
    Previous,
}

impl KeySlot {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySlot::Current => "current",
            KeySlot::Incoming => "incoming",
            KeySlot::Previous => "previous",
        }
    }
}

impl FromStr for KeySlot {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "current" => Ok(KeySlot::Current),
            "incoming" => Ok(KeySlot::Incoming),
            "previous" => Ok(KeySlot::Previous),
            other => Err(format!("unknown key slot {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_manage_only_non_production_and_admins_everything() {
        use Permission::*;
        assert!(Role::Member.allows(ReadEnvironment { production: true }));
        assert!(Role::Member.allows(ManageEnvironment { production: false }));
        assert!(!Role::Member.allows(ManageEnvironment { production: true }));
        assert!(!Role::Member.allows(ManageUsers));
        assert!(Role::Admin.allows(ManageEnvironment { production: true }));
        assert!(Role::Admin.allows(ManageUsers));
        assert!(!Role::Member.allows(ManageOrganization));
        assert!(Role::Admin.allows(ManageOrganization));
    }

    #[test]
    fn defaults_are_member_readwrite_and_retain() {
        assert_eq!(Role::default(), Role::Member);
        assert_eq!(Access::default(), Access::ReadWrite);
        assert_eq!(DeletionPolicy::default(), DeletionPolicy::Retain);
        assert_eq!("Admin".parse::<Role>().unwrap(), Role::Admin);
        assert!("admin".parse::<Role>().is_err());
    }

    #[test]
    fn default_environments_keep_their_production_flag_unless_declared() {
        let decl = EnvironmentDecl {
            namespace: "ns".into(),
            name: "production".into(),
            organization: "acme".into(),
            display_name: None,
            production: None,
            limits: LimitOverrides::default(),
            deletion_policy: DeletionPolicy::Retain,
        };
        let settings = EnvironmentSettings::declared(&decl);
        assert!(settings.production);
        assert_eq!(settings.display_name, "Production");
        let staging = EnvironmentDecl {
            name: "staging".into(),
            ..decl
        };
        let settings = EnvironmentSettings::declared(&staging);
        assert!(!settings.production);
        assert_eq!(settings.display_name, "staging");
    }
}
