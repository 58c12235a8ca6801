//! Accounts are the identities people sign in with. Only accounts that already exist can join an
//! organization, so every declared user is checked against the account directory (declared lists, GitHub,
//! Google Workspace, the local registry; see `crate::identity`) and the plan turns each verdict into a change
//! or a problem. The rule for what a verdict means lives here, once, for both the controller and the CLI.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::rules::Reason;

/// Where an account comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Github,
    Google,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Google => "google",
        }
    }
}

impl FromStr for Provider {
    type Err = AccountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "github" => Ok(Provider::Github),
            "google" => Ok(Provider::Google),
            other => Err(AccountError::UnknownProvider(other.to_owned())),
        }
    }
}

/// A GitHub username or a Google Workspace email, normalised to lower case because both providers treat
/// them case-insensitively: `Alice` and `alice` are the same person and must not become two users.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Account {
    provider: Provider,
    login: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccountError {
    #[error("unknown account provider {0:?}: use github:USERNAME or google:EMAIL")]
    UnknownProvider(String),
    #[error("{0:?} is not an account: use github:USERNAME or google:EMAIL")]
    Malformed(String),
    #[error(
        "{0:?} is not a valid GitHub username: 1 to 39 letters, digits or single hyphens, not starting or ending with a hyphen"
    )]
    InvalidGithubUsername(String),
    #[error("{0:?} is not a valid email address")]
    InvalidEmail(String),
}

impl Account {
    pub fn github(username: &str) -> Result<Self, AccountError> {
        if !is_github_username(username) {
            return Err(AccountError::InvalidGithubUsername(username.to_owned()));
        }
        Ok(Account {
            provider: Provider::Github,
            login: username.to_ascii_lowercase(),
        })
    }

    pub fn google(email: &str) -> Result<Self, AccountError> {
        if !is_email(email) {
            return Err(AccountError::InvalidEmail(email.to_owned()));
        }
        Ok(Account {
            provider: Provider::Google,
            login: email.to_ascii_lowercase(),
        })
    }

    pub fn new(provider: Provider, login: &str) -> Result<Self, AccountError> {
        match provider {
            Provider::Github => Account::github(login),
            Provider::Google => Account::google(login),
        }
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn login(&self) -> &str {
        &self.login
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.provider.as_str(), self.login)
    }
}

impl FromStr for Account {
    type Err = AccountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (provider, login) = s.split_once(':').ok_or_else(|| AccountError::Malformed(s.to_owned()))?;
        Account::new(provider.parse()?, login)
    }
}

impl TryFrom<String> for Account {
    type Error = AccountError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Account> for String {
    fn from(account: Account) -> String {
        account.to_string()
    }
}

/// GitHub's rule: alphanumerics and single hyphens, no leading or trailing hyphen, at most 39 characters.
/// The CRD carries the same rule as a pattern, so the API server rejects a bad name before we see it.
pub fn is_github_username(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 39
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
        && !name.contains("--")
}

/// A deliberately plain address check (one `@`, a non-empty local part, a dotted domain of DNS labels).
/// Google Workspace addresses are always of this shape; anything stranger is far more likely a typo.
pub fn is_email(email: &str) -> bool {
    if email.len() > 254 {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    local_ok && domain_ok
}

/// What the account directory answered for one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The account exists and may join (a declared list, the provider, or the local registry says so).
    Exists,
    /// No source that was asked knows the account: it is neither declared nor registered, and its provider
    /// is not checked remotely. Users already in an organization stay (unregistering is not removal).
    NotRegistered,
    /// The provider answered that the account does not exist or may not join (unknown, renamed, suspended,
    /// not a member of the required organization). `message` carries the provider's answer.
    Refused { message: String },
    /// The provider could not be asked right now (rate limit, timeout, outage). Nothing is decided: a new
    /// user waits, a user already in an organization stays as it is.
    Unverified { message: String },
}

/// The verdict on every account a plan needs.
#[derive(Clone, Debug, Default)]
pub struct KnownAccounts(BTreeMap<Account, Verdict>);

impl KnownAccounts {
    pub fn insert(&mut self, account: Account, verdict: Verdict) {
        self.0.insert(account, verdict);
    }

    /// The verdict on an account; one nobody was asked about is `NotRegistered`.
    pub fn verdict(&self, account: &Account) -> &Verdict {
        const NOT_REGISTERED: &Verdict = &Verdict::NotRegistered;
        self.0.get(account).unwrap_or(NOT_REGISTERED)
    }

    pub fn contains(&self, account: &Account) -> bool {
        matches!(self.verdict(account), Verdict::Exists)
    }

