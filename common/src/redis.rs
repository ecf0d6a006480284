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
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    sentinel::SentinelClient,
};

use crate::{Error, config::RedisArgs};

mod batch;
mod topology;
pub use batch::{Batch, PipelinedScript, slot};
pub use topology::{Topology, client, cluster_builder};

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
