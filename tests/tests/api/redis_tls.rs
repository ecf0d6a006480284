//! Redis over TLS: `rediss://` with the test CA, for every service and the hub.
use push_tests::{
    App, Device, RedisServer,
    fixtures::{fixture, join, presence_of, to_all, to_group, to_users},
    sentinel::{SentinelSetup, Tls},
};

#[tokio::test]
async fn every_service_reaches_a_tls_only_redis() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let (cert, key, ca) = (fixture("server-test.pem"), fixture("server-test.key"), fixture("ca-test.pem"));
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
    let tls = ["--redis-tls-ca-file", ca.as_str()];
    let app = App::builder().redis(redis).presence(&tls).profile(&tls).gateway(&tls).start().await;
    let mut c = app.gateway_client().await;
    let mut d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    c.push_to_users(to_users(&["ann"], "over-tls")).await.unwrap();
    assert_eq!(d.next().await.topic, "over-tls");
    assert!(presence_of(&c, "ann").await.online);
}

#[tokio::test]
async fn every_service_reaches_a_cluster_over_tls() {
    let (cert, key, ca) = (fixture("server-test.pem"), fixture("server-test.key"), fixture("ca-test.pem"));
    let (client_cert, client_key) = (fixture("client-test.pem"), fixture("client-test.key"));
    let redis = RedisServer::start_cluster_tls(&cert, &key, &ca, &client_cert, &client_key);
    let tls = ["--redis-tls-ca-file", ca.as_str()];
    let app = App::builder().redis(redis).presence(&tls).profile(&tls).gateway(&tls).start().await;
    let mut c = app.gateway_client().await;
    let mut d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    // Each through its own shard: the user's, a group's and the broadcast's.
    join(&mut c, "team", &["ann"]).await;
    c.push_to_users(to_users(&["ann"], "over-tls")).await.unwrap();
    c.push_to_group(to_group("team", "group-over-tls")).await.unwrap();
    c.push_to_all(to_all("all-over-tls")).await.unwrap();
    let mut got: Vec<String> = Vec::new();
    while got.len() < 3 {
        got.push(d.next().await.topic);
    }
    got.sort();
    assert_eq!(got, ["all-over-tls", "group-over-tls", "over-tls"]);
    assert!(presence_of(&c, "ann").await.online);
    let mut p = app.profile_client().await;
    let profile = push_proto::profile::v1::UserProfile { user_id: "ann".into(), ..Default::default() };
    p.put_profile(push_proto::profile::v1::PutProfileRequest { profile: Some(profile) }).await.unwrap();
}

#[tokio::test]
async fn every_service_reaches_a_sentinel_master_over_tls() {
    let (cert, key, ca) = (fixture("server-test.pem"), fixture("server-test.key"), fixture("ca-test.pem"));
    // Sentinels, master and replica all over TLS (the setup must outlive the app).
    let setup = SentinelSetup::start_tls(Tls { cert: &cert, key: &key, ca: &ca });
    let tls = ["--redis-tls-ca-file", ca.as_str()];
    let redis = RedisServer::external(&setup.url());
    let app = App::builder().redis(redis).presence(&tls).profile(&tls).gateway(&tls).start().await;
    let mut c = app.gateway_client().await;
    let mut d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    c.push_to_users(to_users(&["ann"], "over-tls")).await.unwrap();
    assert_eq!(d.next().await.topic, "over-tls");
    assert!(presence_of(&c, "ann").await.online);
    let mut p = app.profile_client().await;
    let profile = push_proto::profile::v1::UserProfile { user_id: "ann".into(), ..Default::default() };
    p.put_profile(push_proto::profile::v1::PutProfileRequest { profile: Some(profile) }).await.unwrap();
    drop(app);
    drop(setup);
}
