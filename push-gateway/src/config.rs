//! Configuration of push-gateway: flags with environment fallbacks.
use std::{net::SocketAddr, time::Duration};

use push_common::config::{AuthArgs, RedisArgs, ServeArgs, duration};

#[derive(clap::Parser, Clone, Debug)]
#[command(name = "push-gateway", version, about = "The public PushGateway gRPC service", args_override_self = true)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Origins whose pages may call the gateway from a browser (gRPC-Web, which is
    /// always served on --listen): comma-separated exact origins such as
    /// `https://app.example.com`, or `*` for any. None: only same-origin pages.
    #[arg(long = "cors-allow-origin", env = "GATEWAY_CORS_ALLOW_ORIGIN", value_delimiter = ',')]
    pub cors_allow_origins: Vec<String>,

    /// Serve the operator console (a web page, admin API key required) on this
    /// address, e.g. `127.0.0.1:9052`; none without it. It serves TLS when --tls-cert does.
    #[arg(long, env = "GATEWAY_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,

    /// presence-svc endpoint.
    #[arg(long, env = "PRESENCE_URL", default_value = "http://127.0.0.1:50061")]
    pub presence_url: String,

    /// profile-svc endpoint.
    #[arg(long, env = "PROFILE_URL", default_value = "http://127.0.0.1:50062")]
    pub profile_url: String,

    /// PEM CA bundle that signed the internal services' certificates: calls to them use
    /// TLS (their URLs must be https://).
    #[arg(long, env = "INTERNAL_TLS_CA_FILE")]
    pub internal_tls_ca: Option<std::path::PathBuf>,

    /// PEM client certificate the gateway presents to the internal services (mTLS), with
    /// --internal-tls-key.
    #[arg(long, env = "INTERNAL_TLS_CERT_FILE", requires = "internal_tls_key", requires = "internal_tls_ca")]
    pub internal_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --internal-tls-cert.
    #[arg(long, env = "INTERNAL_TLS_KEY_FILE", requires = "internal_tls_cert")]
    pub internal_tls_key: Option<std::path::PathBuf>,

    /// Deadline of each call to an internal service (a caller's shorter deadline wins).
    #[arg(long, env = "GATEWAY_RPC_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub rpc_timeout: Duration,

    /// Timeout to connect to an internal service.
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub connect_timeout: Duration,

    /// How often the host names of --presence-url and --profile-url are resolved again;
    /// calls are balanced over every address that answers (a headless Service: every
    /// ready pod). 0: one connection to the URL as given.
    #[arg(long, env = "GATEWAY_INTERNAL_RESOLVE_INTERVAL", default_value = "5s", value_parser = duration)]
    pub internal_resolve_interval: Duration,

    /// Redis of the push hub (Pub/Sub), group membership and publishing.
    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    /// A backend API key: `NAME:SHA256HEX:SCOPES[:RATE[/BURST]]`, the SHA-256 of the key
    /// (never the key itself), a comma-separated list of publish, presence, profile,
    /// groups, admin, and optionally the key's own rate limit (as in --api-keys-file).
    /// Repeat the flag, or separate keys with `;` in the environment variable.
    #[arg(long = "api-key", env = "GATEWAY_API_KEYS", value_delimiter = ';', hide_env_values = true)]
    pub api_keys: Vec<String>,

    /// A file of API keys, one `NAME:SHA256HEX:SCOPES[:RATE[/BURST]]` per line (`#` starts
    /// a comment). RATE/BURST is the key's own limit (requests per second, and most at
    /// once; 0 for none); without it the key gets --api-key-rate.
    #[arg(long, env = "GATEWAY_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,

    /// Requests per second each API key without a limit of its own may make (a burst of
    /// one second's worth), per replica; 0 for no limit. Generous on purpose: it stops a
    /// runaway backend, not a busy one (a batch push is one request).
    #[arg(long, env = "GATEWAY_API_KEY_RATE", default_value_t = 20_000.0)]
    pub api_key_rate: f64,

    /// Device calls (Subscribe, Ack) per second per user with a device token (a burst of
    /// one second's worth); 0 for no limit.
    #[arg(long, env = "GATEWAY_DEVICE_RATE", default_value_t = 20.0)]
    pub device_rate: f64,

    /// A key that verifies device tokens (JWT): `KID:ALG:PATH`, with an HMAC secret file
    /// for HS256/384/512 or a PEM public key for RS*/PS*/ES256/ES384. Repeat for rotation.
    #[arg(long = "jwt-key", env = "GATEWAY_JWT_KEYS", value_delimiter = ';')]
    pub jwt_keys: Vec<String>,

    /// How often the API key file and the device-token key files are checked for
    /// changes; changed files are loaded without a restart (0: never).
    #[arg(long, env = "GATEWAY_CREDENTIALS_RELOAD_INTERVAL", default_value = "10s", value_parser = duration)]
    pub credentials_reload_interval: std::time::Duration,

    /// Required `iss` of device tokens, if set.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of device tokens, if set.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed when checking a token's `exp` and `nbf`.
    #[arg(long, env = "GATEWAY_JWT_LEEWAY", default_value = "30s", value_parser = duration)]
    pub jwt_leeway: Duration,

    /// Presence lease of a device stream; renewed every third of it while the stream is open.
    #[arg(long, env = "GATEWAY_STREAM_LEASE", default_value = "60s", value_parser = duration)]
    pub stream_lease: Duration,

    /// How long the audit takes to check every open stream against Redis once (their
    /// positions against the histories' tops, their groups against the user's): each
    /// renewal round checks a slice. A backstop: a lost live message is caught by the
    /// next one, a dead or silent Pub/Sub link by the hub's probe of every shard, and
    /// both are caught up at once (docs/ARCHITECTURE.md, "Audit").
    #[arg(long, env = "GATEWAY_AUDIT_INTERVAL", default_value = "1h", value_parser = duration)]
    pub audit_interval: Duration,

    /// Longest life of a device stream (0: no limit). Each stream is ended with
    /// UNAVAILABLE at a random 80-100% of it (checked every third of --stream-lease),
    /// and its device reconnects and resumes: long-lived streams spread over replicas
    /// added since they opened.
    #[arg(long, env = "GATEWAY_MAX_STREAM_AGE", default_value = "30m", value_parser = duration)]
    pub max_stream_age: Duration,

    /// Messages a device stream may have queued before it is cut off as too slow.
    #[arg(long, env = "GATEWAY_STREAM_QUEUE_MESSAGES", default_value_t = 1024)]
    pub stream_queue_messages: usize,

    /// Bytes a device stream may have queued before it is cut off as too slow.
    #[arg(long, env = "GATEWAY_STREAM_QUEUE_BYTES", default_value_t = 4 << 20)]
    pub stream_queue_bytes: usize,

    /// Most open streams of one (user, device) on a replica; a new one replaces the
    /// oldest, which ends with ABORTED.
    #[arg(long, env = "GATEWAY_MAX_STREAMS_PER_DEVICE", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_device: u32,

    /// Most open streams of one user on a replica; a Subscribe over it is refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "GATEWAY_MAX_STREAMS_PER_USER", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_user: u32,

    /// Most bytes one push call may publish (message size × users). Keep it well below
    /// Redis's `client-output-buffer-limit pubsub` hard limit (32 MB by default): a
    /// replica whose subscriber passes it is disconnected with all its streams.
    #[arg(long, env = "GATEWAY_MAX_PUBLISH_BYTES", default_value_t = 8 << 20)]
    pub max_publish_bytes: usize,

    /// Most devices per user with acknowledged positions: a new device takes the place
    /// of the one that acked least recently.
    #[arg(long, env = "GATEWAY_MAX_ACK_DEVICES_PER_USER", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_ack_devices_per_user: u32,

    /// Most open WatchPresence streams per API key on a replica; one more is
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "GATEWAY_MAX_WATCHERS_PER_KEY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watchers_per_key: u32,

    /// Largest payload of one pushed message.
    #[arg(long, env = "GATEWAY_MAX_PAYLOAD_BYTES", default_value_t = 64 << 10)]
    pub max_payload_bytes: usize,

    /// Most pushes in one PushBatch.
    #[arg(long, env = "GATEWAY_MAX_BATCH_PUSHES", default_value_t = 1000)]
    pub max_batch_pushes: usize,

    /// Most user ids in one PushToUsers, JoinGroup or LeaveGroup.
    #[arg(long, env = "GATEWAY_MAX_USERS_PER_CALL", default_value_t = 1000)]
    pub max_users_per_call: usize,

    /// Largest page of ListGroupMembers; a larger page_size is coerced to it (AIP-158).
    #[arg(long, env = "GATEWAY_MAX_PAGE_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_page_size: u32,

    /// Most groups one user may belong to.
    #[arg(long, env = "GATEWAY_MAX_GROUPS_PER_USER", default_value_t = 1000)]
    pub max_groups_per_user: usize,

    /// How long an idempotency key is remembered: a retry within it delivers nothing new.
    #[arg(long, env = "GATEWAY_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = duration)]
    pub idempotency_window: Duration,

    /// Most messages kept in a user's inbox (approximately: Redis trims whole stream nodes).
    #[arg(long, env = "GATEWAY_INBOX_MAX_LEN", default_value_t = 100)]
    pub inbox_max_len: usize,

    /// Most messages kept in a group's history and in the broadcast history.
    #[arg(long, env = "GATEWAY_HISTORY_MAX_LEN", default_value_t = 1000)]
    pub history_max_len: usize,

    /// Oldest message kept in an inbox or history; an idle one expires after it.
    #[arg(long, env = "GATEWAY_HISTORY_MAX_AGE", default_value = "24h", value_parser = duration)]
    pub history_max_age: Duration,

    /// How long a history's epoch and last id, and a user's acknowledged positions,
    /// outlive their last use (at least --history-max-age). A device that resumes after
    /// this is told its history has a gap.
    #[arg(long, env = "GATEWAY_HISTORY_META_TTL", default_value = "7d", value_parser = duration)]
    pub history_meta_ttl: Duration,

    /// On shutdown, after --drain-delay, the window over which this replica's device
    /// streams are ended (UNAVAILABLE: reconnect and resume), spread evenly so their
    /// reconnections do not all land on the other replicas at once. Keep
    /// drain delay + this + --shutdown-grace below the pod's termination grace period.
    #[arg(long, env = "GATEWAY_STREAM_DRAIN_WINDOW", default_value = "10s", value_parser = duration)]
    pub stream_drain_window: Duration,

    /// How often the hub checks its Pub/Sub connection end to end (and how long a
    /// probe may take before the connection is deemed dead and replaced).
    #[arg(long, env = "GATEWAY_HUB_PROBE_INTERVAL", default_value = "5s", value_parser = duration)]
    pub hub_probe_interval: Duration,

    /// Tokio worker threads serving gRPC; 0 means one per core. Fan-out is cheapest per
    /// delivery on few threads (see docs/BENCHMARKS.md).
    #[arg(long, env = "GATEWAY_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
}
