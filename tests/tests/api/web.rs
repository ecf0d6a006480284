//! Browsers (issue 15, item 3 and 4): the gateway speaks gRPC-Web (here over HTTP/1.1,
//! as a page's fetch does) with the same authentication and the same resume as gRPC,
//! behind CORS for the configured origins; and the operator console serves its page,
//! its counters and the API on a port of its own, for admin keys only.
use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client as HttpClient, rt::TokioExecutor};
use push_proto::push::v1::{self as pb, push_gateway_client::PushGatewayClient};
use push_tests::{App, GatewayProcess, SendBearer, credentials::device_token, secure_app};
use tonic::{
    Code,
    codegen::http::{self, Method, Request},
    service::interceptor::InterceptedService,
};
use tonic_web::{GrpcWebCall, GrpcWebClientLayer, GrpcWebClientService};
use tower::Layer;

/// The page origin the tests' gateways let in.
const ORIGIN: &str = "http://127.0.0.1:8088";

type Http = HttpClient<hyper_util::client::legacy::connect::HttpConnector, GrpcWebCall<tonic::body::Body>>;
type WebClient = PushGatewayClient<InterceptedService<GrpcWebClientService<Http>, SendBearer>>;

/// A client of the public contract over gRPC-Web on HTTP/1.1, sending `bearer`.
fn web_client(addr: SocketAddr, bearer: Option<&str>) -> WebClient {
    let http: Http = HttpClient::builder(TokioExecutor::new()).build_http();
    let svc = InterceptedService::new(GrpcWebClientLayer::new().layer(http), SendBearer::new(bearer).unwrap());
    PushGatewayClient::with_origin(svc, format!("http://{addr}").parse().unwrap())
}

/// A loopback port nobody listens on (for --console-listen).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A plain HTTP/1.1 request: (status, headers, body).
async fn http(req: Request<Empty<bytes::Bytes>>) -> (http::StatusCode, http::HeaderMap, String) {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let resp = client.request(req).await.expect("HTTP request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("HTTP body").to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

fn get(url: String, bearer: Option<&str>) -> Request<Empty<bytes::Bytes>> {
    let mut b = Request::get(url);
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Empty::new()).unwrap()
}

fn push_to(user: &str, topic: &str) -> pb::PushToUsersRequest {
    pb::PushToUsersRequest { user_ids: vec![user.into()], topic: topic.into(), ..Default::default() }
}

/// The next message of a stream, with the states that came with it.
async fn next(
    stream: &mut tonic::Streaming<push_proto::wire::SubscribeResponse>,
) -> (Vec<pb::HistoryState>, Vec<pb::Message>) {
    let item = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("nothing within 10 s")
        .expect("the stream failed")
        .expect("the stream ended");
    (item.states, item.messages)
}

#[tokio::test]
async fn a_page_subscribes_over_grpc_web_and_resumes_with_its_cursor() {
    let (app, _creds) = secure_app(&["--cors-allow-origin", ORIGIN]).await;
    let mut backend = push_tests::authorized(app.gateway.addr, "k-publish").await;
    let token = device_token("wendy");
    let mut page = web_client(app.gateway.addr, Some(&token));
    let subscribe = pb::SubscribeRequest { user_id: "wendy".into(), device_id: "tab-1".into(), ..Default::default() };
    let mut stream = page.subscribe(subscribe.clone()).await.expect("Subscribe over gRPC-Web").into_inner();
    // The opening states come first; then a push arrives.
    let (states, _) = next(&mut stream).await;
    let inbox = states.iter().find(|s| s.cursor.as_ref().unwrap().audience == pb::Audience::User as i32).unwrap();
    let epoch = inbox.cursor.as_ref().unwrap().epoch.clone();
    backend.push_to_users(push_to("wendy", "first")).await.unwrap();
    let (_, messages) = next(&mut stream).await;
    assert_eq!(messages.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(), ["first"]);
    let seen = messages[0].id.clone();
    drop(stream);

    // Away: two more pushes; back with the cursor, the page gets exactly those.
    backend.push_to_users(push_to("wendy", "second")).await.unwrap();
    backend.push_to_users(push_to("wendy", "third")).await.unwrap();
    let cursor = pb::Cursor { audience: pb::Audience::User as i32, group_id: String::new(), epoch, message_id: seen };
    let resume = pb::SubscribeRequest { cursors: vec![cursor], ..subscribe };
    let mut stream = page.subscribe(resume).await.expect("resume over gRPC-Web").into_inner();
    let mut topics = Vec::new();
    let mut continuity = None;
    while topics.len() < 2 {
        let (states, messages) = next(&mut stream).await;
        for s in states.iter().filter(|s| s.cursor.as_ref().unwrap().audience == pb::Audience::User as i32) {
            continuity = Some(s.continuity());
        }
        topics.extend(messages.into_iter().map(|m| m.topic));
    }
    assert_eq!(topics, ["second", "third"]);
    assert_eq!(continuity, Some(pb::Continuity::Resumed));
}

#[tokio::test]
async fn grpc_web_authenticates_as_grpc_does() {
    let (app, _creds) = secure_app(&[]).await;
    let wendy = device_token("wendy");
    let cases: [(Option<&str>, &str); 5] = [
        (None, "wendy"),
        (Some("not-a-key"), "wendy"),
        (Some(&wendy), "someone-else"),
        (Some("k-presence"), "wendy"),
        (Some("k-admin"), "wendy"),
    ];
    for (bearer, user) in cases {
        let req = pb::SubscribeRequest { user_id: user.into(), device_id: "d".into(), ..Default::default() };
        let native = match bearer {
            Some(b) => push_tests::authorized(app.gateway.addr, b).await.subscribe(req.clone()).await.map(|_| ()),
            None => app.gateway_client().await.subscribe(req.clone()).await.map(|_| ()),
        };
        let web = web_client(app.gateway.addr, bearer).subscribe(req).await.map(|_| ());
        assert_eq!(
            web.as_ref().map_err(|s| s.code()),
            native.as_ref().map_err(|s| s.code()),
            "{bearer:?} for {user}: web {web:?}, native {native:?}"
        );
    }
    // A unary call too: an API key without the scope is refused the same way.
    let count = |b| async move {
        web_client(app.gateway.addr, Some(b)).count_online_users(pb::CountOnlineUsersRequest {}).await
    };
    assert_eq!(count("k-publish").await.unwrap_err().code(), Code::PermissionDenied);
    assert!(count("k-presence").await.is_ok());

    // No --cors-allow-origin: a page of another origin is not let in.
    let mut req = tonic::Request::new(pb::CountOnlineUsersRequest {});
    req.metadata_mut().insert("origin", ORIGIN.parse().unwrap());
    req.metadata_mut().insert("authorization", "Bearer k-presence".parse().unwrap());
    let resp = web_client(app.gateway.addr, None).count_online_users(req).await.unwrap();
    assert!(resp.metadata().get("access-control-allow-origin").is_none(), "{:?}", resp.metadata());
}

#[tokio::test]
async fn cors_lets_in_only_the_configured_origins() {
    let app = App::builder().gateway(&["--cors-allow-origin", &format!("{ORIGIN},https://app.example")]).start().await;
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri(format!("http://{}/push.v1.PushGateway/Subscribe", app.gateway.addr))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type,x-grpc-web")
            .body(Empty::new())
            .unwrap()
    };
    let (status, headers, _) = http(preflight(ORIGIN)).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(headers["access-control-allow-origin"], ORIGIN);
    let allowed = headers["access-control-allow-headers"].to_str().unwrap().to_owned();
    for h in ["authorization", "content-type", "x-grpc-web", "grpc-timeout"] {
        assert!(allowed.contains(h), "{h} not in {allowed}");
    }
    let (_, headers, _) = http(preflight("http://evil.example")).await;
    assert!(!headers.contains_key("access-control-allow-origin"), "{headers:?}");

    // An actual call from the page's origin exposes the status to the page.
    let mut c = web_client(app.gateway.addr, None);
    let mut req = tonic::Request::new(pb::CountOnlineUsersRequest {});
    req.metadata_mut().insert("origin", ORIGIN.parse().unwrap());
    let resp = c.count_online_users(req).await.unwrap();
    assert_eq!(resp.metadata().get("access-control-allow-origin").unwrap(), ORIGIN);
    let exposed = resp.metadata().get("access-control-expose-headers").unwrap().to_str().unwrap();
    assert!(exposed.contains("grpc-status") && exposed.contains("grpc-message"), "{exposed}");
}

