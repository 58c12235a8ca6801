//! How the shared limiter reaches Redis: one server (or a stable address in front of one), a Redis Cluster,
//! or the primary that Redis Sentinel names.
//!
//! Whatever the deployment, one store's limiter state lives under one hash tag (`{prefix}`), so in a
//! Cluster every key of a store hashes to one slot and the limiter's script runs whole on the node that owns
//! it: no cross-slot work, atomic as on a single server. That places a store's limits on one shard, which is
//! ample (with leases Redis sees a few commands per hundred requests); stores with different prefixes spread
//! over the shards. Sentinel gives failover of a single primary: a link asks the sentinels for the current
//! primary, and after any failure (the connection broke, the old primary now answers `READONLY`) asks again
//! on its next round trip, which the limiter's heartbeat makes within a second.
//!
//! The links are built from the same options everywhere: each sidecar worker's task and the limiter's own
//! task get one each ([`Connector::link`]), which connects on first use so that a sidecar starts (in
//! fallback) even while Redis is away.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, ConnectionInfo, IntoConnectionInfo, RedisResult, ScriptInvocation};
use secrecy::{ExposeSecret, SecretString};

use super::redis::RedisError;

/// `--redis-mode`: how the Redis behind `--redis-url` is deployed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RedisMode {
    /// One server, or a stable address (a Service) in front of the current primary.
    #[default]
    Standalone,
    /// A Redis Cluster (or Valkey cluster); `--redis-url` lists one or more of its nodes.
    Cluster,
    /// Redis Sentinel; `--redis-url` lists the sentinels, and the primary is the one they name `master`.
    Sentinel { master: String },
}

impl RedisMode {
    pub fn name(&self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel { .. } => "sentinel",
        }
    }
}

/// The mode's name as on the command line (the Sentinel primary's name comes from its own flag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisModeName {
    #[default]
    Standalone,
    Cluster,
    Sentinel,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown Redis mode {0:?}: use standalone, cluster or sentinel")]
pub struct UnknownRedisMode(String);

impl FromStr for RedisModeName {
    type Err = UnknownRedisMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "standalone" => Ok(RedisModeName::Standalone),
            "cluster" => Ok(RedisModeName::Cluster),
            "sentinel" => Ok(RedisModeName::Sentinel),
            other => Err(UnknownRedisMode(other.to_owned())),
        }
    }
}

impl std::fmt::Display for RedisModeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisModeName::Standalone => "standalone",
            RedisModeName::Cluster => "cluster",
            RedisModeName::Sentinel => "sentinel",
        })
    }
}

/// Builds links to Redis.
#[derive(Clone)]
pub(super) enum Connector {
    Standalone {
        client: Client,
        config: ConnectionManagerConfig,
    },
    Cluster(ClusterClient),
    /// One Sentinel client shared by the links (it caches its connections to the sentinels).
    Sentinel {
        client: Arc<tokio::sync::Mutex<SentinelClient>>,
        config: AsyncConnectionConfig,
    },
}

/// One connection to Redis, as a task owns it.
pub(super) enum Link {
    Standalone(ConnectionManager),
    // Boxed: a client and its connection are much larger than a connection manager.
    Cluster(Box<ClusterLink>),
    Sentinel(Box<SentinelLink>),
}

pub(super) struct ClusterLink {
    client: ClusterClient,
    connection: Option<ClusterConnection>,
}

pub(super) struct SentinelLink {
    client: Arc<tokio::sync::Mutex<SentinelClient>>,
    config: AsyncConnectionConfig,
    primary: Option<MultiplexedConnection>,
}

/// The URLs of `--redis-url`: one, or several separated by commas (a Cluster's nodes, the sentinels).
fn parse_urls(urls: &SecretString) -> Result<Vec<ConnectionInfo>, RedisError> {
    urls.expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| url.into_connection_info().map_err(|e| RedisError::Url(e.to_string())))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|urls| {
            if urls.is_empty() {
                Err(RedisError::Url("no URL given".into()))
            } else {
                Ok(urls)
            }
        })
}

fn with_password(info: ConnectionInfo, password: Option<&SecretString>) -> ConnectionInfo {
    match password {
        Some(password) => {
            let settings = info.redis_settings().clone().set_password(password.expose_secret());
            info.set_redis_settings(settings)
        }
        None => info,
    }
}