    /// Why a user with this account cannot be (or stay) what it declares, if it cannot: the reason and a
    /// message a person can act on. `in_store` says whether the user is already in its organization.
    pub fn refusal(&self, account: &Account, in_store: bool) -> Option<(Reason, String)> {
        match (self.verdict(account), in_store) {
            (Verdict::Exists, _) | (Verdict::NotRegistered | Verdict::Unverified { .. }, true) => None,
            (Verdict::NotRegistered, false) => Some((
                Reason::UnknownAccount,
                format!(
                    "{account} is not an existing account: only existing accounts can join an organization; the user \
                     is added once the account exists (declare it in an accounts ConfigMap, turn on the {} check, or \
                     for a local store run orgkeeper accounts add {account})",
                    match account.provider() {
                        Provider::Github => "GitHub",
                        Provider::Google => "Google Workspace",
                    }
                ),
            )),
            (Verdict::Refused { message }, false) => Some((
                Reason::UnknownAccount,
                format!("{account} is not an existing account: {message}; checked again with backoff"),
            )),
            (Verdict::Refused { message }, true) => Some((
                Reason::UnknownAccount,
                format!(
                    "{account} is no longer an existing account: {message}; the user stays in the organization \
                     (nothing is removed) until the account is back or the User is deleted"
                ),
            )),
            (Verdict::Unverified { message }, false) => Some((
                Reason::AccountUnverified,
                format!("{account} could not be checked yet: {message}"),
            )),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Every account given exists (how the local registry and declared lists are read).
impl FromIterator<Account> for KnownAccounts {
    fn from_iter<I: IntoIterator<Item = Account>>(iter: I) -> Self {
        KnownAccounts(iter.into_iter().map(|a| (a, Verdict::Exists)).collect())
    }
}

/// A line of an account list that is not an account.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {error}")]
pub struct ListError {
    pub line: usize,
    pub error: AccountError,
}

/// Reads a declared account list: one `github:USERNAME` or `google:EMAIL` per line; blank lines and
/// everything after a `#` are ignored. Returns the accounts and every line that is not one.
pub fn parse_account_list(text: &str) -> (Vec<Account>, Vec<ListError>) {
    let mut accounts = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let entry = line.split_once('#').map_or(line, |(before, _)| before).trim();
        if entry.is_empty() {
            continue;
        }
        match entry.parse() {
            Ok(account) => accounts.push(account),
            Err(error) => errors.push(ListError { line: index + 1, error }),
        }
    }
    (accounts, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_usernames_follow_githubs_rules() {
        for ok in ["a", "alice", "Alice-Smith", "a1-b2-c3", &"x".repeat(39)] {
            assert!(Account::github(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-alice",
            "alice-",
            "al--ice",
            "al_ice",
            "al.ice",
            &"x".repeat(40),
            "ali ce",
        ] {
            assert!(Account::github(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        for ok in ["a@b.co", "first.last+tag@corp.example.com"] {
            assert!(Account::google(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@b",
            "@b.co",
            "a@.co",
            "a@b..co",
            ".a@b.co",
            "a@-b.co",
            "a b@c.de",
            "a@b.co@c.de",
        ] {
            assert!(Account::google(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accounts_are_case_insensitive_and_round_trip_through_text() {
        let a: Account = "github:Alice".parse().unwrap();
        assert_eq!(a, Account::github("alice").unwrap());
        assert_eq!(a.to_string(), "github:alice");
        let g: Account = "google:Bob@Example.com".parse().unwrap();
        assert_eq!(g.to_string(), "google:bob@example.com");
        assert_eq!(
            "gitlab:x".parse::<Account>(),
            Err(AccountError::UnknownProvider("gitlab".into()))
        );
        assert_eq!("alice".parse::<Account>(), Err(AccountError::Malformed("alice".into())));
    }

    #[test]
    fn account_lists_skip_comments_and_report_bad_lines() {
        let (accounts, errors) =
            parse_account_list("# team\ngithub:Alice  # lead\n\n  google:bob@example.com\nalice\n");
        assert_eq!(
            accounts,
            vec![
                Account::github("alice").unwrap(),
                Account::google("bob@example.com").unwrap()
            ]
        );
        assert_eq!(
            errors,
            vec![ListError {
                line: 5,
                error: AccountError::Malformed("alice".into())
            }]
        );
    }

    #[test]
    fn verdicts_decide_new_users_and_never_remove_stored_ones() {
        let alice = Account::github("alice").unwrap();
        let mut known = KnownAccounts::default();
        assert_eq!(known.refusal(&alice, false).unwrap().0, Reason::UnknownAccount);
        assert_eq!(known.refusal(&alice, true), None, "unregistering is not removal");

        known.insert(alice.clone(), Verdict::Exists);
        assert_eq!(known.refusal(&alice, false), None);

        let gone = "GitHub has no user alice (404 Not Found)".to_owned();
        known.insert(alice.clone(), Verdict::Refused { message: gone.clone() });
        let (reason, message) = known.refusal(&alice, false).unwrap();
        assert_eq!(reason, Reason::UnknownAccount);
        assert!(message.contains(&gone), "{message}");
        let (reason, message) = known.refusal(&alice, true).unwrap();
        assert_eq!(reason, Reason::UnknownAccount);
        assert!(message.contains("stays in the organization"), "{message}");

        let limited = "GitHub rate limit reached; next check at 2026-01-01T00:00:00Z".to_owned();
        known.insert(
            alice.clone(),
            Verdict::Unverified {
                message: limited.clone(),
            },
        );
        let (reason, message) = known.refusal(&alice, false).unwrap();
        assert_eq!(reason, Reason::AccountUnverified);
        assert!(message.contains(&limited));
        assert_eq!(known.refusal(&alice, true), None, "an outage never flips a stored user");
    }
}
