//! `orgkeeper controller`: reconcile the orgkeeper resources of a cluster into the store, and write each
//! issued key once into a Secret. Runs in the cluster (in-cluster service account) or from anywhere with a
//! kubeconfig; see docs/controller.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ArgAction;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::duration::parse_duration;
use super::exit;
use crate::controller::{self, LeaseSettings, Settings};
use crate::domain::KubernetesUserNames;
use crate::domain::kubernetes_user::{DEFAULT_GITHUB_TEMPLATE, DEFAULT_GOOGLE_TEMPLATE};
use crate::identity::DeclaredSource;
use crate::store::{DEFAULT_DATABASE_URL, Store, redact_url};
use crate::telemetry::{Telemetry, shutdown_signal};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The store: sqlite://PATH (created if missing) or postgres://USER:PASSWORD@HOST/DB. Replicas share it.
    #[arg(long, env = "ORGKEEPER_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// kubeconfig file. Without it: $KUBECONFIG or ~/.kube/config when present, else the in-cluster
    /// service account (when running in a pod).
    #[arg(long, env = "ORGKEEPER_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context to use (default: the kubeconfig's current context).
    #[arg(long, env = "ORGKEEPER_KUBE_CONTEXT", value_name = "NAME")]
    pub kube_context: Option<String>,
    /// Namespace to watch, or "all" for every namespace (needs cluster-wide permissions).
    #[arg(long, env = "ORGKEEPER_NAMESPACE", default_value = "all", value_name = "NS|all")]
    pub namespace: String,
    /// Address serving /healthz, /readyz and /metrics.
    #[arg(long, env = "ORGKEEPER_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// The Kubernetes user name of a User with `github: LOGIN`, for the generated RoleBindings: {login} is the
    /// username. Match the API server's OIDC username claim and prefix (e.g. 'oidc:{login}').
    #[arg(long, env = "ORGKEEPER_KUBERNETES_USER_GITHUB", default_value = DEFAULT_GITHUB_TEMPLATE, value_name = "TEMPLATE")]
    pub kubernetes_user_github: String,
    /// The Kubernetes user name of a User with `google: EMAIL`: {email} is the address (e.g. '{email}' for an
    /// API server with --oidc-username-claim=email and no prefix).
    #[arg(long, env = "ORGKEEPER_KUBERNETES_USER_GOOGLE", default_value = DEFAULT_GOOGLE_TEMPLATE, value_name = "TEMPLATE")]
    pub kubernetes_user_google: String,
    /// The URL clients reach the sidecar at, written as OSO_URL next to each key in its Secret.
    #[arg(long, env = "ORGKEEPER_OSO_URL", default_value = "http://127.0.0.1:8080")]
    pub oso_url: String,
    /// How often every object is reconciled with no change to it; a change made to the store behind
    /// the controller's back is undone within this interval (+10% jitter, +10 s). Units: ms, s, m, h.
    #[arg(long, env = "ORGKEEPER_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// The longest wait between retries of an object that waits for something (an account to be registered,
    /// a key slot) or whose reconcile failed; retries start at 0.5s and double.
    #[arg(long, env = "ORGKEEPER_MAX_RETRY_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub max_retry_interval: Duration,
    /// How long an object may wait for another resource (its Organization, its Environment, an account, a key
    /// slot) before the wait is announced with a Warning event; shorter waits are Normal events, because
    /// `kubectl apply` of a folder creates resources in an order where some wait seconds for others.
    #[arg(long, env = "ORGKEEPER_WARN_AFTER_WAITING", default_value = "2m", value_parser = parse_duration)]
    pub warn_after_waiting: Duration,
    /// A live key no sidecar used for this long (a never used key: since its issuance) counts in the
    /// orgkeeper_controller_environment_unused_keys metric (e.g. 30d, 2w, 12h).
    #[arg(long, env = "ORGKEEPER_UNUSED_KEY_AFTER", default_value = "30d", value_parser = super::keys::parse_idle)]
    pub unused_key_after: Duration,
    /// Reconciles running at once, per kind (reconciles of one organization always take turns).
    #[arg(long, env = "ORGKEEPER_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Elect a leader through a coordination.k8s.io Lease so that only one replica reconciles. Turn off
    /// (--leader-election=false) only when exactly one replica can ever run.
    #[arg(long, env = "ORGKEEPER_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub leader_election: bool,
    /// Name of the leader-election Lease; replicas with the same Lease take turns.
    #[arg(long, env = "ORGKEEPER_LEASE_NAME", default_value = "orgkeeper-controller")]
    pub lease_name: String,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else the kubeconfig context's namespace, which in a pod
    /// is the pod's own, else "default").
    #[arg(long, env = "ORGKEEPER_LEASE_NAMESPACE", value_name = "NS")]
    pub lease_namespace: Option<String>,
    /// How long the Lease is valid without renewal: a standby takes over this long after the leader stops
    /// renewing (at its next retry when the leader shuts down gracefully and releases the Lease).
    #[arg(long, env = "ORGKEEPER_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// A leader that could not renew the Lease for this long stops (exit code 1); less than --lease-duration.
    #[arg(long, env = "ORGKEEPER_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub lease_renew_deadline: Duration,
    /// How often the leader renews the Lease and standbys try to take it; less than --lease-renew-deadline.
    #[arg(long, env = "ORGKEEPER_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub lease_retry_period: Duration,
    /// This replica's identity in the Lease and in events (default: $POD_NAME or the host name, plus a
    /// random suffix).
    #[arg(long, env = "ORGKEEPER_IDENTITY")]
    pub identity: Option<String>,
    /// Namespace whose ConfigMaps labelled orgkeeper.dev/accounts=true declare accounts (default: $POD_NAMESPACE,
    /// else --lease-namespace, else the kubeconfig context's namespace). Only this namespace is read: a declared
    /// account skips the provider check, so tenants must not be able to write there.
    #[arg(long, env = "ORGKEEPER_DECLARED_ACCOUNTS_NAMESPACE", value_name = "NS")]
    pub declared_accounts_namespace: Option<String>,
    #[command(flatten)]
    pub accounts: super::identity::AccountArgs,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let (settings, lease) = settings(&args)?;
    let shutdown = shutdown_signal();
    let telemetry = Telemetry::new("orgkeeper");
    let mut server = tokio::spawn({
        let (telemetry, shutdown) = (telemetry.clone(), shutdown.clone());
        let addr = args.metrics_addr;
        async move { telemetry.serve(addr, shutdown).await }
    });
    let client = kube_client(&args).await?;
    let lease = lease.map(|mut lease| {
        if lease.namespace.is_empty() {
            lease.namespace = client.default_namespace().to_owned();
        }
        lease
    });
    let version = client
        .apiserver_version()
        .await
        .context("cannot reach the Kubernetes API server")?;
    let store = connect(&args.database_url).await?;
    tracing::info!(
        kubernetes = %version.git_version,
        store = %redact_url(&args.database_url),
        namespace = %args.namespace,
        identity = %settings.identity,
        leader_election = args.leader_election,
        "starting the controller"
    );
    let controller = controller::run(client, store, settings, lease, telemetry, shutdown.clone());
    tokio::pin!(controller);
    let (result, served) = tokio::select! {
        result = &mut controller => (result, false),
        served = &mut server => match served {
            // Stopped by the shutdown signal: let the controller finish and release its lease.
            Ok(Ok(())) => (controller.await, true),
            Ok(Err(e)) => {
                shutdown.cancel();
                return Err(e).with_context(|| format!("serving metrics on {}", args.metrics_addr));
            }
            Err(e) => {
                shutdown.cancel();
                bail!("the metrics server failed: {e}");
            }
        },
    };
    shutdown.cancel();
    if !served {
        let _ = server.await;
    }
    match result {
        Ok(()) => Ok(exit::OK),
        Err(controller::Error::LostLeadership) => {
            eprintln!("error: {}", controller::Error::LostLeadership);
            Ok(exit::ERROR)
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens the store, retrying for a while: in a cluster the database often starts after the controller, and
/// replicas starting together race to create a new store's schema (one wins, the others retry).
async fn connect(url: &str) -> anyhow::Result<Store> {
    const ATTEMPTS: u32 = 8;
    let mut delay = Duration::from_millis(250);
    for attempt in 1.. {
        match Store::connect(url).await {
            Ok(store) => return Ok(store),
            Err(error) if attempt < ATTEMPTS => {
                tracing::warn!(%error, attempt, retry_in = ?delay, "cannot open the store yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            Err(error) => return Err(error).context("opening the store"),
        }
    }
    unreachable!("the loop returns")
}

fn settings(args: &Args) -> anyhow::Result<(Settings, Option<LeaseSettings>)> {
    let namespace = match args.namespace.as_str() {
        "all" | "" => None,
        ns => Some(ns.to_owned()),
    };
    let lease = if args.leader_election {
        if args.lease_renew_deadline >= args.lease_duration {
            bail!(
                "--lease-renew-deadline must be shorter than --lease-duration, so a leader stops before others may start"
            );
        }
        if args.lease_retry_period >= args.lease_renew_deadline {
            bail!("--lease-retry-period must be shorter than --lease-renew-deadline");
        }
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
            // Filled in from the Kubernetes client's default namespace once the client exists.
            .unwrap_or_default();
        Some(LeaseSettings {
            name: args.lease_name.clone(),
            namespace,
            duration: args.lease_duration,
            renew_deadline: args.lease_renew_deadline,
            retry_period: args.lease_retry_period,
        })
    } else {
        None
    };
    let settings = Settings {
        namespace,
        oso_url: args.oso_url.clone(),
        resync_interval: args.resync_interval,
        max_retry_interval: args.max_retry_interval,
        warn_after_waiting: args.warn_after_waiting,
        unused_key_after: args.unused_key_after,
        concurrency: args.concurrency,
        identity: args.identity.clone().unwrap_or_else(controller::default_identity),
        kubernetes_users: KubernetesUserNames::new(&args.kubernetes_user_github, &args.kubernetes_user_google)?,
        accounts: args.accounts.directory(DeclaredSource::watched())?,
        declared_accounts_namespace: args
            .declared_accounts_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|ns| !ns.is_empty()))
            .or_else(|| args.lease_namespace.clone()),
    };
    Ok((settings, lease))
}

async fn kube_client(args: &Args) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: args.kube_context.clone(),
        ..Default::default()
    };
    let config = match (&args.kubeconfig, &args.kube_context) {
        (Some(path), _) => {
            let kubeconfig =
                Kubeconfig::read_from(path).with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .context("loading the kubeconfig")?,
        (None, None) => Config::infer().await.context(
            "no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, or run in a pod with a service account",
        )?,
    };
    Client::try_from(config).context("creating the Kubernetes client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_timings_must_nest() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["orgkeeper"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().args
        };
        let (scoped, lease) = settings(&parse(&["--namespace", "team"])).unwrap();
        assert_eq!(scoped.namespace.as_deref(), Some("team"));
        assert_eq!(lease.unwrap().duration, Duration::from_secs(15));
        assert!(settings(&parse(&["--lease-renew-deadline", "20s"])).is_err());
        let (everywhere, lease) = settings(&parse(&["--leader-election=false"])).unwrap();
        assert!(lease.is_none() && everywhere.namespace.is_none());
    }
}
