//! What the shared-limits tests need besides the sidecar harness: a real `redis-server` of their own on a
//! free port (no persistence, so a restart loses its state as a crashed Redis would), which a test can stop,
//! start again on the same port, pause (SIGSTOP) and resume; and `orgkeeper sidecar` replicas as processes
//! on one SQLite store, so a replica can be killed with SIGKILL.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::sidecar_support::Http;

/// A loopback port nobody listens on, from below the kernel's ephemeral range and never the same twice in
/// this process. A port from `bind(0)` is in that range, which the kernel hands to every outgoing connection
/// and to other tests' `bind(0)`: while a test has its Redis stopped, the port could be taken, and the
/// restart would fail, or the replicas reconnect to somebody else's server.
fn free_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOWEST).max(1_000);
    // Another test binary may still hold the ports of the one before it: start elsewhere in the span.
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = (LOWEST + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().unwrap();
        }
    }
    panic!("no free loopback port between {LOWEST} and {ephemeral}");
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a child process this harness started and has not reaped.
    let done = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(done, 0, "signal {signal} to {pid}");
}

/// A `redis-server` of this test's own.
pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    /// More arguments (cluster mode, replication, sentinel mode).
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(None)
    }

    /// A server that refuses clients without this password (`requirepass`).
    pub fn start_with(password: Option<&str>) -> RedisServer {
        let mut server = RedisServer {
            port: free_addr().port(),
            password: password.map(str::to_owned),
            extra: Vec::new(),
            child: None,
        };
        server.launch();
        server
    }

    /// A server started with more arguments; its port is substituted for `{port}` in them, and another free
    /// port for `{bus_port}` (a cluster node's bus, which is otherwise the port plus 10,000 and may be taken).
    pub fn start_args(extra: &[String]) -> RedisServer {
        let port = free_addr().port();
        let bus_port = free_addr().port();
        let mut server = RedisServer {
            port,
            password: None,
            extra: extra
                .iter()
                .map(|a| {
                    a.replace("{port}", &port.to_string())
                        .replace("{bus_port}", &bus_port.to_string())
                })
                .collect(),
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.extra)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            // A replica writes what it receives from its primary to disk: somewhere outside the
            // repository, one file per server.
            .args(["--dir", &std::env::temp_dir().display().to_string()])
            .args(["--dbfilename", &format!("orgkeeper-test-{}.rdb", self.port)])
            .args(["--logfile", &self.log_file().display().to_string()])
            .args(self.password.iter().flat_map(|p| ["--requirepass", p.as_str()]))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let up = |reply: Option<String>| reply.is_some_and(|r| r == "+PONG" || r.starts_with("-NOAUTH"));
        while !up(self.command("PING")) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}; its log:\n{}",
                self.port,
                std::fs::read_to_string(self.log_file()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let exited = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "redis-server exited ({exited:?}) while something else answers on {}; its log:\n{}",
            self.port,
            std::fs::read_to_string(self.log_file()).unwrap_or_default()
        );
    }

    fn log_file(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("orgkeeper-test-redis-{}.log", self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills it (SIGKILL: its state is lost, as in a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// SIGSTOP: connections stay open and nothing answers, as with an overloaded or partitioned Redis.
    pub fn pause(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    /// One inline command's first reply line (`None` when it cannot be reached).
    pub fn command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut reply = vec![0; 64 * 1024];
        let n = stream.read(&mut reply).ok()?;
        let text = String::from_utf8_lossy(&reply[..n]).into_owned();
        Some(text.lines().next().unwrap_or_default().to_owned())
    }

    /// Commands clients sent (`INFO commandstats`, without the ones scripts ran inside Redis, which
    /// `total_commands_processed` counts too): what the sidecars' round trips cost Redis.
    pub fn client_commands(&self) -> u64 {
        const FROM_CLIENTS: [&str; 8] = [
            "evalsha",
            "eval",
            "script|load",
            "hello",
            "client|setinfo",
            "select",
            "auth",
            "ping",
        ];
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.write_all(b"INFO commandstats\r\n").unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        // A bulk string: `$LENGTH\r\n` then the text.
        let mut text = Vec::new();
        let mut buffer = [0; 8192];
        let complete = |text: &[u8]| {
            let text = String::from_utf8_lossy(text);
            let Some((head, body)) = text.split_once("\r\n") else {
                return false;
            };
            head.trim_start_matches('$')
                .parse::<usize>()
                .is_ok_and(|n| body.len() >= n)
        };
        while !complete(&text) {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "INFO cut short");
            text.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                FROM_CLIENTS.contains(&name).then_some(())?;
                stats.strip_prefix("calls=")?.split(',').next()?.parse::<u64>().ok()
            })
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused server would not die of SIGTERM; SIGKILL works on a stopped process too.
            self.kill();
        }
        let _ = std::fs::remove_file(self.log_file());
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("orgkeeper-test-{}.rdb", self.port)));
    }
}

/// `orgkeeper sidecar` as a process, killed when dropped.
pub struct Replica {
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    child: Child,
}

