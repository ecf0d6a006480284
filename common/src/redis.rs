//! Pooled Redis connections for request/response commands.
//!
//! Each pooled connection is a multiplexed connection, so a small pool carries many
//! concurrent requests. Pooled connections carry no push sender: never SUBSCRIBE on one.
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::AsyncConnectionConfig;

use crate::{Error, config::RedisArgs};

pub use deadpool_redis::Connection;

/// Builds the pool. Connecting is lazy: a server that starts before Redis is up
/// comes up NOT_SERVING and turns SERVING once Redis answers.
pub fn pool(args: &RedisArgs) -> Result<Pool, Error> {
    let conn_cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(args.timeout))
        .set_response_timeout(Some(args.timeout));
    let manager = Manager::new_with_config(args.url.as_str(), conn_cfg)
        .map_err(|e| Error::Config(format!("--redis-url: {e}")))?;
    Pool::builder(manager)
        .max_size(args.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(args.timeout))
        .create_timeout(Some(args.timeout))
        .recycle_timeout(Some(args.timeout))
        .build()
        .map_err(|e| Error::Config(format!("redis pool: {e}")))
}

/// A connection from the pool, or UNAVAILABLE-mapped error when Redis is unreachable.
pub async fn conn(pool: &Pool) -> Result<Connection, Error> {
    Ok(pool.get().await?)
}

/// True when Redis answers PING within `timeout`.
pub async fn ping(pool: &Pool, timeout: Duration) -> bool {
    let probe = async {
        let mut c = conn(pool).await?;
        let pong: String = redis::cmd("PING").query_async(&mut *c).await?;
        Ok::<_, Error>(pong == "PONG")
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(true)))
}
