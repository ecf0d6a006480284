//! The operator console: a web page on its own HTTP port (`--console-listen`) that shows
//! live counters, online users, presence events and group members, and sends a test
//! push and shows it arrive. The page (`web/console/`, built into `web/console/dist/`
//! and embedded here) calls the gateway's own API over gRPC-Web on the same origin, so
//! it needs no CORS. Every call on this port needs an **admin** API key (the page asks
//! for it and keeps it in memory only); the counters come from the gateway's metrics.
use std::{convert::Infallible, future::Future, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use push_common::{
    BoxError,
    auth::{Authorize, Guarded, Identity},
    size_limit::SizeLimitCode,
};
use tonic::{Status, codegen::http};
use tower::Layer;

/// The page, built by `web/` (`npm run build -w console`).
const INDEX_HTML: &[u8] = include_bytes!("../../web/console/dist/index.html");
/// The page's script (the TypeScript client and the console, bundled).
const CONSOLE_JS: &[u8] = include_bytes!("../../web/console/dist/console.js");

/// The path the counters' authorization is checked for: not a method of the contract, so
/// it needs the admin scope.
const COUNTERS: &str = "/console/counters";

/// A policy that lets only admin API keys through, whatever the method.
struct AdminOnly(Arc<dyn Authorize>);

impl Authorize for AdminOnly {
    fn authorize(&self, _method: &str, headers: &http::HeaderMap) -> Result<Identity, Status> {
        // Any path that is not a method of the contract needs the admin scope.
        self.0.authorize(COUNTERS, headers)
    }
}

/// Serves the console on `listener` until `shutdown` completes: the page, its script,
/// `/api/counters` and gRPC-Web for `service` (the gateway), all behind `policy` made
/// admin-only (open when the gateway authenticates nobody). TLS when `tls` is given.
pub async fn serve<S>(
    listener: tokio::net::TcpListener,
    tls: Option<push_common::tls::ServerTls>,
    service: S,
    policy: Option<Arc<dyn Authorize>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let admin: Option<Arc<dyn Authorize>> = policy.map(|p| Arc::new(AdminOnly(p)) as Arc<dyn Authorize>);
    let web = tonic_web::GrpcWebLayer::new();
    let grpc_path = "/push.v1.PushGateway/{*method}";
    let pages = Router::new()
        .route("/", get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/console.js", get(|| async { page("text/javascript; charset=utf-8", CONSOLE_JS) }))
        .route("/api/counters", get(counters));
    let router = match admin.clone() {
        Some(p) => pages.route_service(grpc_path, web.layer(SizeLimitCode(Guarded::new(service, p)))),
        None => pages.route_service(grpc_path, web.layer(SizeLimitCode(service))),
    }
    .with_state(admin);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, tls = tls.is_some(), "serving the operator console");
    let server = tonic::transport::Server::builder().accept_http1(true).add_routes(router.into());
    match tls {
        Some(tls) => {
            let incoming = push_common::tls::incoming(listener, tls.acceptor);
            server.serve_with_incoming_shutdown(incoming, shutdown).await?
        }
        None => server.serve_with_incoming_shutdown(push_common::server::incoming(listener), shutdown).await?,
    }
    Ok(())
}

/// A static file, never cached across gateway versions (it is small).
fn page(content_type: &'static str, body: &'static [u8]) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::HeaderName::from_static("content-security-policy"), HeaderValue::from_static(CSP)),
    ];
    (headers, body).into_response()
}

/// The page loads only its own script and calls only its own origin.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";

/// `GET /api/counters`: `{"streams": N, "pushes": N, "deliveries": N}` from the gateway's
/// metrics (`null` each when this process records none), for an admin key.
async fn counters(State(admin): State<Option<Arc<dyn Authorize>>>, headers: HeaderMap) -> Response {
    if let Some(p) = &admin
        && let Err(s) = p.authorize(COUNTERS, &headers)
    {
        let code =
            if s.code() == tonic::Code::Unauthenticated { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN };
        return (code, s.message().to_owned()).into_response();
    }
    let body = match push_common::metrics::render() {
        Some(text) => {
            let n = |name| push_common::metrics::sum(&text, name);
            format!(
                "{{\"streams\":{},\"pushes\":{},\"deliveries\":{}}}",
                n("push_gateway_streams"),
                n("push_gateway_pushes_total"),
                n("push_gateway_deliveries_total")
            )
        }
        None => "{\"streams\":null,\"pushes\":null,\"deliveries\":null}".to_owned(),
    };
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}
