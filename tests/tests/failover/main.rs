//! Failover without restarts, on Sentinel and on Cluster: a Redis master is killed
//! (SIGKILL) while a device's stream is open and a backend pushes. After the promotion,
//! live delivery, inbox, groups, presence and profiles work again without restarting
//! any service, and every push that returned OK and was replicated before the kill
//! reaches the device, once and in order.
use std::time::Duration;

use push_proto::push::v1 as pb;
use push_tests::{
    App, Device, GatewayClient, RedisServer, eventually,
    fixtures::{join, to_group, to_users},
    sentinel::SentinelSetup,
};

const WITHIN: Duration = Duration::from_secs(60);

/// One failover at a time: each kills servers and waits on elections, and two at once
/// on 2 cores starve each other's timeouts.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Pushes `topic` to ann, retrying while the failover is under way: true once OK.
async fn push_until_ok(c: &mut GatewayClient, topic: &str) {
    eventually(WITHIN, &format!("push {topic}"), async || c.push_to_users(to_users(&["ann"], topic)).await.is_ok())
        .await;
}

/// Before the kill: ann's device is open, in a group, and got pushes m0..m9 and g0.
async fn before(app: &App) -> (GatewayClient, Device) {
    let mut c = app.gateway_client().await;
    let d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    join(&mut c, "team", &["ann"]).await;
    for i in 0..10 {
        c.push_to_users(to_users(&["ann"], &format!("m{i:02}"))).await.unwrap();
    }
    c.push_to_group(to_group("team", "g0")).await.unwrap();
    (c, d)
}

/// After the promotion: more pushes, every service's data path, and the device has
/// every message once, in order.
async fn after(app: &App, c: &mut GatewayClient, d: &Device) {
    for i in 10..15 {
        push_until_ok(c, &format!("m{i:02}")).await;
    }
    let want: Vec<String> = (0..15).map(|i| format!("m{i:02}")).collect();
    eventually(WITHIN, "the device has every push once, in order", async || {
        let got: Vec<String> = d.topics().into_iter().filter(|t| t.starts_with('m')).collect();
        (got == want, got)
    })
    .await;
    assert_eq!(d.topics().iter().filter(|t| *t == "g0").count(), 1, "{:?}", d.topics());
    // Groups, presence and profiles answer again, with no service restarted.
    eventually(WITHIN, "a join after the failover", async || {
        c.join_group(pb::JoinGroupRequest { group_id: "team".into(), user_ids: vec!["bob".into()] }).await.is_ok()
    })
    .await;
    let mut p = app.presence_client().await;
    eventually(WITHIN, "a login after the failover", async || {
        let req = push_proto::presence::v1::LoginRequest {
            user_id: "cy".into(),
            session_id: "d".into(),
            ..Default::default()
        };
        p.login(req).await.is_ok()
    })
    .await;
    let mut prof = app.profile_client().await;
    eventually(WITHIN, "a profile write after the failover", async || {
        let profile = push_proto::profile::v1::UserProfile { user_id: "cy".into(), ..Default::default() };
        prof.put_profile(push_proto::profile::v1::PutProfileRequest { profile: Some(profile) }).await.is_ok()
    })
    .await;
    c.push_to_group(to_group("team", "g1")).await.unwrap();
    eventually(WITHIN, "a group push after the failover", async || d.topics().contains(&"g1".to_owned())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_loses_no_replicated_push_and_needs_no_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut setup = tokio::task::block_in_place(SentinelSetup::start);
    let url = setup.url();
    let app = App::builder().redis(RedisServer::external(&url)).start().await;
    let (mut c, d) = before(&app).await;
    tokio::task::block_in_place(|| {
        setup.wait_replicated();
        let old = setup.kill_master();
        setup.wait_promoted(old);
    });
    after(&app, &mut c, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_loses_no_replicated_push_and_needs_no_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = tokio::task::block_in_place(|| RedisServer::start_cluster(&[]));
    let mut app = App::builder().redis(redis).start().await;
    let (mut c, d) = before(&app).await;
    tokio::task::block_in_place(|| {
        app.redis.wait_replicated();
        let inbox = "push:inbox:{u:ann}";
        let old = app.redis.kill_master_of(inbox);
        app.redis.wait_failed_over(inbox, old);
    });
    after(&app, &mut c, &d).await;
}
