//! The public contract: the gateway composing presence and profile.
use std::time::Duration;

use push_proto::push::v1::{self as pb, UserProfile};
use push_tests::{
    App, eventually,
    fixtures::{assert_invalid, online_count, presence_of, ttl},
    gateway_client, services, wait_health,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// The scenario of the foundation issue, through the gateway only.
#[tokio::test]
async fn two_devices_one_logs_out_the_other_goes_silent() {
    let app = App::builder().presence(&["--min-ttl", "50ms"]).start().await;
    let mut c = app.gateway_client().await;

    let login = |session: &str, ms| pb::LoginRequest {
        user_id: "ann".into(),
        session_id: session.into(),
        ttl: ttl(ms),
        ..Default::default()
    };
    assert!(c.login(login("phone", 60_000)).await.unwrap().into_inner().user_came_online);
    c.login(login("laptop", 400)).await.unwrap();
    let p = presence_of(&c, "ann").await;
    assert!(p.online);
    assert_eq!(p.sessions.len(), 2);

    c.logout(pb::LogoutRequest { user_id: "ann".into(), session_id: "phone".into(), ..Default::default() })
        .await
        .unwrap();
    assert!(presence_of(&c, "ann").await.online, "still online on the laptop");
    assert_eq!(online_count(&c).await, 1);
    let list = c.list_online_users(pb::ListOnlineUsersRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.user_ids, ["ann"]);
    assert!(list.next_page_token.is_empty());

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!presence_of(&c, "ann").await.online, "offline after the laptop's TTL");
    assert_eq!(online_count(&c).await, 0);
    let hb =
        pb::HeartbeatRequest { user_id: "ann".into(), session_id: "laptop".into(), ttl: None, ..Default::default() };
    assert_eq!(c.heartbeat(hb).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn profiles_round_trip_and_conflict_through_the_gateway() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let p = UserProfile { user_id: "bo".into(), display_name: "Bo".into(), ..Default::default() };
    let v1 = c.put_profile(pb::PutProfileRequest { profile: Some(p.clone()) }).await.unwrap();
    let v1 = v1.into_inner().profile.unwrap();
    assert_eq!(v1.version, 1);

    let mask = Some(prost_types::FieldMask { paths: vec!["display_name".into()] });
    let change = UserProfile { display_name: "Bo 2".into(), version: 1, ..p.clone() };
    let r = c.update_profile(pb::UpdateProfileRequest { profile: Some(change.clone()), update_mask: mask.clone() });
    assert_eq!(r.await.unwrap().into_inner().profile.unwrap().version, 2);
    let stale = c.update_profile(pb::UpdateProfileRequest { profile: Some(change), update_mask: mask }).await;
    assert_eq!(stale.unwrap_err().code(), Code::Aborted);

    let got = c.get_profile(pb::GetProfileRequest { user_id: "bo".into() }).await.unwrap().into_inner();
    assert_eq!(got.profile.unwrap().display_name, "Bo 2");
    let batch = c.batch_get_profiles(pb::BatchGetProfilesRequest { user_ids: vec!["bo".into(), "nope".into()] });
    let batch = batch.await.unwrap().into_inner();
    assert_eq!((batch.profiles.len(), batch.missing_user_ids.as_slice()), (1, &["nope".to_string()][..]));

    c.delete_profile(pb::DeleteProfileRequest { user_id: "bo".into(), version: 0 }).await.unwrap();
    let gone = c.get_profile(pb::GetProfileRequest { user_id: "bo".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(gone.message().contains("no profile"), "the internal message travels: {gone:?}");
}

#[tokio::test]
async fn error_details_pass_through_unchanged() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let bad = pb::LoginRequest { user_id: "a b".into(), session_id: "".into(), ttl: None, ..Default::default() };
    let err = c.login(bad).await.unwrap_err();
    assert_invalid(&err, "user_id");
    assert_invalid(&err, "session_id");
}

#[tokio::test]
async fn a_down_internal_service_is_unavailable_and_the_other_still_works() {
    let app = App::start().await;
    let App { redis, presence, profile, gateway: gw } = app;
    let gw_addr = gw.addr;
    let mut c = gateway_client(gw_addr).await;
    presence.shutdown().await;

    let login = pb::LoginRequest { user_id: "u".into(), session_id: "d".into(), ttl: None, ..Default::default() };
    assert_eq!(c.login(login).await.unwrap_err().code(), Code::Unavailable);
    let p = UserProfile { user_id: "u".into(), display_name: "U".into(), ..Default::default() };
    c.put_profile(pb::PutProfileRequest { profile: Some(p) }).await.unwrap();
    wait_health(gw_addr, "push.v1.PushGateway", ServingStatus::NotServing).await;

    // A gateway started before its dependencies comes up NOT_SERVING and recovers on its own.
    let late = services::gateway(&redis.url(), "http://127.0.0.1:9", &profile.url(), &[]).await;
    wait_health(late.addr, "", ServingStatus::NotServing).await;
    drop((redis, profile, gw));
}

/// A health server on loopback whose service "probe" reports `status`.
async fn health_server(status: tonic_health::ServingStatus) -> std::net::SocketAddr {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("probe", status).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _keep = reporter;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await.unwrap();
    });
    addr
}

