//! The `orgkeeper` command line. Each subcommand lives in its own module with an `Args` struct and a `run`
//! function; this module only parses, sets up logging and dispatches. Every flag can also be set through an
//! `ORGKEEPER_*` environment variable, which is how the Helm chart configures the binary.

mod accounts;
mod apply;
mod codeowners;
mod controller;
mod crds;
mod demo;
mod duration;
mod facts;
mod identity;
mod keys;
mod output;
mod plan;
mod prepared;
mod secrets_dir;
mod sidecar;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes shared by every command.
pub mod exit {
    /// Success (for `plan`: the store already matches the manifests).
    pub const OK: u8 = 0;
    /// An error: bad input, an unreachable store, a rule broken. Nothing was changed.
    pub const ERROR: u8 = 1;
    /// `plan` only: there are changes to apply.
    pub const CHANGES: u8 = 2;
    /// `plan --as` only: a change the account may not make (each is listed with the rule).
    pub const REFUSED: u8 = 3;
}

#[derive(Debug, Parser)]
#[command(
    name = "orgkeeper",
    version,
    about = "GitOps tenancy for an Oso-compatible authorization service",
    long_about = "orgkeeper reconciles Organizations, Users, Environments and ApiKeys (Kubernetes custom resources in \
                  orgkeeper.dev/v1alpha1) into a SQL store, writes each generated API key once into a Secret, and \
                  runs a rate-limiting sidecar and a fact store compatible with the official Oso Cloud clients."
)]
pub struct Cli {
    /// Log level or tracing filter (e.g. info, debug, orgkeeper=debug,sqlx=warn).
    #[arg(long, global = true, env = "ORGKEEPER_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format: text for people, json for log pipelines.
    #[arg(long, global = true, env = "ORGKEEPER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the changes that `apply` would make to the store (exit 0: none, 2: some, 3: not allowed --as, 1: error).
    Plan(plan::Args),
    /// Make the store match a folder of manifests, in one transaction; write issued keys as Secret manifests
    /// (a plan that revokes more than 3 live keys needs --allow-revocations N).
    Apply(apply::Args),
    /// Print a GitHub CODEOWNERS file asking an Admin's review for files declaring what only Admins may change.
    Codeowners(codeowners::Args),
    /// Register, unregister and list the existing accounts (github:NAME, google:EMAIL) users may reference.
    Accounts(accounts::Args),
    /// Reconcile the cluster's orgkeeper resources into the store and write each issued key once into a Secret.
    Controller(Box<controller::Args>),
    /// Print the CustomResourceDefinitions as YAML.
    Crds(crds::Args),
    /// Try orgkeeper on the embedded SQLite store: register the example accounts, apply the examples, plan again.
    Demo(demo::Args),
    /// List the API keys in the store with when each was issued and last used (`keys list --unused-for 30d`).
    Keys(keys::Args),
    /// Serve the fact API (the built-in upstream): facts per environment in the store, official-client compatible.
    Facts(facts::Args),
    /// Authenticate API keys, enforce per-environment limits and forward to the fact API (Oso wire-compatible).
    Sidecar(sidecar::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Plan(args) => plan::run(args).await,
            Command::Apply(args) => apply::run(args).await,
            Command::Codeowners(args) => codeowners::run(args),
            Command::Accounts(args) => accounts::run(args).await,
            Command::Controller(args) => controller::run(*args).await,
            Command::Crds(args) => crds::run(args),
            Command::Demo(args) => demo::run(args).await,
            Command::Facts(args) => facts::run(args).await,
            Command::Keys(args) => keys::run(args).await,
            Command::Sidecar(args) => sidecar::run(args).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

/// Logs go to stderr so that stdout carries only the command's output (plans, YAML, JSON).
pub fn init_logging(level: &str, format: LogFormat) {
    crate::telemetry::logs::init(level, format == LogFormat::Json);
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn help_never_shows_a_database_url_from_the_environment() {
        for sub in super::Cli::command().get_subcommands() {
            for arg in sub.get_arguments().filter(|a| a.get_id() == "database_url") {
                assert!(
                    arg.is_hide_env_values_set(),
                    "{} --database-url would print its password",
                    sub.get_name()
                );
            }
        }
    }

    #[test]
    fn every_command_and_flag_is_documented() {
        super::Cli::command().debug_assert();
        for sub in super::Cli::command().get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "{} --{} has no help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
