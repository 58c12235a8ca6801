//! GitHub: a `github:LOGIN` account exists when `GET /users/{login}` finds a user (not an organization)
//! whose `login` matches case-insensitively, and, with an organization configured, when
//! `GET /orgs/{org}/members/{login}` answers 204. Works with github.com and GitHub Enterprise Server
//! (`https://HOST/api/v3`).
//!
//! GitHub's published behaviour this follows:
//! - Answers carry an `ETag`; an expired cache entry is re-checked with `If-None-Match`, and a `304 Not
//!   Modified` (which does not count against an authenticated rate limit) keeps the cached answer.
//! - Rate limits: a `403`/`429` with `x-ratelimit-remaining: 0` means "wait until `x-ratelimit-reset`" (epoch
//!   seconds); one with `retry-after` means "wait that many seconds"; a secondary limit without either means
//!   "wait at least a minute". Until then no request is sent at all, and the User's status says when the
//!   next check is. A successful answer that leaves `x-ratelimit-remaining: 0` holds the same way.
//! - Membership: `204` member, `404` not a member, `302` when the token's owner is not a member of the
//!   organization (GitHub then only reveals public membership): reported as a configuration problem, not
//!   as "not a member", because the answer says nothing about the person.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, ETAG, HeaderValue, IF_NONE_MATCH, RETRY_AFTER};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::http::{self, AnswerCache, CacheTtl, Cached, ClientError, Credential, Hold};
use crate::domain::Verdict;

/// The public GitHub REST API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// How long a secondary rate limit without `retry-after` holds requests (GitHub: "at least one minute").
const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// The REST API version the requests are written against.
const API_VERSION: &str = "2022-11-28";

pub struct GithubSettings {
    pub api_url: reqwest::Url,
    /// A token (classic or fine-grained, read-only): raises the rate limit from 60 to 5,000 requests an
    /// hour and, from an organization member with `read:org`, lets private membership be seen.
    pub token: Option<Credential>,
    /// Only members of this organization may join.
    pub organization: Option<String>,
    pub timeout: Duration,
    pub ttl: CacheTtl,
}

/// What GitHub said about a request, as kept in the cache.
#[derive(Clone, Debug)]
enum Answer {
    User {
        login: String,
    },
    Organization {
        login: String,
    },
    NoSuchUser,
    Member,
    NotMember,
    /// 302: the token cannot see the organization's private members.
    MembershipHidden,
}

impl Answer {
    fn is_positive(&self) -> bool {
        matches!(self, Answer::User { .. } | Answer::Member)
    }
}

#[derive(Deserialize)]
struct UserBody {
    login: String,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: String,
}

pub struct GithubDirectory {
    client: reqwest::Client,
    settings: GithubSettings,
    cache: AnswerCache<String, Answer>,
    hold: Hold,
}

impl GithubDirectory {
    pub fn new(settings: GithubSettings) -> Result<Self, ClientError> {
        Ok(GithubDirectory {
            client: http::client(settings.timeout)?,
            settings,
            cache: AnswerCache::default(),
            hold: Hold::default(),
        })
    }

    /// The verdict on a (lower-case) GitHub login.
    pub async fn check(&self, login: &str) -> Verdict {
        match self.user(login).await {
            Err(verdict) => verdict,
            Ok(Answer::User { login: found }) if !found.eq_ignore_ascii_case(login) => Verdict::Refused {
                message: format!("GitHub answers for {login} with the user {found}, another account"),
            },
            Ok(Answer::User { .. }) => match &self.settings.organization {
                None => Verdict::Exists,
                Some(org) => match self.membership(org, login).await {
                    Err(verdict) => verdict,
                    Ok(Answer::Member) => Verdict::Exists,
                    Ok(Answer::MembershipHidden) => Verdict::Unverified {
                        message: format!(
                            "GitHub shows only public members of {org} to this token (302 at GET /orgs/{org}/members/{login}): \
                             use a token of a member of {org} with read:org"
                        ),
                    },
                    Ok(_) => Verdict::Refused {
                        message: format!(
                            "GitHub says {login} is not a member of the organization {org} (404 at GET /orgs/{org}/members/{login}; \
                             private members are visible only to a token of an organization member)"
                        ),
                    },
                },
            },
            Ok(Answer::Organization { login: found }) => Verdict::Refused {
                message: format!("{found} is a GitHub organization, not a user"),
            },
            Ok(_) => Verdict::Refused {
                message: format!("GitHub has no user {login} (404 Not Found at GET /users/{login})"),
            },
        }
    }

    async fn user(&self, login: &str) -> Result<Answer, Verdict> {
        self.ask(&["users", login], |status, body| match status {
            StatusCode::OK => {
                let user: UserBody = serde_json::from_slice(body).ok()?;
                Some(if user.kind == "Organization" {
                    Answer::Organization { login: user.login }
                } else {
                    Answer::User { login: user.login }
                })
            }
            StatusCode::NOT_FOUND => Some(Answer::NoSuchUser),
            _ => None,
        })
        .await
    }

