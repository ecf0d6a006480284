//! push-gateway: the one public gRPC contract (`push.v1.PushGateway`).
//!
//! Layout:
//! - [`config`]: flags and environment.
//! - [`downstream`]: channels to presence-svc and profile-svc, and call forwarding
//!   that keeps their status codes and error details.
//! - [`auth`]: the gateway's policy: API keys with scopes, device tokens (JWT).
//! - [`push`]: push, receipt and group RPCs (validate, encode once, append + publish).
//! - [`history`]: inboxes and histories: ids, epochs, cursors, sources.
//! - [`envelope`]: what travels on the Pub/Sub channels, for both sides.
//! - [`store`]: every Redis command of the gateway; its Lua scripts are in `lua/`.
//! - [`stream`]: device streams: the hub, queues, opening, replays, groups, presence
//!   leases, the audit and the maintenance task (see its layout).
//! - [`service`]: the `PushGateway` implementation.
//! - [`serve`]: runs the gRPC server.

pub mod auth;
pub mod config;
pub mod downstream;
pub mod envelope;
pub mod history;
pub mod push;
pub mod service;
pub mod store;
pub mod stream;

use std::future::Future;

use push_common::{BoxError, keys::Keys, redis, server};
use push_proto::{presence::v1::presence_client::PresenceClient, push::v1::push_gateway_server::PushGatewayServer};
use tokio::net::TcpListener;

pub use config::Config;

/// The name health reports under (besides "").
pub const SERVICE_NAME: &str = "push.v1.PushGateway";

/// Runs the gateway as a process: its own runtime (with `--worker-threads`), serving on
/// `--listen` until SIGTERM or Ctrl-C.
pub fn run(config: Config) -> Result<(), BoxError> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    runtime.enable_all().build()?.block_on(async {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("push-gateway cannot listen on {} (--listen / GATEWAY_LISTEN): {e}", config.listen))?;
        serve(listener, config, push_common::shutdown::signal()).await
    })
}

/// Serves the gateway on `listener` until `shutdown` completes. Health is SERVING only
/// while both internal services report SERVING, Redis answers and the hub's Pub/Sub
/// connection is up. On shutdown every device stream ends with UNAVAILABLE, so devices
/// reconnect to another replica.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let presence = downstream::channel(&config.presence_url, &config).map_err(|e| format!("--presence-url {e}"))?;
    let profile = downstream::channel(&config.profile_url, &config).map_err(|e| format!("--profile-url {e}"))?;
    let internal_token = config.auth.internal_token()?;
    let policy = auth::GatewayPolicy::new(&config.auth_settings()?)?;
    if !config.auth.insecure_no_auth && (internal_token.is_none() || policy.is_none()) {
        return Err("refusing to serve unauthenticated: configure --internal-token-file and API keys (--api-key, \
                    --api-keys-file) or device token keys (--jwt-key), or pass --insecure-no-auth for local development"
            .into());
    }
    let policy = policy.map(|p| std::sync::Arc::new(p) as std::sync::Arc<dyn push_common::auth::Authorize>);
    let with_token = push_common::auth::SendBearer::new(internal_token.as_deref())?;
    let internal = |c: &tonic::transport::Channel| downstream::Internal::new(c.clone(), with_token.clone());
    if config.history_meta_ttl < config.history_max_age {
        return Err("--history-meta-ttl must be at least --history-max-age".into());
    }
    if config.inbox_max_len == 0 || config.history_max_len == 0 {
        return Err("--inbox-max-len and --history-max-len must be at least 1".into());
    }
    let pool = redis::pool(&config.redis)?;
    let keys = Keys::new(&config.redis.key_prefix);
    let retention = store::Retention {
        inbox_max_len: config.inbox_max_len,
        history_max_len: config.history_max_len,
        max_age: config.history_max_age,
        meta_ttl: config.history_meta_ttl,
        max_ack_devices: config.max_ack_devices_per_user as usize,
    };
    let store = store::Store::new(pool.clone(), keys.clone(), retention);
    let hub_config = stream::hub::HubConfig {
        client: redis::client(&config.redis)?,
        connect_timeout: config.redis.timeout,
        probe_interval: config.hub_probe_interval,
        subscribe_timeout: config.redis.timeout * 2,
    };
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let (hub, hub_task) = stream::hub::Hub::start(hub_config, pool.clone(), &keys, events_tx.clone())?;

    let timeout = config.connect_timeout;
    let (p, q, h) = (presence.clone(), profile.clone(), hub.clone());
    let probe = move || {
        let (p, q, h, pool) = (p.clone(), q.clone(), h.clone(), pool.clone());
        async move {
            let (a, b, c) = tokio::join!(
                downstream::serving(p, "presence.v1.Presence", timeout),
                downstream::serving(q, "profile.v1.Profile", timeout),
                redis::ping(&pool, timeout),
            );
            a && b && c && h.is_healthy()
        }
    };

    let pusher = push::Pusher {
        store: store.clone(),
        limits: push::PushLimits {
            max_payload_bytes: config.max_payload_bytes,
            max_users_per_call: config.max_users_per_call,
            max_groups_per_user: config.max_groups_per_user,
            max_page_size: config.max_page_size as usize,
            idempotency_window: config.idempotency_window,
            max_publish_bytes: config.max_publish_bytes,
        },
    };
    let settings = stream::Settings {
        lease: config.stream_lease,
        limits: stream::Limits { messages: config.stream_queue_messages, bytes: config.stream_queue_bytes },
        max_groups: config.max_groups_per_user,
        max_per_device: config.max_streams_per_device as usize,
        max_per_user: config.max_streams_per_user as usize,
    };
    let presence_client = PresenceClient::new(internal(&presence));
    let (streams, sessions_task) =
        stream::Streams::start(hub.clone(), store, presence_client, settings, (events_tx, events_rx));
    let service =
        PushGatewayServer::new(service::Gateway::new(internal(&presence), internal(&profile), pusher, streams))
            .max_decoding_message_size(config.max_payload_bytes + (1 << 20));
    let closing = hub.clone();
    let shutdown = async move {
        shutdown.await;
        closing.close_all(tonic::Status::unavailable("the gateway is shutting down; reconnect"));
    };
    let result = server::run(SERVICE_NAME, listener, &config.serve, probe, shutdown, |r| {
        server::add_guarded(r, service, policy)
    })
    .await;
    hub_task.abort();
    sessions_task.abort();
    result
}
