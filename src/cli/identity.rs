//! The account-directory flags shared by `plan`, `apply` and `controller`: which providers check accounts
//! and how (see `crate::identity` for the chain and docs/kubectl.md#accounts for the guide).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::duration::parse_duration;
use crate::identity::github::{self, GithubSettings};
use crate::identity::google::{self, GoogleSettings, ServiceAccountKey};
use crate::identity::http::{CacheTtl, Credential};
use crate::identity::{DeclaredSource, Directory, GithubDirectory, GoogleDirectory};

#[derive(Debug, Clone, clap::Args)]
pub struct AccountArgs {
    /// Check github: accounts against GitHub (the user exists; with --github-org, is a member). Without it,
    /// github: accounts come from declared lists and the local registry only.
    #[arg(
        long,
        env = "ORGKEEPER_CHECK_GITHUB",
        action = clap::ArgAction::Set,
        value_name = "BOOL",
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true"
    )]
    pub check_github: bool,
    /// GitHub REST API base URL; for GitHub Enterprise Server, https://HOST/api/v3.
    #[arg(long, env = "ORGKEEPER_GITHUB_API_URL", default_value = github::DEFAULT_API_URL, value_name = "URL")]
    pub github_api_url: String,
    /// File holding a GitHub token (read-only; read:org to see private organization members). Optional, but
    /// without one GitHub allows 60 requests an hour.
    #[arg(
        long,
        env = "ORGKEEPER_GITHUB_TOKEN_FILE",
        value_name = "PATH",
        requires = "check_github"
    )]
    pub github_token_file: Option<PathBuf>,
    /// Only members of this GitHub organization may join.
    #[arg(long, env = "ORGKEEPER_GITHUB_ORG", value_name = "ORG", requires = "check_github")]
    pub github_org: Option<String>,
    /// Google service account key file (JSON) with domain-wide delegation for the read-only Directory scope;
    /// turns on the check of google: accounts (exists, not suspended).
    #[arg(
        long,
        env = "ORGKEEPER_GOOGLE_CREDENTIALS_FILE",
        value_name = "PATH",
        requires = "google_admin_subject"
    )]
    pub google_credentials_file: Option<PathBuf>,
    /// The Workspace admin the service account acts for.
    #[arg(
        long,
        env = "ORGKEEPER_GOOGLE_ADMIN_SUBJECT",
        value_name = "EMAIL",
        requires = "google_credentials_file"
    )]
    pub google_admin_subject: Option<String>,
    /// Admin SDK base URL (for a private endpoint).
    #[arg(long, env = "ORGKEEPER_GOOGLE_DIRECTORY_URL", default_value = google::DEFAULT_DIRECTORY_URL, value_name = "URL")]
    pub google_directory_url: String,
    /// Each request to GitHub or Google gives up after this long (the account is then checked again later).
    #[arg(long, env = "ORGKEEPER_ACCOUNT_CHECK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub account_check_timeout: Duration,
    /// How long a provider's "exists" is trusted: a deleted or renamed account is noticed within this.
    #[arg(long, env = "ORGKEEPER_ACCOUNT_CACHE_TTL", default_value = "10m", value_parser = parse_duration)]
    pub account_cache_ttl: Duration,
    /// How long a provider's "unknown" is trusted: a new account is noticed within this.
    #[arg(long, env = "ORGKEEPER_ACCOUNT_NEGATIVE_CACHE_TTL", default_value = "1m", value_parser = parse_duration)]
    pub account_negative_cache_ttl: Duration,
}

impl AccountArgs {
    /// No provider checks (declared lists and the local registry only), every other flag at its default.
    pub fn off() -> Self {
        AccountArgs {
            check_github: false,
            github_api_url: github::DEFAULT_API_URL.to_owned(),
            github_token_file: None,
            github_org: None,
            google_credentials_file: None,
            google_admin_subject: None,
            google_directory_url: google::DEFAULT_DIRECTORY_URL.to_owned(),
            account_check_timeout: Duration::from_secs(10),
            account_cache_ttl: Duration::from_secs(600),
            account_negative_cache_ttl: Duration::from_secs(60),
        }
    }

    /// The directory these flags describe, reading declared accounts from `declared`.
    pub fn directory(&self, declared: DeclaredSource) -> anyhow::Result<Directory> {
        let ttl = CacheTtl {
            positive: self.account_cache_ttl,
            negative: self.account_negative_cache_ttl,
        };
        let github = if self.check_github {
            let api_url = crate::identity::http::base_url(&self.github_api_url)
                .map_err(anyhow::Error::msg)
                .context("--github-api-url")?;
            if let Some(org) = &self.github_org
                && !crate::domain::account::is_github_username(org)
            {
                anyhow::bail!("--github-org {org:?} is not a GitHub organization name");
            }
            let token = (self.github_token_file.clone())
                .map(Credential::file)
                .transpose()
                .map_err(anyhow::Error::msg)
                .context("--github-token-file")?;
            Some(GithubDirectory::new(GithubSettings {
                api_url,
                token,
                organization: self.github_org.clone(),
                timeout: self.account_check_timeout,
                ttl,
            })?)
        } else {
            None
        };
        let google = match (&self.google_credentials_file, &self.google_admin_subject) {
            (Some(file), Some(subject)) => {
                let directory_url = crate::identity::http::base_url(&self.google_directory_url)
                    .map_err(anyhow::Error::msg)
                    .context("--google-directory-url")?;
                Some(GoogleDirectory::new(GoogleSettings {
                    directory_url,
                    key: ServiceAccountKey::read(file)?,
                    admin_subject: subject.clone(),
                    timeout: self.account_check_timeout,
                    ttl,
                })?)
            }
            _ => None,
        };
        Ok(Directory::new(declared, github, google))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        accounts: AccountArgs,
    }

    #[test]
    fn off_is_what_no_flags_mean() {
        let parsed = Cli::try_parse_from(["orgkeeper"]).unwrap().accounts;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", AccountArgs::off()));
    }

    #[test]
    fn provider_flags_need_their_switch() {
        assert!(Cli::try_parse_from(["orgkeeper", "--github-org", "acme"]).is_err());
        assert!(Cli::try_parse_from(["orgkeeper", "--google-admin-subject", "admin@example.com"]).is_err());
        let args = Cli::try_parse_from(["orgkeeper", "--check-github", "--github-org", "no--such"])
            .unwrap()
            .accounts;
        let error = args.directory(DeclaredSource::default()).unwrap_err().to_string();
        assert!(error.contains("not a GitHub organization name"), "{error}");
    }
}
