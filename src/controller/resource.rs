//! The four custom resources as the shared reconcile (`reconcile`) and status writer (`status`) see them:
//! what each kind must tell (its organization, what its status shows after a sync) and what they all have
//! in common (a kstatus status, a domain reference, the pause annotation).

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::core::object::HasStatus;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::status::Outcome;
use super::sync::Synced;
use crate::crd::KstatusFields;
use crate::domain::{Kind, ObjectRef};

/// Set to `"true"` on any orgkeeper resource, stops the controller from changing anything for it (for an
/// Organization: for anything in it) until it is removed or set to anything else. Only the status, which
/// then says `Paused`, is written; deleting the resource still works.
pub const PAUSED_ANNOTATION: &str = "orgkeeper.dev/paused";

/// Whether `object` is paused: annotated and not being deleted (a deletion is carried out, paused or not).
pub fn is_paused<K: ResourceExt>(object: &K) -> bool {
    object.meta().deletion_timestamp.is_none()
        && object
            .annotations()
            .get(PAUSED_ANNOTATION)
            .is_some_and(|value| value == "true")
}

/// One of orgkeeper's custom resource kinds (Organization, Environment, User, ApiKey).
pub trait OrgkeeperResource:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + HasStatus<Status: KstatusFields + Clone + Default + PartialEq + Serialize + Send + Sync>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: Kind;

    /// The name of the organization the object belongs to (in its own namespace).
    fn organization_name(&self) -> &str;

    /// The object's status fields and outcome after its organization was reconciled.
    fn observe(&self, synced: &Synced) -> (Self::Status, Outcome);

    /// What deleting the resource did that `kubectl get` no longer shows, for an event (an Environment
    /// resource of a default environment resets it instead of deleting it).
    fn deletion_note(&self) -> Option<String> {
        None
    }

    /// How soon the object needs another reconcile because of the clock alone (an ApiKey's rotation or
    /// expiry), if sooner than the resync.
    fn next_wake(&self, _synced: &Synced) -> Option<std::time::Duration> {
        None
    }

    fn domain_ref(&self) -> ObjectRef {
        ObjectRef::new(Self::KIND, &self.namespace().unwrap_or_default(), &self.name_any())
    }
}
