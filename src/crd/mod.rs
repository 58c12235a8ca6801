//! The Kubernetes face of orgkeeper: the four custom resources of `orgkeeper.dev/v1alpha1`, their schemas
//! (with every rule that can be checked at apply time, as OpenAPI constraints and CEL), their statuses,
//! and the conversion of a resource into the domain's declaration.
//!
//! The CRD YAML in `crds/` is generated from these types by `orgkeeper crds`; a test fails when it drifts.

// kube's KubeSchema derive copies the `#[kube(printcolumn(...))]` attributes onto a generated struct, where
// clippy mistakes the repeated `type_ = "string"` for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

mod api_key;
mod common;
mod convert;
mod environment;
mod organization;
mod schema;
pub mod secret;
mod status;
mod user;

pub use api_key::{ApiKey, ApiKeySecret, ApiKeySpec, ApiKeyStatus, SecretTemplate};
pub use common::{
    AccessSpec, Condition, DeletionPolicySpec, EffectiveLimitsStatus, LimitsSpec, OrganizationRef, PlanSpec, RoleSpec,
};
pub use convert::{ToDeclaration, namespace_of};
pub use environment::{Environment, EnvironmentSpec, EnvironmentStatus};
pub use organization::{Organization, OrganizationSpec, OrganizationStatus};
pub use schema::{all_crds, crds_yaml, schema_for_kind};
pub use status::KstatusFields;
pub use user::{User, UserSpec, UserStatus};

/// The API group of every orgkeeper resource.
pub const GROUP: &str = "orgkeeper.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as it appears in manifests.
pub const API_VERSION: &str = "orgkeeper.dev/v1alpha1";
