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

    /// How long to wait for in-flight requests after SIGTERM before exiting anyway.
    #[arg(long = "shutdown-grace", env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,
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
