//! Configuration of presence-svc: flags with environment fallbacks.
use std::{net::SocketAddr, time::Duration};

use push_common::config::{AuthArgs, RedisArgs, ServeArgs, duration};

#[derive(clap::Parser, Clone, Debug)]
#[command(name = "presence-svc", version, about = "Presence: user sessions as leases in Redis")]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "PRESENCE_LISTEN", default_value = "0.0.0.0:50061")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    /// Lease length when a Login or Heartbeat names none.
    #[arg(long, env = "PRESENCE_DEFAULT_TTL", default_value = "60s", value_parser = duration)]
    pub default_ttl: Duration,

    /// Shortest lease a caller may ask for.
    #[arg(long, env = "PRESENCE_MIN_TTL", default_value = "1s", value_parser = duration)]
    pub min_ttl: Duration,

    /// Longest lease a caller may ask for.
    #[arg(long, env = "PRESENCE_MAX_TTL", default_value = "1h", value_parser = duration)]
    pub max_ttl: Duration,

    /// Largest page of ListOnlineUsers; a larger page_size is coerced to it (AIP-158).
    #[arg(long, env = "PRESENCE_MAX_PAGE_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_page_size: u32,

    /// Live sessions (devices) one user may hold; one more is RESOURCE_EXHAUSTED.
    #[arg(long, env = "PRESENCE_MAX_SESSIONS_PER_USER", default_value_t = 64)]
    pub max_sessions_per_user: u32,

    /// Buckets of the online index. Changing it on a live deployment strands users in
    /// old buckets until their leases end; set it once.
    #[arg(long, env = "PRESENCE_ONLINE_BUCKETS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub online_buckets: u32,

    /// How often the sweeper looks for buckets with a lease that has ended (a user's, or
    /// a gateway replica's that holds sessions): they are swept, and their users who
    /// went offline recorded.
    #[arg(long, env = "PRESENCE_SWEEP_INTERVAL", default_value = "5s", value_parser = duration)]
    pub sweep_interval: Duration,

    /// Longest time a bucket goes unswept by this replica. A bucket is swept when a lease
    /// in it ends, as far as this replica knows: from its last sweep, and the leases it
    /// wrote since; leases written through other replicas are theirs to sweep on time.
    #[arg(long, env = "PRESENCE_SWEEP_MAX_IDLE", default_value = "60s", value_parser = duration)]
    pub sweep_max_idle: Duration,

    /// How long a user's last-seen time is kept after their last activity.
    #[arg(long, env = "PRESENCE_LAST_SEEN_RETENTION", default_value = "30days", value_parser = duration)]
    pub last_seen_retention: Duration,

    /// Presence events kept (approximately: Redis trims whole blocks); a watcher whose
    /// cursor falls behind this is told to resync.
    #[arg(long, env = "PRESENCE_EVENTS_MAX_LEN", default_value_t = 100_000)]
    pub events_max_len: u64,

    /// Most WatchPresence streams this replica serves at once; one more is
    /// RESOURCE_EXHAUSTED. All of them share one Redis connection.
    #[arg(long, env = "PRESENCE_MAX_WATCHERS", default_value_t = 1000)]
    pub max_watchers: usize,

    /// Most ids in one GetPresence.
    #[arg(long, env = "PRESENCE_MAX_BATCH", default_value_t = 500)]
    pub max_batch: usize,
}
