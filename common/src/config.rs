//! Argument groups shared by the binaries. Every flag has an environment fallback
//! (12-factor), so the same binary runs on a laptop and in Kubernetes.
use std::time::Duration;

/// Parses human durations such as `500ms`, `30s`, `5m`, `30days`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// How to reach Redis and where our keys live.
#[derive(clap::Args, Clone, Debug)]
pub struct RedisArgs {
    /// Redis URL: `redis://HOST:PORT/DB`, `rediss://` for TLS, or `redis+unix:///PATH`.
    #[arg(long = "redis-url", env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub url: String,

    /// Redis Cluster: seed nodes, comma-separated (`redis://HOST:PORT,...`, `rediss://`
    /// for TLS). The rest of the cluster is discovered from them, and slot moves and
    /// failovers are followed. --redis-url is then unused.
    #[arg(
        long = "redis-cluster-nodes",
        env = "REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        conflicts_with = "sentinels"
    )]
    pub cluster_nodes: Vec<String>,

    /// Redis Sentinel: the sentinels, comma-separated (`redis://HOST:PORT,...`). The
    /// master of --redis-sentinel-master is asked of them at start and every second
    /// after, and connections move to a new master after a failover. --redis-url still
    /// gives the master's scheme (`rediss://` for TLS), user, password and DB; its host
    /// is unused.
    #[arg(long = "redis-sentinels", env = "REDIS_SENTINELS", value_delimiter = ',', requires = "sentinel_master")]
    pub sentinels: Vec<String>,

    /// The master's name in Sentinel (`sentinel monitor NAME ...`), with --redis-sentinels.
    #[arg(long = "redis-sentinel-master", env = "REDIS_SENTINEL_MASTER", requires = "sentinels")]
    pub sentinel_master: Option<String>,

    /// Shared connections per process; each is multiplexed, so a few carry any load.
    #[arg(long = "redis-pool-size", env = "REDIS_POOL_SIZE", default_value_t = 4)]
    pub pool_size: usize,

    /// Timeout to connect to Redis, to get a pooled connection and for each reply.
    /// Past it a request fails fast instead of queueing behind a dead server.
    #[arg(long = "redis-timeout", env = "REDIS_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub timeout: Duration,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long = "key-prefix", env = "KEY_PREFIX", default_value = "push")]
    pub key_prefix: String,

    /// PEM CA bundle that signed Redis's certificate, for a `rediss://` URL (without
    /// it the system's trust store is used).
    #[arg(long = "redis-tls-ca-file", env = "REDIS_TLS_CA_FILE")]
    pub redis_tls_ca: Option<std::path::PathBuf>,

    /// PEM client certificate to present to Redis (`tls-auth-clients yes`), with
    /// --redis-tls-key-file.
    #[arg(long = "redis-tls-cert-file", env = "REDIS_TLS_CERT_FILE", requires = "redis_tls_key")]
    pub redis_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --redis-tls-cert-file.
    #[arg(long = "redis-tls-key-file", env = "REDIS_TLS_KEY_FILE", requires = "redis_tls_cert")]
    pub redis_tls_key: Option<std::path::PathBuf>,
}

