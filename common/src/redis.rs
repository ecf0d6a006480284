//! Shared Redis connections for request/response commands, on any of three topologies.
//!
//! - **Single**: one server (`--redis-url`).
//! - **Sentinel**: the master of `--redis-sentinel-master`, asked of `--redis-sentinels`
//!   at start and every second; connections move to a new master after a failover.
//! - **Cluster**: seed nodes (`--redis-cluster-nodes`); the redis crate's cluster
//!   connection follows slot moves (MOVED/ASK) and failovers.
//!
//! A [`Pool`] hands out [`Connection`]s: a few multiplexed, self-reconnecting connections
//! (the redis crate's `ConnectionManager`) round-robin on a single server or a Sentinel
//! master, the one cluster connection on a Cluster. Every caller clones one and sends
//! concurrently; commands in flight on one connection share its writes (automatic
//! pipelining). We first used deadpool-redis and measured it: its checkout sends a PING
//! on every `get` (a second round trip per command) and a checked-out connection is
//! exclusive, which caps concurrency at the pool size and defeats multiplexing. See
//! docs/ARCHITECTURE.md. These connections carry no push sender: never SUBSCRIBE on one.
//!
//! On a Cluster every command, script and pipeline must touch keys of one hash slot.
//! [`Batch`] and [`PipelinedScript::run_many`] group what they run by slot: one pipeline
//! on a single server, one per slot (sent concurrently) on a Cluster.
use std::{
    sync::{
        Arc, RwLock, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};

use crate::{Error, config::RedisArgs};

mod batch;
pub use batch::{Batch, PipelinedScript, slot};

/// How often the sentinels are asked where the master is.
const SENTINEL_POLL: Duration = Duration::from_secs(1);

#[derive(Clone)]
enum Inner {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
    /// No server to send to yet (a Sentinel that named no master, a Cluster not reached
    /// yet): every command fails at once as an I/O error, so callers answer UNAVAILABLE.
    Down(Arc<str>),
}

/// One shared connection; clone it freely, send on it concurrently. Every command
/// through it is counted and timed (`crate::metrics::redis_command`).
#[derive(Clone)]
pub struct Connection(Inner);

fn down(why: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, why.to_owned()))
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        let name = crate::metrics::redis_command_name(cmd.args_iter().next().and_then(|a| match a {
            redis::Arg::Simple(a) => Some(a),
            _ => None,
        }));
        let start = std::time::Instant::now();
        Box::pin(async move {
            let r = match &mut self.0 {
                Inner::Manager(c) => c.req_packed_command(cmd).await,
                Inner::Multiplexed(c) => c.req_packed_command(cmd).await,
                Inner::Cluster(c) => c.req_packed_command(cmd).await,
                Inner::Down(why) => Err(down(why)),
            };
            crate::metrics::redis_command(name, start.elapsed(), r.is_err());
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        let start = std::time::Instant::now();
        Box::pin(async move {
            let r = match &mut self.0 {
                Inner::Manager(c) => c.req_packed_commands(pipeline, offset, count).await,
                Inner::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count).await,
                Inner::Cluster(c) => c.req_packed_commands(pipeline, offset, count).await,
                Inner::Down(why) => Err(down(why)),
            };
            crate::metrics::redis_command("pipeline", start.elapsed(), r.is_err());
            r
        })
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Manager(c) => c.get_db(),
            Inner::Multiplexed(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
            Inner::Down(_) => 0,
        }
    }
}

/// Where Redis is, from `RedisArgs`. Cheap to clone.
#[derive(Clone)]
pub enum Topology {
    Single(Box<redis::Client>),
    Sentinel(Arc<tokio::sync::Mutex<SentinelClient>>),
    Cluster(Box<ClusterClient>),
}

impl Topology {
    pub fn from_args(args: &RedisArgs) -> Result<Topology, Error> {
        if !args.cluster_nodes.is_empty() {
            return cluster_builder(args).map(|b| b.build()).and_then(|c| {
                c.map(|c| Topology::Cluster(Box::new(c)))
                    .map_err(|e| Error::Config(format!("--redis-cluster-nodes: {e}")))
            });
        }
        if let Some(master) = &args.sentinel_master {
            return sentinel_client(args, master).map(|s| Topology::Sentinel(Arc::new(tokio::sync::Mutex::new(s))));
        }
        client(args).map(|c| Topology::Single(Box::new(c)))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Topology::Cluster(_))
    }

    /// A client of the one server that takes writes: the server itself, or the master
    /// the sentinels name now. None on a Cluster.
    pub async fn master(&self) -> Option<redis::RedisResult<redis::Client>> {
        match self {
            Topology::Single(c) => Some(Ok((**c).clone())),
            Topology::Sentinel(s) => Some(s.lock().await.async_get_client().await),
            Topology::Cluster(_) => None,
        }
    }
}