impl Connector {
    /// `timeout` bounds each answer; connecting may take a little longer (at least 500 ms).
    pub fn new(
        urls: &SecretString,
        password: Option<&SecretString>,
        mode: &RedisMode,
        timeout: Duration,
    ) -> Result<Self, RedisError> {
        let connect_timeout = timeout.max(Duration::from_millis(500));
        let mut infos = parse_urls(urls)?;
        let client_error = |e: redis::RedisError| RedisError::Client(e.to_string());
        match mode {
            RedisMode::Standalone => {
                if infos.len() != 1 {
                    return Err(RedisError::Url(
                        "one URL in standalone mode (several are for --redis-mode cluster or sentinel)".into(),
                    ));
                }
                let info = with_password(infos.remove(0), password);
                let client = Client::open(info).map_err(client_error)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                Ok(Connector::Standalone { client, config })
            }
            RedisMode::Cluster => {
                let nodes: Vec<_> = infos.into_iter().map(|info| with_password(info, password)).collect();
                let client = ClusterClient::builder(nodes)
                    .connection_timeout(connect_timeout)
                    .response_timeout(timeout)
                    .build()
                    .map_err(client_error)?;
                Ok(Connector::Cluster(client))
            }
            RedisMode::Sentinel { master } => {
                // The primary's credentials: --redis-password-file, or those of the first sentinel URL.
                let primary = match password {
                    Some(password) => infos[0].redis_settings().clone().set_password(password.expose_secret()),
                    None => infos[0].redis_settings().clone(),
                };
                let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(primary);
                let client = SentinelClient::build(infos, master.as_str(), Some(node), SentinelServerType::Master)
                    .map_err(client_error)?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(timeout));
                Ok(Connector::Sentinel {
                    client: Arc::new(tokio::sync::Mutex::new(client)),
                    config,
                })
            }
        }
    }

    /// A link that connects on first use.
    pub fn link(&self) -> Result<Link, RedisError> {
        match self {
            Connector::Standalone { client, config } => {
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map(Link::Standalone)
                    .map_err(|e| RedisError::Client(e.to_string()))
            }
            Connector::Cluster(client) => Ok(Link::Cluster(Box::new(ClusterLink {
                client: client.clone(),
                connection: None,
            }))),
            Connector::Sentinel { client, config } => Ok(Link::Sentinel(Box::new(SentinelLink {
                client: client.clone(),
                config: config.clone(),
                primary: None,
            }))),
        }
    }
}

impl Link {
    /// Drops a connection that did not answer in time: the next call connects afresh (to the primary the
    /// sentinels name then). A standalone link reconnects by itself.
    pub fn forget(&mut self) {
        match self {
            Link::Standalone(_) => {}
            Link::Cluster(link) => link.connection = None,
            Link::Sentinel(link) => link.primary = None,
        }
    }

    /// Runs the script; a link that failed connects afresh on its next call (a Sentinel link asks the
    /// sentinels for the primary again).
    pub async fn invoke(&mut self, invocation: &ScriptInvocation<'_>) -> RedisResult<Vec<Vec<i64>>> {
        match self {
            Link::Standalone(connection) => invocation.invoke_async(connection).await,
            Link::Cluster(link) => {
                let live = match &mut link.connection {
                    Some(live) => live,
                    None => link.connection.insert(link.client.get_async_connection().await?),
                };
                let result = invocation.invoke_async(live).await;
                if result.as_ref().is_err_and(|e| e.is_unrecoverable_error()) {
                    link.connection = None;
                }
                result
            }
            Link::Sentinel(link) => {
                let live = match &mut link.primary {
                    Some(live) => live,
                    None => {
                        let found = link.client.lock().await.async_get_client().await?;
                        let connection = found.get_multiplexed_async_connection_with_config(&link.config).await?;
                        link.primary.insert(connection)
                    }
                };
                let result = invocation.invoke_async(live).await;
                if result.is_err() {
                    link.primary = None;
                }
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(urls: &str, mode: RedisMode) -> Result<Connector, RedisError> {
        Connector::new(&SecretString::from(urls), None, &mode, Duration::from_millis(100))
    }

    #[test]
    fn modes_are_named_as_on_the_command_line() {
        for name in ["standalone", "cluster", "sentinel"] {
            assert_eq!(name.parse::<RedisModeName>().unwrap().to_string(), name);
        }
        assert!("replicated".parse::<RedisModeName>().is_err());
    }

    #[test]
    fn several_urls_are_for_a_cluster_or_sentinels_and_a_bad_one_is_not_echoed() {
        let two = "redis://a:6379,redis://b:6379";
        assert!(connector(two, RedisMode::Cluster).is_ok());
        let sentinel = RedisMode::Sentinel {
            master: "mymaster".into(),
        };
        assert!(connector(two, sentinel).is_ok());
        let Err(RedisError::Url(why)) = connector(two, RedisMode::Standalone) else {
            panic!("standalone takes one URL");
        };
        assert!(why.contains("one URL in standalone mode"), "{why}");
        let Err(RedisError::Url(why)) = connector("redis://a:6379,nonsense://user:hunter2@b", RedisMode::Cluster)
        else {
            panic!("a URL that is not Redis's is refused");
        };
        assert!(!why.contains("hunter2"), "{why}");
        for bad in [
            "redis://user:hunter2@host:notaport",
            "redis://:hunter2@/",
            "rediss://user:hunter2@",
        ] {
            if let Err(RedisError::Url(why) | RedisError::Client(why)) = connector(bad, RedisMode::Standalone) {
                assert!(!why.contains("hunter2"), "{bad}: {why}");
            }
        }
        assert!(matches!(connector(" , ", RedisMode::Cluster), Err(RedisError::Url(_))));
    }
}
