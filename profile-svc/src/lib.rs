//! profile-svc: one small profile per user, in a Redis HASH.
//!
//! Layout:
//! - [`config`]: flags and environment.
//! - [`store`]: every Redis command (versioned writes as Lua scripts, batch reads pipelined).
//! - [`service`]: the `profile.v1.Profile` implementation (validate → store → convert).
//! - [`serve`]: runs the gRPC server with health and reflection.

pub mod config;
pub mod service;
pub mod store;

use std::future::Future;

use push_common::{BoxError, keys::Keys, redis, server};
use push_proto::profile::v1::profile_server::ProfileServer;
use tokio::net::TcpListener;

pub use config::Config;

/// The name health reports under (besides "").
pub const SERVICE_NAME: &str = "profile.v1.Profile";

/// Binds `addr` to serve on (a failure names the service, its flag and the address).
pub async fn listen(addr: std::net::SocketAddr) -> Result<TcpListener, BoxError> {
    server::listen(addr, "profile-svc (--listen / PROFILE_LISTEN)").await
}

/// Serves profiles on `listener` until `shutdown` completes, then reports NOT_SERVING,
/// stops accepting and drains in-flight calls (at most `shutdown_grace`).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let policy = config.auth.internal_policy()?;
    let pool = redis::pool(&config.redis)?;
    let store = store::Store::new(pool.clone(), Keys::new(&config.redis.key_prefix));

    let probe = redis::Check::new(&pool, &config.redis).probe();
    let service = ProfileServer::new(service::ProfileService::new(store, config.clone()));
    server::run(SERVICE_NAME, listener, &config.serve, probe, shutdown, async {}, |r| {
        server::add_guarded(r, service, policy)
    })
    .await
}
