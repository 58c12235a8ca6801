//! `orgkeeper apply`: make the store match a folder of manifests, all or nothing.

use anyhow::Context;

use super::exit;
use super::output::{self, OutputFormat};
use super::plan::{CommonArgs, prepare};
use super::secrets_dir::remove_all;
use crate::domain::KeyState;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The URL clients reach the sidecar at, written as OSO_URL next to each key.
    #[arg(long, env = "ORGKEEPER_OSO_URL", default_value = "http://127.0.0.1:8080")]
    pub oso_url: String,
    /// Output format.
    #[arg(short, long, env = "ORGKEEPER_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let prepared = match prepare(&args.common).await? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let Some(store) = &prepared.store else {
        anyhow::bail!("apply needs a store to change");
    };
    if !prepared.plan.problems.is_empty() || prepared.plan.is_empty() {
        let code = output::print_plan(&prepared, args.output, false);
        store.close().await;
        return Ok(if code == exit::CHANGES { exit::OK } else { code });
    }
    let mut tx = store.begin().await?;
    // Keys are recorded live and their files written before the commit: if anything fails before the
    // commit, the transaction rolls back and the files are removed, so no key is live without its Secret.
    let outcome = tx
        .apply(&prepared.plan.changes, KeyState::Live)
        .await
        .context("applying the plan")?;
    let written = prepared
        .secrets
        .write(
            &outcome.issued,
            &prepared.inspection.orphans,
            &args.oso_url,
            &prepared.templates(),
        )
        .context("writing issued keys; nothing was changed")?;
    if let Err(e) = tx.commit().await {
        remove_all(&written);
        return Err(e).context("committing; nothing was changed");
    }
    output::print_plan(&prepared, args.output, true);
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
