//! What the provider clients share: one HTTP client setup (rustls with the ring provider and the system's
//! trust store, a timeout on every request, no redirects followed: a redirect is an answer GitHub gives on
//! purpose), a bounded answer cache with separate lifetimes for positive and negative answers, and the hold
//! a provider puts on us (rate limit) that every look-up honours before it sends anything.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::jiff::Timestamp;
use secrecy::SecretString;

/// Answers kept at most; beyond this the expired ones go, then the oldest half.
const CACHE_CAPACITY: usize = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot set up TLS for the identity provider: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot create the HTTP client for the identity provider: {0}")]
    Http(#[from] reqwest::Error),
}

/// An HTTP client for a provider: every request times out after `timeout` (connect included).
pub fn client(timeout: Duration) -> Result<reqwest::Client, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    // Certificates the system cannot parse are skipped, as browsers and curl do; an empty store fails at the
    // first request with a clear TLS error instead of here.
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("orgkeeper/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Says what went wrong with a request in words, without the request's headers (where credentials live).
pub fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        format!("no answer within {}s", timeout.as_secs_f64())
    } else if error.is_connect() {
        "cannot connect".to_owned()
    } else if error.is_decode() {
        "an answer that is not the documented JSON".to_owned()
    } else {
        // The error's own text names the URL (never a credential: those travel in headers) and the cause.
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// How long answers are kept.
#[derive(Clone, Copy, Debug)]
pub struct CacheTtl {
    /// For "exists" answers: how long a deleted or renamed account can still count as existing.
    pub positive: Duration,
    /// For "unknown" answers: how long a newly created account can still count as unknown.
    pub negative: Duration,
}

struct Entry<V> {
    value: V,
    etag: Option<String>,
    stored: Instant,
    ttl: Duration,
}

/// A provider's answers by request, each with its ETag for a conditional re-check.
pub struct AnswerCache<K, V> {
    entries: Mutex<HashMap<K, Entry<V>>>,
}

impl<K, V> Default for AnswerCache<K, V> {
    fn default() -> Self {
        AnswerCache {
            entries: Mutex::default(),
        }
    }
}

/// What the cache holds for a request.
pub enum Cached<V> {
    /// Recent enough to use without asking.
    Fresh(V),
    /// Expired: ask again, conditionally when there is an ETag.
    Stale {
        etag: Option<String>,
    },
    Missing,
}

impl<K: Eq + Hash + Clone, V: Clone> AnswerCache<K, V> {
    pub fn get(&self, key: &K) -> Cached<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some(entry) if entry.stored.elapsed() < entry.ttl => Cached::Fresh(entry.value.clone()),
            Some(entry) => Cached::Stale {
                etag: entry.etag.clone(),
            },
            None => Cached::Missing,
        }
    }

    /// The expired answer, when the provider said it has not changed (304 Not Modified): kept again.
    pub fn revalidate(&self, key: &K) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get_mut(key)?;
        entry.stored = Instant::now();
        Some(entry.value.clone())
    }

    pub fn put(&self, key: K, value: V, etag: Option<String>, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.retain(|_, e| e.stored.elapsed() < e.ttl);
            if entries.len() >= CACHE_CAPACITY {
                let mut ages: Vec<Instant> = entries.values().map(|e| e.stored).collect();
                ages.sort();
                let cutoff = ages[ages.len() / 2];
                entries.retain(|_, e| e.stored > cutoff);
            }
        }
        entries.insert(
            key,
            Entry {
                value,
                etag,
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

/// A provider's "not before": set from its rate-limit answer, honoured by every look-up, so that the
/// controller never asks a provider faster than the provider allows, however often it reconciles.
#[derive(Default)]
pub struct Hold {
    until: Mutex<Option<(Instant, SystemTime, String)>>,
}

impl Hold {
    /// Why and until when look-ups are held, while they are. The text stays the same for the whole hold (no
    /// countdown), so a User's status is written once, not at every retry.
    pub fn active(&self) -> Option<String> {
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        match until.as_ref() {
            Some((instant, wall, why)) if Instant::now() < *instant => {
                Some(format!("{why}; next check at {}", timestamp(*wall)))
            }
            Some(_) => {
                *until = None;
                None
            }
            None => None,
        }
    }

    /// Holds look-ups for `wait`; returns the message that says so.
    pub fn hold(&self, wait: Duration, why: String) -> String {
        let wall = SystemTime::now() + wait;
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now() + wait, wall, why));
        self.active()
            .unwrap_or_else(|| format!("held until {}", timestamp(wall)))
    }
}

/// RFC 3339, in UTC, to the second.
pub fn timestamp(at: SystemTime) -> String {
    Timestamp::try_from(at)
        .map(|t| t.round(k8s_openapi::jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_else(|_| "an unrepresentable time".to_owned())
}

/// A header's value as text, when it is.
pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name)?.to_str().ok()
}

/// Provider answers worth reading are small JSON documents; anything longer is cut off here, so a broken or
/// hostile endpoint cannot make the controller buffer without bound.
const BODY_LIMIT: usize = 256 * 1024;

/// The body of an answer, at most `BODY_LIMIT` bytes of it.
pub async fn body(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = BODY_LIMIT - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == BODY_LIMIT {
            break;
        }
    }
    Ok(body)
}

/// `base` with more path segments, each percent-encoded (an email's `+` or `/` stays part of its segment).
pub fn url_with(base: &reqwest::Url, segments: &[&str]) -> reqwest::Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// A base URL for a provider: absolute http(s), without query or fragment.
pub fn base_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(format!("{text:?} is not an http(s) URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the text holds a credential.
        return Err("a base URL may not carry credentials; use the token or credentials file flag".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?}: a base URL has no query or fragment"));
    }
    Ok(url)
}

/// A credential: given, or read from its file at each use, so a rotated Secret (the kubelet updates a mounted
/// Secret's files in place) is picked up without a restart.
#[derive(Debug)] // SecretString prints as [REDACTED]
pub enum Credential {
    Fixed(SecretString),
    File(PathBuf),
}

impl Credential {
    /// A credential file, read once now so that a missing or empty file fails at start, not at the first check.
    pub fn file(path: PathBuf) -> Result<Self, String> {
        let credential = Credential::File(path);
        credential.read()?;
        Ok(credential)
    }

    /// The current value, without surrounding whitespace (`kubectl create secret --from-file` keeps a final
    /// newline). Errors name the file, never its content.
    pub fn read(&self) -> Result<SecretString, String> {
        match self {
            Credential::Fixed(value) => Ok(value.clone()),
            Credential::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let trimmed = text.trim();
                if trimmed.is_empty() {
                    return Err(format!("{} is empty", path.display()));
                }
                Ok(SecretString::from(trimmed.to_owned()))
            }
        }
    }
}
