//! Security: API keys with scopes on every RPC, device tokens (HS256, RS256, ES256,
//! rotation, expiry, audience, issuer), the internal token, and the per-key rate limit.
use std::{str::FromStr, time::Duration};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message;
use push_proto::push::v1 as pb;
use push_tests::{
    App, Device, RedisServer, SendBearer, authorized, authorized_on, channel,
    credentials::{Claims, Credentials, HS_SECRET, HS_SECRET_2, INTERNAL_TOKEN, device_token},
    eventually,
    fixtures::{fixture, to_users},
    health, health_on, secure_app, services, tls_channel, wait_health,
};
use tonic::{Code, codegen::http, service::Interceptor, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A device token for `sub`, signed by the key `kid` with `alg`.
fn token(kid: &str, alg: Algorithm, sub: &str, exp: u64, aud: &str, iss: &str) -> String {
    let key = match alg {
        // "forged": claims to be hs1 but is signed with hs2's secret.
        Algorithm::HS256 if kid == "hs2" || kid == "forged" => EncodingKey::from_secret(HS_SECRET_2.as_bytes()),
        Algorithm::HS256 => EncodingKey::from_secret(HS_SECRET.as_bytes()),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-test.key")).unwrap()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-test.key")).unwrap()).unwrap(),
        other => panic!("{other:?}"),
    };
    let kid = if kid == "forged" { "hs1" } else { kid };
    let header = Header { kid: Some(kid.into()), ..Header::new(alg) };
    jsonwebtoken::encode(&header, &Claims { sub, exp, aud, iss }, &key).unwrap()
}

/// Calls `path` with an empty request (every field at its default) and returns the code.
async fn call(ch: &Channel, path: &str, streaming: bool, bearer: Option<&str>) -> Code {
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready().await.unwrap();
    let req = SendBearer::new(bearer).unwrap().call(tonic::Request::new(())).unwrap();
    let path = http::uri::PathAndQuery::from_str(path).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let result = if streaming {
        g.server_streaming(req, path, codec).await.map(drop)
    } else {
        g.unary(req, path, codec).await.map(drop)
    };
    result.err().map_or(Code::Ok, |s| s.code())
}

/// Every method of push.v1.PushGateway: (name, server streaming).
fn gateway_methods() -> Vec<(String, bool)> {
    let fds = prost_types::FileDescriptorSet::decode(push_proto::FILE_DESCRIPTOR_SET).unwrap();
    let svc = fds.file.iter().flat_map(|f| &f.service).find(|s| s.name() == "PushGateway").unwrap();
    svc.method.iter().map(|m| (m.name().to_string(), m.server_streaming())).collect()
}

/// The credential each method needs, as documented in docs/SECURITY.md.
fn key_for(method: &str) -> &'static str {
    match method {
        "Subscribe" | "Ack" => "device",
        "PushToAll" | "PushToUsers" | "PushToGroup" | "Push" | "PushBatch" | "GetDeliveryStatus" => "k-publish",
        "Login" | "Heartbeat" | "Logout" | "Disconnect" | "GetPresence" | "ListOnlineUsers" | "CountOnlineUsers"
        | "WatchPresence" => "k-presence",
        // Also a device token, for its own histories (tested in backend.rs).
        "ListHistory" => "k-history",
        "PutProfile" | "UpdateProfile" | "GetProfile" | "BatchGetProfiles" | "DeleteProfile" => "k-profile",
        "JoinGroup" | "LeaveGroup" | "ListGroupMembers" | "ListUserGroups" => "k-groups",
        other => panic!("{other} has no documented credential: add it to SECURITY.md and here"),
    }
}