/// The TLS files of `args`, when any are given (for `rediss://` only).
fn tls_certificates(args: &RedisArgs, urls: &[&str]) -> Result<Option<redis::TlsCertificates>, Error> {
    if args.redis_tls_ca.is_none() && args.redis_tls_cert.is_none() {
        return Ok(None);
    }
    if urls.iter().any(|u| !u.starts_with("rediss://")) {
        return Err(Error::Config("--redis-tls-* files are given but the Redis URLs are not rediss://".into()));
    }
    let read = crate::config::read_file;
    let root_cert = args.redis_tls_ca.as_deref().map(|p| read("--redis-tls-ca-file", p)).transpose()?;
    let client_tls = match (&args.redis_tls_cert, &args.redis_tls_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("--redis-tls-cert-file", cert)?,
            client_key: read("--redis-tls-key-file", key)?,
        }),
        _ => None,
    };
    Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
}

/// The client of a single server: `--redis-url`, with the TLS files when the URL is
/// `rediss://` and any are given.
pub fn client(args: &RedisArgs) -> Result<redis::Client, Error> {
    let bad_url = |e: redis::RedisError| Error::Config(format!("--redis-url: {e}"));
    match tls_certificates(args, &[&args.url])? {
        None => redis::Client::open(args.url.as_str()).map_err(bad_url),
        Some(certs) => redis::Client::build_with_tls(args.url.as_str(), certs).map_err(bad_url),
    }
}

/// A Cluster client builder from `args` (seed nodes, TLS, timeouts); the hub adds RESP3
/// and its push sender.
pub fn cluster_builder(args: &RedisArgs) -> Result<ClusterClientBuilder, Error> {
    let nodes: Vec<&str> = args.cluster_nodes.iter().map(|n| n.trim()).filter(|n| !n.is_empty()).collect();
    if nodes.is_empty() {
        return Err(Error::Config("--redis-cluster-nodes: no node given".into()));
    }
    let mut b = ClusterClientBuilder::new(nodes.clone())
        .connection_timeout(args.timeout)
        .response_timeout(args.timeout)
        .retries(3)
        .max_retry_wait(500)
        .min_retry_wait(50);
    if let Some(certs) = tls_certificates(args, &nodes)? {
        b = b.certs(certs);
    }
    Ok(b)
}

fn sentinel_client(args: &RedisArgs, master: &str) -> Result<SentinelClient, Error> {
    let bad = |flag: &str, e: redis::RedisError| Error::Config(format!("{flag}: {e}"));
    let urls: Vec<&str> = args.sentinels.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
    let mut sentinels = Vec::new();
    for s in &urls {
        let info = redis::IntoConnectionInfo::into_connection_info(*s).map_err(|e| bad("--redis-sentinels", e))?;
        sentinels.push(info.addr().clone());
    }
    // The master's scheme, user, password and DB come from --redis-url.
    let url = redis::IntoConnectionInfo::into_connection_info(args.url.as_str()).map_err(|e| bad("--redis-url", e))?;
    let settings = url.redis_settings();
    let mut b = SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)
        .map_err(|e| bad("--redis-sentinels", e))?
        .set_client_to_redis_db(settings.db());
    if let Some(user) = settings.username() {
        b = b.set_client_to_redis_username(user);
    }
    if let Some(password) = settings.password() {
        b = b.set_client_to_redis_password(password);
    }
    if args.url.starts_with("rediss://") {
        b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(certs) = tls_certificates(args, &[&args.url])? {
            b = b.set_client_to_redis_certificates(certs);
        }
    }
    // The sentinels over TLS too when their URLs say so, with the same CA and client
    // certificate (--redis-tls-*): all of them or none.
    let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
    if tls > 0 && tls < urls.len() {
        return Err(Error::Config("--redis-sentinels: either every sentinel URL is rediss:// or none".into()));
    }
    if tls > 0 {
        b = b.set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        if let Some(certs) = tls_certificates(args, &urls)? {
            b = b.set_client_to_sentinel_certificates(certs);
        }
    }
    b.build().map_err(|e| bad("--redis-sentinels", e))
}

