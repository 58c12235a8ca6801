//! Which Kubernetes user a person is. A User declares an account (`github: alice`, `google: a@b.example`); the
//! API server knows the same person by the user name its authenticator (usually OIDC) produces. The mapping is
//! a template per provider, so that it can follow the API server's `--oidc-username-claim` and
//! `--oidc-username-prefix` (e.g. `oidc:{login}`): the generated RoleBindings name exactly the users the API
//! server will see, and nobody else.

use std::collections::BTreeMap;
use std::fmt;

use super::account::{Account, Provider};

/// A template for the Kubernetes user name of one provider's accounts: literal text around one placeholder,
/// `{login}` for GitHub usernames and `{email}` for Google Workspace addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserNameTemplate {
    provider: Provider,
    prefix: String,
    suffix: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("the {provider} user name template {template:?} must contain {placeholder} exactly once")]
    Placeholder {
        provider: &'static str,
        template: String,
        placeholder: &'static str,
    },
    #[error(
        "the {provider} user name template {template:?} has a brace outside {placeholder}: only {placeholder} may be written in braces"
    )]
    StrayBrace {
        provider: &'static str,
        template: String,
        placeholder: &'static str,
    },
    #[error(
        "the {provider} user name template {template:?} starts with \"system:\", which Kubernetes reserves for its own components"
    )]
    Reserved { provider: &'static str, template: String },
}

impl UserNameTemplate {
    pub fn parse(provider: Provider, template: &str) -> Result<Self, TemplateError> {
        let placeholder = placeholder(provider);
        let (name, owned) = (provider.as_str(), template.to_owned());
        let mut pieces = template.split(placeholder);
        let (Some(prefix), Some(suffix), None) = (pieces.next(), pieces.next(), pieces.next()) else {
            return Err(TemplateError::Placeholder {
                provider: name,
                template: owned,
                placeholder,
            });
        };
        if [prefix, suffix].iter().any(|p| p.contains(['{', '}'])) {
            return Err(TemplateError::StrayBrace {
                provider: name,
                template: owned,
                placeholder,
            });
        }
        if prefix.starts_with("system:") {
            return Err(TemplateError::Reserved {
                provider: name,
                template: owned,
            });
        }
        Ok(UserNameTemplate {
            provider,
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    fn render(&self, login: &str) -> String {
        format!("{}{login}{}", self.prefix, self.suffix)
    }
}

impl fmt::Display for UserNameTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.prefix, placeholder(self.provider), self.suffix)
    }
}

fn placeholder(provider: Provider) -> &'static str {
    match provider {
        Provider::Github => "{login}",
        Provider::Google => "{email}",
    }
}

/// The templates for both providers. The defaults (`github:{login}`, `google:{email}`) are the account's own
/// text, which is what an API server with `--oidc-username-prefix=github:` (or a proxy that sets it) sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesUserNames {
    github: UserNameTemplate,
    google: UserNameTemplate,
}

impl Default for KubernetesUserNames {
    fn default() -> Self {
        KubernetesUserNames::new(DEFAULT_GITHUB_TEMPLATE, DEFAULT_GOOGLE_TEMPLATE).expect("the defaults parse")
    }
}

pub const DEFAULT_GITHUB_TEMPLATE: &str = "github:{login}";
pub const DEFAULT_GOOGLE_TEMPLATE: &str = "google:{email}";

/// Two accounts of one organization that would be the same Kubernetes user: binding that name would give
/// one person the other's role, so neither is bound until the templates or the Users change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "Users {first_resource} ({first}) and {second_resource} ({second}) both map to the Kubernetes user {kubernetes_user:?}; change one of them or the user name templates"
)]
pub struct Collision {
    pub kubernetes_user: String,
    pub first: Account,
    pub first_resource: String,
    pub second: Account,
    pub second_resource: String,
}

impl KubernetesUserNames {
    pub fn new(github: &str, google: &str) -> Result<Self, TemplateError> {
        Ok(KubernetesUserNames {
            github: UserNameTemplate::parse(Provider::Github, github)?,
            google: UserNameTemplate::parse(Provider::Google, google)?,
        })
    }

