//! Accounts are the identities people sign in with. Only accounts that already exist can join an
//! organization, so the store keeps a registry of them and the plan checks every user against it.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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

/// The accounts that exist, as far as the store knows.
#[derive(Clone, Debug, Default)]
pub struct KnownAccounts(BTreeSet<Account>);

impl KnownAccounts {
    pub fn contains(&self, account: &Account) -> bool {
        self.0.contains(account)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Account> for KnownAccounts {
    fn from_iter<I: IntoIterator<Item = Account>>(iter: I) -> Self {
        KnownAccounts(iter.into_iter().collect())
    }
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
}
