//! The reconcile every kind shares: hold a finalizer while the object lives, bring its organization in line
//! (`sync`), then either write the object's status or, when it is being deleted, release the finalizer once
//! the store no longer holds what it declared.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Error;
use super::context::Context;
use super::secrets::FIELD_MANAGER;
use super::status::{self, Outcome};
use super::sync::{self, Synced};
use super::view::is_deleting;
use crate::crd::Condition;
use crate::domain::{Kind, ObjectRef, OrgKey};

/// The finalizer that keeps a resource until the store is cleaned up after it.
pub const FINALIZER: &str = "orgkeeper.dev/cleanup";

/// What the shared reconcile needs from each kind.
pub trait Managed:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: Kind;
    type Status: Clone + Default + PartialEq + Serialize + Send + Sync;

    /// The name of the organization the object belongs to (in its own namespace).
    fn organization_name(&self) -> String;

    fn current_status(&self) -> Option<&Self::Status>;

    fn conditions(status: &Self::Status) -> &[Condition];

    /// Sets what `status::publish` fills in.
    fn finish(status: &mut Self::Status, generation: Option<i64>, conditions: Vec<Condition>);

    /// The object's status fields and outcome after its organization was reconciled.
    fn observe(&self, synced: &Synced) -> (Self::Status, Outcome);

    fn domain_ref(&self) -> ObjectRef {
        ObjectRef::new(Self::KIND, &self.namespace().unwrap_or_default(), &self.name_any())
    }
}

pub async fn reconcile<K: Managed>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches.ready().await;
    let started = Instant::now();
    tracing::debug!(object = %object.domain_ref(), "reconciling");
    let result = run(object.as_ref(), &ctx).await;
    tracing::debug!(object = %object.domain_ref(), ok = result.is_ok(), elapsed = ?started.elapsed(), "reconciled");
    ctx.metrics.reconciled(K::KIND, started, result.is_ok());
    ctx.store_writes.update(&ctx.store, &ctx.metrics);
    if let Err(error) = &result {
        tracing::warn!(kind = %K::KIND, object = %object.domain_ref(), %error, "reconcile failed; retrying");
        if !is_deleting(object.as_ref()) && !matches!(error, Error::Conflict) {
            let outcome = Outcome::Failed {
                message: format!("reconcile failed and is retried: {error}"),
            };
            let status = object.current_status().cloned().unwrap_or_default();
            if let Err(error) = status::publish(&ctx, object.as_ref(), status, &outcome).await {
                tracing::warn!(object = %object.domain_ref(), %error, "could not report the failure in status");
            }
        }
    }
    result
}

pub fn error_policy<K: Managed>(object: Arc<K>, _error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry(&object.domain_ref())
}

async fn run<K: Managed>(object: &K, ctx: &Context) -> Result<Action, Error> {
    let me = object.domain_ref();
    let organization = OrgKey::new(&me.namespace, &object.organization_name());
    let deleting = is_deleting(object);
    let held = object.finalizers().iter().any(|f| f == FINALIZER);
    if deleting && !held {
        ctx.forget(&me, object.uid().as_deref());
        return Ok(Action::await_change());
    }
    if !deleting && !held {
        set_finalizer(ctx, object, true).await?;
    }
    let synced = sync::organization(ctx, &organization).await?;
    if deleting {
        // The organization was reconciled without this object: the store no longer holds what it declared.
        set_finalizer(ctx, object, false).await?;
        ctx.forget(&me, object.uid().as_deref());
        tracing::info!(object = %me, "cleaned up after deletion");
        return Ok(Action::await_change());
    }
    let (status, outcome) = object.observe(&synced);
    status::publish(ctx, object, status, &outcome).await?;
    Ok(if outcome.wants_retry() {
        ctx.retry(&me)
    } else {
        ctx.resync(&me)
    })
}

/// Adds or removes the finalizer. The patch carries the resourceVersion the list was read at, so a
/// concurrent change to the finalizers fails (and is retried) instead of being overwritten.
async fn set_finalizer<K: Managed>(ctx: &Context, object: &K, present: bool) -> Result<(), Error> {
    let mut finalizers: Vec<String> = object
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.to_owned());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let patch = json!({
        "metadata": {
            "resourceVersion": object.resource_version(),
            "finalizers": finalizers,
        }
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    match api.patch(&object.name_any(), &params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        // Already gone: nothing left to hold.
        Err(kube::Error::Api(status)) if !present && status.code == 404 => Ok(()),
        // Changed since the cache showed it: retried shortly with a fresher copy.
        Err(kube::Error::Api(status)) if status.code == 409 => Err(Error::Conflict),
        Err(error) => Err(error.into()),
    }
}
