//! Who may call a service: one tower wrapper around a gRPC service that asks an
//! [`Authorize`] policy about each call, before the service sees it.
//!
//! - The wrapper goes around the service itself, not the server, so health and
//!   reflection (separate services on the same server) stay open for probes and grpcurl.
//! - A refused call is answered by the wrapper (UNAUTHENTICATED without a valid
//!   credential, PERMISSION_DENIED when the credential may not do this, RESOURCE_EXHAUSTED
//!   over a rate limit) and never reaches the service, so it changes nothing.
//! - An accepted call carries the caller's [`Identity`] in its extensions.
//! - Secrets are kept and compared as SHA-256 digests, in constant time.
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Status, codegen::http, server::NamedService};

/// Who is calling, as established by the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A device, for this user (from a verified token), whose credential is good until
    /// `until` (seconds since the Unix epoch, leeway included).
    Device { user: String, until: u64 },
    /// A backend, by the name of its API key; `admin` keys may act for any user.
    Backend { key: String, admin: bool },
    /// The gateway calling an internal service.
    Internal,
}

/// A decision about one call.
pub trait Authorize: Send + Sync + 'static {
    /// `method` is the gRPC path (`/package.Service/Method`).
    fn authorize(&self, method: &str, headers: &http::HeaderMap) -> Result<Identity, Status>;
}

/// The token of an `authorization: Bearer …` header.
pub fn bearer(headers: &http::HeaderMap) -> Result<&str, Status> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| Status::unauthenticated("missing credentials: send \"authorization: Bearer <token>\""))?;
    let value = value.to_str().map_err(|_| Status::unauthenticated("the authorization header is not ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Status::unauthenticated("the authorization header must be \"Bearer <token>\""));
    }
    Ok(token)
}

/// SHA-256 of a secret: how secrets are configured and compared.
pub fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Parses a 64-character hex SHA-256 digest.
pub fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    crate::token::hex_bytes(hex)?.try_into().ok()
}

/// Constant-time equality of two digests.
pub fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// The internal services' policy: every call must carry the shared internal token.
pub struct InternalToken {
    digest: [u8; 32],
}

impl InternalToken {
    pub fn new(token: &str) -> Self {
        Self { digest: digest(token.as_bytes()) }
    }
}

impl Authorize for InternalToken {
    fn authorize(&self, _method: &str, headers: &http::HeaderMap) -> Result<Identity, Status> {
        let token = bearer(headers)?;
        if same(&digest(token.as_bytes()), &self.digest) {
            Ok(Identity::Internal)
        } else {
            Err(Status::unauthenticated("invalid internal token"))
        }
    }
}

/// A client-side interceptor that sends `authorization: Bearer <token>` with every call
/// (nothing when there is no token): the gateway to the internal services, the load
/// generator and the tests to the gateway.
#[derive(Clone, Debug)]
pub struct SendBearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl SendBearer {
    pub fn new(token: Option<&str>) -> Result<Self, crate::Error> {
        let value = token.map(|t| format!("Bearer {t}").parse()).transpose();
        let value = value.map_err(|_| crate::Error::Config("a bearer token must be printable ASCII".into()))?;
        Ok(Self(value))
    }
}

impl tonic::service::Interceptor for SendBearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        // The trace goes on with the call (W3C traceparent), credentials or not.
        crate::telemetry::inject(req.metadata_mut());
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A gRPC service behind a policy.
pub struct Guarded<S> {
    inner: S,
    policy: Arc<dyn Authorize>,
}

impl<S: Clone> Clone for Guarded<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), policy: self.policy.clone() }
    }
}

impl<S> Guarded<S> {
    pub fn new(inner: S, policy: Arc<dyn Authorize>) -> Self {
        Self { inner, policy }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.policy.authorize(req.uri().path(), req.headers()) {
            Ok(identity) => {
                req.extensions_mut().insert(identity);
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                tracing::debug!(method = req.uri().path(), code = ?status.code(), "call refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        assert_eq!(bearer(&headers("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(&headers("bearer  abc ")).unwrap(), "abc");
        for bad in ["abc", "Basic abc", "Bearer", "Bearer   "] {
            assert_eq!(bearer(&headers(bad)).unwrap_err().code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert_eq!(bearer(&http::HeaderMap::new()).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn digests_parse_and_compare() {
        let d = digest(b"secret");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_digest(&hex), Some(d));
        assert_eq!(parse_digest(&hex[1..]), None);
        assert_eq!(parse_digest(&"zz".repeat(32)), None);
        assert!(same(&d, &digest(b"secret")));
        assert!(!same(&d, &digest(b"Secret")));
    }

    #[test]
    fn the_internal_token_is_checked() {
        let policy = InternalToken::new("t0ken");
        assert_eq!(policy.authorize("/x/Y", &headers("Bearer t0ken")).unwrap(), Identity::Internal);
        let err = policy.authorize("/x/Y", &headers("Bearer nope")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
}