#[tokio::test]
async fn every_rpc_checks_credentials_and_scopes() {
    let (app, _creds) = secure_app(&["--api-key-rate", "0"]).await;
    let ch = channel(app.gateway.addr).await;
    let keys = app.redis.keys();
    let device = device_token("ann");
    for (method, streaming) in gateway_methods() {
        let path = format!("/push.v1.PushGateway/{method}");
        let need = key_for(&method);
        let wrong_scope = if need == "k-publish" { "k-groups" } else { "k-publish" };
        assert_eq!(call(&ch, &path, streaming, None).await, Code::Unauthenticated, "{method} without credentials");
        assert_eq!(call(&ch, &path, streaming, Some("k-wrong")).await, Code::Unauthenticated, "{method} wrong key");
        let forged = token("hs1", Algorithm::HS256, "ann", now() + 600, "push", "auth.example").replace('.', ".x");
        assert_eq!(call(&ch, &path, streaming, Some(&forged)).await, Code::Unauthenticated, "{method} forged");
        assert_eq!(call(&ch, &path, streaming, Some(wrong_scope)).await, Code::PermissionDenied, "{method} scope");
        if need != "device" && method != "ListHistory" {
            let code = call(&ch, &path, streaming, Some(&device)).await;
            assert_eq!(code, Code::PermissionDenied, "{method} with a device token");
        }
        assert_eq!(app.redis.keys(), keys, "a refused {method} wrote to Redis");
        // The right credential gets past authentication (the empty request may still be
        // invalid, which is the service's answer, not the policy's).
        let right = if need == "device" { device.as_str() } else { need };
        for bearer in [right, "k-admin"] {
            let code = call(&ch, &path, streaming, Some(bearer)).await;
            assert!(
                !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                "{method} with {bearer}: {code:?}"
            );
        }
    }
    // Health and reflection stay open.
    assert_eq!(health(app.gateway.addr, "push.v1.PushGateway").await, Some(ServingStatus::Serving));
}

async fn subscribe(app: &App, bearer: &str, user: &str) -> Result<Device, tonic::Status> {
    Device::options().bearer(bearer).connect(app.gateway.addr, user, "phone").await
}

#[tokio::test]
async fn devices_receive_only_their_own_user_with_valid_tokens() {
    let (app, _creds) = secure_app(&[]).await;
    let mut c = authorized(app.gateway.addr, "k-publish").await;
    let ok = [
        token("hs1", Algorithm::HS256, "ann", now() + 600, "push", "auth.example"),
        token("hs2", Algorithm::HS256, "ann", now() + 600, "push", "auth.example"),
        token("rs1", Algorithm::RS256, "ann", now() + 600, "push", "auth.example"),
        token("es1", Algorithm::ES256, "ann", now() + 600, "push", "auth.example"),
    ];
    for (k, t) in ok.iter().enumerate() {
        // The request may name its user or leave it to the token.
        let mut d = subscribe(&app, t, if k % 2 == 0 { "ann" } else { "" }).await.unwrap();
        d.wait_states(2).await;
        c.push_to_users(to_users(&["ann"], &format!("for-ann-{k}"))).await.unwrap();
        assert_eq!(d.next().await.topic, format!("for-ann-{k}"));
    }
    let t = &ok[0];
    assert_eq!(subscribe(&app, t, "bob").await.unwrap_err().code(), Code::PermissionDenied);
    let bad = [
        token("hs1", Algorithm::HS256, "ann", now() - 120, "push", "auth.example"),
        token("hs1", Algorithm::HS256, "ann", now() + 600, "other", "auth.example"),
        token("hs1", Algorithm::HS256, "ann", now() + 600, "push", "evil.example"),
        token("nope", Algorithm::HS256, "ann", now() + 600, "push", "auth.example"),
        token("hs1", Algorithm::HS256, "a{n}", now() + 600, "push", "auth.example"),
        token("forged", Algorithm::HS256, "ann", now() + 600, "push", "auth.example"),
    ];
    for t in &bad {
        assert_eq!(subscribe(&app, t, "ann").await.unwrap_err().code(), Code::Unauthenticated, "{t}");
    }
    // Ack is a device call too: only for the token's user.
    let mut ack = pb::AckRequest {
        user_id: "bob".into(),
        device_id: "phone".into(),
        cursors: vec![pb::Cursor {
            audience: pb::Audience::User as i32,
            group_id: String::new(),
            epoch: "1".into(),
            message_id: "1-0".into(),
        }],
    };
    let mut dc = authorized(app.gateway.addr, t).await;
    assert_eq!(dc.ack(ack.clone()).await.unwrap_err().code(), Code::PermissionDenied);
    ack.user_id = "ann".into();
    dc.ack(ack).await.unwrap();
}

