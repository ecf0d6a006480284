//! Redis over TLS: `rediss://` with the test CA, for every service and the hub, on each
//! topology (one server, a Cluster, Sentinel).
use push_tests::{
    App, Device, RedisServer,
    fixtures::{fixture, join, presence_of, sorted, to_all, to_group, to_users},
    sentinel::{SentinelSetup, Tls},
};

/// Runs the system on `redis` with the test CA and checks that every service works
/// over it: presence (a device online), the hub (a user, a group and the broadcast
/// push arrive live; on a Cluster each through its own shard) and profiles.
async fn every_service_works_over(redis: RedisServer) {
    let ca = fixture("ca-test.pem");
    let tls = ["--redis-tls-ca-file", ca.as_str()];
    let app = App::builder().redis(redis).presence(&tls).profile(&tls).gateway(&tls).start().await;
    let mut c = app.gateway_client().await;
    let mut d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    join(&mut c, "team", &["ann"]).await;
    c.push_to_users(to_users(&["ann"], "user-over-tls")).await.unwrap();
    c.push_to_group(to_group("team", "group-over-tls")).await.unwrap();
    c.push_to_all(to_all("all-over-tls")).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(d.next().await.topic);
    }
    assert_eq!(sorted(&got), ["all-over-tls", "group-over-tls", "user-over-tls"]);
    assert!(presence_of(&c, "ann").await.online);
    let mut p = app.profile_client().await;
    let profile = push_proto::profile::v1::UserProfile { user_id: "ann".into(), ..Default::default() };
    p.put_profile(push_proto::profile::v1::PutProfileRequest { profile: Some(profile) }).await.unwrap();
}

fn server_tls() -> (String, String, String) {
    (fixture("server-test.pem"), fixture("server-test.key"), fixture("ca-test.pem"))
}

#[tokio::test]
async fn every_service_reaches_a_tls_only_redis() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let (cert, key, ca) = server_tls();
    // One server over TLS, whatever the suite runs on (the Cluster has its own test).
    let mut redis = RedisServer::start_single(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    redis.serve_at(&format!("rediss://localhost:{port}"));
    every_service_works_over(redis).await;
}

#[tokio::test]
async fn every_service_reaches_a_cluster_over_tls() {
    let (cert, key, ca) = server_tls();
    let (client_cert, client_key) = (fixture("client-test.pem"), fixture("client-test.key"));
    every_service_works_over(RedisServer::start_cluster_tls(&cert, &key, &ca, &client_cert, &client_key)).await;
}

#[tokio::test]
async fn every_service_reaches_a_sentinel_master_over_tls() {
    let (cert, key, ca) = server_tls();
    // Sentinels, master and replica all over TLS; the setup outlives the app.
    let setup = SentinelSetup::start_tls(Tls { cert: &cert, key: &key, ca: &ca });
    every_service_works_over(RedisServer::external(&setup.url())).await;
    drop(setup);
}
