//! Google Workspace: a `google:EMAIL` account exists when the Admin SDK Directory API's `users.get`
//! (`GET /admin/directory/v1/users/{userKey}`) finds the user and the user is neither suspended nor archived.
//!
//! Authentication is Google's OAuth 2.0 service-account flow with domain-wide delegation: a JWT signed
//! (RS256, by `jsonwebtoken` over `ring`) with the key file's private key, asserting the service account
//! (`iss`), the Workspace admin it acts for (`sub`) and the read-only directory scope, is exchanged at the
//! key file's `token_uri` for an access token, which is kept until shortly before it expires. The private key
//! and the tokens are held as secrets: never logged, never in a status or an error.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::http::{self, AnswerCache, CacheTtl, Cached, ClientError, Hold};
use crate::domain::Verdict;
use crate::domain::account::is_email;

/// Google's Admin SDK.
pub const DEFAULT_DIRECTORY_URL: &str = "https://admin.googleapis.com";

/// Reading users is all orgkeeper needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/admin.directory.user.readonly";

/// An access token is replaced this long before Google says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// How long the signed assertion is valid (Google's maximum is one hour).
const ASSERTION_LIFETIME: u64 = 3600;

pub struct GoogleSettings {
    pub directory_url: reqwest::Url,
    pub key: ServiceAccountKey,
    /// The Workspace admin the service account acts for (domain-wide delegation).
    pub admin_subject: String,
    pub timeout: Duration,
    pub ttl: CacheTtl,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the Google credentials file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error(
        "the Google credentials file {path} is not a service account key (JSON with type service_account, client_email, private_key, token_uri): {error}"
    )]
    Format { path: String, error: String },
    #[error("the private_key in the Google credentials file {path} is not an RSA key in PEM form")]
    PrivateKey { path: String },
    #[error("--google-admin-subject {0:?} is not an email address")]
    Subject(String),
    #[error("{0}")]
    Client(#[from] ClientError),
}

/// A service account key file, as the Google Cloud console downloads it.
pub struct ServiceAccountKey {
    client_email: String,
    key_id: Option<String>,
    token_uri: reqwest::Url,
    signing_key: EncodingKey,
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: String,
    private_key: SecretString,
    #[serde(default)]
    private_key_id: Option<String>,
    token_uri: String,
}

impl ServiceAccountKey {
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| KeyError::Read {
            path: shown.clone(),
            error,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses a key file's text; `path` only names it in errors (which never quote the file).
    pub fn parse(text: &str, path: &str) -> Result<Self, KeyError> {
        let format = |error: String| KeyError::Format {
            path: path.to_owned(),
            error,
        };
        // serde_json's messages name the position, never the value, so the key cannot leak through them.
        let file: KeyFile = serde_json::from_str(text).map_err(|e| format(e.to_string()))?;
        if file.kind != "service_account" {
            return Err(format(format!("type is {:?}", file.kind)));
        }
        let token_uri = http::base_url(&file.token_uri).map_err(format)?;
        let signing_key = EncodingKey::from_rsa_pem(file.private_key.expose_secret().as_bytes())
            .map_err(|_| KeyError::PrivateKey { path: path.to_owned() })?;
        Ok(ServiceAccountKey {
            client_email: file.client_email,
            key_id: file.private_key_id,
            token_uri,
            signing_key,
        })
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: SecretString,
    #[serde(default = "default_expiry")]
    expires_in: u64,
}

fn default_expiry() -> u64 {
    3600
}

/// RFC 6749 error answer of the token endpoint.
#[derive(Deserialize, Default)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserBody {
    primary_email: String,
    #[serde(default)]
    suspended: bool,
    #[serde(default)]
    suspension_reason: Option<String>,
    #[serde(default)]
    archived: bool,
}

/// Google's JSON error answer: `{"error": {"code": 404, "message": "...", "errors": [...]}}`.
#[derive(Deserialize, Default)]
struct ErrorAnswer {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
}

/// What the directory said about a user, as kept in the cache.
#[derive(Clone, Debug)]
enum Answer {
    Active,
    Suspended { reason: Option<String> },
    Archived,
    NoSuchUser { message: String },
}

struct Token {
    value: SecretString,
    expires: Instant,
}

pub struct GoogleDirectory {
    client: reqwest::Client,
    settings: GoogleSettings,
    /// One token request at a time; the others wait for its token.
    token: tokio::sync::Mutex<Option<Token>>,
    cache: AnswerCache<String, Answer>,
    hold: Hold,
}

impl GoogleDirectory {
    pub fn new(settings: GoogleSettings) -> Result<Self, KeyError> {
        if !is_email(&settings.admin_subject) {
            return Err(KeyError::Subject(settings.admin_subject));
        }
        Ok(GoogleDirectory {
            client: http::client(settings.timeout)?,
            settings,
            token: tokio::sync::Mutex::default(),
            cache: AnswerCache::default(),
            hold: Hold::default(),
        })
    }

    /// The verdict on a (lower-case) Workspace email.
    pub async fn check(&self, email: &str) -> Verdict {
        let answer = match self.cache.get(&email.to_owned()) {
            Cached::Fresh(answer) => answer,
            Cached::Stale { .. } | Cached::Missing => match self.ask(email).await {
                Ok(answer) => answer,
                Err(message) => return Verdict::Unverified { message },
            },
        };
        match answer {
            Answer::Active => Verdict::Exists,
            Answer::Suspended { reason } => Verdict::Refused {
                message: match reason {
                    Some(reason) => format!("the Google Workspace user {email} is suspended ({reason})"),
                    None => format!("the Google Workspace user {email} is suspended"),
                },
            },
            Answer::Archived => Verdict::Refused {
                message: format!("the Google Workspace user {email} is archived"),
            },
            Answer::NoSuchUser { message } => Verdict::Refused {
                message: format!("Google Workspace has no user {email} (404: {message})"),
            },
        }
    }

