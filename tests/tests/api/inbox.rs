//! Never lose a message: inbox and histories, resume with cursors, gaps told as gaps,
//! acks and delivery status, a killed replica, and a Redis crash with AOF.
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use push_proto::push::v1::{self as pb, Audience, Continuity, DeliveryState};
use push_tests::{
    App, Device, GatewayClient as Client, GatewayProcess, Received, RedisServer, channel, eventually,
    fixtures::{assert_invalid, join, to_all, to_group, to_users},
};

const USER: i32 = Audience::User as i32;
const ALL: i32 = Audience::All as i32;
const GROUP: i32 = Audience::Group as i32;

/// The continuity each history was last reported with, by audience.
fn continuity(d: &Device) -> HashMap<i32, Continuity> {
    d.states().into_iter().map(|s| (s.cursor.unwrap().audience, Continuity::try_from(s.continuity).unwrap())).collect()
}

/// Received (audience, message id) pairs: asserts there is no duplicate.
#[track_caller]
fn unique_ids(received: &[Received]) -> HashSet<(i32, String)> {
    let mut seen = HashSet::new();
    for (audience, _, id, topic) in received {
        assert!(seen.insert((*audience, id.clone())), "{topic} ({id}) was delivered twice");
    }
    seen
}

/// Pushes `topic` to ann (inbox), group team or everyone, by `k % 3`; returns the id.
async fn push_some(c: &mut Client, k: usize, topic: &str) -> (i32, String) {
    match k % 3 {
        0 => (USER, c.push_to_users(to_users(&["ann"], topic)).await.unwrap().into_inner().message_id),
        1 => (GROUP, c.push_to_group(to_group("team", topic)).await.unwrap().into_inner().message_id),
        _ => (ALL, c.push_to_all(to_all(topic)).await.unwrap().into_inner().message_id),
    }
}

#[tokio::test]
async fn a_resumed_device_gets_exactly_what_it_missed_in_order_then_live() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    join(&mut c, "team", &["ann"]).await;
    let d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(3).await;
    assert!(continuity(&d).values().all(|c| *c == Continuity::FromNow), "{:?}", d.states());
    let mut d = d;
    push_some(&mut c, 0, "seen").await;
    assert_eq!(d.next().await.topic, "seen");
    let cursors = d.cursors();
    drop(d);

    // Missed while away: 30 messages over the three histories, and one for someone else.
    let mut missed = Vec::new();
    for k in 0..30 {
        let topic = format!("missed-{k}");
        let (audience, id) = push_some(&mut c, k, &topic).await;
        missed.push((audience, id, topic));
    }
    c.push_to_users(to_users(&["bob"], "not-yours")).await.unwrap();

    let mut d = Device::options().cursors(cursors).connect(app.gateway.addr, "ann", "phone").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..30 {
        let m = d.next().await;
        got.push((m.audience, m.id, m.topic));
    }
    assert!(continuity(&d).values().all(|c| *c == Continuity::Resumed), "{:?}", d.states());
    // Per history, exactly the missed messages in push order; ids grow.
    for audience in [USER, GROUP, ALL] {
        let want: Vec<_> = missed.iter().filter(|m| m.0 == audience).collect();
        let have: Vec<_> = got.iter().filter(|m| m.0 == audience).collect();
        assert_eq!(have, want, "audience {audience}");
    }
    // Then live, with nothing repeated.
    push_some(&mut c, 0, "live").await;
    push_some(&mut c, 2, "end").await;
    assert_eq!(d.next().await.topic, "live");
    assert_eq!(d.next().await.topic, "end");
    unique_ids(&d.received());
    assert_eq!(d.received_count(), 32);
}