#[tokio::test]
async fn internal_services_accept_only_the_gateway() {
    let (app, _creds) = secure_app(&[]).await;
    // Through the gateway, presence and profiles work (it sends the internal token).
    let mut c = authorized(app.gateway.addr, "k-presence").await;
    let login = pb::LoginRequest { user_id: "ann".into(), session_id: "d".into(), ttl: None, ..Default::default() };
    c.login(login).await.unwrap();
    // Directly, nothing: no token, a wrong token, or a gateway API key.
    for bearer in [None, Some("wrong-token-wrong-token"), Some("k-admin")] {
        let send = SendBearer::new(bearer).unwrap();
        let req = push_proto::presence::v1::LoginRequest {
            user_id: "eve".into(),
            session_id: "d".into(),
            ttl: None,
            ..Default::default()
        };
        let mut direct = push_proto::presence::v1::presence_client::PresenceClient::with_interceptor(
            channel(app.presence.addr).await,
            send.clone(),
        );
        assert_eq!(direct.login(req).await.unwrap_err().code(), Code::Unauthenticated);
        let mut prof = push_proto::profile::v1::profile_client::ProfileClient::with_interceptor(
            channel(app.profile.addr).await,
            send,
        );
        let get = push_proto::profile::v1::GetProfileRequest { user_id: "ann".into() };
        assert_eq!(prof.get_profile(get).await.unwrap_err().code(), Code::Unauthenticated);
    }
    assert!(!app.redis.keys().iter().any(|k| k.contains("{u:eve}")), "a refused call wrote");
    // Health stays open on them (Kubernetes probes).
    wait_health(app.presence.addr, "", ServingStatus::Serving).await;
    wait_health(app.profile.addr, "", ServingStatus::Serving).await;
}

#[tokio::test]
async fn an_api_key_over_its_rate_gets_resource_exhausted() {
    let (app, _creds) = secure_app(&["--api-key-rate", "5"]).await;
    let mut c = authorized(app.gateway.addr, "k-presence").await;
    let mut refused = 0;
    for _ in 0..30 {
        match c.count_online_users(pb::CountOnlineUsersRequest {}).await {
            Ok(_) => {}
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted);
                assert!(s.message().contains("--api-key-rate"), "{}", s.message());
                // The client learns which limit and when to retry, in standard details.
                use tonic_types::StatusExt;
                let details = s.get_error_details();
                let retry = details.retry_info().and_then(|r| r.retry_delay).expect("RetryInfo with a delay");
                assert!(retry > Duration::ZERO && retry <= Duration::from_millis(201), "{retry:?}");
                let quota = details.quota_failure().expect("QuotaFailure");
                assert!(quota.violations[0].subject.starts_with("api_key:"), "{:?}", quota.violations);
                refused += 1;
            }
        }
    }
    assert!(refused >= 15, "only {refused} of 30 refused");
    // The budget refills.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.count_online_users(pb::CountOnlineUsersRequest {}).await.unwrap();
}

