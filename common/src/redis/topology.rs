//! Where Redis is: one server, a Sentinel master or a Cluster, from `RedisArgs` (URLs,
//! sentinels, seed nodes, and the TLS files for each).
use std::sync::Arc;

use redis::{
    cluster::{ClusterClient, ClusterClientBuilder},
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};

use crate::{Error, config::RedisArgs};

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