    async fn membership(&self, org: &str, login: &str) -> Result<Answer, Verdict> {
        self.ask(&["orgs", org, "members", login], |status, _| match status {
            StatusCode::NO_CONTENT => Some(Answer::Member),
            StatusCode::NOT_FOUND => Some(Answer::NotMember),
            StatusCode::FOUND => Some(Answer::MembershipHidden),
            _ => None,
        })
        .await
    }

    /// Sends one GET (unless held or fresh in the cache) and reads the answer with `read`, which returns
    /// `None` for a status it does not expect.
    async fn ask(
        &self,
        segments: &[&str],
        read: impl FnOnce(StatusCode, &[u8]) -> Option<Answer>,
    ) -> Result<Answer, Verdict> {
        let key = segments.join("/");
        let etag = match self.cache.get(&key) {
            Cached::Fresh(answer) => return Ok(answer),
            Cached::Stale { etag } => etag,
            Cached::Missing => None,
        };
        if let Some(message) = self.hold.active() {
            return Err(Verdict::Unverified { message });
        }
        let unverified = |message: String| Verdict::Unverified { message };
        let url = http::url_with(&self.settings.api_url, segments);
        let mut request = self
            .client
            .get(url)
            .header(ACCEPT, "application/vnd.github+json")
            .header("x-github-api-version", API_VERSION);
        if let Some(token) = &self.settings.token {
            let token = token
                .read()
                .map_err(|e| unverified(format!("the GitHub token could not be read: {e}")))?;
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                .map_err(|_| unverified("the GitHub token is not a valid header value".to_owned()))?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        if let Some(etag) = &etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let what = format!("GET /{key}");
        let response = request.send().await.map_err(|e| {
            unverified(format!(
                "GitHub could not be asked ({what}: {})",
                http::describe(&e, self.settings.timeout)
            ))
        })?;
        let status = response.status();
        let limit = rate_limit(&response);
        let new_etag = http::header(&response, ETAG.as_str()).map(str::to_owned);
        if status == StatusCode::NOT_MODIFIED {
            self.hold_if_exhausted(limit);
            if let Some(answer) = self.cache.revalidate(&key) {
                return Ok(answer);
            }
        }
        let body = http::body(response).await.map_err(|e| {
            unverified(format!(
                "GitHub's answer could not be read ({what}: {})",
                http::describe(&e, self.settings.timeout)
            ))
        })?;
        if matches!(status, StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS) {
            let said = github_message(&body);
            if let Some(wait) = limit.wait(status, &said) {
                return Err(unverified(self.hold.hold(
                    wait,
                    format!("GitHub rate limit reached ({} at {what}: {said})", status.as_u16()),
                )));
            }
        }
        if let Some(answer) = read(status, &body) {
            self.hold_if_exhausted(limit);
            let ttl = if answer.is_positive() {
                self.settings.ttl.positive
            } else {
                self.settings.ttl.negative
            };
            self.cache.put(key, answer.clone(), new_etag, ttl);
            return Ok(answer);
        }
        let said = github_message(&body);
        Err(unverified(match status {
            StatusCode::UNAUTHORIZED => {
                format!("GitHub rejected the token (401 at {what}: {said}); check --github-token-file")
            }
            status if status.is_server_error() => {
                format!("GitHub is failing ({status} at {what}); checked again with backoff")
            }
            status => format!("GitHub answered {status} at {what}: {said}"),
        }))
    }

    fn hold_if_exhausted(&self, limit: RateLimit) {
        if limit.remaining == Some(0)
            && let Some(wait) = limit.until_reset()
        {
            self.hold
                .hold(wait, "GitHub rate limit used up (x-ratelimit-remaining: 0)".to_owned());
        }
    }
}

/// GitHub's rate-limit headers on one answer.
#[derive(Clone, Copy, Debug, Default)]
struct RateLimit {
    remaining: Option<u64>,
    reset: Option<u64>,
    retry_after: Option<u64>,
}

fn rate_limit(response: &reqwest::Response) -> RateLimit {
    let number = |name: &str| http::header(response, name).and_then(|v| v.trim().parse().ok());
    RateLimit {
        remaining: number("x-ratelimit-remaining"),
        reset: number("x-ratelimit-reset"),
        retry_after: number(RETRY_AFTER.as_str()),
    }
}

impl RateLimit {
    fn until_reset(&self) -> Option<Duration> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        // One second past the reset: GitHub's clock and ours are seconds apart at best.
        Some(Duration::from_secs(self.reset?.saturating_sub(now) + 1))
    }

    /// How long to wait, when a 403/429 is a rate limit (a 403 can also be a permission problem).
    fn wait(&self, status: StatusCode, message: &str) -> Option<Duration> {
        if let Some(seconds) = self.retry_after {
            return Some(Duration::from_secs(seconds.max(1)));
        }
        if self.remaining == Some(0) {
            return self.until_reset().or(Some(SECONDARY_LIMIT_WAIT));
        }
        let said_so = message.to_ascii_lowercase().contains("rate limit");
        (status == StatusCode::TOO_MANY_REQUESTS || said_so).then_some(SECONDARY_LIMIT_WAIT)
    }
}

/// The `message` of a GitHub error body, or a placeholder.
fn github_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<ErrorBody>(body).unwrap_or_default().message;
    if message.is_empty() {
        "no message".to_owned()
    } else {
        message.chars().take(300).collect()
    }
}