#[tokio::test]
async fn a_cursor_beyond_the_retention_gets_an_explicit_gap() {
    let app = App::builder().gateway(&["--inbox-max-len", "10"]).start().await;
    let mut c = app.gateway_client().await;
    let mut d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    push_some(&mut c, 0, "seen").await;
    d.next().await;
    let cursors = d.cursors();
    drop(d);

    // Far more than the inbox keeps.
    let mut ids = Vec::new();
    for k in 0..250 {
        ids.push(push_some(&mut c, 0, &format!("m{k}")).await.1);
    }
    let d = Device::options().cursors(cursors.clone()).connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    let states = continuity(&d);
    assert_eq!(states[&USER], Continuity::Gap, "the inbox lost messages after the cursor");
    assert_eq!(states[&ALL], Continuity::Resumed, "the broadcast history did not");
    // What is retained follows the gap: a suffix of what was pushed, newest last.
    eventually(Duration::from_secs(10), "the retained messages all arrive", async || {
        d.received().last().map(|r| &r.2) == ids.last()
    })
    .await;
    let got: Vec<String> = d.received().into_iter().map(|r| r.2).collect();
    assert!(got.len() >= 10 && got.len() < 250, "{} retained", got.len());
    assert_eq!(got, ids[ids.len() - got.len()..]);

    // A cursor of another epoch (the history was lost and started over) is a gap too,
    // and everything retained is replayed.
    let mut stale = cursors.clone();
    stale.iter_mut().filter(|c| c.audience == USER).for_each(|c| c.epoch = "1".into());
    let d = Device::options().cursors(stale).connect(app.gateway.addr, "ann", "tablet").await.unwrap();
    d.wait_states(2).await;
    assert_eq!(continuity(&d)[&USER], Continuity::Gap);
}

#[tokio::test]
async fn an_expired_inbox_is_a_gap_only_if_something_was_missed() {
    let app = App::builder().gateway(&["--history-max-age", "300ms"]).start().await;
    let mut c = app.gateway_client().await;
    let mut d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    push_some(&mut c, 0, "a").await;
    d.next().await;
    let up_to_date = d.cursors();
    drop(d);
    let mut other = Device::connect(app.gateway.addr, "ann", "laptop").await.unwrap();
    other.wait_states(2).await;
    push_some(&mut c, 0, "b").await;
    other.next().await;
    let behind = up_to_date.clone();
    let laptop = other.cursors();
    drop(other);
    tokio::time::sleep(Duration::from_millis(600)).await; // the inbox stream expired

    // The phone missed "b", which expired: a gap, with nothing to replay.
    let d = Device::options().cursors(behind).connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    assert_eq!(continuity(&d)[&USER], Continuity::Gap);
    // The laptop saw everything: it resumes, though the stream itself is gone.
    let mut l = Device::options().cursors(laptop).connect(app.gateway.addr, "ann", "laptop").await.unwrap();
    l.wait_states(2).await;
    assert_eq!(continuity(&l)[&USER], Continuity::Resumed);
    push_some(&mut c, 0, "c").await;
    assert_eq!(l.next().await.topic, "c");
    assert_eq!(l.received_count(), 1);
}

#[tokio::test]
async fn acks_move_the_position_and_answer_delivery_status() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    join(&mut c, "team", &["ann", "bob"]).await;
    let mut d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(3).await;
    let one = c.push_to_users(to_users(&["ann", "bob"], "one")).await.unwrap().into_inner().message_id;
    assert_eq!(d.next().await.id, one);
    let status = |id: &str, audience: Audience, group: &str| pb::GetDeliveryStatusRequest {
        message_id: id.into(),
        audience: audience as i32,
        group_id: group.into(),
        user_ids: vec!["ann".into(), "bob".into(), "carl".into()],
    };
    let states = |r: pb::GetDeliveryStatusResponse| -> Vec<(DeliveryState, Vec<String>)> {
        r.deliveries.into_iter().map(|d| (d.state(), d.device_ids)).collect()
    };
    let got = states(c.get_delivery_status(status(&one, Audience::User, "")).await.unwrap().into_inner());
    assert_eq!(
        got,
        [(DeliveryState::Pending, vec![]), (DeliveryState::Pending, vec![]), (DeliveryState::Unknown, vec![])]
    );

    let ack = |cursors: Vec<pb::Cursor>| pb::AckRequest { user_id: "ann".into(), device_id: "phone".into(), cursors };
    c.ack(ack(d.cursors())).await.unwrap();
    let got = states(c.get_delivery_status(status(&one, Audience::User, "")).await.unwrap().into_inner());
    assert_eq!(got[0], (DeliveryState::Delivered, vec!["phone".to_string()]));
    assert_eq!(got[1].0, DeliveryState::Pending, "bob's devices acked nothing");

    // An older position does not move it back.
    let mut back = d.cursors();
    back.iter_mut().for_each(|c| c.message_id = "0-0".into());
    c.ack(ack(back)).await.unwrap();
    let got = states(c.get_delivery_status(status(&one, Audience::User, "")).await.unwrap().into_inner());
    assert_eq!(got[0].0, DeliveryState::Delivered);

    // Group messages too.
    let g = c.push_to_group(to_group("team", "g")).await.unwrap().into_inner().message_id;
    assert_eq!(d.next().await.id, g);
    let got = states(c.get_delivery_status(status(&g, Audience::Group, "team")).await.unwrap().into_inner());
    assert_eq!(got[0].0, DeliveryState::Pending);
    c.ack(ack(d.cursors())).await.unwrap();
    let got = states(c.get_delivery_status(status(&g, Audience::Group, "team")).await.unwrap().into_inner());
    assert_eq!(got[0].0, DeliveryState::Delivered);

    // Without cursors, a device starts from its acknowledged positions.
    drop(d);
    let two = c.push_to_users(to_users(&["ann"], "two")).await.unwrap().into_inner().message_id;
    let mut d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    assert_eq!(d.next().await.id, two);
    d.wait_states(3).await;
    assert_eq!(continuity(&d)[&USER], Continuity::Resumed);
    assert_eq!(d.received_count(), 1);
}

