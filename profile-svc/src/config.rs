//! Configuration of profile-svc: flags with environment fallbacks.
use std::net::SocketAddr;

use push_common::config::{AuthArgs, RedisArgs, ServeArgs};

#[derive(clap::Parser, Clone, Debug)]
#[command(name = "profile-svc", version, about = "Profiles: one Redis HASH per user")]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "PROFILE_LISTEN", default_value = "0.0.0.0:50062")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    /// Most free attributes one profile may hold.
    #[arg(long, env = "PROFILE_MAX_ATTRIBUTES", default_value_t = 64)]
    pub max_attributes: usize,

    /// Longest attribute value, in bytes.
    #[arg(long, env = "PROFILE_MAX_ATTRIBUTE_BYTES", default_value_t = 1024)]
    pub max_attribute_bytes: usize,

    /// Most ids in one BatchGetProfiles.
    #[arg(long, env = "PROFILE_MAX_BATCH", default_value_t = 500)]
    pub max_batch: usize,
}
