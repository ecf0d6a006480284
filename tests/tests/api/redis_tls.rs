//! Redis over TLS: `rediss://` with the test CA, for every service and the hub.
use push_tests::{
    App, Device, RedisServer,
    fixtures::{fixture, presence_of, to_users},
};

#[tokio::test]
async fn every_service_reaches_a_tls_only_redis() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let (cert, key, ca) = (fixture("server-test.pem"), fixture("server-test.key"), fixture("ca-test.pem"));
    // One server over TLS (the cluster fixture listens in plaintext).
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
