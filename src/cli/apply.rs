//! `orgkeeper apply`: make the store match a folder of manifests, all or nothing.
//!
//! A plan that takes away more than [`DEFAULT_ALLOWED_REVOCATIONS`] live keys is carried out only when
//! `--allow-revocations N` allows at least that many: a folder missing a file, or a typo, must not cut off
//! every client at once.

use anyhow::Context;

use super::exit;
use super::output::{self, OutputFormat};
use super::prepared::{CommonArgs, prepare};
use super::secrets_dir::{failpoints, remove_all};
use crate::domain::{KeyState, live_keys_revoked};
use crate::store::StoreError;

/// How many live keys one apply may revoke or remove without `--allow-revocations`.
pub const DEFAULT_ALLOWED_REVOCATIONS: usize = 3;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The URL clients reach the sidecar at, written as OSO_URL next to each key.
    #[arg(long, env = "ORGKEEPER_OSO_URL", default_value = "http://127.0.0.1:8080")]
    pub oso_url: String,
    /// The most live keys this apply may revoke or remove (revoked: true, a deleted ApiKey, Environment or
    /// Organization). A plan that revokes more is refused and nothing is changed; `plan` shows the count.
    #[arg(long, env = "ORGKEEPER_ALLOW_REVOCATIONS", value_name = "N", default_value_t = DEFAULT_ALLOWED_REVOCATIONS)]
    pub allow_revocations: usize,
    /// Output format.
    #[arg(short, long, env = "ORGKEEPER_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let prepared = match prepare(&args.common).await? {
        Ok(p) => p,
        Err(errors) => return Ok(output::print_errors(&errors)),
    };
    let Some(store) = &prepared.store else {
        anyhow::bail!("apply needs a store to change");
    };
    let rotations = &prepared.inspection.rotations;
    if !prepared.plan.problems.is_empty() || (prepared.plan.is_empty() && rotations.is_empty()) {
        let code = output::print_plan(&prepared, args.output, false);
        store.close().await;
        return Ok(if code == exit::CHANGES { exit::OK } else { code });
    }
    let revoked = live_keys_revoked(&prepared.plan.changes, prepared.stored.values()).len();
    if revoked > args.allow_revocations {
        output::print_plan(&prepared, args.output, false);
        eprintln!(
            "error: this plan revokes {revoked} live key(s), more than the {} an apply may revoke without a flag; if that is intended, run again with --allow-revocations {revoked}; nothing was changed",
            args.allow_revocations
        );
        store.close().await;
        return Ok(exit::ERROR);
    }
    let mut tx = match store.begin().await {
        Ok(tx) => tx,
        Err(e) => return refused(e, "starting the transaction", &[]),
    };
    // Keys are recorded live and their files written before the commit: if anything fails before the
    // commit, the transaction rolls back and the files are removed, so no key is live without its Secret.
    let outcome = match tx.apply(&prepared.plan.changes, KeyState::Live).await {
        Ok(outcome) => outcome,
        Err(e) => return refused(e, "applying the plan", &[]),
    };
    // Rotations a crash interrupted after their file was rewritten: the file holds the new key already.
    for rotation in rotations {
        if let Err(e) = tx
            .complete_rotation(&rotation.incoming, &rotation.previous, rotation.overlap)
            .await
        {
            return refused(e, "finishing an interrupted rotation", &[]);
        }
    }
    let written = prepared
        .secrets
        .write(
            &outcome.issued,
            &prepared.inspection.stale,
            &args.oso_url,
            &prepared.templates(),
        )
        .context("writing issued keys; nothing was changed")?;
    failpoints::reached(failpoints::BEFORE_COMMIT);
    if let Err(e) = tx.commit().await {
        return refused(e, "committing; nothing was changed", &written);
    }
    let rotated = match rotate(store, &prepared, &outcome.issued, &args.oso_url).await {
        Ok(rotated) => rotated,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    output::print_plan(&prepared, args.output, true);
    if args.output == OutputFormat::Text && rotated + rotations.len() > 0 {
        println!(
            "{} key(s) rotated in {}: each file holds its new key; the old key works until its overlap ends.",
            rotated + rotations.len(),
            prepared.secrets.root().display()
        );
    }
    if args.output == OutputFormat::Text && !written.is_empty() {
        println!(
            "{} key(s) written to {} (mode 0600).",
            written.len(),
            prepared.secrets.root().display()
        );
    }
    tracing::info!(
        changes = outcome.changes,
        keys = written.len(),
        statements = store.statements(),
        "applied"
    );
    store.close().await;
    Ok(exit::OK)
}

/// Rotation steps 2 and 3 (`domain::rotation`), after the transaction that recorded the new keys live and
/// incoming has committed: each file is rewritten to hold its new key and synced, then one transaction
/// makes the new keys current and starts the old keys' overlap. A crash in between is finished by the
/// next apply. Returns how many keys were rotated.
async fn rotate(
    store: &crate::store::Store,
    prepared: &super::prepared::Prepared,
    issued: &[crate::store::IssuedKey],
    oso_url: &str,
) -> anyhow::Result<usize> {
    let rotations: Vec<_> = issued
        .iter()
        .filter_map(|key| Some((key, key.rotation.as_ref()?)))
        .collect();
    if rotations.is_empty() {
        return Ok(0);
    }
    failpoints::reached(failpoints::ROTATION_BEFORE_FILES);
    prepared
        .secrets
        .rotate(issued, oso_url, &prepared.templates())
        .context("writing rotated keys (the old keys stay current and working; apply again to finish)")?;
    failpoints::reached(failpoints::ROTATION_AFTER_FILES);
    let mut tx = store.begin().await.context("finishing the rotations")?;
    for (key, rotation) in &rotations {
        tx.complete_rotation(key.token.key_id(), &rotation.previous, rotation.overlap)
            .await
            .context("finishing a rotation (apply again to finish)")?;
    }
    tx.commit()
        .await
        .context("finishing the rotations (apply again to finish)")?;
    Ok(rotations.len())
}

/// A transaction that failed rolled back: the key files written for it go too. Losing the race with a
/// concurrent apply is an answer, not a crash: said plainly (the store's words stay in the debug log).
fn refused(error: StoreError, doing: &'static str, written: &[std::path::PathBuf]) -> anyhow::Result<u8> {
    remove_all(written);
    match error {
        StoreError::ConcurrentApply { .. } => {
            eprintln!("error: {error}; plan again once it has finished");
            Ok(exit::ERROR)
        }
        error => Err(error).context(doing),
    }
}
