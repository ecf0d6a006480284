//! Channels to the internal services and the forwarding of one call.
use std::{net::SocketAddr, time::Duration};

use prost::Message;
use push_common::auth::SendBearer;
use tonic::{
    Request, Response, Status,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint, channel::Change},
};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::config::Config;

/// A channel to an internal service that sends the internal token with every call.
pub type Internal = InterceptedService<Channel, SendBearer>;

/// A lazily connected channel: the gateway starts (NOT_SERVING) before its
/// dependencies and reconnects by itself when they come back.
///
/// When the URL names a host (not an IP address) and `--internal-resolve-interval` is
/// not zero, the channel is balanced over every address the name resolves to (a
/// Kubernetes headless Service: every ready pod), resolved again at that interval:
/// each address that accepts a TCP connection is in, one that stops resolving or
/// accepting is taken out. Calls spread over the pods (power of two choices), instead
/// of all riding the one connection a ClusterIP Service pins to one pod. TLS still
/// verifies the certificate against the host name.
pub fn channel(url: &str, config: &Config) -> Result<Channel, String> {
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
    if config.internal_resolve_interval.is_zero() || host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(endpoint(url, &host, config)?.connect_lazy());
    }
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
    // An endpoint is made now, so a bad setting fails at start.
    endpoint(url, &host, config)?;
    let name = host.clone();
    let resolve = move || {
        let name = name.clone();
        async move { tokio::net::lookup_host((name.as_str(), port)).await.map(|a| a.collect()).unwrap_or_default() }
    };
    Ok(balanced(url.to_owned(), scheme, host, config, resolve))
}

/// A channel balanced over the addresses `resolve` finds (every
/// `--internal-resolve-interval`) that accept a TCP connection within the connect
/// timeout; addresses are added and taken out as that changes. A round that finds
/// none (a DNS failure, a network blip) changes nothing; while no address has ever
/// answered, the channel holds one endpoint at `url` itself, so calls fail within the
/// endpoint's timeouts instead of waiting in the balancer for an address.
pub fn balanced<R, F>(url: String, scheme: String, host: String, config: &Config, mut resolve: R) -> Channel
where
    R: FnMut() -> F + Send + 'static,
    F: Future<Output = std::collections::BTreeSet<SocketAddr>> + Send,
{
    let (channel, changes) = Channel::balance_channel::<String>(64);
    let (config, every) = (config.clone(), config.internal_resolve_interval);
    tokio::spawn(async move {
        // The addresses in the balancer; the fallback endpoint is keyed by the URL.
        let mut current = std::collections::BTreeSet::<SocketAddr>::new();
        let mut fallback = false;
        loop {
            let reachable = reachable(resolve().await, config.connect_timeout).await;
            let mut sends = Vec::new();
            if reachable.is_empty() {
                if current.is_empty()
                    && !fallback
                    && let Ok(e) = endpoint(&url, &host, &config)
                {
                    sends.push(Change::Insert(url.clone(), e));
                    fallback = true;
                }
            } else {
                for addr in reachable.difference(&current).copied().collect::<Vec<_>>() {
                    let Ok(e) = endpoint(&format!("{scheme}://{addr}"), &host, &config) else { continue };
                    tracing::info!(service = %host, %addr, "internal service address in");
                    sends.push(Change::Insert(addr.to_string(), e));
                    current.insert(addr);
                }
                for addr in current.difference(&reachable).copied().collect::<Vec<_>>() {
                    tracing::info!(service = %host, %addr, "internal service address out");
                    sends.push(Change::Remove(addr.to_string()));
                    current.remove(&addr);
                }
                if fallback && !current.is_empty() {
                    sends.push(Change::Remove(url.clone()));
                    fallback = false;
                }
            }
            for change in sends {
                if changes.send(change).await.is_err() {
                    return; // the channel is gone
                }
            }
            tokio::time::sleep(every).await;
            if changes.is_closed() {
                return;
            }
        }
    });
    channel
}

/// The addresses of `candidates` that accept a TCP connection within `timeout`.
async fn reachable(
    candidates: std::collections::BTreeSet<SocketAddr>,
    timeout: Duration,
) -> std::collections::BTreeSet<SocketAddr> {
    let mut probes = tokio::task::JoinSet::new();
    for a in candidates {
        probes.spawn(async move {
            matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(a)).await, Ok(Ok(_))).then_some(a)
        });
    }
    probes.join_all().await.into_iter().flatten().collect()
}

