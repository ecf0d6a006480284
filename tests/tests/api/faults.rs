//! Fault paths of the stream side, tried as a hostile user and an unlucky operator
//! would (issue 11). Each test failed on the code before its fix.
use std::time::Duration;

use push_proto::push::v1::{self as pb, Audience, Continuity};
use push_tests::{
    App, Device, GatewayClient as Client, Proxy, RedisServer, always, eventually,
    fixtures::{assert_invalid, join, leave, online_count, presence_of, sessions_of, to_all, to_group, to_users},
    wait_health,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const GATEWAY: &str = "push.v1.PushGateway";

async fn user_groups(c: &mut Client, user: &str) -> Vec<String> {
    let req = pb::ListUserGroupsRequest { user_id: user.into() };
    c.list_user_groups(req).await.unwrap().into_inner().group_ids
}

/// Defect 1: a join and a leave announced while the replica's Pub/Sub connection is
/// down reach the open streams once it is back.
#[tokio::test]
async fn membership_changes_made_while_the_hub_is_down_reach_open_streams() {
    // The proxy stands in front of one server (see `Proxy`).
    let app = App::builder().redis(RedisServer::start_single(&[])).start().await;
    let proxy = Proxy::start(&app.redis).await;
    let gw = app.replica(&[]).via(&proxy.url()).await;
    let mut c = app.gateway_client().await;
    join(&mut c, "g", &["ann"]).await;
    let mut ann = Device::connect(gw.addr, "ann", "phone").await.unwrap();
    let mut bob = Device::connect(gw.addr, "bob", "phone").await.unwrap();
    ann.wait_states(3).await;
    bob.wait_states(2).await;

    proxy.swallow_pubsub(true);
    leave(&mut c, "g", &["ann"]).await;
    join(&mut c, "g", &["bob"]).await;
    wait_health(gw.addr, GATEWAY, ServingStatus::NotServing).await;
    proxy.swallow_pubsub(false);
    wait_health(gw.addr, GATEWAY, ServingStatus::Serving).await;
    assert_eq!(user_groups(&mut c, "ann").await, Vec::<String>::new());
    assert_eq!(user_groups(&mut c, "bob").await, vec!["g".to_string()]);

    // Redis delivers one connection's messages in publish order: once the inbox marker
    // (published after the group message) arrives, a group message would have too.
    c.push_to_group(to_group("g", "group")).await.unwrap();
    c.push_to_users(to_users(&["ann", "bob"], "marker")).await.unwrap();
    let mut got = [bob.next().await.topic, bob.next().await.topic];
    got.sort();
    assert_eq!(got, ["group", "marker"], "bob joined while the hub was down");
    assert_eq!(ann.next().await.topic, "marker");
    assert!(!ann.topics().contains(&"group".to_string()), "ann left while the hub was down: {:?}", ann.topics());
}

/// Defect 4: streams per (user, device) and per user are capped; a new stream of a
/// device replaces its oldest one, which ends with a status that says so.
#[tokio::test]
async fn streams_per_device_and_per_user_are_capped() {
    let app = App::builder().gateway(&["--max-streams-per-device", "2", "--max-streams-per-user", "3"]).start().await;
    let addr = app.gateway.addr;
    let mut first = Device::connect(addr, "ann", "phone").await.unwrap();
    let second = Device::connect(addr, "ann", "phone").await.unwrap();
    let third = Device::connect(addr, "ann", "phone").await.unwrap();
    let ended = first.end().await.expect("the oldest stream of the device ends with a status");
    assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
    assert!(ended.message().contains("newer stream"), "{ended:?}");
    let tablet = Device::connect(addr, "ann", "tablet").await.unwrap();
    let refused = Device::connect(addr, "ann", "laptop").await.expect_err("over the per-user cap");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Another user is not affected, and the survivors still receive.
    let _bob = Device::connect(addr, "bob", "laptop").await.unwrap();
    let mut c = app.gateway_client().await;
    c.push_to_users(to_users(&["ann"], "still")).await.unwrap();
    for mut d in [second, third, tablet] {
        assert_eq!(d.next().await.topic, "still");
    }
}

/// Defect 6: one call may not publish more bytes than a subscriber's output buffer
/// takes; it is refused whole, before anything is written.
#[tokio::test]
async fn a_push_too_large_for_pubsub_is_refused_whole() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let users: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    let big = pb::PushToUsersRequest {
        user_ids: users.clone(),
        topic: "big".into(),
        payload: vec![7u8; 64 << 10].into(),
        ..Default::default()
    };
    let before = app.redis.keys();
    let err = c.push_to_users(big).await.expect_err("64 MB of Pub/Sub output in one call");
    assert_invalid(&err, "payload");
    assert_eq!(app.redis.keys(), before, "nothing written");
    // Within the bound, the same audience is fine.
    let small = pb::PushToUsersRequest { user_ids: users, topic: "small".into(), ..Default::default() };
    c.push_to_users(small).await.unwrap();
}

