//! Authenticating API keys in the data plane (sidecar and fact store) from an in-memory copy of the store.
//!
//! The [`KeyRing`] holds the last [`AuthSnapshot`] read from the store and refreshes it when the store's
//! revision changes (polled every second by default, so revocations and limit changes apply within
//! seconds). When the store is unreachable it keeps serving from what it last knew and says so through
//! [`KeyRing::status`]; keys it has never seen are refused.
//!
//! Every poll is bounded in time ([`poll_timeout`]: half the refresh interval, at least 200 ms), so an
//! outage shows in the status within about one refresh interval instead of after the store pool's own
//! acquire timeout. [`KeyRing::follow`] is how a data-plane process gets its ring: it opens the store
//! (retrying with backoff) and then keeps the ring fresh, so the process itself never opens the store.
//!
//! The ring also gathers when each key was used ([`KeyRing::authenticate_and_note_use`], `key_use.rs`)
//! and writes that to the store from the same background task, off the request path.

mod key_use;

pub use key_use::{DEFAULT_KEY_USE_FLUSH_INTERVAL, KeyUses};

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::domain::{Access, ApiKeyToken, EffectiveLimits};
use crate::store::{AuthSnapshot, EnvironmentLimits, SqliteMemory, Store, StoreError, StoreOptions, now};

/// Who is calling, once the key checks out.
#[derive(Clone, Debug)]
pub struct Principal {
    pub access: Access,
    pub environment: Arc<EnvironmentLimits>,
}

impl Principal {
    pub fn environment_id(&self) -> &str {
        &self.environment.environment_id
    }

    pub fn limits(&self) -> &EffectiveLimits {
        &self.environment.limits
    }
}

/// Why a request is not authenticated. Messages are safe to return to the caller: they never echo the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send Authorization: Bearer <key>")]
    Missing,
    #[error("the Authorization header is not a Bearer API key")]
    NotBearer,
    #[error("invalid API key")]
    Invalid,
    /// The key is right but past its expiry time (seconds since the epoch): said only to whoever holds it.
    #[error("this API key expired at {}; use its replacement", rfc3339(*at))]
    Expired { at: i64 },
}

/// RFC 3339 in UTC, to the second.
fn rfc3339(seconds: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(seconds).map_or_else(|_| seconds.to_string(), |t| t.to_string())
}

/// Why a refresh failed. The messages are safe to show: store URLs in them have their password removed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store did not answer within {} ms", after.as_millis())]
    TimedOut { after: Duration },
}

/// How long one poll of the store's revision may take before the store counts as unreachable.
pub fn poll_timeout(interval: Duration) -> Duration {
    (interval / 2).max(Duration::from_millis(200))
}

/// How long loading the whole key snapshot may take (it is read only when the revision moved).
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the last write of key uses may take at shutdown.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening the store may take before the attempt is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn bounded<T, E: Into<RefreshError>>(
    after: Duration,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, RefreshError> {
    match tokio::time::timeout(after, work).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(RefreshError::TimedOut { after }),
    }
}

/// The state of the copy, for health endpoints and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingStatus {
    pub revision: i64,
    pub keys: usize,
    pub environments: usize,
    /// The last refresh error (or, before the first load, why the store could not be opened), if the
    /// latest attempt failed (the ring then serves its previous copy).
    pub last_error: Option<String>,
    pub loaded: bool,
}

#[derive(Default)]
struct State {
    loaded: bool,
    last_error: Option<String>,
}

/// When the ring last reached the store. Every request reads it (to refuse while the keys are too old),
/// so it is one atomic rather than a lock that every worker's requests would write to.
struct LastSuccess {
    origin: Instant,
    /// Nanoseconds from `origin` to the last success, plus one; zero before the first.
    after_origin: AtomicU64,
}

impl Default for LastSuccess {
    fn default() -> Self {
        LastSuccess {
            origin: Instant::now(),
            after_origin: AtomicU64::new(0),
        }
    }
}

impl LastSuccess {
    fn mark(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.after_origin.store(nanos + 1, Ordering::Release);
    }

    fn age_at(&self, now: Instant) -> Option<Duration> {
        match self.after_origin.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(now.saturating_duration_since(self.origin + Duration::from_nanos(nanos - 1))),
        }
    }
}