/// Serving options common to every gRPC server.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// How often the health watcher probes its dependencies.
    #[arg(long = "health-interval", env = "HEALTH_INTERVAL", default_value = "2s", value_parser = duration)]
    pub health_interval: Duration,

    /// Most concurrent HTTP/2 streams on one connection (device streams that share a
    /// connection count here; the transport's own default is 200).
    #[arg(long = "max-concurrent-streams", env = "MAX_CONCURRENT_STREAMS", default_value_t = 10_000)]
    pub max_concurrent_streams: u32,

    /// HTTP/2 ping interval on idle connections, so a device that vanished without
    /// closing its TCP connection is noticed and its stream (and presence) ended.
    #[arg(long = "keepalive-interval", env = "KEEPALIVE_INTERVAL", default_value = "30s", value_parser = duration)]
    pub keepalive_interval: Duration,

    /// How long to wait for an HTTP/2 ping answer before closing the connection.
    #[arg(long = "keepalive-timeout", env = "KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub keepalive_timeout: Duration,

    /// After SIGTERM, how long to keep serving as before while readiness says
    /// NOT_SERVING, so load balancers and Kubernetes endpoints stop sending new calls
    /// before anything ends (liveness stays SERVING until the process exits).
    #[arg(long = "drain-delay", env = "DRAIN_DELAY", default_value = "5s", value_parser = duration)]
    pub drain_delay: Duration,

    /// How long to wait for in-flight requests after SIGTERM before exiting anyway.
    #[arg(long = "shutdown-grace", env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// Also answer `grpc.health.v1` in plaintext on this address, and nothing else:
    /// Kubernetes' gRPC probes cannot speak TLS, so a server with --tls-cert needs it.
    #[arg(long = "health-listen", env = "HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,

    /// Serve Prometheus metrics over HTTP on this address (e.g. `0.0.0.0:9090`);
    /// none without it.
    #[arg(long = "metrics-listen", env = "METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Do not serve gRPC reflection (it describes the API, not data; grpcurl needs it
    /// or the .proto files).
    #[arg(long = "no-reflection", env = "NO_REFLECTION")]
    pub no_reflection: bool,

    /// How often --tls-cert and --tls-key are read again; a renewed certificate is
    /// used for new connections without a restart (0: never).
    #[arg(long = "tls-reload-interval", env = "TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = duration)]
    pub tls_reload_interval: Duration,

    /// PEM certificate chain to serve TLS with (with --tls-key); plaintext without it.
    #[arg(long = "tls-cert", env = "TLS_CERT_FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long = "tls-key", env = "TLS_KEY_FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// PEM CA bundle: when set, clients must present a certificate it signed (mTLS).
    #[arg(long = "tls-client-ca", env = "TLS_CLIENT_CA_FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
}

/// Reads a file named by `flag`, for a configuration error that says which.
pub fn read_file(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, crate::Error> {
    std::fs::read(path).map_err(|e| crate::Error::Config(format!("{flag} {}: {e}", path.display())))
}

impl ServeArgs {
    /// The server's TLS settings, if TLS is configured.
    pub fn tls(&self) -> Result<Option<crate::tls::ServerTls>, crate::Error> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        crate::tls::server(cert.clone(), key.clone(), self.tls_client_ca.as_deref()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert!(duration("soon").is_err());
    }
}

/// How calls between the services are authenticated (see docs/SECURITY.md).
#[derive(clap::Args, Clone, Debug)]
pub struct AuthArgs {
    /// File holding the shared internal token: presence-svc and profile-svc accept only
    /// calls that carry it, and the gateway sends it. Mount it from a secret.
    #[arg(long, env = "INTERNAL_TOKEN_FILE")]
    pub internal_token_file: Option<std::path::PathBuf>,

    /// Run without authentication: no internal token, and on the gateway no API keys or
    /// device tokens. For local development only; a server refuses to start without
    /// credentials unless this is given.
    #[arg(long, env = "INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

impl AuthArgs {
    /// The internal token, if one is configured.
    pub fn internal_token(&self) -> Result<Option<String>, crate::Error> {
        let Some(path) = &self.internal_token_file else { return Ok(None) };
        let token = std::fs::read_to_string(path)
            .map_err(|e| crate::Error::Config(format!("--internal-token-file {}: {e}", path.display())))?;
        let token = token.trim();
        if token.len() < 16 {
            return Err(crate::Error::Config("the internal token must be at least 16 characters".into()));
        }
        Ok(Some(token.to_owned()))
    }

    /// What an internal service requires of its callers: the token, or nothing when
    /// running insecurely; an error when neither is configured.
    pub fn internal_policy(&self) -> Result<Option<std::sync::Arc<dyn crate::auth::Authorize>>, crate::Error> {
        match (self.internal_token()?, self.insecure_no_auth) {
            (Some(token), _) => Ok(Some(std::sync::Arc::new(crate::auth::InternalToken::new(&token)))),
            (None, true) => {
                tracing::warn!("running without authentication (--insecure-no-auth): for development only");
                Ok(None)
            }
            (None, false) => Err(crate::Error::Config(
                "no --internal-token-file: refusing to serve unauthenticated (pass --insecure-no-auth for local development)"
                    .into(),
            )),
        }
    }
}
