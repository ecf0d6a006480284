//! Held sessions (issue 14, item 4): a gateway replica's lease keeps the sessions of
//! its open streams alive, renewed per bucket and not per stream; when the replica
//! dies its devices go offline once, at its lease's end; a session Redis lost while its
//! stream is open comes back.
use std::{collections::HashMap, time::Duration};

use push_proto::push::v1::{
    self as pb,
    presence_event::{Kind, Reason},
};
use push_tests::{
    App, Device, GatewayProcess, always, eventually,
    fixtures::{presence_of, ttl},
};

use crate::events::{until_sentinel, watch};

/// Short leases and quick sweeps, so a test sees several rounds and a lease's end.
const PRESENCE: [&str; 4] = ["--min-ttl", "100ms", "--sweep-interval", "200ms"];
const LEASE: [&str; 2] = ["--stream-lease", "600ms"];

/// Calls per command over every master since the last CONFIG RESETSTAT.
fn command_calls(app: &App) -> HashMap<String, u64> {
    app.redis.command_stats().into_iter().map(|(name, (calls, _))| (name, calls)).collect()
}

#[tokio::test]
async fn idle_streams_are_kept_alive_without_a_script_per_session() {
    let app = App::builder().presence(&PRESENCE).gateway(&LEASE).start().await;
    let c = app.gateway_client().await;
    let mut devices = Vec::new();
    for u in 0..20 {
        devices.push(Device::connect(app.gateway.addr, &format!("u{u}"), "phone").await.unwrap());
    }
    for d in &devices {
        d.wait_states(2).await;
    }
    let _: Vec<String> = app.redis.on_masters(redis::cmd("CONFIG").arg("RESETSTAT"));
    // Five renewal rounds (a third of the lease each) and more, with nothing pushed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls = command_calls(&app);
    for u in 0..20 {
        assert!(presence_of(&c, &format!("u{u}")).await.online, "u{u} stayed online on the replica's lease alone");
    }
    // Every login, heartbeat and logout starts with ZREMRANGEBYSCORE on the sessions.
    assert_eq!(calls.get("zremrangebyscore"), None, "no session was renewed on its own: {calls:?}");
    // Control: the replica's lease was renewed each round, by a script per bucket (one
    // SCARD of its held set each).
    let rounds = calls.get("scard").copied().unwrap_or(0) / 16;
    assert!(rounds >= 3, "the holder lease was renewed each round: {calls:?}");
    // The audit goes through the streams over --audit-interval (an hour): a slice per
    // round, here at most one stream (its groups, its inbox's and the broadcast's top).
    let audit_reads = calls.get("hkeys").copied().unwrap_or(0) + calls.get("hmget").copied().unwrap_or(0);
    assert!(audit_reads <= 3 * rounds, "the audit read {audit_reads} keys in {rounds} rounds: {calls:?}");
}

#[tokio::test]
async fn a_killed_replicas_devices_go_offline_once_when_its_lease_ends() {
    let app = App::builder().presence(&PRESENCE).start().await;
    let mut c = app.gateway_client().await;
    let mut rx = watch(&mut c, "").await.unwrap();
    let mut gw = GatewayProcess::start(env!("CARGO_BIN_EXE_gateway-process"), &app, &LEASE).await;
    let phone = Device::connect(gw.addr, "ann", "phone").await.unwrap();
    let laptop = Device::connect(gw.addr, "ann", "laptop").await.unwrap();
    let bob = Device::connect(gw.addr, "bob", "phone").await.unwrap();
    let carol = Device::connect(app.gateway.addr, "carol", "phone").await.unwrap();
    for d in [&phone, &laptop, &bob, &carol] {
        d.wait_states(2).await;
    }
    gw.kill(); // kill -9: no logout is sent
    eventually(Duration::from_secs(10), "the killed replica's users show offline", async || {
        let (ann, bob) = (presence_of(&c, "ann").await, presence_of(&c, "bob").await);
        (!ann.online && !bob.online, (ann, bob))
    })
    .await;
    // The sweep records them offline once its next round finds the lease ended.
    let mut offline = Vec::new();
    while offline.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("no OFFLINE in 10 s").unwrap();
        if e.kind() == Kind::Offline {
            offline.push((e.user_id.clone(), e.reason()));
        }
    }
    offline.sort();
    assert_eq!(offline, [("ann".to_owned(), Reason::Expired), ("bob".to_owned(), Reason::Expired)]);
    let after = until_sentinel(&mut c, &mut rx, "zz-end").await;
    assert!(after.iter().all(|e| e.1 != Kind::Offline), "one OFFLINE per user: {after:?}");
    assert!(presence_of(&c, "carol").await.online, "the live replica's device stays online");
    drop(carol);
}