/// The gateway's channel to an internal service spreads its calls over every address
/// the service's name resolves to that accepts connections, never sends one to an
/// address that does not, and stops using an address once it no longer resolves (a
/// pod gone from a headless Service).
#[tokio::test]
async fn internal_calls_spread_over_every_address_and_leave_one_that_goes() {
    use std::{
        collections::{BTreeMap, BTreeSet},
        sync::{Arc, Mutex},
    };
    use tonic_health::ServingStatus as Set;
    let (a, b) = (health_server(Set::Serving).await, health_server(Set::NotServing).await);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // closed on drop
    let resolved = Arc::new(Mutex::new(BTreeSet::from([a, b, dead])));
    let config = <push_gateway::Config as clap::Parser>::try_parse_from([
        "push-gateway",
        "--insecure-no-auth",
        "--internal-resolve-interval",
        "100ms",
    ])
    .unwrap();
    let names = resolved.clone();
    let url = format!("http://{a}");
    let ch = push_gateway::downstream::balanced(url, "http".into(), "presence-svc".into(), &config, move || {
        let now = names.lock().unwrap().clone();
        async move { now }
    });
    // The answers of `n` health checks: SERVING (a), NOT_SERVING (b), or an error.
    let ask = async |n: usize| {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let mut c = tonic_health::pb::health_client::HealthClient::new(ch.clone());
            let req = tonic_health::pb::HealthCheckRequest { service: "probe".into() };
            let got = match c.check(req).await {
                Ok(r) => format!("{:?}", ServingStatus::try_from(r.into_inner().status).unwrap()),
                Err(s) => format!("{:?}", s.code()),
            };
            *seen.entry(got).or_insert(0) += 1;
        }
        seen
    };
    eventually(Duration::from_secs(10), "calls reach both live addresses", async || {
        let seen = ask(40).await;
        (seen.contains_key("Serving") && seen.contains_key("NotServing"), seen)
    })
    .await;
    let seen = ask(100).await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["NotServing", "Serving"], "no call failed: {seen:?}");

    // A name that never resolves to a live address: calls fail within the timeouts
    // instead of waiting in the balancer.
    let url = format!("http://{dead}");
    let nowhere = push_gateway::downstream::balanced(url, "http".into(), "gone".into(), &config, move || async move {
        BTreeSet::from([dead])
    });
    let mut c = tonic_health::pb::health_client::HealthClient::new(nowhere);
    let call = c.check(tonic_health::pb::HealthCheckRequest { service: "probe".into() });
    let failed = tokio::time::timeout(Duration::from_secs(10), call).await.expect("an answer, not a wait");
    assert!(failed.is_err(), "{failed:?}");

    resolved.lock().unwrap().remove(&b);
    eventually(Duration::from_secs(10), "the address that went is no longer called", async || {
        let seen = ask(30).await;
        (seen.keys().collect::<Vec<_>>() == ["Serving"], seen)
    })
    .await;
}