impl Replica {
    /// A sidecar on `database_url` forwarding to `upstream`, sharing limits through `redis` when given,
    /// with extra flags; waits until it serves.
    pub async fn start(database_url: &str, upstream: &str, redis: Option<&str>, flags: &[&str]) -> Replica {
        let (listen, metrics) = (free_addr(), free_addr());
        let mut command = Command::new(env!("CARGO_BIN_EXE_orgkeeper"));
        command
            .args(["sidecar", "--listen", &listen.to_string(), "--upstream", upstream])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(flags)
            .env("ORGKEEPER_DATABASE_URL", database_url)
            .env("ORGKEEPER_LOG_LEVEL", "warn")
            .env_remove("ORGKEEPER_REDIS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(url) = redis {
            command.env("ORGKEEPER_REDIS_URL", url);
        }
        let child = command.spawn().expect("the orgkeeper binary starts");
        let replica = Replica { listen, metrics, child };
        let http = Http::to(&replica.metrics_url());
        for _ in 0..300 {
            if let Some(reply) = http.try_get("/readyz").await
                && reply.status == StatusCode::OK
            {
                return replica;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the sidecar at {listen} never became ready");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}", self.metrics)
    }

    /// Whether `/readyz` says plainly ready (not degraded).
    pub async fn ready(&self) -> bool {
        self.readiness().await.contains(r#""message":"ready""#)
    }

    /// The `/readyz` body.
    pub async fn readiness(&self) -> String {
        let reply = Http::to(&self.metrics_url()).get("/readyz", None).await;
        String::from_utf8_lossy(&reply.body).into_owned()
    }

    /// One metric's value from `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        let reply = Http::to(&self.metrics_url()).get("/metrics", None).await;
        crate::sidecar_support::metric(&String::from_utf8_lossy(&reply.body), series)
    }

    /// SIGKILL: no goodbye, no released slot.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (polling every 50 ms) until `condition` holds; returns how long it took, failing after `limit`.
pub async fn within<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> F,
) -> Duration {
    let started = Instant::now();
    loop {
        if condition().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `redis-cli` with these arguments; its output.
fn cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .output()
        .expect("redis-cli is installed (.ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Cluster of three primaries (no replicas), on free ports, in a folder of its own.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let config = |port: &str| dir.path().join(format!("nodes-{port}.conf")).display().to_string();
        let nodes: Vec<_> = (0..3)
            .map(|_| {
                RedisServer::start_args(&[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    config("{port}"),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                    "--cluster-port".into(),
                    "{bus_port}".into(),
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli(&create);
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            while !cli(&["-p", &node.port.to_string(), "cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster did not form");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes, _dir: dir }
    }

    /// The nodes' URLs, comma-separated (what `--redis-url` takes in cluster mode).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }

    /// The node that owns `key`'s hash slot, and one that does not (it answers `MOVED`).
    pub fn owner_and_other(&self, key: &str) -> (&RedisServer, &RedisServer) {
        let owns = |node: &&RedisServer| !cli(&["-p", &node.port.to_string(), "exists", key]).contains("MOVED");
        let owner = self.nodes.iter().find(owns).expect("a node owns every slot");
        let other = self.nodes.iter().find(|n| !owns(n)).expect("three nodes");
        (owner, other)
    }
}

/// Exists `key` on this node itself (no redirection)?
pub fn has_key(node: &RedisServer, key: &str) -> bool {
    cli(&["-p", &node.port.to_string(), "exists", key]).trim() == "1"
}

/// A primary, a replica of it and one sentinel watching them (quorum 1, failover after 500 ms down).
pub struct RedisSentinel {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinel: RedisServer,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        let primary = RedisServer::start();
        let replica = RedisServer::start_args(&["--replicaof".into(), "127.0.0.1".into(), primary.port.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cli(&["-p", &replica.port.to_string(), "info", "replication"]).contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "the replica did not sync");
            std::thread::sleep(Duration::from_millis(100));
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sentinel.conf");
        // Sentinel rewrites its configuration file as it learns: it must be its own and writable.
        std::fs::write(
            &config,
            format!(
                "sentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 500\n\
                 sentinel failover-timeout mymaster 3000\n",
                primary.port
            ),
        )
        .unwrap();
        let sentinel = RedisServer::start_args(&[config.display().to_string(), "--sentinel".into()]);
        while !cli(&["-p", &sentinel.port.to_string(), "sentinel", "replicas", "mymaster"]).contains("127.0.0.1") {
            assert!(Instant::now() < deadline, "the sentinel did not find the replica");
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisSentinel {
            primary,
            replica,
            sentinel,
            _dir: dir,
        }
    }

    /// The port of the primary the sentinel names now.
    pub fn primary_port(&self) -> Option<u16> {
        let reply = cli(&[
            "-p",
            &self.sentinel.port.to_string(),
            "sentinel",
            "get-master-addr-by-name",
            "mymaster",
        ]);
        reply.lines().nth(1)?.trim().parse().ok()
    }
}