    /// The Kubernetes user name the person holding `account` authenticates as.
    pub fn user_name(&self, account: &Account) -> String {
        match account.provider() {
            Provider::Github => self.github.render(account.login()),
            Provider::Google => self.google.render(account.login()),
        }
    }

    /// Maps each (resource name, account) to its Kubernetes user name, refusing names two accounts share.
    pub fn map_all<'a>(
        &self,
        users: impl IntoIterator<Item = (&'a str, &'a Account)>,
    ) -> Result<BTreeMap<String, &'a Account>, Box<Collision>> {
        let mut mapped: BTreeMap<String, (&'a str, &'a Account)> = BTreeMap::new();
        for (resource, account) in users {
            let name = self.user_name(account);
            match mapped.get(&name) {
                Some((_, other)) if *other == account => {}
                Some((other_resource, other)) => {
                    return Err(Box::new(Collision {
                        kubernetes_user: name,
                        first: (*other).clone(),
                        first_resource: (*other_resource).to_owned(),
                        second: account.clone(),
                        second_resource: resource.to_owned(),
                    }));
                }
                None => {
                    mapped.insert(name, (resource, account));
                }
            }
        }
        Ok(mapped.into_iter().map(|(name, (_, account))| (name, account)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(text: &str) -> Account {
        text.parse().unwrap()
    }

    #[test]
    fn defaults_are_the_account_text() {
        let names = KubernetesUserNames::default();
        assert_eq!(names.user_name(&account("github:Alice")), "github:alice");
        assert_eq!(names.user_name(&account("google:a@b.example")), "google:a@b.example");
    }

    #[test]
    fn templates_follow_the_oidc_prefix() {
        let names = KubernetesUserNames::new("oidc:{login}", "{email}").unwrap();
        assert_eq!(names.user_name(&account("github:alice")), "oidc:alice");
        assert_eq!(names.user_name(&account("google:a@b.example")), "a@b.example");
        let suffixed = KubernetesUserNames::new("{login}@users.noreply.github.com", "{email}").unwrap();
        assert_eq!(
            suffixed.user_name(&account("github:bob")),
            "bob@users.noreply.github.com"
        );
    }

    #[test]
    fn malformed_templates_say_what_is_wrong() {
        let err = KubernetesUserNames::new("oidc:{user}", "{email}").unwrap_err();
        assert!(matches!(err, TemplateError::Placeholder { .. }), "{err}");
        assert!(err.to_string().contains("{login}"), "{err}");
        assert!(matches!(
            KubernetesUserNames::new("{login}{login}", "{email}"),
            Err(TemplateError::Placeholder { .. })
        ));
        assert!(matches!(
            KubernetesUserNames::new("{login}", "{email}}"),
            Err(TemplateError::StrayBrace { .. })
        ));
        assert!(matches!(
            KubernetesUserNames::new("github:{login}", "{login}"),
            Err(TemplateError::Placeholder { .. })
        ));
        let reserved = KubernetesUserNames::new("system:{login}", "{email}").unwrap_err();
        assert!(reserved.to_string().contains("reserves"), "{reserved}");
    }

    #[test]
    fn two_accounts_on_one_kubernetes_name_are_refused() {
        let names = KubernetesUserNames::new("{login}@corp.example", "{email}").unwrap();
        let (alice_gh, alice_google) = (account("github:alice"), account("google:alice@corp.example"));
        let collision = names
            .map_all([("alice", &alice_gh), ("alice-work", &alice_google)])
            .unwrap_err();
        assert_eq!(collision.kubernetes_user, "alice@corp.example");
        let message = collision.to_string();
        assert!(
            message.contains("alice-work") && message.contains("github:alice"),
            "{message}"
        );
        let fine = KubernetesUserNames::default()
            .map_all([("alice", &alice_gh), ("alice-work", &alice_google)])
            .unwrap();
        assert_eq!(
            fine.keys().collect::<Vec<_>>(),
            ["github:alice", "google:alice@corp.example"]
        );
    }
}