#[tokio::test]
async fn the_console_serves_its_page_counters_and_api_to_admins_only() {
    let creds = push_tests::credentials::Credentials::new(&[]);
    let app = App::builder().credentials(&creds).start().await;
    let console = free_addr();
    let mut flags = creds.gateway_flags();
    let listen = console.to_string();
    flags.extend(["--console-listen", &listen]);
    let bin = env!("CARGO_BIN_EXE_gateway-process");
    let gateway = GatewayProcess::start(bin, &app, &flags).await;
    let base = format!("http://{console}");

    let (status, headers, body) = http(get(format!("{base}/"), None)).await;
    assert!(status.is_success() && headers["content-type"].to_str().unwrap().starts_with("text/html"), "{status}");
    assert!(body.contains("console.js"), "{body}");
    let (status, headers, _) = http(get(format!("{base}/console.js"), None)).await;
    assert!(status.is_success() && headers["content-type"].to_str().unwrap().starts_with("text/javascript"));

    // Counters: an admin key only.
    assert_eq!(http(get(format!("{base}/api/counters"), None)).await.0, http::StatusCode::UNAUTHORIZED);
    assert_eq!(http(get(format!("{base}/api/counters"), Some("k-publish"))).await.0, http::StatusCode::FORBIDDEN);
    // The API on the console's port: admin keys only, even for what another scope allows
    // on the gateway's own port.
    let refused = web_client(console, Some("k-presence")).count_online_users(pb::CountOnlineUsersRequest {}).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);

    // A subscription opened from the console sees a test push, and the counters count them.
    let mut admin = web_client(console, Some("k-admin"));
    let req = pb::SubscribeRequest { user_id: "olga".into(), device_id: "console-1".into(), ..Default::default() };
    let mut stream = admin.subscribe(req).await.unwrap().into_inner();
    next(&mut stream).await;
    admin.push_to_users(push_to("olga", "test.push")).await.unwrap();
    let (_, messages) = next(&mut stream).await;
    assert_eq!(messages[0].topic, "test.push");
    let (status, _, body) = http(get(format!("{base}/api/counters"), Some("k-admin"))).await;
    assert!(status.is_success(), "{status} {body}");
    let counters: std::collections::HashMap<String, f64> = serde_json::from_str(&body).expect("JSON of numbers");
    assert_eq!(counters["streams"], 1.0, "{body}");
    assert!(counters["pushes"] >= 1.0 && counters["deliveries"] >= 1.0, "{body}");
    drop(gateway);
}