#[tokio::test]
async fn a_session_redis_lost_comes_back_while_its_stream_is_open() {
    let app = App::builder().presence(&PRESENCE).gateway(&LEASE).start().await;
    let c = app.gateway_client().await;
    let d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    // As a failover that lost the login, or a Redis restarted without its data.
    let _: Vec<String> = app.redis.on_masters(&redis::cmd("FLUSHALL"));
    assert!(!presence_of(&c, "ann").await.online);
    eventually(Duration::from_secs(5), "ann online again, her stream still open", async || {
        presence_of(&c, "ann").await.online
    })
    .await;
    assert!(!d.ended());
}

#[tokio::test]
async fn a_device_on_a_killed_replica_stays_online_through_its_other_stream() {
    let app = App::builder().presence(&PRESENCE).gateway(&LEASE).start().await;
    let mut c = app.gateway_client().await;
    let mut rx = watch(&mut c, "").await.unwrap();
    let mut gw = GatewayProcess::start(env!("CARGO_BIN_EXE_gateway-process"), &app, &LEASE).await;
    // The phone's first stream is here; a newer one on the doomed replica takes its
    // session over, and this one stands as its backup.
    let old = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    old.wait_states(2).await;
    let new = Device::connect(gw.addr, "ann", "phone").await.unwrap();
    new.wait_states(2).await;
    let bob = Device::connect(gw.addr, "bob", "phone").await.unwrap();
    bob.wait_states(2).await;
    gw.kill();
    // Control: the dead replica's lease ended and its sessions were swept (bob's OFFLINE).
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("no OFFLINE in 10 s").unwrap();
        if e.kind() == Kind::Offline {
            assert_eq!(e.user_id, "bob", "only bob went offline: {e:?}");
            break;
        }
    }
    let ann = presence_of(&c, "ann").await;
    assert!(ann.online && ann.sessions.len() == 1, "ann's session went back to her live stream: {ann:?}");
    let after = until_sentinel(&mut c, &mut rx, "zz-end").await;
    assert!(after.iter().all(|e| e.1 != Kind::Offline), "ann never went offline: {after:?}");
    // And the live stream holds it now: its close ends it.
    drop(old);
    eventually(Duration::from_secs(10), "ann offline once her live stream closed", async || {
        !presence_of(&c, "ann").await.online
    })
    .await;
}

#[tokio::test]
async fn a_heartbeat_does_not_keep_a_dead_replicas_session_alive() {
    let app = App::builder().presence(&PRESENCE).start().await;
    let mut c = app.gateway_client().await;
    let mut gw = GatewayProcess::start(env!("CARGO_BIN_EXE_gateway-process"), &app, &LEASE).await;
    let d = Device::connect(gw.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    gw.kill();
    // A backend heartbeats the device's session with a long lease, again and again.
    let beat = pb::HeartbeatRequest {
        user_id: "ann".into(),
        session_id: "phone".into(),
        ttl: ttl(60_000),
        ..Default::default()
    };
    eventually(Duration::from_secs(10), "ann offline once the dead replica's lease ended", async || {
        let answer = c.heartbeat(beat.clone()).await;
        let p = presence_of(&c, "ann").await;
        (!p.online, (answer.map(|_| ()), p))
    })
    .await;
    let answer = c.heartbeat(beat.clone()).await.expect_err("the session is over");
    assert_eq!(answer.code(), tonic::Code::NotFound, "{answer:?}");
}

#[tokio::test]
async fn a_backend_login_over_a_streaming_device_is_held_by_its_stream_again() {
    let app = App::builder().presence(&PRESENCE).gateway(&LEASE).start().await;
    let mut c = app.gateway_client().await;
    let d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    // A login without owner or holder: the session gets a lease of its own, 300 ms.
    let login =
        pb::LoginRequest { user_id: "ann".into(), session_id: "phone".into(), ttl: ttl(300), ..Default::default() };
    c.login(login).await.unwrap();
    // The replica's next round finds the session missing from its set and renews it
    // on its own, which makes it held again: ann stays online past those 300 ms...
    always(Duration::from_secs(2), "ann online while her stream is open", async || {
        let p = presence_of(&c, "ann").await;
        (p.online, p)
    })
    .await;
    // ...and the rounds after that renew no session on their own (no touch script).
    let _: Vec<String> = app.redis.on_masters(redis::cmd("CONFIG").arg("RESETSTAT"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let calls = command_calls(&app);
    assert_eq!(calls.get("zremrangebyscore"), None, "held again, renewed by the lease alone: {calls:?}");
    assert!(calls.get("scard").copied().unwrap_or(0) >= 16, "control: the lease was renewed: {calls:?}");
    drop(d);
}