/// Defect 7: when a device has two streams and the newer one closes first, the older
/// one takes its presence session over: the device never flaps offline. `across` puts
/// the newer stream on another replica (which then holds the session).
async fn the_surviving_stream_keeps_the_device_online(across: bool) {
    let app = App::builder().presence(&["--min-ttl", "100ms"]).gateway(&["--stream-lease", "600ms"]).start().await;
    let b = app.replica(&["--stream-lease", "600ms"]).await;
    let c = app.gateway_client().await;
    let old = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    old.wait_states(2).await;
    let new = Device::connect(if across { b.addr } else { app.gateway.addr }, "ann", "phone").await.unwrap();
    new.wait_states(2).await;
    // A renewal round of the old stream passes while the new one holds the session.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(new);
    // Longer than three leases: only the old stream's renewals keep the device online.
    always(Duration::from_secs(2), "the device does not flap offline while a stream is open", async || {
        presence_of(&c, "ann").await.online
    })
    .await;
    // Control: the same observation reacts to the last stream's close.
    drop(old);
    eventually(Duration::from_secs(5), "ann offline once her last stream closed", async || {
        !presence_of(&c, "ann").await.online
    })
    .await;
}

#[tokio::test]
async fn the_surviving_stream_of_a_device_keeps_it_online() {
    the_surviving_stream_keeps_the_device_online(false).await;
}

#[tokio::test]
async fn the_surviving_stream_on_another_replica_keeps_the_device_online() {
    the_surviving_stream_keeps_the_device_online(true).await;
}

/// Defect 11: a live message lost on its way to the replica is noticed by the next
/// one (it does not follow what the stream delivered last) and replayed before it.
#[tokio::test]
async fn a_later_live_message_does_not_hide_a_lost_one() {
    // The proxy stands in front of one server (see `Proxy`).
    let app = App::builder().redis(RedisServer::start_single(&[])).start().await;
    let proxy = Proxy::start(&app.redis).await;
    // Neither the probe nor the audit (every third of the 60 s lease) runs in the test.
    let gw = app.replica(&["--hub-probe-interval", "60s"]).via(&proxy.url()).await;
    let mut c = app.gateway_client().await;
    let mut d = Device::connect(gw.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    c.push_to_users(to_users(&["ann"], "first")).await.unwrap();
    assert_eq!(d.next().await.topic, "first");

    proxy.swallow_pubsub(true);
    c.push_to_users(to_users(&["ann"], "lost")).await.unwrap();
    // Really lost, not just late: else it would arrive live and prove nothing.
    eventually(Duration::from_secs(5), "the live notification swallowed", async || proxy.swallowed() >= 1).await;
    proxy.swallow_pubsub(false);
    c.push_to_users(to_users(&["ann"], "next")).await.unwrap();
    assert_eq!(d.next().await.topic, "lost");
    assert_eq!(d.next().await.topic, "next");
    assert_eq!(d.received_count(), 3);
}

/// Defect 13: after a gap with a new epoch, only the new epoch's entries are replayed,
/// never the dead epoch's that remained in the stream.
#[tokio::test]
async fn a_dead_epoch_is_not_replayed_after_a_gap() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let mut d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    c.push_to_users(to_users(&["ann"], "old-1")).await.unwrap();
    c.push_to_users(to_users(&["ann"], "old-2")).await.unwrap();
    assert_eq!(d.next().await.topic, "old-1");
    assert_eq!(d.next().await.topic, "old-2");
    let cursors = d.cursors();
    drop(d);

    // The inbox's meta is lost (evicted, say) while its entries remain.
    let metas: Vec<String> =
        app.redis.keys().into_iter().filter(|k| k.contains("inbox") && k.ends_with(":meta")).collect();
    assert_eq!(metas.len(), 1, "{metas:?}");
    let _: i64 = app.redis.query(redis::cmd("DEL").arg(&metas[0]));
    c.push_to_users(to_users(&["ann"], "new")).await.unwrap();

    let mut d = Device::options().cursors(cursors).connect(app.gateway.addr, "ann", "phone").await.unwrap();
    assert_eq!(d.next().await.topic, "new", "only the new epoch's entries follow the gap");
    let inbox = d.states().into_iter().rfind(|s| s.cursor.as_ref().unwrap().audience == Audience::User as i32);
    assert_eq!(inbox.unwrap().continuity, Continuity::Gap as i32);
    c.push_to_users(to_users(&["ann"], "live")).await.unwrap();
    assert_eq!(d.next().await.topic, "live");
    assert_eq!(d.topics(), ["new", "live"]);
}