/// A stand-in for an internal service: SERVING health, and every other call answered
/// UNIMPLEMENTED after noting its `traceparent` header.
#[derive(Clone)]
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl tonic::server::NamedService for Recorder {
    const NAME: &'static str = "presence.v1.Presence";
}

impl tower::Service<tonic::codegen::http::Request<tonic::body::Body>> for Recorder {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let tp = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        self.0.lock().unwrap().push(tp);
        std::future::ready(Ok(tonic::Status::unimplemented("a recorder").into_http()))
    }
}

/// The gateway continues a backend's W3C trace and hands it on to the internal service
/// it calls: the internal call carries the same trace id, under a span of its own.
#[tokio::test]
async fn a_backends_trace_goes_on_to_the_internal_services() {
    let redis = push_tests::RedisServer::start();
    let seen = Recorder(Default::default());
    let (reporter, health) = tonic_health::server::health_reporter();
    for s in ["", "presence.v1.Presence", "profile.v1.Profile"] {
        reporter.set_service_status(s, tonic_health::ServingStatus::Serving).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal = format!("http://{}", listener.local_addr().unwrap());
    let recorder = seen.clone();
    tokio::spawn(async move {
        let _keep = reporter;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(recorder)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    let bin = env!("CARGO_BIN_EXE_gateway-process");
    let gw = push_tests::GatewayProcess::start_on(bin, [&redis.url(), &internal, &internal], &[], &[]).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(pb::GetPresenceRequest { user_ids: vec!["ann".into()] });
    req.metadata_mut().insert("traceparent", format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap());
    let _ = gateway_client(gw.addr).await.get_presence(req).await; // the recorder answers UNIMPLEMENTED
    let got = seen.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "one internal call: {got:?}");
    let parts: Vec<&str> = got[0].split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {got:?}");
    assert_eq!(parts[1], trace, "the same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "under the gateway's own span");
}

/// A stand-in OTLP collector: the trace id and name of every span exported to it.
#[derive(Clone, Default)]
struct Collector(std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>,
        tonic::Status,
    > {
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let id = push_tests::credentials::hex(&span.trace_id);
                self.0.lock().unwrap().push((service.clone(), id, span.name));
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

/// With an OTLP endpoint configured, the gateway exports its spans there, in the
/// caller's trace and under its service name; without one it exports nothing (the
/// other tests).
#[tokio::test]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_configured() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let app = App::start().await;
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let c = collector.clone();
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder().add_service(TraceServiceServer::new(c)).serve_with_incoming(incoming).await
    });
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "push-gateway"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let bin = env!("CARGO_BIN_EXE_gateway-process");
    let urls = [app.redis.url(), app.presence.url(), app.profile.url()];
    let gw = push_tests::GatewayProcess::start_on(bin, [&urls[0], &urls[1], &urls[2]], &[], &env).await;

    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut req = tonic::Request::new(pb::GetPresenceRequest { user_ids: vec!["ann".into()] });
    req.metadata_mut().insert("traceparent", format!("00-{trace}-b7ad6b7169203331-01").parse().unwrap());
    gateway_client(gw.addr).await.get_presence(req).await.unwrap();
    eventually(Duration::from_secs(10), "the gateway's RPC span reaches the collector", async || {
        let spans = collector.0.lock().unwrap().clone();
        let found =
            spans.iter().any(|(service, id, name)| id == trace && name == "rpc" && service.contains("push-gateway"));
        (found, spans.len())
    })
    .await;
}
