//! Configuration of push-gateway: flags with environment fallbacks.
use std::{net::SocketAddr, time::Duration};

use push_common::config::{ServeArgs, duration};

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "push-gateway",
    version,
    about = "The public PushGateway gRPC service"
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// presence-svc endpoint.
    #[arg(long, env = "PRESENCE_URL", default_value = "http://127.0.0.1:50061")]
    pub presence_url: String,

    /// profile-svc endpoint.
    #[arg(long, env = "PROFILE_URL", default_value = "http://127.0.0.1:50062")]
    pub profile_url: String,

    /// Deadline of each call to an internal service (a caller's shorter deadline wins).
    #[arg(long, env = "GATEWAY_RPC_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub rpc_timeout: Duration,

    /// Timeout to connect to an internal service.
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub connect_timeout: Duration,

    #[command(flatten)]
    pub serve: ServeArgs,
}
