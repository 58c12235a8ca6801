//! The Kubernetes controller: reconciles Organizations, Environments, Users and ApiKeys into the store
//! with the same domain rules and store code as `orgkeeper apply`, and writes each issued key once into a
//! Secret.
//!
//! One kube-rs `Controller` runs per kind, all fed by shared caches (`caches`). Whatever object a
//! reconcile is for, it reconciles that object's whole organization (`sync`), under a per-organization lock,
//! then writes the object's own status (`status`) or releases its finalizer (`reconcile`). Issuance is
//! crash-safe (`issuance`, `secrets`); `triggers` decides what wakes a reconcile; `leader` makes sure only
//! one replica reconciles; `metrics` counts what happens.

mod api_key;
mod caches;
mod context;
mod environment;
mod failpoint;
mod issuance;
mod leader;
mod metrics;
mod organization;
mod provenance;
mod rbac;
mod reconcile;
mod resource;
mod secrets;
mod status;
mod sync;
mod triggers;
mod user;
mod view;

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt};
use kube::Client;
use kube::runtime::Controller;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store as Cache};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use context::Settings;
pub use failpoint::{ENV as FAILPOINT_ENV, Step as FailpointStep};
pub use leader::{LeaseSettings, default_identity};
pub use reconcile::FINALIZER;

use crate::crd::Organization;
use crate::store::{Store, StoreError};
use crate::telemetry::{Readiness, Telemetry};
use caches::{Caches, Feed};
use context::Context;
use failpoint::Failpoint;
use leader::Elector;
use metrics::Metrics;
use reconcile::{error_policy, reconcile};
use resource::OrgkeeperResource;
use triggers::{dependents_of_organization, keys_of_environment, spec_changes};

/// The name the controller reports events under.
pub const REPORTER: &str = "orgkeeper-controller";

/// The field manager of everything the controller writes except statuses (finalizers, Secrets).
pub const FIELD_MANAGER: &str = "orgkeeper-controller";

/// The field manager of status writes, apart from the controller's other writes.
pub const STATUS_MANAGER: &str = "orgkeeper-controller-status";

/// Organizations and Environments only gather counts from their dependents: wait this long after a
/// burst of changes before recounting.
const COUNTS_DEBOUNCE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Kubernetes API: {}", describe(.0))]
    Kube(#[from] kube::Error),
    #[error("the object changed while it was being updated")]
    Conflict,
    #[error("{0}")]
    Vanished(String),
    #[error("{0}")]
    Config(String),
    #[error("lost the leader lease: stopped reconciling so that another replica can take over")]
    LostLeadership,
}

/// A Kubernetes client error as a person reads it: the API server's own message and reason (kube's
/// `Display` of an API error appends the whole response struct).
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                "no reason given"
            } else {
                &status.reason
            };
            format!("{} ({reason}, HTTP {})", status.message, status.code)
        }
        other => other.to_string(),
    }
}