#[tokio::test]
async fn servers_refuse_to_start_without_credentials() {
    use clap::Parser;
    let redis = RedisServer::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = push_gateway::Config::parse_from(["push-gateway", "--redis-url", &redis.url()]);
    let err = push_gateway::serve(listener, config, std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = presence_svc::Config::parse_from(["presence-svc", "--redis-url", &redis.url()]);
    let err = presence_svc::serve(listener, config, std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("--internal-token-file"), "{err}");
}

#[test]
fn a_busy_port_names_the_gateway_and_the_address() {
    use clap::Parser;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = push_gateway::Config::parse_from(["push-gateway", "--listen", &addr, "--insecure-no-auth"]);
    let err = push_gateway::run(config).unwrap_err().to_string();
    assert!(err.contains("push-gateway") && err.contains(&addr), "{err}");
    assert!(err.contains("Address already in use"), "{err}");
}

#[tokio::test]
async fn every_hop_can_run_tls_with_mtls_to_the_internal_services() {
    let creds = Credentials::new(&[]);
    let redis = RedisServer::start();
    let (ca, cert, key) = (fixture("ca-test.pem"), fixture("server-test.pem"), fixture("server-test.key"));
    let (client_cert, client_key) = (fixture("client-test.pem"), fixture("client-test.key"));
    let mut internal = creds.internal_flags().to_vec();
    internal.extend(["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca]);
    let presence = services::presence(&redis.url(), &internal).await;
    let profile = services::profile(&redis.url(), &internal).await;
    let mut flags = creds.gateway_flags();
    flags.extend(["--tls-cert", &cert, "--tls-key", &key, "--internal-tls-ca", &ca]);
    flags.extend(["--internal-tls-cert", &client_cert, "--internal-tls-key", &client_key]);
    let presence_url = format!("https://localhost:{}", presence.addr.port());
    let profile_url = format!("https://localhost:{}", profile.addr.port());
    let gateway = services::gateway(&redis.url(), &presence_url, &profile_url, &flags).await;

    let ca_pem = std::fs::read(&ca).unwrap();
    let ch = tls_channel(gateway.addr, &ca_pem, None).await.unwrap();
    // SERVING over TLS means the gateway reached both internal services over mTLS.
    eventually(Duration::from_secs(15), "the TLS gateway is SERVING", async || {
        let got = health_on(ch.clone(), "").await;
        (got == Some(ServingStatus::Serving), got)
    })
    .await;
    // A device over TLS receives a push made over TLS; presence goes through mTLS.
    let mut d = Device::options().bearer(&device_token("ann")).connect(ch.clone(), "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    let mut c = authorized_on(ch.clone(), "k-admin");
    c.push_to_users(to_users(&["ann"], "over-tls")).await.unwrap();
    assert_eq!(d.next().await.topic, "over-tls");
    let req = pb::GetPresenceRequest { user_ids: vec!["ann".into()] };
    let online = c.get_presence(req).await.unwrap().into_inner();
    assert!(online.presences[0].online, "the stream's session went through mTLS to presence-svc");

    // Plaintext gets nowhere on a TLS port.
    assert_eq!(health(gateway.addr, "").await, None);
    // An internal service refuses a TLS client without a client certificate, and
    // accepts one with it (and the internal token).
    let no_cert = match tls_channel(presence.addr, &ca_pem, None).await {
        Err(_) => true,
        Ok(ch) => {
            let mut p = push_proto::presence::v1::presence_client::PresenceClient::new(ch);
            let req = push_proto::presence::v1::GetPresenceRequest { user_ids: vec!["ann".into()] };
            p.get_presence(req).await.is_err()
        }
    };
    assert!(no_cert, "mTLS let a client without a certificate in");
    let identity = (std::fs::read(&client_cert).unwrap(), std::fs::read(&client_key).unwrap());
    let ch = tls_channel(presence.addr, &ca_pem, Some((&identity.0, &identity.1))).await.unwrap();
    let mut p = push_proto::presence::v1::presence_client::PresenceClient::with_interceptor(
        ch,
        SendBearer::new(Some(INTERNAL_TOKEN)).unwrap(),
    );
    let req = push_proto::presence::v1::GetPresenceRequest { user_ids: vec!["ann".into()] };
    assert!(p.get_presence(req).await.unwrap().into_inner().presences[0].online);
}

#[tokio::test]
async fn a_stream_ends_when_its_device_token_expires() {
    let creds = Credentials::new(&["--jwt-leeway", "0s", "--stream-lease", "900ms"]);
    let app = App::builder().credentials(&creds).presence(&["--min-ttl", "100ms"]).start().await;
    let short = token("hs1", Algorithm::HS256, "ann", now() + 2, "push", "auth.example");
    let mut d = subscribe(&app, &short, "ann").await.unwrap();
    let started = std::time::Instant::now();
    let end = d.end().await.expect("the stream ended with a status");
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    assert!(end.message().contains("expired"), "{end:?}");
    assert!(started.elapsed() < Duration::from_secs(6), "ended {:?} after opening", started.elapsed());
    // A fresh token opens a new stream.
    let d = subscribe(&app, &device_token("ann"), "ann").await.unwrap();
    d.wait_states(2).await;
}

#[tokio::test]
async fn idempotency_keys_belong_to_their_api_key() {
    let (app, _creds) = secure_app(&[]).await;
    let mut d = subscribe(&app, &device_token("ann"), "ann").await.unwrap();
    d.wait_states(2).await;
    let req = |topic: &str| pb::PushToUsersRequest { idempotency_key: "order-1".into(), ..to_users(&["ann"], topic) };
    let mut billing = authorized(app.gateway.addr, "k-publish").await;
    let mut ops = authorized(app.gateway.addr, "k-admin").await;
    let first = billing.push_to_users(req("billing")).await.unwrap().into_inner().message_id;
    let other = ops.push_to_users(req("ops")).await.unwrap().into_inner().message_id;
    assert_ne!(first, other, "another key's identical idempotency key is another push");
    let again = billing.push_to_users(req("billing-retry")).await.unwrap().into_inner().message_id;
    assert_eq!(again, first, "a retry with the same key and idempotency key is the first push");
    let topics = [d.next().await.topic, d.next().await.topic];
    assert_eq!(topics, ["billing", "ops"]);
}

/// Rotation without a restart: the device-token secret and the API key file change on
/// disk and are in force within the reload interval, the old secret refused; a file
/// that no longer parses leaves the keys in force as they were.
#[tokio::test]
async fn credential_files_reload_without_a_restart() {
    let keys = std::env::temp_dir().join(format!("push-keys-{}", std::process::id()));
    let line = |name: &str, key: &str, scope: &str| {
        format!("{name}:{}:{scope}\n", push_tests::credentials::hex(&push_common::auth::digest(key.as_bytes())))
    };
    std::fs::write(&keys, line("first", "k-first", "publish")).unwrap();
    let keys_flag = keys.display().to_string();
    let (app, creds) = secure_app(&["--api-keys-file", &keys_flag, "--credentials-reload-interval", "100ms"]).await;
    let addr = app.gateway.addr;
    let push = async |key: &str| authorized(addr, key).await.push_to_users(to_users(&["ann"], "t")).await.map(drop);
    let subscribe = async |token: &str| Device::options().bearer(token).connect(addr, "ann", "phone").await.map(drop);
    push("k-first").await.unwrap();
    assert_eq!(push("k-second").await.unwrap_err().code(), Code::Unauthenticated);
    subscribe(&device_token("ann")).await.unwrap();

    // A new line in the key file, and a new secret for device-token key hs1.
    std::fs::write(&keys, line("first", "k-first", "publish") + &line("second", "k-second", "publish")).unwrap();
    let new_secret = "the-rotated-hmac-secret-of-32-bytes-or-more";
    std::fs::write(creds.path("hs1"), new_secret).unwrap();
    let claims = Claims { sub: "ann", exp: now() + 600, aud: "push", iss: "auth.example" };
    let header = Header { kid: Some("hs1".into()), ..Header::new(Algorithm::HS256) };
    let rotated = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(new_secret.as_bytes())).unwrap();
    eventually(Duration::from_secs(10), "the new key and secret are in force", async || {
        push("k-second").await.is_ok() && subscribe(&rotated).await.is_ok()
    })
    .await;
    assert_eq!(subscribe(&device_token("ann")).await.unwrap_err().code(), Code::Unauthenticated, "the old secret");
    push("k-first").await.unwrap();

    // A broken file changes nothing.
    std::fs::write(&keys, "this is not a key line\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    push("k-second").await.unwrap();
    subscribe(&rotated).await.unwrap();
    let _ = std::fs::remove_file(&keys);
}

/// A renewed certificate needs no restart: the server's certificate files change on
/// disk and new connections get the new certificate within the reload interval. It
/// starts with a certificate a client rejects for localhost (the client certificate:
/// CN=push-gateway, no localhost name) and moves to the right one.
#[tokio::test]
async fn a_renewed_server_certificate_is_used_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("push-tls-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::copy(fixture("client-test.pem"), &cert).unwrap();
    std::fs::copy(fixture("client-test.key"), &key).unwrap();
    let (cert_flag, key_flag) = (cert.display().to_string(), key.display().to_string());
    let flags = ["--tls-cert", &cert_flag, "--tls-key", &key_flag, "--tls-reload-interval", "100ms"];
    let redis = RedisServer::start();
    let presence = services::presence(&redis.url(), &flags).await;
    let ca_pem = std::fs::read(fixture("ca-test.pem")).unwrap();
    assert!(tls_channel(presence.addr, &ca_pem, None).await.is_err(), "the first certificate is not for localhost");

    // Renewed in place, as a mounted Secret is: a half-written key first, then the pair.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\ntruncated").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(tls_channel(presence.addr, &ca_pem, None).await.is_err(), "a broken file changes nothing");
    std::fs::copy(fixture("server-test.pem"), &cert).unwrap();
    std::fs::copy(fixture("server-test.key"), &key).unwrap();
    eventually(Duration::from_secs(10), "new connections get the renewed certificate", async || {
        match tls_channel(presence.addr, &ca_pem, None).await {
            Ok(ch) => health_on(ch, "").await.is_some(),
            Err(_) => false,
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS server can still be probed by Kubernetes (whose gRPC probes speak plaintext):
/// `--health-listen` answers health, and only health, in plaintext, with the same
/// statuses as the TLS port.
#[tokio::test]
async fn a_tls_server_answers_health_in_plaintext_on_its_health_port_and_nothing_else() {
    let (cert, key) = (fixture("server-test.pem"), fixture("server-test.key"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let health_addr = port.to_string();
    let redis = RedisServer::start();
    let flags = ["--tls-cert", &cert, "--tls-key", &key, "--health-listen", &health_addr];
    let presence = services::presence(&redis.url(), &flags).await;
    wait_health(port, "", ServingStatus::Serving).await;
    assert_eq!(health(port, "presence.v1.Presence").await, Some(ServingStatus::Serving));
    assert_eq!(health(port, push_common::server::LIVENESS).await, Some(ServingStatus::Serving));
    assert_eq!(health(presence.addr, "").await, None, "the service port speaks TLS only");
    let mut p = push_proto::presence::v1::presence_client::PresenceClient::new(channel(port).await);
    let req = push_proto::presence::v1::GetPresenceRequest { user_ids: vec!["ann".into()] };
    assert_eq!(p.get_presence(req).await.unwrap_err().code(), Code::Unimplemented, "health only");
}

/// The client CA of mTLS reloads like the certificate: a client whose certificate the
/// CA in force did not sign is refused, and accepted once the CA file is replaced by
/// the one that signed it, without a restart.
#[tokio::test]
async fn a_replaced_client_ca_is_used_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("push-ca-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.crt");
    // A certificate that signed nothing of ours, as the first trust anchor.
    std::fs::copy(fixture("server-test.pem"), &ca_file).unwrap();
    let (cert, key, ca) = (fixture("server-test.pem"), fixture("server-test.key"), ca_file.display().to_string());
    let flags = ["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca, "--tls-reload-interval", "100ms"];
    let redis = RedisServer::start();
    let presence = services::presence(&redis.url(), &flags).await;
    let ca_pem = std::fs::read(fixture("ca-test.pem")).unwrap();
    let identity =
        (std::fs::read(fixture("client-test.pem")).unwrap(), std::fs::read(fixture("client-test.key")).unwrap());
    let answers = async || match tls_channel(presence.addr, &ca_pem, Some((&identity.0, &identity.1))).await {
        Ok(ch) => health_on(ch, "").await.is_some(),
        Err(_) => false,
    };
    assert!(!answers().await, "a client certificate the CA in force did not sign");
    std::fs::copy(fixture("ca-test.pem"), &ca_file).unwrap();
    eventually(Duration::from_secs(10), "the replaced CA accepts the client", async || answers().await).await;
    let _ = std::fs::remove_dir_all(&dir);
}
