//! `orgkeeper plan`: what `apply` would change, without changing anything; with `--as`, also whether an
//! account may make those changes (the pull-request check).

use std::path::PathBuf;

use super::exit;
use super::output::{self, OutputFormat};
use super::prepared::{CommonArgs, Review, StateBefore, prepare_against};
use crate::domain::{self, Account};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Output format.
    #[arg(short, long, env = "ORGKEEPER_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Also check that this account (github:LOGIN or google:EMAIL, e.g. a pull request's author) may make every
    /// change, judged by its role before the change; exit 3 when it may not.
    #[arg(long = "as", env = "ORGKEEPER_AS", value_name = "ACCOUNT")]
    pub as_account: Option<String>,
    /// Plan against the manifests in this folder (e.g. the pull request's target branch) instead of the store:
    /// no database is opened, and accounts are not checked for existence (the controller does that).
    #[arg(long, env = "ORGKEEPER_BASE", value_name = "DIR")]
    pub base: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    // Parsed here, not by clap, so that a bad account is exit 1 like every other error (clap exits 2).
    let account = match args.as_account.as_deref().map(str::parse::<Account>).transpose() {
        Ok(account) => account,
        Err(e) => {
            eprintln!("error: --as: {e}");
            return Ok(exit::ERROR);
        }
    };
    let before = match &args.base {
        Some(base) => StateBefore::Manifests(base),
        None => StateBefore::Store,
    };
    let mut prepared = match prepare_against(&args.common, before).await? {
        Ok(p) => p,
        Err(errors) => return Ok(output::print_errors(&errors)),
    };
    if let Some(account) = account {
        let refusals = domain::review(&prepared.plan.changes, &prepared.stored, &account);
        prepared.review = Some(Review { account, refusals });
    }
    let code = output::print_plan(&prepared, args.output, false);
    if let Some(store) = &prepared.store {
        store.close().await;
    }
    Ok(code)
}
