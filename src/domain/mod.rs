//! The tenancy domain: what an organization, its users, environments and API keys are, the rules they obey,
//! and the plan of changes that takes a store from what it holds to what is declared.
//!
//! Nothing here knows about Kubernetes or SQL. The adapters (`crd`, `manifests`, `store`, `controller`, `cli`,
//! `sidecar`, `facts`) translate their world into these types and carry out the [`Plan`] this module computes,
//! which is what keeps `orgkeeper apply` and the controller in agreement.

pub mod account;
pub mod authority;
pub mod facts;
#[cfg(test)]
pub mod fixtures;
pub mod issuance;
pub mod keys;
pub mod kubernetes_user;
pub mod limits;
pub mod model;
pub mod pause;
pub mod plan;
pub mod removal;
pub mod rotation;
pub mod rules;

pub use account::{Account, AccountError, KnownAccounts, ListError, Provider, Verdict, parse_account_list};
pub use authority::{Refusal, admin_only_objects, admins, review, state_declared_by};
pub use issuance::{
    PendingCompletion, RotationCompletion, SecretReview, SecretState, StaleSecret, WriteOrder, live_keys_revoked,
    review_key_secrets, review_secrets,
};
pub use keys::{ApiKeyToken, KeyHash, TokenError};
pub use kubernetes_user::{Collision, KubernetesUserNames, TemplateError};
pub use limits::{EffectiveLimits, LimitOverrides, PlanTier};
pub use model::*;
pub use pause::hold_paused;
pub use plan::{Change, Plan, plan, plan_at, unix_now};
pub use removal::plan_organization_removal;
pub use rotation::{Expiry, RotationCause, RotationPolicy};
pub use rules::{Problem, Reason};