/// Defect 14: a backlog larger than the stream's queue is replayed in pages that fit,
/// not cut off at once.
#[tokio::test]
async fn a_backlog_larger_than_the_queue_is_caught_up() {
    let app = App::builder().gateway(&["--stream-queue-messages", "64", "--inbox-max-len", "1000"]).start().await;
    let mut c = app.gateway_client().await;
    let d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    let cursors = d.cursors();
    drop(d);
    for k in 0..300 {
        c.push_to_users(to_users(&["ann"], &format!("m{k}"))).await.unwrap();
    }
    let mut d = Device::options().cursors(cursors).connect(app.gateway.addr, "ann", "phone").await.unwrap();
    for k in 0..300 {
        assert_eq!(d.next().await.topic, format!("m{k}"));
    }
}

/// Defect 15: a Subscribe cancelled at any moment of its opening leaves no session.
#[tokio::test]
async fn a_cancelled_subscribe_leaves_no_ghost_session() {
    let app = App::start().await;
    let c = app.gateway_client().await;
    let _keeper = Device::connect(app.gateway.addr, "keeper", "phone").await.unwrap();
    let channel = push_tests::channel(app.gateway.addr).await;
    for i in 0..30u64 {
        let mut g = pb::push_gateway_client::PushGatewayClient::new(channel.clone());
        let req = pb::SubscribeRequest {
            user_id: format!("ghost-{i}"),
            device_id: "d".into(),
            cursors: vec![],
            strict_resume: false,
        };
        let _ = tokio::time::timeout(Duration::from_micros(300 + 250 * i), g.subscribe(req)).await;
    }
    eventually(Duration::from_secs(5), "only the keeper is online", async || {
        let n = online_count(&c).await;
        (n == 1, n)
    })
    .await;
    assert!(presence_of(&c, "keeper").await.online);
}

/// Defect 16: a backend's Logout of a streaming device ends its streams with a status
/// that says why, and the session stays ended.
#[tokio::test]
async fn logout_ends_the_devices_streams() {
    let app = App::builder().presence(&["--min-ttl", "100ms"]).gateway(&["--stream-lease", "600ms"]).start().await;
    let other = app.replica(&["--stream-lease", "600ms"]).await;
    let mut c = app.gateway_client().await;
    let mut phone = Device::connect(other.addr, "ann", "phone").await.unwrap();
    let tablet = Device::connect(app.gateway.addr, "ann", "tablet").await.unwrap();
    // Bob's stream shares the phone's replica: the control that its renewals run.
    let bob = Device::connect(other.addr, "bob", "phone").await.unwrap();
    for d in [&phone, &tablet, &bob] {
        d.wait_states(2).await;
    }
    let req = pb::LogoutRequest { user_id: "ann".into(), session_id: "phone".into(), owner: String::new() };
    c.logout(req).await.unwrap();
    let ended = phone.end().await.expect("the logged-out device's stream ends with a status");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("logged out"), "{ended:?}");
    // Renewal rounds pass (every 200 ms): the phone stays out, the tablet stays in. Bob
    // stays in only if the phone's replica renews (his 600 ms lease is shorter than the
    // window), so a renewal that would bring the phone back had its chance.
    always(Duration::from_secs(1), "the phone stays out while renewals go on", async || {
        let (ann, bob) = (sessions_of(&c, "ann").await, presence_of(&c, "bob").await.online);
        (ann == ["tablet"] && bob, (ann, bob))
    })
    .await;
}

