//! `orgkeeper accounts`: the registry of existing accounts. In Oso Cloud only people who already signed up can
//! be added to an organization; here, registering an account is how it comes to exist.

use anyhow::Context;
use clap::Subcommand;

use crate::domain::Account;
use crate::store::{DEFAULT_DATABASE_URL, Store};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The store: sqlite://PATH (created if missing), sqlite::memory:, or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, env = "ORGKEEPER_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true, hide_env_values = true)]
    pub database_url: String,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Register accounts (github:USERNAME or google:EMAIL); registering one twice is harmless.
    Add {
        /// Accounts to register.
        #[arg(required = true)]
        accounts: Vec<Account>,
    },
    /// Unregister accounts. Users already in an organization stay; new ones with these accounts are refused.
    Remove {
        /// Accounts to unregister.
        #[arg(required = true)]
        accounts: Vec<Account>,
    },
    /// List registered accounts, one per line.
    List,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let store = Store::connect(&args.database_url).await.context("opening the store")?;
    match args.action {
        Action::Add { accounts } => {
            let added = store.add_accounts(&accounts).await?;
            println!(
                "{added} account(s) registered, {} already known",
                accounts.len() - added
            );
        }
        Action::Remove { accounts } => {
            for account in accounts {
                let removed = store.remove_account(&account).await?;
                println!(
                    "{account}: {}",
                    if removed { "unregistered" } else { "was not registered" }
                );
            }
        }
        Action::List => {
            for account in store.list_accounts().await? {
                println!("{account}");
            }
        }
    }
    store.close().await;
    Ok(super::exit::OK)
}