#[derive(Clone, Default)]
pub struct KeyRing {
    state: Arc<RwLock<State>>,
    /// The keys requests are checked against. Published through `ArcSwap` (see
    /// `sidecar/read_mostly.rs`): a request reads it without taking a lock or writing a shared line.
    snapshot: Arc<ArcSwap<AuthSnapshot>>,
    last_success: Arc<LastSuccess>,
    uses: Arc<KeyUses>,
    /// How often [`KeyRing::keep_fresh`] writes gathered key uses; `None`: [`DEFAULT_KEY_USE_FLUSH_INTERVAL`].
    key_use_flush_interval: Option<Duration>,
    /// Key use is not gathered nor written (`--key-use-flush-interval off`).
    key_use_off: bool,
}

impl KeyRing {
    /// A ring that already holds `snapshot` (tests, and the first load).
    pub fn from_snapshot(snapshot: AuthSnapshot) -> Self {
        let ring = KeyRing::default();
        ring.install(snapshot);
        ring
    }

    /// The same ring, writing gathered key uses every `interval` instead of every minute.
    pub fn with_key_use_flush_interval(mut self, interval: Duration) -> Self {
        self.key_use_flush_interval = Some(interval);
        self
    }

    /// The same ring, neither gathering nor writing key uses: the request path skips even the map lookup.
    pub fn without_key_use(mut self) -> Self {
        self.key_use_off = true;
        self
    }

    /// Moves the uses noted on the keys' entries into [`KeyUses`], ready for a flush.
    fn gather_uses(&self) {
        for key in self.snapshot().keys.values() {
            if let Some(at) = key.last_use.take() {
                self.uses.record(&key.key_id, at);
            }
        }
    }

    /// The uses gathered and not yet written.
    pub fn key_uses(&self) -> &KeyUses {
        &self.uses
    }

    fn install(&self, mut snapshot: AuthSnapshot) {
        for key in snapshot.keys.values_mut() {
            key.environment = snapshot.environments.get(&key.environment_id).cloned();
        }
        // Held while the snapshot is replaced, so that two installs cannot both merge into the old one.
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let old_snapshot = self.snapshot.load_full();
        // A key kept keeps its cell (and the use noted on it); a key gone hands its last use over now.
        for (key_id, old) in &old_snapshot.keys {
            match snapshot.keys.get_mut(key_id) {
                Some(new) => new.last_use.share(&old.last_use),
                None => {
                    if let Some(at) = old.last_use.take() {
                        self.uses.record(key_id, at);
                    }
                }
            }
        }
        self.snapshot.store(Arc::new(snapshot));
        state.loaded = true;
        state.last_error = None;
        self.last_success.mark();
    }

    fn snapshot(&self) -> Arc<AuthSnapshot> {
        self.snapshot.load_full()
    }