#[tokio::test]
async fn bad_cursors_and_receipt_requests_are_refused_and_write_nothing() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let keys = app.redis.keys();
    let cursor = |audience: Audience, group: &str, epoch: &str, id: &str| pb::Cursor {
        audience: audience as i32,
        group_id: group.into(),
        epoch: epoch.into(),
        message_id: id.into(),
    };
    let ack = |cursors: Vec<pb::Cursor>| pb::AckRequest { user_id: "ann".into(), device_id: "phone".into(), cursors };
    assert_invalid(&c.ack(ack(vec![])).await.unwrap_err(), "cursors");
    for (bad, field) in [
        (cursor(Audience::User, "", "12", "1-x"), "cursors[0].message_id"),
        (cursor(Audience::User, "", "", "1-0"), "cursors[0].epoch"),
        (cursor(Audience::Unspecified, "", "1", "1-0"), "cursors[0].audience"),
        (cursor(Audience::Group, "{g}", "1", "1-0"), "cursors[0].group_id"),
    ] {
        assert_invalid(&c.ack(ack(vec![bad.clone()])).await.unwrap_err(), field);
        let req = pb::SubscribeRequest {
            user_id: "ann".into(),
            device_id: "phone".into(),
            cursors: vec![bad],
            strict_resume: false,
        };
        assert_invalid(&c.subscribe(req).await.unwrap_err(), field);
    }
    let req = pb::AckRequest { user_id: "a b".into(), ..ack(vec![cursor(Audience::All, "", "1", "1-0")]) };
    assert_invalid(&c.ack(req).await.unwrap_err(), "user_id");

    let status = pb::GetDeliveryStatusRequest {
        message_id: "nope".into(),
        audience: Audience::Unspecified as i32,
        group_id: String::new(),
        user_ids: vec![],
    };
    let err = c.get_delivery_status(status).await.unwrap_err();
    for field in ["message_id", "audience", "user_ids"] {
        assert_invalid(&err, field);
    }
    assert_eq!(app.redis.keys(), keys);
}

/// `n` devices, one per user `u0..`, over a few shared connections to `addr`.
async fn open_devices(addr: std::net::SocketAddr, cursors: Vec<Vec<pb::Cursor>>) -> Vec<Device> {
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(channel(addr).await);
    }
    let mut opening = tokio::task::JoinSet::new();
    for (u, cursors) in cursors.into_iter().enumerate() {
        let conn = conns[u % conns.len()].clone();
        let device = Device::options().cursors(cursors);
        opening.spawn(async move { (u, device.connect(conn, &format!("u{u}"), "d").await.unwrap()) });
    }
    let mut devices: Vec<(usize, Device)> = opening.join_all().await;
    devices.sort_by_key(|(u, _)| *u);
    let devices: Vec<Device> = devices.into_iter().map(|(_, d)| d).collect();
    for d in &devices {
        d.wait_states(2).await;
    }
    devices
}

/// Pushes until `stop`: every tenth to all, the others to a window of 50 users.
/// Returns what each push that returned OK was: (message id, users, or None for all).
fn pusher(
    mut c: Client,
    users: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, Option<Vec<usize>>)>> {
    tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut k = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let topic = format!("p{k}");
            if k % 10 == 9 {
                if let Ok(r) = c.push_to_all(to_all(&topic)).await {
                    sent.push((r.into_inner().message_id, None));
                }
            } else {
                let window: Vec<usize> = (0..50).map(|i| (k * 50 + i) % users).collect();
                let ids: Vec<String> = window.iter().map(|u| format!("u{u}")).collect();
                let req = pb::PushToUsersRequest { user_ids: ids, ..to_users(&[], &topic) };
                if let Ok(r) = c.push_to_users(req).await {
                    sent.push((r.into_inner().message_id, Some(window)));
                }
            }
            k += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sent
    })
}

