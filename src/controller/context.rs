//! What every reconcile shares: the clients, the caches, the settings, and the small amount of memory the
//! controller keeps between reconciles (locks, retry counts, recent status writes).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use rand::Rng;
use tokio::sync::OwnedMutexGuard;

use super::caches::Caches;
use super::failpoint::Failpoint;
use super::metrics::{Metrics, StoreWrites};
use super::secrets::RecentSecrets;
use super::triggers::Triggers;
use crate::domain::{KubernetesUserNames, ObjectRef, OrgKey, StoredOrganization};
use crate::identity::Directory;
use crate::store::Store;

/// A copy of what the store held for an organization at a revision.
struct Stored {
    revision: i64,
    loaded: Instant,
    organization: Option<StoredOrganization>,
}

/// The longest a copy of an organization's stored state is reused while the store's revision is unchanged.
/// Every write through orgkeeper changes the revision; this bound is for changes made behind its back.
pub const STORED_COPY_LIFETIME: Duration = Duration::from_secs(10);

/// How the controller runs; built from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The namespace to watch, or `None` for all namespaces.
    pub namespace: Option<String>,
    /// Written as `OSO_URL` into every key Secret.
    pub oso_url: String,
    /// Every object is reconciled again after this long, which bounds how long drift in the store lasts.
    pub resync_interval: Duration,
    /// The longest wait between retries of an object that cannot be carried out yet (or failed).
    pub max_retry_interval: Duration,
    /// How long waiting for another resource is normal; a longer wait is announced with a Warning event.
    pub warn_after_waiting: Duration,
    /// A live key no sidecar used for this long (counting from issuance) is counted as unused in the metrics.
    pub unused_key_after: Duration,
    /// Reconciles running at once, per kind.
    pub concurrency: u16,
    /// Who this replica is, in the Lease and in events.
    pub identity: String,
    /// The Kubernetes user each User's account authenticates as, for the generated RoleBindings.
    pub kubernetes_users: KubernetesUserNames,
    /// Where accounts are looked up (declared lists, GitHub, Google, the registry).
    pub accounts: Directory,
    /// The namespace of the declared account lists (`None`: the client's default namespace).
    pub declared_accounts_namespace: Option<String>,
}

/// The first retry comes after this long, and each next one after twice as long, up to the maximum.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Within this long after a status write, the cache may still show the old status; the write is not repeated.
const STATUS_ECHO: Duration = Duration::from_secs(10);

pub struct Context {
    pub client: Client,
    pub store: Store,
    pub caches: Caches,
    pub settings: Settings,
    pub metrics: Metrics,
    pub store_writes: StoreWrites,
    pub recorder: Recorder,
    pub triggers: Triggers,
    pub recent_secrets: RecentSecrets,
    pub failpoint: Failpoint,
    /// What the generated RBAC step applied last, per organization.
    pub rbac: super::rbac::Applied,
    locks: Mutex<HashMap<OrgKey, Arc<tokio::sync::Mutex<()>>>>,
    stored: Mutex<HashMap<OrgKey, Stored>>,
    retries: Mutex<HashMap<ObjectRef, u32>>,
    statuses: Mutex<HashMap<String, (u64, Instant)>>,
    /// Objects (by uid) whose lasting wait was already announced with a Warning.
    warned: Mutex<HashSet<String>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        store: Store,
        caches: Caches,
        settings: Settings,
        metrics: Metrics,
        recorder: Recorder,
        triggers: Triggers,
        failpoint: Failpoint,
    ) -> Self {
        Context {
            store_writes: StoreWrites::new(&store),
            client,
            store,
            caches,
            settings,
            metrics,
            recorder,
            triggers,
            recent_secrets: RecentSecrets::default(),
            failpoint,
            rbac: Default::default(),
            locks: Mutex::default(),
            stored: Mutex::default(),
            retries: Mutex::default(),
            statuses: Mutex::default(),
            warned: Mutex::default(),
        }
    }

    /// Serialises everything that plans and changes one organization: reconciles of its objects (of any
    /// kind) take turns, so two of them never plan against the same stored state.
    pub async fn lock(&self, organization: &OrgKey) -> OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(organization.clone())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// The organization as the store held it at `revision`, if a recent enough copy is at hand. Reconciles
    /// of the many objects of one organization then read the store once rather than once each.
    pub fn stored_copy(&self, organization: &OrgKey, revision: i64) -> Option<Option<StoredOrganization>> {
        let lifetime = STORED_COPY_LIFETIME.min(self.settings.resync_interval / 2);
        let stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        stored
            .get(organization)
            .filter(|s| s.revision == revision && s.loaded.elapsed() < lifetime)
            .map(|s| s.organization.clone())
    }

    pub fn keep_stored_copy(&self, organization: &OrgKey, revision: i64, copy: Option<StoredOrganization>) {
        self.stored.lock().unwrap_or_else(|e| e.into_inner()).insert(
            organization.clone(),
            Stored {
                revision,
                loaded: Instant::now(),
                organization: copy,
            },
        );
    }

    /// The next reconcile of a healthy object: after the resync interval, spread by ±10% so that objects
    /// created together do not all resync at the same instant.
    pub fn resync(&self, object: &ObjectRef) -> Action {
        self.retries.lock().unwrap_or_else(|e| e.into_inner()).remove(object);
        let factor = rand::rng().random_range(0.9..1.1);
        Action::requeue(self.settings.resync_interval.mul_f64(factor))
    }

    /// [`Self::resync`], or after `wake` when that is sooner.
    pub fn resync_within(&self, object: &ObjectRef, wake: Option<Duration>) -> Action {
        match wake {
            Some(wake) if wake < self.settings.resync_interval.mul_f64(0.9) => {
                self.retries.lock().unwrap_or_else(|e| e.into_inner()).remove(object);
                Action::requeue(wake)
            }
            _ => self.resync(object),
        }
    }

    /// The next attempt for an object that is waiting (or failed): exponential backoff up to the maximum.
    pub fn retry(&self, object: &ObjectRef) -> Action {
        let mut retries = self.retries.lock().unwrap_or_else(|e| e.into_inner());
        let attempt = retries.entry(object.clone()).or_default();
        let delay = FIRST_RETRY
            .saturating_mul(1u32 << (*attempt).min(20))
            .min(self.settings.max_retry_interval);
        *attempt = attempt.saturating_add(1);
        Action::requeue(delay)
    }

    /// Forgets an object (it is gone).
    pub fn forget(&self, object: &ObjectRef, uid: Option<&str>) {
        self.retries.lock().unwrap_or_else(|e| e.into_inner()).remove(object);
        if let Some(uid) = uid {
            self.statuses.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
            self.wait_over(uid);
        }
    }

    /// Whether the lasting wait of this object is not yet announced; from now on it is.
    pub fn first_warning(&self, uid: &str) -> bool {
        self.warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_owned())
    }

    /// The object no longer waits: a later wait is announced again.
    pub fn wait_over(&self, uid: &str) {
        self.warned.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }

    /// Whether this exact status was written for this object moments ago (the cache may lag behind it).
    pub fn recently_written<S: Hash>(&self, uid: &str, status: &S) -> bool {
        let statuses = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        matches!(statuses.get(uid), Some((hash, at)) if *hash == hash_of(status) && at.elapsed() < STATUS_ECHO)
    }

    pub fn written<S: Hash>(&self, uid: &str, status: &S) {
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_owned(), (hash_of(status), Instant::now()));
    }
}

fn hash_of<S: Hash>(value: &S) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}