    /// Checks an `Authorization` header value. Constant-time in the secret; O(1) in the number of keys.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        self.check(authorization, false)
    }

    /// [`KeyRing::authenticate`], also noting the key's use for its last-used time (unless tracking is
    /// off) on the entry the check found: cheap, never waits on the store, and keeps no reference to the
    /// entry (taking one would write a count that every worker's requests for the key write).
    pub fn authenticate_and_note_use(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        self.check(authorization, !self.key_use_off)
    }

    fn check(&self, authorization: Option<&str>, note_use: bool) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let bearer = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::NotBearer)?
            .trim();
        // Borrowed, not parsed into an owned token: nothing of the key is copied on the request path.
        let (env_id, key_id) = ApiKeyToken::ids(bearer).ok_or(AuthError::Invalid)?;
        let snapshot = self.snapshot.load();
        let key = snapshot.keys.get(key_id).ok_or(AuthError::Invalid)?;
        if key.environment_id != env_id || !key.hash.verifies_text(bearer) {
            return Err(AuthError::Invalid);
        }
        // Compared on every check, so a key stops working at its time with no reload or controller.
        if let Some(at) = key.expires_at.filter(|at| now() >= *at) {
            return Err(AuthError::Expired { at });
        }
        let environment = key.environment.clone().ok_or(AuthError::Invalid)?;
        if note_use {
            key.last_use.note(now());
        }
        Ok(Principal {
            access: key.access,
            environment,
        })
    }

    /// Reloads from the store if its revision moved. Returns whether the copy changed.
    pub async fn refresh(&self, store: &Store) -> Result<bool, RefreshError> {
        self.refresh_within(store, poll_timeout(Duration::from_secs(1))).await
    }

    /// [`KeyRing::refresh`], with the revision poll bounded by `poll_timeout`.
    async fn refresh_within(&self, store: &Store, poll_timeout: Duration) -> Result<bool, RefreshError> {
        let result = async {
            let current = self.snapshot().revision;
            let loaded = self.state.read().unwrap_or_else(|e| e.into_inner()).loaded;
            if loaded && bounded(poll_timeout, store.revision()).await? == current {
                return Ok(false);
            }
            self.install(bounded(LOAD_TIMEOUT, store.load_auth_snapshot()).await?);
            Ok::<bool, RefreshError>(true)
        }
        .await;
        match &result {
            Ok(_) => {
                self.state.write().unwrap_or_else(|e| e.into_inner()).last_error = None;
                self.last_success.mark();
            }
            Err(e) => self.failed(e),
        }
        result
    }

    fn failed(&self, error: &RefreshError) {
        self.state.write().unwrap_or_else(|e| e.into_inner()).last_error = Some(error.to_string());
    }

    /// Opens the store at `url`, retrying with backoff while it cannot be opened, then keeps the ring
    /// fresh from it every `interval` until `shutdown`. Why the store cannot be opened shows in
    /// [`KeyRing::status`] meanwhile.
    pub async fn follow(self, url: String, interval: Duration, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(250);
        let store = loop {
            // The ring reads the tenancy now and then: a small page cache keeps the sidecar small.
            let options = StoreOptions {
                sqlite_memory: SqliteMemory::Small,
                ..StoreOptions::default()
            };
            match bounded(CONNECT_TIMEOUT, Store::connect_with(&url, &options)).await {
                Ok(store) => break store,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot open the store");
                    self.failed(&e);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        self.keep_fresh(store, interval, shutdown).await;
    }

    /// Refreshes every `interval`, and writes gathered key uses every flush interval, until `shutdown`
    /// fires; then writes the uses gathered since the last flush.
    pub async fn keep_fresh(self, store: Store, interval: Duration, shutdown: CancellationToken) {
        tokio::join!(
            self.refresh_every(&store, interval, &shutdown),
            self.flush_key_use(&store, &shutdown)
        );
    }

    async fn flush_key_use(&self, store: &Store, shutdown: &CancellationToken) {
        if self.key_use_off {
            return;
        }
        let interval = self.key_use_flush_interval.unwrap_or(DEFAULT_KEY_USE_FLUSH_INTERVAL);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = ticker.tick() => false,
            };
            // At shutdown the pod's grace period is running out.
            let limit = if stopping { FINAL_FLUSH_TIMEOUT } else { LOAD_TIMEOUT };
            self.gather_uses();
            match bounded(limit, self.uses.flush(store)).await {
                Ok(written) if written > 0 => tracing::debug!(keys = written, "recorded key use"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, keys = self.uses.pending(), "cannot record key use; keeping it for the next flush")
                }
            }
            if stopping {
                return;
            }
        }
    }

    async fn refresh_every(&self, store: &Store, interval: Duration, shutdown: &CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let poll_timeout = poll_timeout(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.refresh_within(store, poll_timeout).await {
                Ok(true) => {
                    let status = self.status();
                    tracing::info!(
                        revision = status.revision,
                        keys = status.keys,
                        "reloaded keys and limits"
                    );
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot refresh keys from the store; serving the last known copy"),
            }
        }
    }

    pub fn status(&self) -> RingStatus {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let snapshot = self.snapshot.load();
        RingStatus {
            revision: snapshot.revision,
            keys: snapshot.keys.len(),
            environments: snapshot.environments.len(),
            last_error: state.last_error.clone(),
            loaded: state.loaded,
        }
    }

    /// How long since the last successful refresh (None before the first): how old the copy may be.
    pub fn since_last_success(&self) -> Option<Duration> {
        self.since_last_success_at(Instant::now())
    }

    /// [`KeyRing::since_last_success`] as of `now` (a time the caller has read already).
    pub fn since_last_success_at(&self, now: Instant) -> Option<Duration> {
        self.last_success.age_at(now)
    }

    /// Limits of one environment, if known.
    pub fn environment(&self, environment_id: &str) -> Option<Arc<EnvironmentLimits>> {
        self.snapshot().environments.get(environment_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KeyHash, PlanTier};
    use crate::store::LiveKey;

    fn ring_with(token: &ApiKeyToken, access: Access) -> KeyRing {
        ring_expiring(token, access, None)
    }

    fn ring_expiring(token: &ApiKeyToken, access: Access, expires_at: Option<i64>) -> KeyRing {
        let mut snapshot = AuthSnapshot::default();
        snapshot.keys.insert(
            token.key_id().to_owned(),
            LiveKey {
                key_id: token.key_id().into(),
                environment_id: token.env_id().into(),
                access,
                hash: token.hash(),
                expires_at,
                last_use: Default::default(),
                environment: None,
            },
        );
        snapshot.environments.insert(
            token.env_id().to_owned(),
            Arc::new(EnvironmentLimits {
                environment_id: token.env_id().into(),
                organization_id: "o1".into(),
                label: "ns/acme/production".into(),
                limits: PlanTier::Developer.default_limits(),
            }),
        );
        KeyRing::from_snapshot(snapshot)
    }

    #[test]
    fn a_live_key_authenticates_with_its_environment_and_access() {
        let token = ApiKeyToken::generate("env1");
        let ring = ring_with(&token, Access::ReadOnly);
        let principal = ring.authenticate(Some(&format!("Bearer {}", token.expose()))).unwrap();
        assert_eq!(principal.environment_id(), "env1");
        assert_eq!(principal.access, Access::ReadOnly);
        assert_eq!(principal.limits().max_batch_facts, Some(20));
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let token = ApiKeyToken::generate("env1");
        let ring = ring_with(&token, Access::ReadWrite);
        assert_eq!(ring.authenticate(None).unwrap_err(), AuthError::Missing);
        assert_eq!(ring.authenticate(Some("Basic abc")).unwrap_err(), AuthError::NotBearer);
        assert_eq!(ring.authenticate(Some("Bearer nope")).unwrap_err(), AuthError::Invalid);
        let other = ApiKeyToken::generate("env1");
        assert_eq!(
            ring.authenticate(Some(&format!("Bearer {}", other.expose())))
                .unwrap_err(),
            AuthError::Invalid
        );
        // Right key id, wrong secret.
        let forged = format!("e_env1_{}_{}", token.key_id(), "A".repeat(32));
        assert_eq!(
            ring.authenticate(Some(&format!("Bearer {forged}"))).unwrap_err(),
            AuthError::Invalid
        );
        // Right key, but claiming another environment.
        let moved = token.expose().replacen("env1", "env2", 1);
        assert_eq!(
            ring.authenticate(Some(&format!("Bearer {moved}"))).unwrap_err(),
            AuthError::Invalid
        );
        let _ = KeyHash::of("unused");
    }

    #[test]
    fn an_expired_key_is_refused_from_its_time_and_says_so() {
        let token = ApiKeyToken::generate("env1");
        let header = format!("Bearer {}", token.expose());
        let later = ring_expiring(&token, Access::ReadWrite, Some(now() + 3600));
        assert!(later.authenticate(Some(&header)).is_ok());
        let at = now() - 1;
        let past = ring_expiring(&token, Access::ReadWrite, Some(at));
        let error = past.authenticate(Some(&header)).unwrap_err();
        assert_eq!(error, AuthError::Expired { at });
        assert!(error.to_string().contains("expired at 20"), "{error}");
        // Only the holder of the right secret learns that the key id exists and expired.
        let forged = format!("Bearer e_env1_{}_{}", token.key_id(), "A".repeat(32));
        assert_eq!(past.authenticate(Some(&forged)).unwrap_err(), AuthError::Invalid);
    }

    #[test]
    fn a_use_is_noted_on_the_keys_entry_and_survives_a_reload_or_the_keys_removal() {
        let token = ApiKeyToken::generate("env1");
        let header = format!("Bearer {}", token.expose());
        let ring = ring_with(&token, Access::ReadWrite);
        ring.authenticate_and_note_use(Some(&header)).unwrap();
        assert_eq!(ring.key_uses().pending(), 0, "noted on the entry, not in the map");

        // A reload holding the same key keeps the use noted before it.
        let reloaded = ring_with(&token, Access::ReadWrite).snapshot();
        ring.install(AuthSnapshot::clone(&reloaded));
        ring.gather_uses();
        assert_eq!(ring.key_uses().pending(), 1);

        // A use, then a reload without the key (revoked, deleted): handed over at once.
        let ring = ring_with(&token, Access::ReadWrite);
        ring.authenticate_and_note_use(Some(&header)).unwrap();
        ring.install(AuthSnapshot::default());
        assert_eq!(
            ring.key_uses().pending(),
            1,
            "the removed key's use is kept for the flush"
        );
        ring.gather_uses();
        assert_eq!(ring.key_uses().pending(), 1);
    }
}