enum Backend {
    Single(Arc<[ConnectionManager]>),
    /// The current master's connections, replaced when the sentinels name another.
    Sentinel(Arc<RwLock<Option<Master>>>),
    /// Set once the cluster was first reached; it then follows the cluster itself.
    Cluster(Arc<RwLock<Option<ClusterConnection>>>),
}

struct Master {
    addr: String,
    conns: Arc<[ConnectionManager]>,
}

/// A few shared connections, used round-robin.
#[derive(Clone)]
pub struct Pool {
    backend: Arc<Backend>,
    topology: Topology,
    next: Arc<AtomicUsize>,
}

impl Pool {
    /// The next connection (a cheap clone).
    pub fn get(&self) -> Connection {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let pick = |conns: &[ConnectionManager]| Inner::Manager(conns[i % conns.len()].clone());
        Connection(match &*self.backend {
            Backend::Single(conns) => pick(conns),
            Backend::Sentinel(master) => match &*master.read().unwrap_or_else(|e| e.into_inner()) {
                Some(m) => pick(&m.conns),
                None => Inner::Down("no Redis master known from the sentinels yet".into()),
            },
            Backend::Cluster(conn) => match &*conn.read().unwrap_or_else(|e| e.into_inner()) {
                Some(c) => Inner::Cluster(c.clone()),
                None => Inner::Down("the Redis Cluster was not reached yet".into()),
            },
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// True on a Redis Cluster: each command and pipeline must stay within one slot.
    pub fn is_cluster(&self) -> bool {
        self.topology.is_cluster()
    }
}

/// Builds the pool. Connecting is lazy: a server that starts before Redis is up comes up
/// NOT_SERVING and turns SERVING once Redis answers. While Redis is unreachable each
/// command fails within `--redis-timeout` and the connection is re-established in the
/// background. Must be called within the Tokio runtime (Sentinel and Cluster connect
/// from tasks of their own).
pub fn pool(args: &RedisArgs) -> Result<Pool, Error> {
    let topology = Topology::from_args(args)?;
    let config = manager_config(args);
    let size = args.pool_size.max(1);
    let backend = match &topology {
        Topology::Single(client) => Backend::Single(managers(client, &config, size)?),
        Topology::Sentinel(sentinel) => {
            let master = Arc::new(RwLock::new(None));
            tokio::spawn(follow_master(sentinel.clone(), Arc::downgrade(&master), config, size));
            Backend::Sentinel(master)
        }
        Topology::Cluster(client) => {
            let conn = Arc::new(RwLock::new(None));
            tokio::spawn(reach_cluster((**client).clone(), Arc::downgrade(&conn)));
            Backend::Cluster(conn)
        }
    };
    Ok(Pool { backend: Arc::new(backend), topology, next: Arc::new(AtomicUsize::new(0)) })
}

fn manager_config(args: &RedisArgs) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(args.timeout))
        .set_response_timeout(Some(args.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1))
}

fn managers(
    client: &redis::Client,
    config: &ConnectionManagerConfig,
    n: usize,
) -> Result<Arc<[ConnectionManager]>, Error> {
    let conns = (0..n)
        .map(|_| client.get_connection_manager_lazy(config.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("redis: {e}")))?;
    Ok(conns.into())
}

/// Asks the sentinels where the master is, now and every [`SENTINEL_POLL`], and moves the
/// pool to a new master when they name one. Ends when the pool is gone.
async fn follow_master(
    sentinel: Arc<tokio::sync::Mutex<SentinelClient>>,
    master: Weak<RwLock<Option<Master>>>,
    config: ConnectionManagerConfig,
    size: usize,
) {
    let timeout = config.response_timeout().unwrap_or(SENTINEL_POLL) * 2;
    loop {
        let Some(slot) = master.upgrade() else { return };
        let named = tokio::time::timeout(timeout, async { sentinel.lock().await.async_get_client().await }).await;
        match named {
            Ok(Ok(client)) => {
                let addr = client.get_connection_info().addr().to_string();
                let known = slot.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|m| m.addr.clone());
                if known.as_deref() != Some(addr.as_str()) {
                    match managers(&client, &config, size) {
                        Ok(conns) => {
                            tracing::info!(master = %addr, previous = ?known, "redis master (from the sentinels)");
                            *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(Master { addr, conns });
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot connect to the master the sentinels name"),
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "the sentinels name no reachable master"),
            Err(_) => tracing::warn!("the sentinels did not answer in time"),
        }
        drop(slot);
        tokio::time::sleep(SENTINEL_POLL).await;
    }
}

/// Connects to the cluster, retrying with backoff until it answers; the connection then
/// follows the cluster on its own. Ends when the pool is gone.
async fn reach_cluster(client: ClusterClient, conn: Weak<RwLock<Option<ClusterConnection>>>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if conn.strong_count() == 0 {
            return;
        }
        match client.get_async_connection().await {
            Ok(c) => {
                if let Some(slot) = conn.upgrade() {
                    *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(c);
                    tracing::info!("redis cluster reached");
                }
                return;
            }
            Err(e) => tracing::debug!(error = %e, "redis cluster not reached yet"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The health check of a process's Redis: PING on the pool within `--redis-timeout`,
/// failing with what to look at (the address, never the URL, which may hold a
/// password). Cheap to clone.
#[derive(Clone)]
pub struct Check {
    pool: Pool,
    timeout: Duration,
    unreachable: Arc<str>,
}

impl Check {
    pub fn new(pool: &Pool, args: &RedisArgs) -> Check {
        let unreachable = if !args.cluster_nodes.is_empty() {
            format!("the Redis Cluster (--redis-cluster-nodes) did not answer PING within {:?}", args.timeout)
        } else if let Some(master) = &args.sentinel_master {
            format!(
                "the Redis master {master:?} (from --redis-sentinels) did not answer PING within {:?}",
                args.timeout
            )
        } else {
            crate::health::redis_unreachable(&args.url, args.timeout)
        };
        Check { pool: pool.clone(), timeout: args.timeout, unreachable: unreachable.into() }
    }

    pub async fn run(&self) -> Result<(), String> {
        if ping(&self.pool, self.timeout).await { Ok(()) } else { Err(self.unreachable.to_string()) }
    }

    /// A health probe (see `health::spawn_watcher`) of this check alone.
    pub fn probe(self) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send {
        move || {
            let check = self.clone();
            Box::pin(async move { check.run().await })
        }
    }
}

/// True when Redis answers PING within `timeout` (on a Cluster: every master).
pub async fn ping(pool: &Pool, timeout: Duration) -> bool {
    let mut c = pool.get();
    let probe = async {
        match &mut c.0 {
            Inner::Cluster(cluster) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
                let route =
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::AllSucceeded)));
                cluster
                    .route_command(redis::cmd("PING"), route)
                    .await
                    .and_then(|v| redis::from_redis_value::<String>(v).map_err(Into::into))
            }
            _ => redis::cmd("PING").query_async::<String>(&mut c).await,
        }
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(pong)) if pong == "PONG")
}

/// A connection of its own (not shared), for blocking reads. Its reply timeout is
/// `reply_timeout`, which must exceed the longest BLOCK it is used with. On a Cluster it
/// is a cluster connection of its own, so a blocking read stalls nobody else.
pub async fn dedicated(topology: &Topology, args: &RedisArgs, reply_timeout: Duration) -> Result<Connection, Error> {
    if let Topology::Cluster(_) = topology {
        let client = cluster_builder(args)?
            .response_timeout(reply_timeout)
            .build()
            .map_err(|e| Error::Config(format!("--redis-cluster-nodes: {e}")))?;
        return Ok(Connection(Inner::Cluster(client.get_async_connection().await?)));
    }
    let client = topology.master().await.expect("not a cluster")?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(args.timeout))
        .set_response_timeout(Some(reply_timeout));
    Ok(Connection(Inner::Multiplexed(client.get_multiplexed_async_connection_with_config(&config).await?)))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Topology;
    use crate::config::RedisArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        redis: RedisArgs,
    }

    fn topology(args: &[&str]) -> Result<Topology, crate::Error> {
        let cli = Cli::try_parse_from(std::iter::once("svc").chain(args.iter().copied())).expect("flags parse");
        Topology::from_args(&cli.redis)
    }

    #[test]
    fn sentinels_are_all_tls_or_none() {
        let mixed = ["--redis-sentinels", "rediss://127.0.0.1:1,redis://127.0.0.1:2", "--redis-sentinel-master", "m"];
        let err = topology(&mixed).err().expect("mixed sentinel URLs are refused");
        assert!(err.to_string().contains("--redis-sentinels"), "{err}");
        let tls = ["--redis-sentinels", "rediss://127.0.0.1:1,rediss://127.0.0.1:2", "--redis-sentinel-master", "m"];
        assert!(topology(&tls).is_ok());
        let plain = ["--redis-sentinels", "redis://127.0.0.1:1", "--redis-sentinel-master", "m"];
        assert!(topology(&plain).is_ok());
    }
}