    async fn ask(&self, email: &str) -> Result<Answer, String> {
        if let Some(message) = self.hold.active() {
            return Err(message);
        }
        let token = self.access_token().await?;
        let url = http::url_with(
            &self.settings.directory_url,
            &["admin", "directory", "v1", "users", email],
        );
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| "Google's access token is not a valid header value".to_owned())?;
        bearer.set_sensitive(true);
        let what = "users.get";
        let response = self
            .client
            .get(url)
            .header(AUTHORIZATION, bearer)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "the Google Directory API could not be asked ({what}: {})",
                    http::describe(&e, self.settings.timeout)
                )
            })?;
        let status = response.status();
        let retry_after = http::header(&response, RETRY_AFTER.as_str()).and_then(|v| v.trim().parse::<u64>().ok());
        let body = http::body(response).await.map_err(|e| {
            format!(
                "the Google Directory API's answer could not be read ({what}: {})",
                http::describe(&e, self.settings.timeout)
            )
        })?;
        let said = || {
            let message = serde_json::from_slice::<ErrorAnswer>(&body)
                .unwrap_or_default()
                .error
                .message;
            if message.is_empty() {
                "no message".to_owned()
            } else {
                message.chars().take(300).collect()
            }
        };
        let (answer, ttl) = match status {
            StatusCode::OK => {
                let user: UserBody = serde_json::from_slice(&body)
                    .map_err(|_| format!("the Google Directory API's {what} answer is not a user"))?;
                tracing::debug!(email, primary = %user.primary_email, "Google Workspace user found");
                if user.suspended {
                    (
                        Answer::Suspended {
                            reason: user.suspension_reason,
                        },
                        self.settings.ttl.negative,
                    )
                } else if user.archived {
                    (Answer::Archived, self.settings.ttl.negative)
                } else {
                    (Answer::Active, self.settings.ttl.positive)
                }
            }
            StatusCode::NOT_FOUND => (Answer::NoSuchUser { message: said() }, self.settings.ttl.negative),
            StatusCode::UNAUTHORIZED => {
                // The token was revoked or expired early: the next look-up gets a new one.
                *self.token.lock().await = None;
                return Err(format!(
                    "the Google Directory API rejected the access token (401: {})",
                    said()
                ));
            }
            StatusCode::FORBIDDEN => {
                return Err(format!(
                    "the Google Directory API refused {what} (403: {}): the service account needs domain-wide delegation \
                     for {SCOPE}, acting for a Workspace admin (--google-admin-subject)",
                    said()
                ));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let wait = Duration::from_secs(retry_after.unwrap_or(60).max(1));
                return Err(self
                    .hold
                    .hold(wait, format!("Google Directory API quota reached (429: {})", said())));
            }
            status if status.is_server_error() => {
                return Err(format!(
                    "the Google Directory API is failing ({status} at {what}); checked again with backoff"
                ));
            }
            status => {
                return Err(format!(
                    "the Google Directory API answered {status} at {what}: {}",
                    said()
                ));
            }
        };
        self.cache.put(email.to_owned(), answer.clone(), None, ttl);
        Ok(answer)
    }

    /// A valid access token: the kept one, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<SecretString, String> {
        let mut kept = self.token.lock().await;
        if let Some(token) = kept.as_ref()
            && Instant::now() < token.expires
        {
            return Ok(token.value.clone());
        }
        let key = &self.settings.key;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970".to_owned())?
            .as_secs();
        let claims = Claims {
            iss: &key.client_email,
            sub: &self.settings.admin_subject,
            scope: SCOPE,
            aud: key.token_uri.as_str(),
            iat: now,
            exp: now + ASSERTION_LIFETIME,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = key.key_id.clone();
        let assertion = SecretString::from(
            jsonwebtoken::encode(&header, &claims, &key.signing_key)
                .map_err(|e| format!("cannot sign the service account assertion: {e}"))?,
        );
        let response = self
            .client
            .post(key.token_uri.clone())
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.expose_secret()),
            ])
            .send()
            .await
            .map_err(|e| {
                format!(
                    "Google's token endpoint could not be asked ({})",
                    http::describe(&e, self.settings.timeout)
                )
            })?;
        let status = response.status();
        let body = http::body(response).await.map_err(|e| {
            format!(
                "Google's token endpoint answer could not be read ({})",
                http::describe(&e, self.settings.timeout)
            )
        })?;
        if !status.is_success() {
            let error = serde_json::from_slice::<TokenError>(&body).unwrap_or_default();
            let detail: String = error.error_description.chars().take(300).collect();
            return Err(format!(
                "Google's token endpoint refused the service account {} ({status}: {} {detail})",
                key.client_email,
                if error.error.is_empty() {
                    "no error code"
                } else {
                    &error.error
                },
            ));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| format!("Google's token endpoint answered {status} without an access_token"))?;
        let lifetime = Duration::from_secs(answer.expires_in).saturating_sub(TOKEN_MARGIN);
        let value = answer.access_token;
        *kept = Some(Token {
            value: value.clone(),
            expires: Instant::now() + lifetime,
        });
        Ok(value)
    }
}
