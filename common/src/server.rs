//! What every gRPC server of the system mounts besides its own service.
use std::{future::Future, time::Duration};

use tonic::codegen::http;
use tonic_reflection::server::{v1, v1alpha};

use crate::Error;

/// Reflection lists only what a server really mounts (`service`, health, reflection), but
/// can describe every type it may send, including `google.rpc.BadRequest` in error
/// details, so grpcurl prints those too.
fn reflection_builder(service: &str) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(push_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(service)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}

/// Reflection v1 and v1alpha (older grpcurl only speaks v1alpha) for a server that
/// mounts `service`.
pub fn reflection(
    service: &str,
) -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    Error,
> {
    let v1 = reflection_builder(service).build_v1().map_err(|e| Error::Config(format!("reflection v1: {e}")))?;
    let v1alpha =
        reflection_builder(service).build_v1alpha().map_err(|e| Error::Config(format!("reflection v1alpha: {e}")))?;
    Ok((v1, v1alpha))
}

/// Runs `server` (which stops accepting when its shutdown future completes and then
/// drains in-flight calls), but gives up draining `grace` after `started` fires, so a
/// stuck call cannot keep a terminating pod alive forever.
pub async fn drain_with_grace<S, E>(
    server: S,
    started: tokio::sync::oneshot::Receiver<()>,
    grace: Duration,
) -> Result<(), E>
where
    S: Future<Output = Result<(), E>>,
{
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r,
        _ = async {
            if started.await.is_err() {
                // The shutdown future was dropped without firing: the server ended on its own.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "shutdown grace period over; abandoning in-flight calls");
            Ok(())
        }
    }
}

/// Accepts on an already bound listener (tests bind `127.0.0.1:0`) with TCP_NODELAY,
/// since pushes are small writes that must not wait for Nagle.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Binds `addr` to serve on; a failure names the server and the flag (`who`, e.g.
/// "presence-svc (--listen / PRESENCE_LISTEN)") and the address, where a busy port alone
/// says only "Address already in use".
pub async fn listen(addr: std::net::SocketAddr, who: &str) -> Result<tokio::net::TcpListener, crate::BoxError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("{who} cannot listen on {addr}: {e}").into())
}

/// The router every server builds: its services behind the RPC metrics layer, behind
/// gRPC-Web when the server speaks it.
pub type Router = tonic::transport::server::Router<
    Stack<crate::metrics::RpcMetricsLayer, Stack<Either<crate::web::WebLayer, Identity>, Identity>>,
>;

use tower::{
    layer::util::{Identity, Stack},
    util::Either,
};

/// What [`run`] serves besides health and reflection: the name health reports under,
/// and whether browsers may call (gRPC-Web, with its CORS). A bare name is a server
/// without gRPC-Web.
#[derive(Debug)]
pub struct Mount {
    /// The service's full name, e.g. `push.v1.PushGateway`.
    pub name: &'static str,
    /// gRPC-Web in front of every service (see [`crate::web`]); HTTP/1.1 is then
    /// accepted too.
    pub web: Option<crate::web::WebLayer>,
}

impl From<&'static str> for Mount {
    fn from(name: &'static str) -> Self {
        Mount { name, web: None }
    }
}

/// The health service a liveness probe asks: SERVING from start until the process
/// exits, whatever its dependencies do, so a Redis blip or a drain never restarts it.
/// Readiness asks "" (or the service's name), which follows the dependencies.
pub const LIVENESS: &str = "liveness";

