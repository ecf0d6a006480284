//! Connections and clients: plain, TLS, and with a bearer credential.
use std::{net::SocketAddr, time::Duration};

pub use push_common::auth::SendBearer;
use push_proto::push::v1::push_gateway_client::PushGatewayClient;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// A client of the public contract, without credentials.
pub type GatewayClient = PushGatewayClient<Channel>;

/// A client of the public contract that sends a bearer with every call.
pub type AuthorizedClient = PushGatewayClient<InterceptedService<Channel, SendBearer>>;

/// A connected channel to a loopback server.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect")
}

/// A gateway client on a connection of its own.
pub async fn gateway_client(addr: SocketAddr) -> GatewayClient {
    GatewayClient::new(channel(addr).await)
}

/// A gateway client that sends `bearer` (an API key or a device token) with every call.
pub async fn authorized(addr: SocketAddr, bearer: &str) -> AuthorizedClient {
    authorized_on(channel(addr).await, bearer)
}

/// Like [`authorized`], on a given channel (e.g. a TLS one).
pub fn authorized_on(channel: Channel, bearer: &str) -> AuthorizedClient {
    PushGatewayClient::with_interceptor(channel, SendBearer::new(Some(bearer)).expect("ascii token"))
}

/// A TLS channel to `localhost:<port of addr>` trusting `ca_pem`, presenting
/// `identity` (certificate and key PEM) when given.
pub async fn tls_channel(addr: SocketAddr, ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Channel, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://localhost:{}", addr.port())).unwrap();
    let endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?.connect_timeout(Duration::from_secs(5));
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}
