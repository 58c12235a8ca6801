//! Carrying out an organization's changes, with crash-safe, write-once key issuance:
//!
//! 1. every change is applied in one transaction, new keys recorded `Pending` (hash only), and committed;
//! 2. each new key's Secret is created (create, never update; immutable; owned by its ApiKey);
//! 3. the keys whose Secret now exists are marked `Live` in a second transaction.
//!
//! A crash after 1 leaves pending keys without Secrets: they never authenticate, and the next reconcile
//! discards and re-issues them. A crash after 2 leaves pending keys whose Secret holds them: the next
//! reconcile sees the Secret and completes them. No step ever rewrites a Secret, and no key is live
//! before its Secret exists. `ORGKEEPER_FAILPOINT` aborts the process between these steps in tests.

use futures::{StreamExt, stream};

use super::Error;
use super::context::Context;
use super::failpoint::Step;
use super::secrets::{self, Written};
use super::view::OrgView;
use crate::domain::{Change, KeyState, PendingCompletion, Problem, SecretState, StoredOrganization};
use crate::store::IssuedKey;

/// Secret writes in flight at once during a large issuance.
const SECRET_WRITES_IN_FLIGHT: usize = 16;

/// What was done.
pub struct Executed {
    pub changes: Vec<Change>,
    /// Keys whose Secret turned out to be taken when it was written (the cache had not shown it yet).
    pub problems: Vec<Problem>,
}

pub async fn execute(
    ctx: &Context,
    view: &OrgView,
    stored: Option<&StoredOrganization>,
    changes: Vec<Change>,
    completions: Vec<PendingCompletion>,
) -> Result<Executed, Error> {
    let completions = confirm(ctx, view, completions).await?;
    let mut tx = ctx.store.begin().await?;
    let outcome = super::provenance::apply(&mut tx, view, stored, &changes, &ctx.settings.identity).await?;
    for completion in &completions {
        tx.set_key_state(&completion.key_id, KeyState::Pending, KeyState::Live)
            .await?;
    }
    tx.commit().await?;
    ctx.metrics.keys_revoked(live_keys_revoked(&changes, stored));
    ctx.metrics.keys_issued(completions.len());
    if outcome.issued.is_empty() {
        return Ok(Executed {
            changes,
            problems: Vec::new(),
        });
    }
    ctx.failpoint.reached(Step::AfterPendingCommit);
    tracing::info!(
        organization = %view.key,
        keys = outcome.issued.len(),
        "keys recorded pending; writing their Secrets"
    );

    let written: Vec<(IssuedKey, Result<Written, Error>)> = stream::iter(outcome.issued)
        .map(|issued| async move {
            let result = write_secret(ctx, view, &issued).await;
            (issued, result)
        })
        .buffer_unordered(SECRET_WRITES_IN_FLIGHT)
        .collect()
        .await;

    let mut problems = Vec::new();
    let mut failure = None;
    let mut live = 0;
    let mut tx = ctx.store.begin().await?;
    for (issued, result) in written {
        let key_id = issued.token.key_id();
        match result {
            Ok(Written::Created) => {
                tx.set_key_state(key_id, KeyState::Pending, KeyState::Live).await?;
                live += 1;
            }
            Ok(Written::Conflict(problem)) => {
                // The key never reached a Secret and never will: forget it rather than leave it pending.
                tx.delete_key(key_id).await?;
                problems.push(problem);
            }
            // Left pending: the next reconcile discards it and issues afresh.
            Err(error) => failure = Some(error),
        }
    }
    tx.commit().await?;
    ctx.metrics.keys_issued(live);
    if live > 0 {
        ctx.failpoint.reached(Step::AfterLiveCommit);
        tracing::info!(organization = %view.key, keys = live, "keys issued and live");
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(Executed { changes, problems }),
    }
}

/// Pending keys are completed only when the API server itself (not the cache) shows their Secret holding them.
async fn confirm(
    ctx: &Context,
    view: &OrgView,
    completions: Vec<PendingCompletion>,
) -> Result<Vec<PendingCompletion>, Error> {
    let mut confirmed = Vec::with_capacity(completions.len());
    for completion in completions {
        let Some(key) = view.api_key(&completion.api_key) else {
            continue;
        };
        let state = secrets::holds(&ctx.client, &completion.organization.namespace, &key.secret_name(), key).await?;
        if state == SecretState::Holds(completion.key_id.clone()) {
            confirmed.push(completion);
        }
    }
    Ok(confirmed)
}

async fn write_secret(ctx: &Context, view: &OrgView, issued: &IssuedKey) -> Result<Written, Error> {
    let owner = view.api_key(&issued.api_key).ok_or_else(|| {
        Error::Vanished(format!(
            "ApiKey {}/{} left the cache while its key was issued",
            issued.organization.namespace, issued.api_key
        ))
    })?;
    let written = secrets::create(&ctx.client, &ctx.recent_secrets, issued, owner, &ctx.settings.oso_url).await?;
    if matches!(written, Written::Created) {
        ctx.failpoint.reached(Step::AfterSecretCreate);
    }
    Ok(written)
}

/// How many live keys these changes revoke (pending keys never worked, so they do not count).
fn live_keys_revoked(changes: &[Change], stored: Option<&StoredOrganization>) -> usize {
    crate::domain::live_keys_revoked(changes, stored).len()
}
