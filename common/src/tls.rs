//! Serving TLS with certificates that reload: the server's certificate chain and key
//! are read again every `--tls-reload-interval` and, when the files changed and still
//! load, used for every new connection from then on (a renewed certificate, e.g. by
//! cert-manager into a mounted Secret, needs no restart). Files that do not load are
//! logged and the certificate in force is kept. The client CA of mTLS (`--tls-client-ca`)
//! reloads the same way.
use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
        client::danger::HandshakeSignatureValid,
        crypto::CryptoProvider,
        pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
        server::{
            ClientHello, ResolvesServerCert, WebPkiClientVerifier,
            danger::{ClientCertVerified, ClientCertVerifier},
        },
        sign::CertifiedKey,
    },
    server::TlsStream,
};

use crate::{Error, config::read_file};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait to be accepted, so a flood of
/// silent connections costs a bounded number of tasks.
const HANDSHAKES: usize = 1024;

/// The server certificate in force, and where it comes from.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Vec<u8>, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), Error> {
        Ok((read_file("--tls-cert", &self.cert)?, read_file("--tls-key", &self.key)?))
    }

    /// Reads the files again; swaps the certificate in when they changed and load.
    /// Returns whether it changed.
    pub fn reload(&self) -> Result<bool, Error> {
        let (cert, key) = self.read()?;
        let seen: Vec<u8> = [cert.as_slice(), key.as_slice()].concat();
        if self.current.read().unwrap_or_else(|e| e.into_inner()).0 == seen {
            return Ok(false);
        }
        let certified = Arc::new(certified(&cert, &key, &self.provider)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (seen, certified);
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).1.clone())
    }
}

fn certified(cert: &[u8], key: &[u8], provider: &CryptoProvider) -> Result<CertifiedKey, Error> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("--tls-cert: {e}")))?;
    if chain.is_empty() {
        return Err(Error::Config("--tls-cert: no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| Error::Config(format!("--tls-key: {e}")))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| Error::Config(format!("--tls-cert / --tls-key do not make a usable certificate: {e}")))
}

/// The client CA of mTLS in force, and where it comes from.
#[derive(Debug)]
pub struct ReloadingClients {
    ca: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Vec<u8>, Arc<dyn ClientCertVerifier>)>,
}

impl ReloadingClients {
    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// Reads the CA file again; swaps the verifier when it changed and loads.
    pub fn reload(&self) -> Result<bool, Error> {
        let pem = read_file("--tls-client-ca", &self.ca)?;
        if self.current.read().unwrap_or_else(|e| e.into_inner()).0 == pem {
            return Ok(false);
        }
        let verifier = client_verifier(&pem, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (pem, verifier);
        Ok(true)
    }
}

fn client_verifier(pem: &[u8], provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| Error::Config(format!("--tls-client-ca: {e}")))?;
        roots.add(c).map_err(|e| Error::Config(format!("--tls-client-ca: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Config(format!("--tls-client-ca: {e}")))
}

/// Every client certificate is checked by the verifier in force. No CA names are sent
/// as hints (they would have to outlive a reload); clients send their one certificate.
impl ClientCertVerifier for ReloadingClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier().verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

/// A server's TLS: the acceptor, and the files it reloads ([`ServerTls::watch`]).
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    cert: Arc<ReloadingCert>,
    clients: Option<Arc<ReloadingClients>>,
}

/// The TLS of a server serving `cert`/`key`, requiring client certificates from
/// `client_ca` when given; HTTP/2 only (ALPN h2), as gRPC needs.
pub fn server(cert: PathBuf, key: PathBuf, client_ca: Option<&std::path::Path>) -> Result<ServerTls, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (c, k) = (read_file("--tls-cert", &cert)?, read_file("--tls-key", &key)?);
    let first = Arc::new(certified(&c, &k, &provider)?);
    let seen = [c.as_slice(), k.as_slice()].concat();
    let resolver =
        Arc::new(ReloadingCert { cert, key, provider: provider.clone(), current: RwLock::new((seen, first)) });
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let clients = match client_ca {
        Some(ca) => {
            let pem = read_file("--tls-client-ca", ca)?;
            let verifier = client_verifier(&pem, &provider)?;
            Some(Arc::new(ReloadingClients { ca: ca.to_owned(), provider, current: RwLock::new((pem, verifier)) }))
        }
        None => None,
    };
    let builder = match &clients {
        Some(c) => builder.with_client_cert_verifier(c.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    // h2 for gRPC; http/1.1 for gRPC-Web from clients that speak only that (a server
    // that does not accept HTTP/1.1 answers them with an HTTP error).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if clients.is_some() {
        // A resumed session skips the client certificate check: after a reload removed
        // a CA, its clients could resume. gRPC connections live long; full handshakes
        // cost nothing that matters.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(ServerTls { acceptor: TlsAcceptor::from(Arc::new(config)), cert: resolver, clients })
}

impl ServerTls {
    /// Reloads the certificate and the client CA every `every` (never when zero), until
    /// the returned task is aborted.
    pub fn watch(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        if every.is_zero() {
            return None;
        }
        let (cert, clients) = (self.cert.clone(), self.clients.clone());
        Some(tokio::spawn(watch(cert, clients, every)))
    }
}

async fn watch(cert: Arc<ReloadingCert>, clients: Option<Arc<ReloadingClients>>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match cert.reload() {
            Ok(true) => tracing::info!("TLS certificate files changed: new connections use the new certificate"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate files do not load; keeping the certificate in force")
            }
        }
        match clients.as_ref().map(|c| c.reload()) {
            Some(Ok(true)) => tracing::info!("client CA file changed: new connections are verified against it"),
            Some(Err(e)) => tracing::warn!(error = %e, "the client CA file does not load; keeping the CA in force"),
            _ => {}
        }
    }
}

/// The TLS connections of `listener`: each accepted TCP connection (TCP_NODELAY) is
/// handshaken on a task of its own, so a slow or failing client holds up nobody; failed
/// handshakes are dropped and logged at debug. Ends when the server stops taking them.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = handshakes.clone().acquire_owned() => p.expect("never closed"),
                _ = tx.closed() => return,
            };
            let tcp = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let tcp = match tcp {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
