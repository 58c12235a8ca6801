//! From resources to the domain's declarations.

use crate::domain::{self, Account};

use super::{ApiKey, Environment, Organization, User};

/// The namespace of an object, defaulting like kubectl does for manifests that name none.
pub fn namespace_of(meta: &kube::core::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".to_owned())
}

fn name_of(meta: &kube::core::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// Why a resource declares nothing: the field at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DeclarationError {
    /// The field's path in the resource, e.g. `spec.github`.
    pub field: &'static str,
    pub message: String,
}

impl DeclarationError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        DeclarationError {
            field,
            message: message.into(),
        }
    }
}

/// Turns a resource into what it declares. Fails only where the CRD schema would have refused the object,
/// for manifests that never met an API server.
pub trait ToDeclaration {
    type Declaration;
    fn to_declaration(&self) -> Result<Self::Declaration, DeclarationError>;
}

impl ToDeclaration for Organization {
    type Declaration = domain::OrganizationDecl;

    fn to_declaration(&self) -> Result<Self::Declaration, DeclarationError> {
        Ok(domain::OrganizationDecl {
            namespace: namespace_of(&self.metadata),
            name: name_of(&self.metadata),
            settings: domain::OrganizationSettings {
                display_name: self.spec.display_name.clone(),
                plan: self.spec.plan.into(),
                limits: self.spec.limits.as_ref().map(Into::into).unwrap_or_default(),
                deletion_policy: self.spec.deletion_policy.into(),
            },
        })
    }
}

impl ToDeclaration for Environment {
    type Declaration = domain::EnvironmentDecl;

    fn to_declaration(&self) -> Result<Self::Declaration, DeclarationError> {
        Ok(domain::EnvironmentDecl {
            namespace: namespace_of(&self.metadata),
            name: name_of(&self.metadata),
            organization: self.spec.organization_ref.name.clone(),
            display_name: self.spec.display_name.clone(),
            production: self.spec.production,
            limits: self.spec.limits.as_ref().map(Into::into).unwrap_or_default(),
            deletion_policy: self.spec.deletion_policy.into(),
        })
    }
}

impl User {
    /// The account this user declares.
    pub fn account(&self) -> Result<Account, DeclarationError> {
        match (&self.spec.github, &self.spec.google) {
            (Some(github), None) => {
                Account::github(github).map_err(|e| DeclarationError::new("spec.github", e.to_string()))
            }
            (None, Some(google)) => {
                Account::google(google).map_err(|e| DeclarationError::new("spec.google", e.to_string()))
            }
            _ => Err(DeclarationError::new("spec", "set exactly one of github or google")),
        }
    }
}

impl ToDeclaration for User {
    type Declaration = domain::UserDecl;

    fn to_declaration(&self) -> Result<Self::Declaration, DeclarationError> {
        Ok(domain::UserDecl {
            namespace: namespace_of(&self.metadata),
            name: name_of(&self.metadata),
            organization: self.spec.organization_ref.name.clone(),
            account: self.account()?,
            role: self.spec.role.into(),
        })
    }
}

impl ToDeclaration for ApiKey {
    type Declaration = domain::ApiKeyDecl;

    fn to_declaration(&self) -> Result<Self::Declaration, DeclarationError> {
        Ok(domain::ApiKeyDecl {
            namespace: namespace_of(&self.metadata),
            name: name_of(&self.metadata),
            organization: self.spec.organization_ref.name.clone(),
            environment: self.spec.environment.clone(),
            access: self.spec.access.into(),
            secret_name: self.secret_name(),
            revoked: self.spec.revoked,
            rotation: self
                .spec
                .rotation
                .as_ref()
                .map(|r| domain::RotationPolicy::parse(r.every.as_deref(), r.overlap.as_deref(), r.trigger.as_deref()))
                .transpose()
                .map_err(|e| DeclarationError::new("spec.rotation", e.to_string()))?,
            expiry: domain::Expiry::parse(self.spec.expires_at.as_deref(), self.spec.expire_after.as_deref())
                .map_err(|e| DeclarationError::new("spec", e.to_string()))?,
        })
    }
}
