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
//!
//! A rotation (`domain::rotation`) takes the same path with its own three steps: the new key is recorded
//! live and *incoming* in the first transaction, the Secret is rewritten to hold it (`secrets::rotate`),
//! and the second transaction makes it current and starts the old key's overlap. A crash after the
//! first leaves the Secret on the old key (the next reconcile forgets the incoming key and starts over);
//! after the second, the Secret holds the incoming key (the next reconcile confirms it on the API server
//! and finishes the third step). One Event per finished rotation.

use futures::{StreamExt, stream};

use super::Error;
use super::context::Context;
use super::failpoint::Step;
use super::secrets::{self, Written};
use super::view::OrgView;
use crate::domain::rotation::{format_duration, format_rfc3339};
use crate::domain::{
    Change, KeyState, PendingCompletion, Problem, RotationCompletion, SecretState, StoredOrganization, unix_now,
};
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
    rotations: Vec<RotationCompletion>,
) -> Result<Executed, Error> {
    let completions = confirm(ctx, view, completions).await?;
    let rotations = confirm_rotations(ctx, view, rotations).await?;
    let mut tx = ctx.store.begin().await?;
    let outcome = super::provenance::apply(&mut tx, view, stored, &changes, &ctx.settings.identity).await?;
    for completion in &completions {
        tx.set_key_state(&completion.key_id, KeyState::Pending, KeyState::Live)
            .await?;
    }
    let mut finished = Vec::new();
    for rotation in rotations {
        if tx
            .complete_rotation(&rotation.incoming, &rotation.previous, rotation.overlap)
            .await?
        {
            finished.push((rotation.api_key, rotation.incoming, rotation.previous, rotation.overlap));
        }
    }
    tx.commit().await?;
    announce_rotations(ctx, view, &finished).await;
    ctx.metrics.keys_revoked(live_keys_revoked(&changes, stored));
    ctx.metrics.keys_issued(completions.len());
    if outcome.issued.is_empty() {
        return Ok(Executed {
            changes,
            problems: Vec::new(),
        });
    }
    if outcome.issued.iter().any(|i| i.rotation.is_none()) {
        ctx.failpoint.reached(Step::AfterPendingCommit);
    }
    if outcome.issued.iter().any(|i| i.rotation.is_some()) {
        ctx.failpoint.reached(Step::RotationAfterRecord);
    }
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
    let mut finished = Vec::new();
    let mut tx = ctx.store.begin().await?;
    for (issued, result) in written {
        let key_id = issued.token.key_id();
        match (result, &issued.rotation) {
            (Ok(Written::Created), Some(rotation)) => {
                if tx
                    .complete_rotation(key_id, &rotation.previous, rotation.overlap)
                    .await?
                {
                    finished.push((
                        issued.api_key.clone(),
                        key_id.to_owned(),
                        rotation.previous.clone(),
                        rotation.overlap,
                    ));
                }
            }
            (Ok(Written::Created), None) => {
                tx.set_key_state(key_id, KeyState::Pending, KeyState::Live).await?;
                live += 1;
            }
            (Ok(Written::Conflict(problem)), _) => {
                // The key never reached a Secret and never will: forget it rather than leave it pending
                // (or, for a rotation, incoming).
                tx.delete_key(key_id).await?;
                problems.push(problem);
            }
            // Left pending (or incoming): the next reconcile discards it and starts afresh.
            (Err(error), _) => failure = Some(error),
        }
    }
    tx.commit().await?;
    ctx.metrics.keys_issued(live);
    if live > 0 {
        ctx.failpoint.reached(Step::AfterLiveCommit);
        tracing::info!(organization = %view.key, keys = live, "keys issued and live");
    }
    if !finished.is_empty() {
        ctx.failpoint.reached(Step::RotationAfterCommit);
    }
    announce_rotations(ctx, view, &finished).await;
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
    let (client, recent, url) = (&ctx.client, &ctx.recent_secrets, &ctx.settings.oso_url);
    let written = match &issued.rotation {
        Some(rotation) => secrets::rotate(client, recent, issued, &rotation.previous, owner, url).await?,
        None => secrets::create(client, recent, issued, owner, url).await?,
    };
    if matches!(written, Written::Created) {
        ctx.failpoint.reached(match issued.rotation {
            Some(_) => Step::RotationAfterSecretWrite,
            None => Step::AfterSecretCreate,
        });
    }
    Ok(written)
}

/// Rotations are finished only when the API server itself shows their Secret holding the incoming key.
async fn confirm_rotations(
    ctx: &Context,
    view: &OrgView,
    rotations: Vec<RotationCompletion>,
) -> Result<Vec<RotationCompletion>, Error> {
    let mut confirmed = Vec::with_capacity(rotations.len());
    for rotation in rotations {
        let Some(key) = view.api_key(&rotation.api_key) else {
            continue;
        };
        let state = secrets::holds(&ctx.client, &rotation.organization.namespace, &key.secret_name(), key).await?;
        if state == SecretState::Holds(rotation.incoming.clone()) {
            confirmed.push(rotation);
        }
    }
    Ok(confirmed)
}

/// One Normal event per finished rotation, on its ApiKey: which key replaced which, and until when the
/// old one works.
async fn announce_rotations(ctx: &Context, view: &OrgView, finished: &[(String, String, String, i64)]) {
    ctx.metrics.keys_rotated(finished.len());
    for (api_key, incoming, previous, overlap) in finished {
        tracing::info!(organization = %view.key, %api_key, key_id = %incoming, previous = %previous, "key rotated");
        let Some(object) = view.api_key(api_key) else {
            continue;
        };
        let note = if *overlap == 0 {
            format!(
                "key {incoming} replaced key {previous} in Secret {:?}; {previous} is revoked (overlap 0s)",
                object.secret_name()
            )
        } else {
            format!(
                "key {incoming} replaced key {previous} in Secret {:?}; {previous} keeps working for {} (until {})",
                object.secret_name(),
                format_duration(*overlap),
                format_rfc3339(unix_now().saturating_add(*overlap))
            )
        };
        super::status::record(
            ctx,
            object.as_ref(),
            kube::runtime::events::EventType::Normal,
            "Rotated",
            note,
        )
        .await;
    }
}

/// How many live keys these changes revoke (pending keys never worked, so they do not count).
fn live_keys_revoked(changes: &[Change], stored: Option<&StoredOrganization>) -> usize {
    crate::domain::live_keys_revoked(changes, stored).len()
}