/// One endpoint at `url`, with the gateway's timeouts and TLS (verifying `host`).
fn endpoint(url: &str, host: &str, config: &Config) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("{url}: {e}"))?
        .connect_timeout(config.connect_timeout)
        .timeout(config.rpc_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let endpoint = match &config.internal_tls_ca {
        None => endpoint,
        Some(ca) => {
            use push_common::config::read_file;
            use tonic::transport::{Certificate, ClientTlsConfig, Identity};
            let ca = read_file("--internal-tls-ca", ca).map_err(|e| e.to_string())?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(host);
            if let (Some(cert), Some(key)) = (&config.internal_tls_cert, &config.internal_tls_key) {
                let cert = read_file("--internal-tls-cert", cert).map_err(|e| e.to_string())?;
                let key = read_file("--internal-tls-key", key).map_err(|e| e.to_string())?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint.tls_config(tls).map_err(|e| format!("{url}: TLS: {e}"))?
        }
    };
    Ok(endpoint)
}

/// True when `service` on `channel` reports SERVING within `timeout`.
pub async fn serving(channel: Channel, service: &str, timeout: Duration) -> bool {
    let mut client = HealthClient::new(channel);
    let mut req = Request::new(HealthCheckRequest { service: service.to_owned() });
    req.set_timeout(timeout);
    matches!(
        tokio::time::timeout(timeout, client.check(req)).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

/// Re-encodes a message as its wire-identical counterpart in another package
/// (`push.v1.X` ↔ `presence.v1.X` / `profile.v1.X`). The test `contract_pairs_match`
/// proves every pair used here has the same fields, numbers and types.
pub fn transcode<A: Message, B: Message + Default>(a: &A) -> Result<B, Status> {
    B::decode(a.encode_to_vec().as_slice()).map_err(|e| {
        tracing::error!(error = %e, "public and internal contracts disagree");
        Status::internal("internal error")
    })
}

/// Forwards one public call to an internal service: the request is transcoded, the
/// caller's deadline (grpc-timeout) travels along, and the internal status comes back
/// with its code, message and details intact (NOT_FOUND stays NOT_FOUND, UNAVAILABLE
/// stays UNAVAILABLE), without the internal service's other headers.
pub async fn forward<A, B, C, D, F, Fut>(req: Request<A>, call: F) -> Result<Response<D>, Status>
where
    A: Message,
    B: Message + Default,
    C: Message,
    D: Message + Default,
    F: FnOnce(Request<B>) -> Fut,
    Fut: Future<Output = Result<Response<C>, Status>>,
{
    let inner = internal_request::<A, B>(&req)?;
    match call(inner).await {
        Ok(resp) => Ok(Response::new(transcode::<C, D>(resp.get_ref())?)),
        Err(s) => Err(passthrough(s)),
    }
}

/// The internal twin of a public request, carrying the caller's deadline (grpc-timeout).
fn internal_request<A: Message, B: Message + Default>(req: &Request<A>) -> Result<Request<B>, Status> {
    let mut inner = Request::new(transcode::<A, B>(req.get_ref())?);
    if let Some(t) = req.metadata().get("grpc-timeout") {
        inner.metadata_mut().insert("grpc-timeout", t.clone());
    }
    Ok(inner)
}

/// An internal status as the gateway returns it: code, message and details, without the
/// internal server's other headers.
pub fn passthrough(s: Status) -> Status {
    Status::with_details(s.code(), s.message(), s.details().to_vec().into())
}

/// A forwarded server stream.
pub type ForwardedStream<D> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<D, Status>> + Send>>;

/// Forwards a server-streaming call: like [`forward`], item by item.
pub async fn forward_stream<A, B, C, D, F, Fut>(
    req: Request<A>,
    call: F,
) -> Result<Response<ForwardedStream<D>>, Status>
where
    A: Message,
    B: Message + Default,
    C: Message + Default + 'static,
    D: Message + Default + 'static,
    F: FnOnce(Request<B>) -> Fut,
    Fut: Future<Output = Result<Response<tonic::Streaming<C>>, Status>>,
{
    use tokio_stream::StreamExt;
    let inner = internal_request::<A, B>(&req)?;
    let stream = call(inner).await.map_err(passthrough)?.into_inner();
    let items = stream.map(|item| item.map_err(passthrough).and_then(|m| transcode::<C, D>(&m)));
    Ok(Response::new(Box::pin(items)))
}
