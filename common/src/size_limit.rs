//! The status of a request over the size limit.
//!
//! tonic refuses a request larger than a server's `max_decoding_message_size` with
//! OUT_OF_RANGE, before any of our code runs. gRPC specifies RESOURCE_EXHAUSTED for it
//! (and clients read OUT_OF_RANGE as "iterate no further"), so every server is wrapped
//! in [`SizeLimitCode`], which rewrites that one answer.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{codegen::http, server::NamedService};

/// A service whose oversized-request answers say RESOURCE_EXHAUSTED.
#[derive(Clone)]
pub struct SizeLimitCode<S>(pub S);

impl<S: NamedService> NamedService for SizeLimitCode<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for SizeLimitCode<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let answer = self.0.call(req);
        Box::pin(async move {
            let mut response = answer.await?;
            fix(response.headers_mut());
            Ok(response)
        })
    }
}

/// A trailers-only answer OUT_OF_RANGE about a decoded message's length becomes
/// RESOURCE_EXHAUSTED; anything else is left alone.
fn fix(headers: &mut http::HeaderMap) {
    let out_of_range = headers.get("grpc-status").is_some_and(|s| s == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.contains("too large") || m.contains("too%20large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &'static str, message: &'static str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static(status));
        h.insert("grpc-message", http::HeaderValue::from_static(message));
        h
    }

    #[test]
    fn only_the_size_answer_is_rewritten() {
        let mut h = headers("11", "Error,%20decoded%20message%20length%20too%20large:%20found%203145739%20bytes");
        fix(&mut h);
        assert_eq!(h["grpc-status"], "8");
        let mut h = headers("11", "page%20out%20of%20range");
        fix(&mut h);
        assert_eq!(h["grpc-status"], "11");
        let mut h = headers("3", "too%20large");
        fix(&mut h);
        assert_eq!(h["grpc-status"], "3");
    }
}