/// Defect 17: a Redis that does not answer is UNAVAILABLE (retry elsewhere), not
/// DEADLINE_EXCEEDED; a request over the size limit is RESOURCE_EXHAUSTED.
#[tokio::test]
async fn codes_tell_clients_what_to_do() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    c.push_to_all(to_all("fine")).await.unwrap();
    app.redis.freeze();
    let frozen = c.push_to_all(to_all("frozen")).await;
    app.redis.thaw();
    assert_eq!(frozen.expect_err("Redis is frozen").code(), Code::Unavailable);

    let huge = pb::PushToAllRequest { payload: vec![0u8; 16 << 20].into(), ..to_all("huge") };
    let err = c.push_to_all(huge).await.expect_err("over the request size limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

fn ack(user: &str, device: &str, cursors: Vec<pb::Cursor>) -> pb::AckRequest {
    pb::AckRequest { user_id: user.into(), device_id: device.into(), cursors }
}

fn cursor(audience: Audience, group: &str) -> pb::Cursor {
    pb::Cursor { audience: audience as i32, group_id: group.into(), epoch: "1".into(), message_id: "1-0".into() }
}

/// The fields of ann's acks hash, sorted.
fn ack_fields(app: &App) -> Vec<String> {
    let key = app.redis.keys().into_iter().find(|k| k.contains(":acks:")).unwrap_or_default();
    let mut fields: Vec<String> = app.redis.query(redis::cmd("HKEYS").arg(key));
    fields.sort();
    fields
}

/// Defect 2: acks are accepted only for histories the user can read, and the acks of
/// one user are bounded: a capped number of devices, whose fields name only histories
/// the user reads.
#[tokio::test]
async fn acks_are_bounded_to_what_the_user_can_read() {
    let app = App::builder().gateway(&["--max-ack-devices-per-user", "2"]).start().await;
    let mut c = app.gateway_client().await;
    join(&mut c, "team", &["ann"]).await;
    let before = app.redis.keys();
    let err = c.ack(ack("ann", "phone", vec![cursor(Audience::Group, "not-hers")])).await.unwrap_err();
    assert_invalid(&err, "cursors[0].group_id");
    assert_eq!(app.redis.keys(), before, "a refused ack writes nothing");

    let mine = || vec![cursor(Audience::All, ""), cursor(Audience::User, ""), cursor(Audience::Group, "team")];
    c.ack(ack("ann", "phone", mine())).await.unwrap();
    c.ack(ack("ann", "tablet", mine())).await.unwrap();
    assert_eq!(ack_fields(&app).len(), 6);
    // A third device takes the place of the one that acked least recently.
    c.ack(ack("ann", "phone", vec![cursor(Audience::All, "")])).await.unwrap();
    c.ack(ack("ann", "laptop", vec![cursor(Audience::All, "")])).await.unwrap();
    let fields = ack_fields(&app);
    assert!(fields.iter().all(|f| !f.starts_with("tablet|")), "{fields:?}");
    assert!(fields.contains(&"laptop|a".to_string()) && fields.contains(&"phone|g:team".to_string()), "{fields:?}");
    // Leaving a group drops its positions.
    leave(&mut c, "team", &["ann"]).await;
    let fields = ack_fields(&app);
    assert!(fields.iter().all(|f| !f.ends_with("|g:team")), "{fields:?}");
    assert!(fields.contains(&"phone|a".to_string()), "{fields:?}");
}

/// True once `d` was told (a CONTINUITY_LEFT state) that its user left `group`.
fn told_left(d: &Device, group: &str) -> bool {
    d.states().iter().any(|s| s.cursor.as_ref().unwrap().group_id == group && s.continuity == Continuity::Left as i32)
}

/// Defect 12: a message pushed to a group while the user was a member is theirs, even
/// if they left before their device came back; the device is then told it left.
#[tokio::test]
async fn a_group_message_pushed_while_a_member_reaches_it_after_it_left() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    join(&mut c, "team", &["ann"]).await;
    let mut d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(3).await;
    c.push_to_group(to_group("team", "seen")).await.unwrap();
    assert_eq!(d.next().await.topic, "seen");
    let cursors = d.cursors();
    drop(d);

    c.push_to_group(to_group("team", "while-member")).await.unwrap();
    leave(&mut c, "team", &["ann"]).await;
    c.push_to_group(to_group("team", "after-leave")).await.unwrap();

    let mut d = Device::options().cursors(cursors).connect(app.gateway.addr, "ann", "phone").await.unwrap();
    assert_eq!(d.next().await.topic, "while-member");
    eventually(Duration::from_secs(5), "the device is told its user left the group", async || told_left(&d, "team"))
        .await;
    c.push_to_users(to_users(&["ann"], "marker")).await.unwrap();
    assert_eq!(d.next().await.topic, "marker");
    assert_eq!(d.topics(), ["while-member", "marker"]);
}

