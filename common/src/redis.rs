//! Shared Redis connections for request/response commands.
//!
//! A [`Pool`] is a few multiplexed, self-reconnecting connections (the redis crate's
//! `ConnectionManager`) handed out round-robin. Every caller clones one and sends
//! concurrently; commands in flight on one connection share its writes (automatic
//! pipelining). We first used deadpool-redis and measured it: its checkout sends a PING
//! on every `get` (a second round trip per command) and a checked-out connection is
//! exclusive, which caps concurrency at the pool size and defeats multiplexing. See
//! docs/ARCHITECTURE.md. These connections carry no push sender: never SUBSCRIBE on one.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{Error, config::RedisArgs};

/// One shared connection; clone it freely, send on it concurrently. Every command
/// through it is counted and timed (`crate::metrics::redis_command`).
#[derive(Clone)]
pub struct Connection(ConnectionManager);

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        let name = crate::metrics::redis_command_name(cmd.args_iter().next().and_then(|a| match a {
            redis::Arg::Simple(a) => Some(a),
            _ => None,
        }));
        let start = std::time::Instant::now();
        Box::pin(async move {
            let r = self.0.req_packed_command(cmd).await;
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
            let r = self.0.req_packed_commands(pipeline, offset, count).await;
            crate::metrics::redis_command("pipeline", start.elapsed(), r.is_err());
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// A few shared connections, used round-robin.
#[derive(Clone)]
pub struct Pool {
    conns: Arc<[ConnectionManager]>,
    next: Arc<AtomicUsize>,
}

impl Pool {
    /// The next connection (a cheap clone).
    pub fn get(&self) -> Connection {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        Connection(self.conns[i].clone())
    }
}

/// The client every connection of a process is made from: `--redis-url`, with the
/// TLS files when the URL is `rediss://` and any are given.
pub fn client(args: &RedisArgs) -> Result<redis::Client, Error> {
    let bad_url = |e: redis::RedisError| Error::Config(format!("--redis-url: {e}"));
    let tls_files = args.redis_tls_ca.is_some() || args.redis_tls_cert.is_some();
    if !tls_files {
        return redis::Client::open(args.url.as_str()).map_err(bad_url);
    }
    if !args.url.starts_with("rediss://") {
        return Err(Error::Config("--redis-tls-* files are given but --redis-url is not rediss://".into()));
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
    redis::Client::build_with_tls(args.url.as_str(), redis::TlsCertificates { client_tls, root_cert }).map_err(bad_url)
}

/// Builds the pool. Connecting is lazy: a server that starts before Redis is up comes up
/// NOT_SERVING and turns SERVING once Redis answers. While Redis is unreachable each
/// command fails within `--redis-timeout` and the connection is re-established in the
/// background.
pub fn pool(args: &RedisArgs) -> Result<Pool, Error> {
    let client = client(args)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(args.timeout))
        .set_response_timeout(Some(args.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    let conns = (0..args.pool_size.max(1))
        .map(|_| client.get_connection_manager_lazy(config.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("redis: {e}")))?;
    Ok(Pool { conns: conns.into(), next: Arc::new(AtomicUsize::new(0)) })
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
        let unreachable = crate::health::redis_unreachable(&args.url, args.timeout);
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

/// True when Redis answers PING within `timeout`.
pub async fn ping(pool: &Pool, timeout: Duration) -> bool {
    let mut c = pool.get();
    let cmd = redis::cmd("PING");
    let probe = cmd.query_async::<String>(&mut c);
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(pong)) if pong == "PONG")
}

/// A connection of its own (not shared), for blocking reads. Its reply timeout is
/// `reply_timeout`, which must exceed the longest BLOCK it is used with.
pub async fn dedicated(args: &RedisArgs, reply_timeout: Duration) -> Result<redis::aio::MultiplexedConnection, Error> {
    let client = client(args)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(args.timeout))
        .set_response_timeout(Some(reply_timeout));
    Ok(client.get_multiplexed_async_connection_with_config(&config).await?)
}

/// A Lua script that also runs many times in one pipeline (a batch of pushes, a round
/// of renewals), each run its own atomic step with its own answer.
#[derive(Clone)]
pub struct PipelinedScript {
    script: redis::Script,
    code: Arc<str>,
}

impl PipelinedScript {
    pub fn new(code: &str) -> Self {
        Self { script: redis::Script::new(code), code: code.into() }
    }

    /// The script, for one run (`EVALSHA`, loading it on NOSCRIPT).
    pub fn script(&self) -> &redis::Script {
        &self.script
    }

    /// Runs the script once per `(keys, args)` in one pipeline; one answer each, in order.
    /// The pipeline loads the script first (a no-op when cached): a NOSCRIPT halfway
    /// could not be retried safely once some runs had happened.
    pub async fn run_many<K, S, A, T>(
        &self,
        conn: &mut Connection,
        runs: &[(K, A)],
    ) -> redis::RedisResult<Vec<redis::RedisResult<T>>>
    where
        K: AsRef<[S]>,
        S: redis::ToRedisArgs,
        A: redis::ToRedisArgs,
        T: redis::FromRedisValue,
    {
        let mut pipe = redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(&*self.code).ignore();
        for (keys, args) in runs {
            let keys = keys.as_ref();
            pipe.cmd("EVALSHA").arg(self.script.get_hash()).arg(keys.len()).arg(keys).arg(args);
        }
        pipe.ignore_errors();
        pipe.query_async(conn).await
    }
}
