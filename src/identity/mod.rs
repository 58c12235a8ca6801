//! The account directory: where "only existing accounts can join" is decided. Every declared user's account
//! is looked up through one chain, the same for the controller and for `orgkeeper plan/apply`:
//!
//! 1. **Declared lists** (`declared`): accounts listed in Git, in ConfigMaps labelled
//!    `orgkeeper.dev/accounts: "true"`. A declared account exists, whatever the provider says: this is how
//!    air-gapped installs, bots and tests name their accounts, and how an operator overrides a provider.
//! 2. **The provider**, when its check is configured: GitHub (`github`) for `github:` accounts, Google
//!    Workspace (`google`) for `google:` accounts. Its answer is authoritative: found, refused (unknown,
//!    suspended, not in the organization) or unverified (rate limit, outage; decided later).
//! 3. **The local registry** (`orgkeeper accounts add`), only for a provider that is not checked remotely.
//!
//! The first source that knows the account wins; a provider's refusal is not overridden by a registry row,
//! so turning on the GitHub check really checks every GitHub login.

pub mod declared;
pub mod github;
pub mod google;
pub mod http;

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;

pub use declared::{DeclaredAccounts, DeclaredSource};
pub use github::{GithubDirectory, GithubSettings};
pub use google::{GoogleDirectory, GoogleSettings};

use crate::domain::{Account, KnownAccounts, Provider, Verdict};
use crate::store::{Store, StoreError};

/// How many provider look-ups run at once for one plan.
const CONCURRENT_LOOKUPS: usize = 8;

/// The chain of account sources.
#[derive(Clone, Default)]
pub struct Directory {
    declared: DeclaredSource,
    github: Option<Arc<GithubDirectory>>,
    google: Option<Arc<GoogleDirectory>>,
}

/// Names the sources, never their credentials.
impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("github", &self.github.is_some())
            .field("google", &self.google.is_some())
            .finish_non_exhaustive()
    }
}

impl Directory {
    pub fn new(declared: DeclaredSource, github: Option<GithubDirectory>, google: Option<GoogleDirectory>) -> Self {
        Directory {
            declared,
            github: github.map(Arc::new),
            google: google.map(Arc::new),
        }
    }

    /// The declared-accounts source, for the watch that keeps it current.
    pub fn declared(&self) -> &DeclaredSource {
        &self.declared
    }

    /// Whether the provider's accounts are checked remotely (and the local registry is not consulted).
    pub fn checks(&self, provider: Provider) -> bool {
        match provider {
            Provider::Github => self.github.is_some(),
            Provider::Google => self.google.is_some(),
        }
    }

    /// The verdict on every account. The local registry is read (once) only when some account needs it.
    pub async fn resolve<'a>(
        &self,
        accounts: impl IntoIterator<Item = &'a Account>,
        store: &Store,
    ) -> Result<KnownAccounts, StoreError> {
        let declared = self.declared.snapshot().await;
        let wanted: BTreeSet<&Account> = accounts.into_iter().collect();
        let mut known = KnownAccounts::default();
        let mut remote = Vec::new();
        let mut local = Vec::new();
        for account in wanted {
            if declared.contains(account) {
                known.insert(account.clone(), Verdict::Exists);
            } else if self.checks(account.provider()) {
                remote.push(account.clone());
            } else {
                local.push(account);
            }
        }
        if !local.is_empty() {
            let registry = store.known_accounts().await?;
            for account in local {
                known.insert(account.clone(), registry.verdict(account).clone());
            }
        }
        let verdicts: Vec<(Account, Verdict)> = futures::stream::iter(remote)
            .map(|account| self.ask_provider(account))
            .buffer_unordered(CONCURRENT_LOOKUPS)
            .collect()
            .await;
        for (account, verdict) in verdicts {
            known.insert(account, verdict);
        }
        Ok(known)
    }

    async fn ask_provider(&self, account: Account) -> (Account, Verdict) {
        let verdict = match (account.provider(), &self.github, &self.google) {
            (Provider::Github, Some(github), _) => github.check(account.login()).await,
            (Provider::Google, _, Some(google)) => google.check(account.login()).await,
            _ => Verdict::NotRegistered,
        };
        (account, verdict)
    }
}
