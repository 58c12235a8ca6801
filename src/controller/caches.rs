//! The controller's view of the cluster: one watch and one in-memory cache (reflector) per kind, shared by
//! every reconciler, and a feed of changed objects for each controller that cares about the kind.
//! Reconciles read these caches instead of the API server, which keeps an idle controller free of API
//! traffic; each cache is fed by a long-running watch that resumes on its own after errors.
//!
//! Readiness is tracked here rather than with `Store::wait_until_ready`: that future wakes only one of
//! several concurrent waiters, and each kube `Controller` already waits on its own store.
//!
//! Secrets are cached as metadata only (never their data), to know which exist, who owns them and which
//! key they hold. Their changes wake the ApiKey that names them: a deleted Secret shows as
//! `SecretMissing` right away, a removed foreign Secret lets a waiting key be issued.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::crd::{ApiKey, Environment, Organization, User};

/// The last-applied annotation copies the whole spec; the controller never reads it.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Read handles to every cache.
#[derive(Clone)]
pub struct Caches {
    pub organizations: Store<Organization>,
    pub environments: Store<Environment>,
    pub users: Store<User>,
    pub api_keys: Store<ApiKey>,
    /// Metadata only: these Secrets carry no data.
    pub secrets: Store<Secret>,
    ready: Readiness,
}

/// Counts down as each cache completes its first list; `done` is cancelled when all have.
#[derive(Clone)]
struct Readiness {
    remaining: Arc<AtomicUsize>,
    done: CancellationToken,
}

impl Readiness {
    fn new(caches: usize) -> Self {
        Readiness {
            remaining: Arc::new(AtomicUsize::new(caches)),
            done: CancellationToken::new(),
        }
    }

    fn listed(&self) {
        if self.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.done.cancel();
        }
    }
}

/// The watch of one kind, before it starts: controllers subscribe to the objects it sees change.
pub struct Feed<K: Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    writer: Writer<K>,
    subscribers: Vec<UnboundedSender<Arc<K>>>,
}

/// The feeds of the four kinds.
pub struct Feeds {
    pub organizations: Feed<Organization>,
    pub environments: Feed<Environment>,
    pub users: Feed<User>,
    pub api_keys: Feed<ApiKey>,
    secrets: Api<PartialObjectMeta<Secret>>,
    secret_writer: Writer<Secret>,
    ready: Readiness,
}

/// An `Api` for every namespace, or for one.
pub fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The caches (empty until their feeds start) and their feeds.
pub fn caches(client: &Client, namespace: Option<&str>) -> (Caches, Feeds) {
    let ready = Readiness::new(5);
    let organizations = Feed::new(api(client, namespace));
    let environments = Feed::new(api(client, namespace));
    let users = Feed::new(api(client, namespace));
    let api_keys = Feed::new(api(client, namespace));
    let (secrets, secret_writer) = reflector::store();
    let caches = Caches {
        organizations: organizations.writer.as_reader(),
        environments: environments.writer.as_reader(),
        users: users.writer.as_reader(),
        api_keys: api_keys.writer.as_reader(),
        secrets,
        ready: ready.clone(),
    };
    let feeds = Feeds {
        organizations,
        environments,
        users,
        api_keys,
        secrets: api(client, namespace),
        secret_writer,
        ready,
    };
    (caches, feeds)
}

impl Feeds {
    /// Starts every watch as a task in `tasks`. Changes to Secrets are sent to `secret_changes` as the
    /// ApiKeys they concern.
    pub fn start(self, caches: &Caches, secret_changes: UnboundedSender<ObjectRef<ApiKey>>, tasks: &mut JoinSet<()>) {
        self.organizations.start(&self.ready, tasks);
        self.environments.start(&self.ready, tasks);
        self.users.start(&self.ready, tasks);
        self.api_keys.start(&self.ready, tasks);
        secrets(
            self.secrets,
            self.secret_writer,
            caches.api_keys.clone(),
            secret_changes,
            &self.ready,
            tasks,
        );
    }
}

impl Caches {
    /// Waits until every cache holds a complete initial list. Reconciling earlier could mistake an object
    /// not yet listed for one that was deleted.
    pub async fn ready(&self) {
        self.ready.done.cancelled().await;
    }
}

/// Drops what the controller never reads, so that large clusters cost less memory.
fn slim<K: Resource>(object: &mut K) {
    object.managed_fields_mut().clear();
    object.annotations_mut().remove(LAST_APPLIED);
}