/// A watch error as a person reads it (see [`describe`]).
fn describe_watch(error: &kube::runtime::watcher::Error) -> String {
    use kube::runtime::watcher::Error as Watch;
    match error {
        Watch::InitialListFailed(e) => format!("cannot list: {}", describe(e)),
        Watch::WatchStartFailed(e) => format!("cannot start watching: {}", describe(e)),
        Watch::WatchFailed(e) => format!("the watch failed: {}", describe(e)),
        Watch::WatchError(status) => format!("the API server ended the watch: {} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

/// Runs the controller until `shutdown` is cancelled (Ok) or leadership is lost (Err).
pub async fn run(
    client: Client,
    store: Store,
    settings: Settings,
    lease: Option<LeaseSettings>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let failpoint = Failpoint::from_env().map_err(Error::Config)?;
    if failpoint.is_armed() {
        tracing::warn!(
            "{} is set: the process aborts at that step (testing only)",
            failpoint::ENV
        );
    }
    let metrics = Metrics::register(&telemetry);
    telemetry.health.set(Readiness::Ready);
    let mut elector = None;
    if let Some(lease) = lease {
        let mut candidate = Elector::new(client.clone(), lease, settings.identity.clone());
        if !candidate.acquire(&shutdown).await {
            return Ok(());
        }
        elector = Some(candidate);
    }
    metrics.set_leader(true);
    let lost = CancellationToken::new();
    let renewing = elector.map(|e| tokio::spawn(e.hold(shutdown.clone(), lost.clone())));
    let result = tokio::select! {
        result = run_controllers(client, store, settings, metrics.clone(), failpoint, shutdown.clone()) => result,
        // Stop at once: in-flight reconciles are dropped, which is safe (transactions roll back, a key whose
        // Secret was written stays pending until the next leader completes it).
        _ = lost.cancelled() => Err(Error::LostLeadership),
    };
    metrics.set_leader(false);
    telemetry.health.set(Readiness::NotReady("shutting down".into()));
    if let Some(renewing) = renewing
        && let Ok(elector) = renewing.await
        && !lost.is_cancelled()
    {
        elector.release().await;
    }
    result
}

async fn run_controllers(
    client: Client,
    store: Store,
    settings: Settings,
    metrics: Metrics,
    failpoint: Failpoint,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut watches = JoinSet::new();
    let (triggers, streams) = triggers::channels();
    let (caches, mut feeds) = caches::caches(&client, settings.namespace.as_deref());
    let declared_accounts_namespace =
        (settings.declared_accounts_namespace.clone()).unwrap_or_else(|| client.default_namespace().to_owned());
    tokio::spawn(crate::identity::declared::watch(
        client.clone(),
        declared_accounts_namespace,
        settings.accounts.declared().clone(),
        shutdown.clone(),
    ));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: REPORTER.into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let config = ControllerConfig::default().concurrency(settings.concurrency);
    tracing::info!(
        namespace = settings.namespace.as_deref().unwrap_or("all"),
        resync = ?settings.resync_interval,
        "controller started"
    );
    let secret_changes = triggers.api_keys();
    let ctx = Arc::new(Context::new(
        client,
        store,
        caches.clone(),
        settings,
        metrics,
        recorder,
        triggers,
        failpoint,
    ));
    let counts = config.clone().debounce(COUNTS_DEBOUNCE);
    let run = Runner {
        ctx: ctx.clone(),
        shutdown: shutdown.clone(),
    };
    let organizations = run.kind(
        watching(&mut feeds.organizations, &caches.organizations),
        streams.organizations,
        counts.clone(),
    );
    let environments = run.kind(
        belonging_to_organization(
            &mut feeds.environments,
            &caches.environments,
            &mut feeds.organizations,
            &caches,
        ),
        streams.environments,
        counts,
    );
    let users = run.kind(
        belonging_to_organization(&mut feeds.users, &caches.users, &mut feeds.organizations, &caches),
        streams.users,
        config.clone(),
    );
    let api_keys = run.kind(
        belonging_to_organization(&mut feeds.api_keys, &caches.api_keys, &mut feeds.organizations, &caches)
            .watches_shared_stream(
                changes(&mut feeds.environments, &caches.environments),
                keys_of_environment(caches.api_keys.clone()),
            ),
        streams.api_keys,
        config,
    );

    // Subscriptions are complete: start watching.
    feeds.start(&caches, secret_changes, &mut watches);
    futures::join!(organizations, environments, users, api_keys);
    watches.shutdown().await;
    ctx.store.close().await;
    tracing::info!("controller stopped");
    Ok(())
}

/// Runs the controllers of every kind with the same context and shutdown.
struct Runner {
    ctx: Arc<Context>,
    shutdown: CancellationToken,
}

impl Runner {
    /// Runs `controller` until shutdown: the shared reconcile for its kind, also woken by `triggers`.
    fn kind<K: OrgkeeperResource>(
        &self,
        controller: Controller<K>,
        triggers: UnboundedReceiver<ObjectRef<K>>,
        config: ControllerConfig,
    ) -> impl Future<Output = ()> + use<K> {
        controller
            .reconcile_on(triggers)
            .with_config(config)
            .graceful_shutdown_on(self.shutdown.clone().cancelled_owned())
            .run(reconcile::<K>, error_policy::<K>, self.ctx.clone())
            .for_each(report)
    }
}

/// A controller of the objects of a kind, woken when their spec changes.
fn watching<K: OrgkeeperResource>(feed: &mut Feed<K>, cache: &Cache<K>) -> Controller<K> {
    Controller::for_shared_stream(changes(feed, cache), cache.clone())
}

/// A controller of a kind that belongs to an organization: also woken when its Organization changes.
fn belonging_to_organization<K: OrgkeeperResource>(
    feed: &mut Feed<K>,
    cache: &Cache<K>,
    organizations: &mut Feed<Organization>,
    caches: &Caches,
) -> Controller<K> {
    watching(feed, cache).watches_shared_stream(
        changes(organizations, &caches.organizations),
        dependents_of_organization(cache.clone(), K::organization_name),
    )
}

/// The objects of a kind whose spec changed (or that are new, or being deleted).
fn changes<K>(feed: &mut Feed<K>, cache: &Cache<K>) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    feed.subscribe().filter(spec_changes(cache.clone()))
}

/// Logs what the controllers themselves report (reconcile errors are logged where they happen).
async fn report<T, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(error) = result {
        tracing::debug!(%error, "controller");
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    #[test]
    fn an_api_error_reads_as_the_api_servers_message_and_reason() {
        let status = Status::failure("apikeys.orgkeeper.dev \"k\" is forbidden: no access", "Forbidden").with_code(403);
        let error = Error::from(kube::Error::Api(Box::new(status)));
        assert_eq!(
            error.to_string(),
            "Kubernetes API: apikeys.orgkeeper.dev \"k\" is forbidden: no access (Forbidden, HTTP 403)"
        );
        assert!(!error.to_string().contains("Status {"));
    }
}
