//! gRPC-Web, so browsers can call a gRPC server: tonic-web translates gRPC-Web
//! (HTTP/1.1 or HTTP/2, binary or base64 text) to gRPC in front of every service, behind
//! CORS for the origins the operator names.
use tonic::codegen::http::{HeaderName, HeaderValue, Method};
use tower::{
    layer::util::{Identity, Stack},
    util::Either,
};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::Error;

/// The layer a server that speaks gRPC-Web puts in front of its services: CORS when
/// origins are configured (outermost: a preflight never reaches a service), then the
/// gRPC-Web translation.
pub type WebLayer = Stack<tonic_web::GrpcWebLayer, Either<CorsLayer, Identity>>;

/// Headers a browser's gRPC-Web call sends that CORS must allow: credentials, the
/// content type, the gRPC-Web markers and the deadline.
const ALLOW_HEADERS: [&str; 6] =
    ["authorization", "content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "traceparent"];

/// Headers and trailers-in-headers a page must be able to read: the status and its
/// details (a trailers-only answer puts them in the headers).
const EXPOSE_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// How long a browser may cache a preflight answer.
const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// gRPC-Web with CORS for `origins`: exact origins (`https://app.example.com`, scheme,
/// host and port as the browser sends them) or `*` alone for any origin. With no origin,
/// only same-origin pages (and non-browser clients) can call, and no response carries
/// CORS headers. Credentials are the `authorization` header, never cookies, so no
/// origin gets `Allow-Credentials`.
pub fn layer(origins: &[String]) -> Result<WebLayer, Error> {
    let cors = CorsLayer::new()
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(ALLOW_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSE_HEADERS.map(HeaderName::from_static))
        .max_age(MAX_AGE);
    let cors = match origins {
        [] => None,
        [any] if any == "*" => Some(cors.allow_origin(AllowOrigin::any())),
        list => {
            let mut values = Vec::with_capacity(list.len());
            for o in list {
                values.push(origin(o)?);
            }
            Some(cors.allow_origin(AllowOrigin::list(values)))
        }
    };
    Ok(Stack::new(tonic_web::GrpcWebLayer::new(), tower::util::option_layer(cors)))
}

/// One exact origin: `scheme://host[:port]`, no path, no trailing slash.
fn origin(o: &str) -> Result<HeaderValue, Error> {
    let bad = |why: &str| Error::Config(format!("--cors-allow-origin {o:?}: {why}"));
    if o == "*" {
        return Err(bad("\"*\" allows any origin and cannot be listed with others"));
    }
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or_else(|| bad("an origin is scheme://host[:port], with http or https"))?;
    if rest.is_empty() || rest.contains('/') || rest.contains(|c: char| c.is_whitespace()) {
        return Err(bad("an origin is scheme://host[:port], with no path or trailing slash"));
    }
    HeaderValue::from_str(o).map_err(|_| bad("not a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact_or_a_lone_star() {
        assert!(layer(&[]).is_ok());
        assert!(layer(&["*".into()]).is_ok());
        assert!(layer(&["https://app.example.com".into(), "http://127.0.0.1:8080".into()]).is_ok());
        for bad in ["app.example.com", "https://app.example.com/", "ftp://x", "https://", "*"] {
            let list = vec!["https://ok.example".to_owned(), bad.to_owned()];
            let err = layer(&list).unwrap_err().to_string();
            assert!(err.contains("--cors-allow-origin") && err.contains(bad), "{bad}: {err}");
        }
    }
}
