//! Reconciling one organization: the same steps as `orgkeeper apply`, fed from the caches instead of files.
//! Every reconcile, whatever object woke it, brings the whole organization it belongs to in line
//! (declarations -> `domain::plan` -> Secret review -> `StoreTx::apply`), under the organization's lock, and
//! returns what each object needs for its status. Planning per organization keeps every cross-object rule
//! (128 keys per environment, duplicates, cascades) exactly as `apply` has it.

use std::collections::BTreeMap;
use std::time::Instant;

use super::Error;
use super::context::Context;
use super::{issuance, secrets};
use crate::domain::{
    self, Kind, ObjectRef, OrgKey, Problem, Reason, StoredOrganization, plan_organization_removal, review_key_secrets,
};

/// An organization after reconciling it.
pub struct Synced {
    /// What the store holds for it now.
    pub stored: Option<StoredOrganization>,
    /// Everything that could not be carried out, each on its own object.
    pub problems: Vec<Problem>,
}

impl Synced {
    /// The first problem of an object: what its status reports.
    pub fn problem_for(&self, object: &ObjectRef) -> Option<&Problem> {
        self.problems.iter().find(|p| &p.object == object)
    }
}

pub async fn organization(ctx: &Context, key: &OrgKey) -> Result<Synced, Error> {
    let _turn = ctx.lock(key).await;
    let started = Instant::now();
    let view = ctx.caches.view(key);
    let (declarations, mut problems) = view.declarations();
    let mut stored = load(ctx, key).await?;
    let loaded = started.elapsed();
    let accounts = ctx
        .settings
        .accounts
        .resolve(declarations.users.iter().map(|u| &u.account), &ctx.store)
        .await?;
    let stored_map: BTreeMap<OrgKey, StoredOrganization> =
        stored.iter().map(|org| (key.clone(), org.clone())).collect();
    let mut plan = domain::plan(&declarations, &stored_map, &accounts);
    if let Some(org) = view.deleted_organization() {
        plan.changes = plan_organization_removal(stored.as_ref(), org.spec.deletion_policy.into());
    }
    let (changes, held) = domain::hold_paused(plan.changes, stored.as_ref(), &view.paused());
    if !held.is_empty() {
        tracing::debug!(organization = %key, held = held.len(), "changes to paused resources held back");
    }
    plan.changes = changes;
    problems.append(&mut plan.problems);
    missing_organization_remedy(&mut problems, key);
    let review = review_key_secrets(plan.changes, stored.as_ref(), |namespace, secret, api_key| {
        ctx.recent_secrets.state(
            &ctx.caches.secrets,
            namespace,
            secret,
            view.api_key(api_key).map(AsRef::as_ref),
        )
    });
    let mut review_problems = review.problems;
    secrets::name_the_other_key(&mut review_problems, &view, &ctx.caches.secrets);
    problems.extend(review_problems);
    let planned = started.elapsed();
    let changes = review.changes.len() + review.completions.len() + review.rotations.len();
    if changes > 0 {
        let executed = issuance::execute(
            ctx,
            &view,
            stored.as_ref(),
            review.changes,
            review.completions,
            review.rotations,
        )
        .await;
        ctx.store_writes.update(&ctx.store, &ctx.metrics);
        let executed = executed?;
        problems.extend(executed.problems);
        ctx.triggers.after_changes(&view, &executed.changes);
        stored = load(ctx, key).await?;
    }
    super::rbac::keep(ctx, &view, stored.as_ref()).await?;
    tracing::debug!(
        organization = %key,
        loaded_ms = loaded.as_secs_f64() * 1e3,
        planned_ms = planned.as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        changes,
        "organization reconciled"
    );
    ctx.metrics
        .organization_keys(key, stored.as_ref(), ctx.settings.unused_key_after);
    Ok(Synced { stored, problems })
}

/// In the cluster `organizationRef` cannot change (the API server refuses it: a resource never moves to
/// another organization), so the way out of a missing organization is to create it, or to create the
/// resource again for another one; the message says so rather than "fix organizationRef".
fn missing_organization_remedy(problems: &mut [Problem], organization: &OrgKey) {
    for problem in problems
        .iter_mut()
        .filter(|p| p.reason == Reason::OrganizationNotFound && p.object.kind != Kind::Organization)
    {
        problem.message = format!(
            "organization {:?} does not exist in namespace {:?} (yet): create it and this {} follows; organizationRef cannot be changed, so to use another organization delete this {} and create it again",
            organization.name, organization.namespace, problem.object.kind, problem.object.kind
        );
    }
}

/// What the store holds for the organization: a copy kept from an earlier reconcile while the store's
/// revision is unchanged (and the copy is recent), else a fresh read.
async fn load(ctx: &Context, key: &OrgKey) -> Result<Option<StoredOrganization>, Error> {
    let revision = ctx.store.revision().await?;
    if let Some(copy) = ctx.stored_copy(key, revision) {
        return Ok(copy);
    }
    // Read after the revision: the copy is at least as new as the revision it is kept under.
    let stored = read(ctx, key).await?;
    ctx.keep_stored_copy(key, revision, stored.clone());
    Ok(stored)
}

async fn read(ctx: &Context, key: &OrgKey) -> Result<Option<StoredOrganization>, Error> {
    Ok(ctx
        .store
        .load_organizations(std::slice::from_ref(key))
        .await?
        .remove(key))
}
