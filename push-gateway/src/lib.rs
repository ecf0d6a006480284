//! push-gateway: the one public gRPC contract (`push.v1.PushGateway`).
//!
//! Layout:
//! - [`config`]: flags and environment.
//! - [`downstream`]: channels to presence-svc and profile-svc, and call forwarding
//!   that keeps their status codes and error details.
//! - [`service`]: the `PushGateway` implementation.
//! - [`serve`]: runs the gRPC server; health follows both internal services.

pub mod config;
pub mod downstream;
pub mod service;

use std::future::Future;

use push_common::{BoxError, server};
use push_proto::push::v1::push_gateway_server::PushGatewayServer;
use tokio::net::TcpListener;

pub use config::Config;

/// The name health reports under (besides "").
pub const SERVICE_NAME: &str = "push.v1.PushGateway";

/// Serves the gateway on `listener` until `shutdown` completes. Health is SERVING only
/// while both internal services report SERVING (which in turn needs their Redis).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let presence = downstream::channel(&config.presence_url, &config)
        .map_err(|e| format!("--presence-url {e}"))?;
    let profile = downstream::channel(&config.profile_url, &config)
        .map_err(|e| format!("--profile-url {e}"))?;

    let timeout = config.connect_timeout;
    let (p, q) = (presence.clone(), profile.clone());
    let probe = move || {
        let (p, q) = (p.clone(), q.clone());
        async move {
            let (a, b) = tokio::join!(
                downstream::serving(p, presence_svc_name(), timeout),
                downstream::serving(q, profile_svc_name(), timeout),
            );
            a && b
        }
    };
    let service = PushGatewayServer::new(service::Gateway::new(presence, profile));
    server::run(
        SERVICE_NAME,
        listener,
        &config.serve,
        probe,
        shutdown,
        |r| r.add_service(service),
    )
    .await
}

fn presence_svc_name() -> &'static str {
    "presence.v1.Presence"
}

fn profile_svc_name() -> &'static str {
    "profile.v1.Profile"
}
