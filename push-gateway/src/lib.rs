//! push-gateway: the one public gRPC contract (`push.v1.PushGateway`).
//!
//! Layout:
//! - [`config`]: flags and environment.
//! - [`settings`]: the configuration resolved once at start (files read, values checked).
//! - [`downstream`]: channels to presence-svc and profile-svc, and call forwarding
//!   that keeps their status codes and error details.
//! - [`auth`]: the gateway's policy: API keys with scopes, device tokens (JWT).
//! - [`push`]: push RPCs (validate, encode once, append + publish), targeted pushes
//!   (unions and exclusions) and batches.
//! - [`membership`]: group RPCs (join, leave, members, a user's groups).
//! - [`receipts`]: delivery receipts (GetDeliveryStatus).
//! - [`reads`]: history reads (ListHistory) for backends and devices.
//! - [`history`]: inboxes and histories: ids, epochs, cursors, sources.
//! - [`envelope`]: what travels on the Pub/Sub channels, for both sides.
//! - [`store`]: every Redis command of the gateway; its Lua scripts are in `lua/`.
//! - [`stream`]: device streams: the hub, queues, opening, replays, groups, presence
//!   leases, the audit and the maintenance task (see its layout).
//! - [`service`]: the `PushGateway` implementation.
//! - [`watch_caps`]: WatchPresence places per API key.
//! - [`console`]: the operator console (a web page) on its own port.
//! - [`serve`]: runs the gRPC server.

pub mod auth;
pub mod config;
pub mod console;
pub mod downstream;
pub mod envelope;
pub mod history;
pub mod membership;
pub mod push;
pub mod reads;
pub mod receipts;
pub mod service;
pub mod settings;
pub mod store;
pub mod stream;
pub mod watch_caps;

use std::future::Future;

use push_common::{BoxError, redis, server};
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
        push_common::telemetry::init();
        push_common::metrics::install(config.serve.metrics_listen, config.console_listen.is_some())?;
        let listener = server::listen(config.listen, "push-gateway (--listen / GATEWAY_LISTEN)").await?;
        let result = serve(listener, config, push_common::shutdown::signal()).await;
        push_common::telemetry::shutdown().await;
        result
    })
}

/// Serves the gateway on `listener` until `shutdown` completes. Health is SERVING only
/// while both internal services report SERVING, Redis answers and the hub's Pub/Sub
/// connection is up. On shutdown readiness turns NOT_SERVING, then (after
/// `--drain-delay`) the device streams end with UNAVAILABLE, paced over
/// `--stream-drain-window`, so devices reconnect to other replicas and resume.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let s = settings::Settings::resolve(&config)?;
    let reloader = s.watch_credentials(&config);
    let internal = |c: &tonic::transport::Channel| downstream::Internal::new(c.clone(), s.internal_token.clone());
    let store = store::Store::new(s.pool.clone(), s.keys.clone(), s.retention);
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let (hub, hub_task) = stream::hub::Hub::start(s.hub, s.pool.clone(), &s.keys, &s.replica, events_tx.clone());

    // Names the first dependency that fails, so the health warning says where to look.
    let timeout = config.connect_timeout;
    let (p, q, h) = (s.presence.clone(), s.profile.clone(), hub.clone());
    let (p_url, q_url) = (config.presence_url.clone(), config.profile_url.clone());
    let redis_check = redis::Check::new(&s.pool, &config.redis);
    let probe = move || {
        let (p, q, h, check) = (p.clone(), q.clone(), h.clone(), redis_check.clone());
        let (p_url, q_url) = (p_url.clone(), q_url.clone());
        async move {
            let (a, b, c) = tokio::join!(
                downstream::serving(p, "presence.v1.Presence", timeout),
                downstream::serving(q, "profile.v1.Profile", timeout),
                check.run(),
            );
            c?;
            if !a {
                return Err(format!("presence-svc at {p_url} (--presence-url) is not SERVING"));
            }
            if !b {
                return Err(format!("profile-svc at {q_url} (--profile-url) is not SERVING"));
            }
            if !h.is_healthy() {
                return Err("the push hub's Pub/Sub connection to Redis is down (reconnecting)".to_owned());
            }
            Ok(())
        }
    };

    let pusher = push::Pusher { store: store.clone(), limits: s.push };
    let membership = membership::Membership { store: store.clone(), limits: s.push };
    let receipts = receipts::Receipts { store: store.clone(), limits: s.push };
    let reads = reads::Reads { store: store.clone(), limits: s.push };
    let presence = PresenceClient::new(internal(&s.presence));
    let (streams, maintenance_task) =
        stream::Streams::start(hub.clone(), store, presence, s.streams, s.replica, (events_tx, events_rx));
    let parts = service::Parts { pusher, membership, receipts, reads, streams, max_watches: s.max_watches };
    let gateway = service::Gateway::new(internal(&s.presence), internal(&s.profile), parts);
    let service = PushGatewayServer::new(gateway).max_decoding_message_size(s.max_request_bytes);
    let policy = s.policy;
    let web = push_common::web::layer(&config.cors_allow_origins)?;
    let (console_stop, console_stopped) = tokio::sync::oneshot::channel::<()>();
    let console = match config.console_listen {
        Some(addr) => {
            let l = server::listen(addr, "the console (--console-listen / GATEWAY_CONSOLE_LISTEN)").await?;
            let stopped = async move {
                let _ = console_stopped.await;
            };
            let serving = console::serve(l, config.serve.tls()?, service.clone(), policy.clone(), stopped);
            Some(tokio::spawn(async move {
                if let Err(e) = serving.await {
                    tracing::error!(error = %e, "the console stopped");
                }
            }))
        }
        None => None,
    };

    let (closing, window) = (hub.clone(), config.stream_drain_window);
    let drain = async move {
        closing
            .close_paced(tonic::Status::unavailable("the gateway is shutting down; reconnect and resume"), window)
            .await;
    };
    let mount = server::Mount { name: SERVICE_NAME, web: Some(web) };
    let result = server::run(mount, listener, &config.serve, probe, shutdown, drain, |r| {
        server::add_guarded(r, service, policy)
    })
    .await;
    // The console's own streams (a watch, a test subscription) get the same grace as
    // the gateway's in-flight calls.
    let _ = console_stop.send(());
    if let Some(mut c) = console
        && tokio::time::timeout(config.serve.shutdown_grace, &mut c).await.is_err()
    {
        c.abort();
    }
    hub_task.abort();
    maintenance_task.abort();
    if let Some(r) = reloader {
        r.abort();
    }
    result
}
