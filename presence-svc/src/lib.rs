//! presence-svc: who is online, as leases in Redis.
//!
//! Layout:
//! - [`config`]: flags and environment.
//! - [`store`]: every Redis command (Lua scripts that read Redis `TIME`).
//! - [`service`]: the `presence.v1.Presence` implementation (validate → store → convert).
//! - [`token`]: ListOnlineUsers page tokens.
//! - [`serve`]: runs the gRPC server with health, reflection and the expiry sweeper.

pub mod config;
pub mod service;
pub mod store;
pub mod token;
pub mod watch;

use std::future::Future;

use push_common::{BoxError, keys::Keys, redis, server};
use push_proto::presence::v1::presence_server::PresenceServer;
use tokio::net::TcpListener;

pub use config::Config;

/// The name health reports under (besides "").
pub const SERVICE_NAME: &str = "presence.v1.Presence";

/// Binds `addr` to serve on (a failure names the service, its flag and the address).
pub async fn listen(addr: std::net::SocketAddr) -> Result<TcpListener, BoxError> {
    server::listen(addr, "presence-svc (--listen / PRESENCE_LISTEN)").await
}

/// Serves presence on `listener` until `shutdown` completes, then reports NOT_SERVING,
/// stops accepting and drains in-flight calls (at most `shutdown_grace`).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let policy = config.auth.internal_policy()?;
    let pool = redis::pool(&config.redis)?;
    let store = store::Store::new(
        pool.clone(),
        Keys::new(&config.redis.key_prefix),
        config.online_buckets,
        config.events_max_len,
        config.last_seen_retention,
    );

    // Expired users leave the index by themselves for readers (scores are compared with
    // now); the sweeper only keeps the index from growing. Any number of replicas may
    // sweep at once: each batch is one atomic script.
    let sweeper = {
        let store = store.clone();
        let (every, max_idle) = (config.sweep_interval, config.sweep_max_idle);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let outcome = store.sweep_due(push_common::time::unix_ms(), max_idle).await;
                let result = if outcome.is_ok() { "ok" } else { "failed" };
                metrics::counter!("presence_sweeps_total", "result" => result).increment(1);
                match outcome {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics::counter!("presence_swept_users_total").increment(n as u64);
                        tracing::debug!(swept = n, "expired users swept")
                    }
                    Err(e) => tracing::debug!(error = %e, "sweep skipped"),
                }
            }
        })
    };

    let probe = redis::Check::new(&pool, &config.redis).probe();
    let (watchers, reader) = watch::Watchers::start(store.clone(), config.redis.clone(), config.max_watchers);
    let service = PresenceServer::new(service::PresenceService::new(store, config.clone(), watchers));
    let result = server::run(SERVICE_NAME, listener, &config.serve, probe, shutdown, async {}, |r| {
        server::add_guarded(r, service, policy)
    })
    .await;
    sweeper.abort();
    reader.abort();
    result
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use clap::Parser;

    /// Collects the message of every event logged on this thread.
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut m = Message(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[tokio::test]
    async fn the_health_warning_names_the_unreachable_redis() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let _guard = tracing::subscriber::set_default(Capture(lines.clone()));
        let listener = super::listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        // Nothing listens on port 1.
        let args = ["presence-svc", "--redis-url", "redis://127.0.0.1:1", "--insecure-no-auth"];
        let config = super::Config::parse_from(args.iter().chain(&["--health-interval", "50ms"]));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(super::serve(listener, config, async {
            let _ = stopped.await;
        }));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let warning = loop {
            let found = lines.lock().unwrap().iter().find(|l| l.contains("NOT_SERVING")).cloned();
            if let Some(line) = found {
                break line;
            }
            assert!(std::time::Instant::now() < deadline, "no NOT_SERVING warning in {:?}", lines.lock().unwrap());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let _ = stop.send(());
        let _ = server.await;
        assert!(warning.contains("Redis") && warning.contains("127.0.0.1:1"), "{warning}");
    }
}
