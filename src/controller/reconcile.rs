//! The reconcile every kind shares: hold a finalizer while the object lives, bring its organization in line
//! (`sync`), then either write the object's status or, when it is being deleted, release the finalizer once
//! the store no longer holds what it declared. A paused object (`orgkeeper.dev/paused: "true"`, on itself or
//! its Organization) only gets its status written; its deletion runs as usual.

use std::sync::Arc;
use std::time::Instant;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::context::Context;
use super::resource::{OrgkeeperResource, PAUSED_ANNOTATION, is_paused};
use super::status::{self, Outcome};
use super::sync;
use super::view::is_deleting;
use super::{Error, FIELD_MANAGER};
use crate::domain::{Kind, OrgKey};

/// The finalizer that keeps a resource until the store is cleaned up after it.
pub const FINALIZER: &str = "orgkeeper.dev/cleanup";

pub async fn reconcile<K: OrgkeeperResource>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
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
            let status = object.status().cloned().unwrap_or_default();
            if let Err(error) = status::publish(&ctx, object.as_ref(), status, &outcome).await {
                tracing::warn!(object = %object.domain_ref(), %error, "could not report the failure in status");
            }
        }
    }
    result
}

pub fn error_policy<K: OrgkeeperResource>(object: Arc<K>, _error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retry(&object.domain_ref())
}

async fn run<K: OrgkeeperResource>(object: &K, ctx: &Context) -> Result<Action, Error> {
    let me = object.domain_ref();
    let organization = OrgKey::new(&me.namespace, object.organization_name());
    let deleting = is_deleting(object);
    let held = object.finalizers().iter().any(|f| f == FINALIZER);
    if deleting && !held {
        ctx.forget(&me, object.uid().as_deref());
        return Ok(Action::await_change());
    }
    if !deleting && let Some(message) = paused(ctx, object, &organization) {
        // Not even the finalizer: a paused resource is left exactly as it is, status aside.
        let status = object.status().cloned().unwrap_or_default();
        status::publish(ctx, object, status, &Outcome::Paused { message }).await?;
        return Ok(ctx.resync(&me));
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
        if let Some(note) = object.deletion_note() {
            status::record(ctx, object, EventType::Normal, "Reset", note).await;
        }
        return Ok(Action::await_change());
    }
    let (status, outcome) = object.observe(&synced);
    status::publish(ctx, object, status, &outcome).await?;
    Ok(if outcome.wants_retry() {
        ctx.retry(&me)
    } else {
        ctx.resync_within(&me, object.next_wake(&synced))
    })
}

/// Why nothing is to be changed for `object`, if it is paused: by its own annotation, or, for the
/// resources of an organization, by the Organization's. The sync holds back the changes of paused
/// resources whatever object's reconcile runs it; this only decides what the paused object's own status says.
fn paused<K: OrgkeeperResource>(ctx: &Context, object: &K, organization: &OrgKey) -> Option<String> {
    let kind = K::KIND;
    if is_paused(object) {
        return Some(format!(
            "{PAUSED_ANNOTATION} is \"true\": the controller changes nothing for this {kind} until the annotation is removed (deleting it still works)"
        ));
    }
    if kind == Kind::Organization {
        return None;
    }
    let org = ctx.caches.organizations.find(|o| {
        o.namespace().as_deref() == Some(organization.namespace.as_str()) && o.name_any() == organization.name
    })?;
    is_paused(org.as_ref()).then(|| {
        format!(
            "its Organization {:?} is paused ({PAUSED_ANNOTATION}: \"true\"): the controller changes nothing in the organization until the annotation is removed",
            organization.name
        )
    })
}

/// Adds or removes the finalizer. The patch carries the resourceVersion the list was read at, so a
/// concurrent change to the finalizers fails (and is retried) instead of being overwritten.
async fn set_finalizer<K: OrgkeeperResource>(ctx: &Context, object: &K, present: bool) -> Result<(), Error> {
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
