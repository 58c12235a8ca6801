//! `orgkeeper demo`: a one-command tour on the embedded SQLite store. It registers the accounts the example
//! Users reference (in production, accounts exist because people signed up), applies the folder, and then
//! plans again to show that a second run changes nothing.

use std::path::PathBuf;

use anyhow::Context;

use super::output::OutputFormat;
use super::plan::CommonArgs;
use super::{apply, exit, plan};
use crate::manifests::{self, Resource};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of manifests to reconcile.
    #[arg(
        short = 'f',
        long = "filename",
        env = "ORGKEEPER_MANIFESTS",
        default_value = "examples",
        value_name = "DIR"
    )]
    pub manifests: PathBuf,
    /// The store (a SQLite file by default, so the demo leaves your real store alone).
    #[arg(long, env = "ORGKEEPER_DATABASE_URL", default_value = "sqlite://orgkeeper-demo.db")]
    pub database_url: String,
    /// Folder for issued keys (Secret manifests, mode 0600).
    #[arg(
        long,
        env = "ORGKEEPER_SECRETS_DIR",
        default_value = "orgkeeper-secrets",
        value_name = "DIR"
    )]
    pub secrets_dir: PathBuf,
    /// The URL clients reach the sidecar at, written as OSO_URL next to each key.
    #[arg(long, env = "ORGKEEPER_OSO_URL", default_value = "http://127.0.0.1:8080")]
    pub oso_url: String,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let set = match manifests::load_dir(&args.manifests) {
        Ok(set) => set,
        Err(errors) => return Ok(super::output::print_errors(&errors)),
    };
    let accounts: Vec<_> = set
        .manifests
        .iter()
        .filter_map(|m| match &m.resource {
            Resource::User(user) => user.account().ok(),
            _ => None,
        })
        .collect();
    let store = Store::connect(&args.database_url).await.context("opening the store")?;
    let added = store.add_accounts(&accounts).await?;
    store.close().await;
    println!(
        "== Registered {added} example account(s) ({} referenced by Users)",
        accounts.len()
    );

    let common = || CommonArgs {
        manifests: args.manifests.clone(),
        database_url: args.database_url.clone(),
        secrets_dir: args.secrets_dir.clone(),
    };
    println!("== orgkeeper apply -f {}", args.manifests.display());
    let code = apply::run(apply::Args {
        common: common(),
        oso_url: args.oso_url.clone(),
        output: OutputFormat::Text,
    })
    .await?;
    if code != exit::OK {
        return Ok(code);
    }
    println!(
        "== orgkeeper plan -f {} (a second run changes nothing)",
        args.manifests.display()
    );
    let code = plan::run(plan::Args {
        common: common(),
        output: OutputFormat::Text,
    })
    .await?;
    println!(
        "== Store: {}; keys: {}/<namespace>/<secret>.yaml",
        args.database_url,
        args.secrets_dir.display()
    );
    Ok(code)
}