/// Runs one gRPC server of the system: health (driven by `probe` every
/// `health_interval`, plus [`LIVENESS`]), reflection v1 + v1alpha, a tracing span per
/// RPC, and whatever `add` mounts. When `shutdown` completes, readiness turns
/// NOT_SERVING at once (so load balancers stop sending) while everything keeps working
/// for `drain_delay`; then `drain` runs (the gateway ends its streams, paced), the
/// listener closes, and in-flight calls get `shutdown_grace` to finish.
pub async fn run<P, F>(
    mount: impl Into<Mount>,
    listener: tokio::net::TcpListener,
    args: &crate::config::ServeArgs,
    probe: P,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: impl Future<Output = ()> + Send + 'static,
    add: impl FnOnce(Router) -> Router,
) -> Result<(), crate::BoxError>
where
    P: FnMut() -> F + Send + 'static,
    F: Future + Send,
    F::Output: crate::health::Probed,
{
    use crate::health;

    let Mount { name, web } = mount.into();
    let (reporter, health_service) = health::health_reporter();
    // The plaintext health port (for probes of a TLS server): the same statuses.
    let health_only = match args.health_listen {
        Some(addr) => {
            let l = listen(addr, &format!("{name} (--health-listen / HEALTH_LISTEN)")).await?;
            tracing::info!(addr = %addr, "health checks in plaintext");
            let svc = health_service.clone();
            Some(tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming(l))))
        }
        None => None,
    };
    reporter.set_service_status(LIVENESS, health::ServingStatus::Serving).await;
    let watcher = health::spawn_watcher(reporter.clone(), vec![name], args.health_interval, probe);
    let (reflection_v1, reflection_v1alpha) = reflection(name)?;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let drain_delay = args.drain_delay;
    let signal = async move {
        shutdown.await;
        watcher.abort();
        // A probe running on another thread could still report SERVING after us.
        let _ = watcher.await;
        health::set_all(&reporter, &[name], health::ServingStatus::NotServing).await;
        tracing::info!(?drain_delay, "NOT_SERVING; serving on while load balancers catch up");
        tokio::time::sleep(drain_delay).await;
        drain.await;
        tracing::info!("no longer accepting; finishing in-flight calls");
        let _ = started_tx.send(());
    };
    tracing::info!(addr = %listener.local_addr()?, service = name, "listening");
    let tls = args.tls()?;
    let router = tonic::transport::Server::builder()
        .accept_http1(web.is_some())
        // The first layer is the outermost: a gRPC-Web call is translated before it is
        // counted, and a CORS preflight is answered before anything else sees it.
        .layer(tower::util::option_layer(web))
        .layer(crate::metrics::RpcMetricsLayer)
        .max_concurrent_streams(args.max_concurrent_streams)
        .http2_keepalive_interval(Some(args.keepalive_interval))
        .http2_keepalive_timeout(Some(args.keepalive_timeout))
        .trace_fn(crate::telemetry::rpc_span)
        .add_service(health_service)
        .add_optional_service((!args.no_reflection).then_some(reflection_v1))
        .add_optional_service((!args.no_reflection).then_some(reflection_v1alpha));
    let router = add(router);
    match tls {
        Some(tls) => {
            tracing::info!(mutual = args.tls_client_ca.is_some(), "serving TLS");
            let reloader = tls.watch(args.tls_reload_interval);
            let running = router.serve_with_incoming_shutdown(crate::tls::incoming(listener, tls.acceptor), signal);
            let result = drain_with_grace(running, started_rx, args.shutdown_grace).await;
            if let Some(r) = reloader {
                r.abort();
            }
            result?;
        }
        None => {
            drain_with_grace(
                router.serve_with_incoming_shutdown(incoming(listener), signal),
                started_rx,
                args.shutdown_grace,
            )
            .await?
        }
    }
    if let Some(h) = health_only {
        h.abort();
    }
    Ok(())
}

/// Adds `service` to `router`, behind `policy` when there is one (health and reflection
/// are added unguarded by [`run`]).
pub fn add_guarded<S>(router: Router, service: S, policy: Option<std::sync::Arc<dyn crate::auth::Authorize>>) -> Router
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    use crate::size_limit::SizeLimitCode;
    match policy {
        Some(policy) => router.add_service(SizeLimitCode(crate::auth::Guarded::new(service, policy))),
        None => router.add_service(SizeLimitCode(service)),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_busy_port_names_the_server_its_flag_and_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = super::listen(addr, "presence-svc (--listen / PRESENCE_LISTEN)").await.unwrap_err().to_string();
        assert!(err.contains("presence-svc (--listen / PRESENCE_LISTEN)") && err.contains(&addr.to_string()), "{err}");
        assert!(err.contains("Address already in use"), "{err}");
    }
}