/// Waits until every device has every message pushed to it, then checks that none
/// arrived twice. `received(u)` is everything user u's device got, over its streams.
/// With `exact`, nothing else arrived either (every push returned OK; a push that
/// failed may or may not have been made, so without `exact` such extras are allowed).
async fn assert_exactly_once(
    sent: &[(String, Option<Vec<usize>>)],
    users: usize,
    exact: bool,
    received: impl Fn(usize) -> Vec<Received>,
) {
    let mut want: Vec<HashSet<(i32, String)>> = vec![HashSet::new(); users];
    for (id, to) in sent {
        match to {
            None => want.iter_mut().for_each(|w| {
                w.insert((ALL, id.clone()));
            }),
            Some(us) => us.iter().for_each(|u| {
                want[*u].insert((USER, id.clone()));
            }),
        }
    }
    // Users already complete are not checked again.
    let mut u = 0;
    eventually(Duration::from_secs(60), "every device has every message pushed to it", async || {
        while u < users {
            let got = unique_ids(&received(u));
            let missing = want[u].difference(&got).count();
            if missing > 0 {
                return (false, format!("u{u} is missing {missing} of {} messages", want[u].len()));
            }
            if exact {
                assert_eq!(got, want[u], "u{u} received a message that was not pushed to it");
            }
            u += 1;
        }
        (true, String::new())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_of_a_killed_replica_resume_on_another_and_get_everything_once() {
    const USERS: usize = 1000;
    // 1,000 devices open at once, on 2 cores shared with a 6-node cluster in the cluster
    // pass: a Redis reply can take longer than the default 1 s there. These tests are
    // about exactly-once across a replica's end, not about latency under that load.
    let flags = ["--inbox-max-len", "100000", "--redis-timeout", "5s"];
    let app = App::builder().gateway(&flags).start().await;
    let mut a = GatewayProcess::start(env!("CARGO_BIN_EXE_gateway-process"), &app, &flags).await;
    let first = open_devices(a.addr, vec![Vec::new(); USERS]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let pushing = pusher(app.gateway_client().await, USERS, stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.kill(); // kill -9, mid-push
    eventually(Duration::from_secs(20), "the streams of the killed replica end", async || {
        first.iter().all(Device::ended)
    })
    .await;
    let second = open_devices(app.gateway.addr, first.iter().map(Device::cursors).collect()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = pushing.await.unwrap();
    assert!(sent.len() > 50, "only {} pushes", sent.len());
    assert_exactly_once(&sent, USERS, true, |u| [first[u].received(), second[u].received()].concat()).await;
}

/// A rolling update as Kubernetes runs it: one of two replicas is told to stop while
/// 1,000 streams receive a steady load. Its streams end UNAVAILABLE, paced over the
/// window; each device reconnects to the other replica with its cursors as soon as
/// its stream ends; every device gets every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_replica_hands_its_devices_over_and_none_misses_a_message() {
    const USERS: usize = 1000;
    // 1,000 devices open at once, on 2 cores shared with a 6-node cluster in the cluster
    // pass: a Redis reply can take longer than the default 1 s there. These tests are
    // about exactly-once across a replica's end, not about latency under that load.
    let flags = ["--inbox-max-len", "100000", "--redis-timeout", "5s"];
    let app = App::builder().gateway(&flags).start().await;
    let rolled = app.replica(&[&flags[..], &["--drain-delay", "300ms", "--stream-drain-window", "2s"]].concat()).await;
    let mut first = open_devices(rolled.addr, vec![Vec::new(); USERS]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let pushing = pusher(app.gateway_client().await, USERS, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = tokio::spawn(rolled.shutdown());

    // Each device reconnects as soon as its stream ended, as a client would.
    let conn = channel(app.gateway.addr).await;
    let mut second: Vec<Option<Device>> = (0..USERS).map(|_| None).collect();
    let mut statuses = std::collections::BTreeMap::new();
    let mut opened_at = Vec::new();
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(60), "every device reconnected to the other replica", async || {
        for (u, d) in first.iter().enumerate() {
            if second[u].is_none() && d.ended() {
                let device = Device::options().cursors(d.cursors());
                second[u] = Some(device.connect(conn.clone(), &format!("u{u}"), "d").await.unwrap());
                opened_at.push(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = second.iter().flatten().count();
        (n == USERS, n)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = pushing.await.unwrap();
    stopping.await.unwrap();
    for d in &mut first {
        *statuses.entry(format!("{:?}", d.end().await.map(|s| s.code()))).or_insert(0) += 1;
    }
    assert_eq!(statuses.len(), 1, "every stream of the rolled replica ended UNAVAILABLE: {statuses:?}");
    assert!(statuses.contains_key("Some(Unavailable)"), "{statuses:?}");
    // Paced: the reconnections spread over the window instead of landing at once.
    let spread = *opened_at.iter().max().unwrap() - *opened_at.iter().min().unwrap();
    assert!(spread >= Duration::from_secs(1), "1,000 reconnections within {spread:?} of a 2 s window");
    assert!(sent.len() > 50, "only {} pushes", sent.len());
    let second: Vec<Device> = second.into_iter().flatten().collect();
    assert_exactly_once(&sent, USERS, true, |u| [first[u].received(), second[u].received()].concat()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_acknowledged_before_a_redis_crash_are_delivered_after_it() {
    const USERS: usize = 20;
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut app = App::builder().redis(redis).start().await;
    let devices = open_devices(app.gateway.addr, vec![Vec::new(); USERS]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let pushing = pusher(app.gateway_client().await, USERS, stop.clone());
    tokio::time::sleep(Duration::from_millis(400)).await;
    tokio::task::block_in_place(|| app.redis.restart()); // SIGKILL, then start from the AOF
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = pushing.await.unwrap();

    // Streams stay open across the crash (the hub catches them up); one that gave up
    // resumes from its cursors like a device would.
    let mut resumed: Vec<Option<Device>> = Vec::new();
    for (u, d) in devices.iter().enumerate() {
        resumed.push(match d.ended() {
            true => Some(
                Device::options().cursors(d.cursors()).connect(app.gateway.addr, &format!("u{u}"), "d").await.unwrap(),
            ),
            false => None,
        });
    }
    assert_exactly_once(&sent, USERS, false, |u| {
        let mut all = devices[u].received();
        all.extend(resumed[u].iter().flat_map(Device::received));
        all
    })
    .await;
}

#[tokio::test]
async fn a_group_reaches_a_member_from_the_moment_it_joined() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let mut d = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    d.wait_states(2).await;
    // Joined while connected and pushed at once, before the stream can have attached:
    // each push still arrives, from the group's history.
    for k in 0..5 {
        let group = format!("g{k}");
        join(&mut c, &group, &["ann"]).await;
        c.push_to_group(to_group(&group, &group)).await.unwrap();
    }
    let mut topics: Vec<String> = Vec::new();
    for _ in 0..5 {
        topics.push(d.next().await.topic);
    }
    topics.sort();
    assert_eq!(topics, ["g0", "g1", "g2", "g3", "g4"]);
    let cursors = d.cursors();
    drop(d);

    // Joined while away: a resuming device gets the group from the join on.
    c.push_to_group(to_group("club", "before-joining")).await.unwrap();
    join(&mut c, "club", &["ann"]).await;
    for topic in ["c1", "c2"] {
        c.push_to_group(to_group("club", topic)).await.unwrap();
    }
    let mut d = Device::options().cursors(cursors).connect(app.gateway.addr, "ann", "phone").await.unwrap();
    assert_eq!(d.next().await.topic, "c1");
    assert_eq!(d.next().await.topic, "c2");
    d.wait_states(2 + 6).await;
    assert!(continuity(&d).values().all(|c| *c == Continuity::Resumed), "{:?}", d.states());

    // A new device (no cursor, no ack) starts from now everywhere.
    let fresh = Device::connect(app.gateway.addr, "ann", "new-tablet").await.unwrap();
    fresh.wait_states(2 + 6).await;
    assert!(continuity(&fresh).values().all(|c| *c == Continuity::FromNow));
    c.push_to_users(to_users(&["ann"], "sync")).await.unwrap();
    let mut fresh = fresh;
    assert_eq!(fresh.next().await.topic, "sync");
    assert_eq!(fresh.received_count(), 1);
}
