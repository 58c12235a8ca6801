//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several replicas exactly one
//! reconciles. It follows client-go's algorithm: the holder renews the lease every retry period; another
//! replica takes it over only after seeing the same, unrenewed record for a whole lease duration on its own
//! clock (so clock skew between machines does not matter); a holder that cannot renew within the renew
//! deadline (shorter than the lease duration) stops leading before anyone else may start. A holder that
//! shuts down gracefully releases the lease, and a standby takes over at its next retry.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

/// Where the lease lives and how it is timed.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// How long a lease is valid without renewal; standbys wait this long before taking over.
    pub duration: Duration,
    /// The leader gives up leading when it could not renew for this long (less than `duration`).
    pub renew_deadline: Duration,
    /// How often the leader renews and standbys check.
    pub retry_period: Duration,
}

pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    identity: String,
    /// The last lease record seen held by someone else, and when it was first seen.
    observed: Option<((String, Option<String>), Instant)>,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings, identity: String) -> Self {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            identity,
            observed: None,
        }
    }

    /// Waits until this replica holds the lease. Returns false when `shutdown` comes first.
    pub async fn acquire(&mut self, shutdown: &CancellationToken) -> bool {
        let mut logged_holder = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(
                        lease = %self.settings.name, namespace = %self.settings.namespace,
                        identity = %self.identity, "became the leader"
                    );
                    return true;
                }
                Ok(false) => {
                    let holder = self.observed.as_ref().map(|((holder, _), _)| holder.clone());
                    if holder != logged_holder {
                        tracing::info!(holder = ?holder, lease = %self.settings.name, "standing by: another replica leads");
                        logged_holder = holder;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %super::describe(&error), lease = %self.settings.name, "cannot read or take the lease")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(self.settings.retry_period) => {}
            }
        }
    }

    /// Renews the lease until `stop` is cancelled (then returns, still holding it) or leadership is lost
    /// (then cancels `lost` and returns).
    pub async fn hold(mut self, stop: CancellationToken, lost: CancellationToken) -> Self {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return self,
                _ = tokio::time::sleep(self.settings.retry_period) => {}
            }
            let attempt = tokio::time::timeout(self.settings.renew_deadline, self.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(true)) => renewed = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::error!(lease = %self.settings.name, "another replica took the lease: no longer the leader");
                    lost.cancel();
                    return self;
                }
                Ok(Err(error)) => tracing::warn!(error = %super::describe(&error), "cannot renew the lease"),
                Err(_) => tracing::warn!("renewing the lease timed out"),
            }
            if renewed.elapsed() >= self.settings.renew_deadline {
                tracing::error!(
                    lease = %self.settings.name,
                    "could not renew the lease within the renew deadline: no longer the leader"
                );
                lost.cancel();
                return self;
            }
        }
    }

    /// Gives the lease up so that a standby takes over at once rather than after the lease duration.
    pub async fn release(&self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now());
            self.api
                .replace(&self.settings.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        .await;
        match result {
            Ok(()) => tracing::info!(lease = %self.settings.name, "released the lease"),
            Err(error) => {
                tracing::warn!(error = %super::describe(&error), "could not release the lease; standbys take over when it expires")
            }
        }
    }

    /// One round of the election: creates, renews or takes over the lease. Ok(true) when this replica holds it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let seconds = i32::try_from(self.settings.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return accepted(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != self.identity {
            let record = (holder.clone(), lease.metadata.resource_version.clone());
            if self.observed.as_ref().is_none_or(|(seen, _)| *seen != record) {
                self.observed = Some((record, Instant::now()));
            }
            let valid_for = spec
                .lease_duration_seconds
                .map_or(self.settings.duration, |s| Duration::from_secs(s.max(0) as u64));
            let unrenewed_for = self.observed.as_ref().map_or(Duration::ZERO, |(_, at)| at.elapsed());
            if !holder.is_empty() && unrenewed_for < valid_for {
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now());
        // The replace carries the resourceVersion read above: if anyone changed the lease since, it fails.
        accepted(
            self.api
                .replace(&self.settings.name, &PostParams::default(), &lease)
                .await,
        )
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// A write that lost a race (409) means someone else holds the lease.
fn accepted(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

/// This replica's name in the lease: the pod name (or host name) and a random suffix, so that two
/// processes on one machine never mistake each other's lease for their own.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "orgkeeper".to_owned());
    format!("{host}_{}", crate::domain::keys::new_id())
}