impl<K> Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn new(api: Api<K>) -> Self {
        Feed {
            api,
            writer: Writer::default(),
            subscribers: Vec::new(),
        }
    }

    /// A stream of the objects this feed sees created or changed (all of them after each full list).
    pub fn subscribe(&mut self) -> UnboundedReceiver<Arc<K>> {
        let (sender, receiver) = unbounded();
        self.subscribers.push(sender);
        receiver
    }

    fn start(self, ready: &Readiness, tasks: &mut JoinSet<()>) {
        let Feed {
            api,
            writer,
            subscribers,
        } = self;
        let ready = ready.clone();
        let mut listed = false;
        let mut listing: Vec<Arc<K>> = Vec::new();
        let send = move |object: Arc<K>| {
            for subscriber in &subscribers {
                let _ = subscriber.unbounded_send(object.clone());
            }
        };
        let watch = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(slim::<K>)
            .reflect(writer)
            .for_each(move |event| {
                match event {
                    Ok(watcher::Event::Apply(object)) => send(Arc::new(object)),
                    // A (re)list is announced once it is complete and in the cache.
                    Ok(watcher::Event::Init) => listing.clear(),
                    Ok(watcher::Event::InitApply(object)) => listing.push(Arc::new(object)),
                    Ok(watcher::Event::InitDone) => {
                        listing.drain(..).for_each(&send);
                        if !listed {
                            listed = true;
                            ready.listed();
                        }
                    }
                    Ok(watcher::Event::Delete(_)) => {}
                    Err(error) => {
                        tracing::warn!(kind = %K::kind(&()), error = %super::describe_watch(&error), "watch failed; retrying with backoff")
                    }
                }
                std::future::ready(())
            });
        tasks.spawn(watch);
    }
}

/// Watches Secrets as metadata only (their data never reaches the controller) and caches them as `Secret`s
/// without data, so that ownership checks read them like any Secret.
fn secrets(
    api: Api<PartialObjectMeta<Secret>>,
    mut writer: Writer<Secret>,
    api_keys: Store<ApiKey>,
    changes: UnboundedSender<ObjectRef<ApiKey>>,
    ready: &Readiness,
    tasks: &mut JoinSet<()>,
) {
    let ready = ready.clone();
    let mut listed = false;
    let watch = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(slim::<PartialObjectMeta<Secret>>)
        .for_each(move |event| {
            match event.map(metadata_only) {
                Ok(event) => {
                    writer.apply_watcher_event(&event);
                    match &event {
                        watcher::Event::Delete(secret) => wake(&api_keys, secret, &changes, |_| true),
                        // Secrets the controller writes for a key need no second look; any other Secret of a
                        // key's name may be a conflict appearing.
                        watcher::Event::Apply(secret) => wake(&api_keys, secret, &changes, |key| {
                            !super::secrets::is_written_for(secret, key)
                        }),
                        watcher::Event::InitDone if !listed => {
                            listed = true;
                            ready.listed();
                        }
                        _ => {}
                    }
                }
                Err(error) => tracing::warn!(
                    kind = "Secret",
                    error = %super::describe_watch(&error),
                    "watch failed; retrying with backoff"
                ),
            }
            std::future::ready(())
        });
    tasks.spawn(watch);
}

fn metadata_only(event: watcher::Event<PartialObjectMeta<Secret>>) -> watcher::Event<Secret> {
    let secret = |meta: PartialObjectMeta<Secret>| Secret {
        metadata: meta.metadata,
        ..Default::default()
    };
    match event {
        watcher::Event::Apply(meta) => watcher::Event::Apply(secret(meta)),
        watcher::Event::Delete(meta) => watcher::Event::Delete(secret(meta)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(meta) => watcher::Event::InitApply(secret(meta)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Sends the ApiKeys whose Secret this is (same namespace and name) and for which `relevant` holds.
fn wake(
    api_keys: &Store<ApiKey>,
    secret: &Secret,
    changes: &UnboundedSender<ObjectRef<ApiKey>>,
    relevant: impl Fn(&ApiKey) -> bool,
) {
    let (namespace, name) = (secret.namespace(), secret.name_any());
    for key in api_keys
        .state()
        .iter()
        .filter(|k: &&Arc<ApiKey>| k.namespace() == namespace && k.secret_name() == name && relevant(k.as_ref()))
    {
        let _ = changes.unbounded_send(ObjectRef::from_obj(key.as_ref()));
    }
}