/// A user who leaves a group while their device's stream is open: the stream tells the
/// device at once (CONTINUITY_LEFT, after the group's messages from before the leave),
/// so it forgets the cursor instead of acking it (which Ack would refuse) until its next
/// reconnect; nothing of the group follows.
#[tokio::test]
async fn a_live_stream_is_told_when_its_user_leaves_a_group() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    join(&mut c, "team", &["ann"]).await;
    let mut d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(3).await;
    c.push_to_group(to_group("team", "before-leave")).await.unwrap();
    assert_eq!(d.next().await.topic, "before-leave");
    leave(&mut c, "team", &["ann"]).await;
    eventually(Duration::from_secs(5), "the open stream is told its user left the group", async || {
        told_left(&d, "team")
    })
    .await;
    assert!(d.cursors().iter().all(|c| c.group_id != "team"), "{:?}", d.cursors());
    c.push_to_group(to_group("team", "after-leave")).await.unwrap();
    c.push_to_users(to_users(&["ann"], "marker")).await.unwrap();
    assert_eq!(d.next().await.topic, "marker");
    assert_eq!(d.topics(), ["before-leave", "marker"]);
    // The device's cursors are all accepted by Ack.
    let mut ack = pb::AckRequest { user_id: "ann".into(), device_id: "phone".into(), cursors: d.cursors() };
    ack.cursors.retain(|c| c.message_id != "0-0");
    c.ack(ack).await.unwrap();
}

/// A full Redis (`maxmemory` reached, `noeviction`) refuses writes: a backend is told
/// UNAVAILABLE, "storage is full; retry", the same as for any storage outage it should
/// retry, not INTERNAL (which reads as a bug of ours); reads still answer.
#[tokio::test]
async fn a_full_redis_answers_writes_unavailable_and_reads_still_work() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let config = |k: &str, v: &str| {
        let _: Vec<()> = app.redis.on_masters(redis::cmd("CONFIG").arg("SET").arg(k).arg(v));
    };
    config("maxmemory-policy", "noeviction");
    config("maxmemory", "1");

    let refused = c.push_to_users(to_users(&["ann"], "t")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("full"), "{refused:?}");
    let refused = c.join_group(pb::JoinGroupRequest { group_id: "g".into(), user_ids: vec!["ann".into()] }).await;
    assert_eq!(refused.unwrap_err().code(), Code::Unavailable);
    // Reads go on.
    c.list_user_groups(pb::ListUserGroupsRequest { user_id: "ann".into() }).await.unwrap();
    config("maxmemory", "0");
    c.push_to_users(to_users(&["ann"], "t")).await.unwrap();
}
