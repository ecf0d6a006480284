//! Presence through presence-svc's own contract: leases, devices, paging, counts.
use std::{collections::HashSet, time::Duration};

use push_proto::presence::v1 as pb;
use push_tests::{App, eventually, fixtures::ttl};
use tonic::Code;

const SHORT: &[&str] = &["--min-ttl", "50ms", "--sweep-interval", "100ms"];

fn login(user: &str, session: &str, ms: u64) -> pb::LoginRequest {
    pb::LoginRequest { user_id: user.into(), session_id: session.into(), ttl: ttl(ms), ..Default::default() }
}

async fn online(
    c: &mut pb::presence_client::PresenceClient<tonic::transport::Channel>,
    user: &str,
) -> pb::UserPresence {
    let r = c.get_presence(pb::GetPresenceRequest { user_ids: vec![user.into()] }).await.unwrap();
    r.into_inner().presences.remove(0)
}

async fn count(c: &mut pb::presence_client::PresenceClient<tonic::transport::Channel>) -> i64 {
    c.count_online_users(pb::CountOnlineUsersRequest {}).await.unwrap().into_inner().online_users
}

#[tokio::test]
async fn a_lease_expires_unless_renewed() {
    let app = App::builder().presence(SHORT).start().await;
    let mut c = app.presence_client().await;

    let r = c.login(login("ann", "phone", 400)).await.unwrap().into_inner();
    assert!(r.user_came_online);
    assert_eq!(r.session_count, 1);
    assert!(online(&mut c, "ann").await.online);

    // Heartbeats keep it alive past the first lease.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let hb = pb::HeartbeatRequest {
            user_id: "ann".into(),
            session_id: "phone".into(),
            ttl: ttl(400),
            ..Default::default()
        };
        c.heartbeat(hb).await.unwrap();
    }
    assert!(online(&mut c, "ann").await.online);
    assert_eq!(count(&mut c).await, 1);

    // Silence: the lease ends, the user is offline everywhere, and a late heartbeat is refused.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let p = online(&mut c, "ann").await;
    assert!(!p.online);
    assert!(p.sessions.is_empty());
    assert!(p.last_seen_time.is_some(), "last seen survives the lease");
    assert_eq!(count(&mut c).await, 0);
    let list = c.list_online_users(pb::ListOnlineUsersRequest::default()).await.unwrap().into_inner();
    assert!(list.user_ids.is_empty());
    let hb =
        pb::HeartbeatRequest { user_id: "ann".into(), session_id: "phone".into(), ttl: None, ..Default::default() };
    assert_eq!(c.heartbeat(hb).await.unwrap_err().code(), Code::NotFound);

    // The sweeper removes the expired user from the index; the sessions key expired itself.
    eventually(Duration::from_secs(5), "nothing of ann's presence left behind", async || {
        let keys = app.redis.keys();
        (!keys.iter().any(|k| k.contains(":online:") || k.contains(":presence:{")), keys)
    })
    .await;
}

#[tokio::test]
async fn a_user_is_online_while_any_device_is() {
    let app = App::builder().presence(SHORT).start().await;
    let mut c = app.presence_client().await;

    assert!(c.login(login("bob", "phone", 60_000)).await.unwrap().into_inner().user_came_online);
    let second = c.login(login("bob", "laptop", 300)).await.unwrap().into_inner();
    assert!(!second.user_came_online);
    assert_eq!(second.session_count, 2);
    // Logging in again with a live session renews it rather than adding one.
    assert_eq!(c.login(login("bob", "laptop", 300)).await.unwrap().into_inner().session_count, 2);

    let p = online(&mut c, "bob").await;
    let ids: Vec<_> = p.sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids, ["laptop", "phone"], "soonest expiry first");

    // One device logs out: still online through the other.
    let out = c
        .logout(pb::LogoutRequest { user_id: "bob".into(), session_id: "phone".into(), ..Default::default() })
        .await
        .unwrap();
    let out = out.into_inner();
    assert!(out.session_found && out.user_online);
    assert_eq!(out.session_count, 1);
    assert!(online(&mut c, "bob").await.online);
    assert_eq!(count(&mut c).await, 1);

    // The other stops heartbeating: offline after its TTL.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!online(&mut c, "bob").await.online);
    assert_eq!(count(&mut c).await, 0);

    // Logout is idempotent.
    let again = c
        .logout(pb::LogoutRequest { user_id: "bob".into(), session_id: "phone".into(), ..Default::default() })
        .await
        .unwrap();
    assert!(!again.into_inner().session_found);
}

#[tokio::test]
async fn logout_of_the_last_device_takes_the_user_offline_at_once() {
    let app = App::start().await;
    let mut c = app.presence_client().await;
    c.login(login("cy", "d1", 60_000)).await.unwrap();
    let out = c
        .logout(pb::LogoutRequest { user_id: "cy".into(), session_id: "d1".into(), ..Default::default() })
        .await
        .unwrap();
    assert!(!out.into_inner().user_online);
    assert!(!online(&mut c, "cy").await.online);
    assert_eq!(count(&mut c).await, 0);
    // Only last-seen and the two presence events remain.
    let b = push_common::keys::bucket_of("cy", 16);
    assert_eq!(app.redis.keys(), [format!("push:presence:events:{{b:{b}}}"), format!("push:seen:{{b:{b}}}:cy")]);
}

#[tokio::test]
async fn session_limit_per_user() {
    let app = App::builder().presence(&["--max-sessions-per-user", "2"]).start().await;
    let mut c = app.presence_client().await;
    c.login(login("dee", "a", 60_000)).await.unwrap();
    c.login(login("dee", "b", 60_000)).await.unwrap();
    let err = c.login(login("dee", "c", 60_000)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Renewing an existing session is still fine at the limit.
    c.login(login("dee", "b", 60_000)).await.unwrap();
    assert_eq!(online(&mut c, "dee").await.sessions.len(), 2);
}

#[tokio::test]
async fn paging_returns_every_online_user_exactly_once() {
    let app = App::builder().presence(&["--online-buckets", "8"]).start().await;
    let mut c = app.presence_client().await;
    const N: usize = 3000;
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..20 {
        let mut c = c.clone();
        tasks.spawn(async move {
            for i in (chunk..N).step_by(20) {
                c.login(login(&format!("user-{i:05}"), "d", 60_000)).await.unwrap();
            }
        });
    }
    tasks.join_all().await;
    assert_eq!(count(&mut c).await, N as i64);

    let mut seen = HashSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let req = pb::ListOnlineUsersRequest { page_size: 250, page_token: token.clone() };
        let page = c.list_online_users(req).await.unwrap().into_inner();
        assert!(page.user_ids.len() <= 250);
        for u in page.user_ids {
            assert!(seen.insert(u.clone()), "{u} returned twice");
            // Heartbeats during the walk change scores, never the walk.
            let hb = pb::HeartbeatRequest { user_id: u, session_id: "d".into(), ttl: None, ..Default::default() };
            c.heartbeat(hb).await.unwrap();
        }
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), N);
    assert!(pages >= N / 250, "{pages} pages");

    // Larger pages are coerced to the maximum (1000), not refused.
    let big = c.list_online_users(pb::ListOnlineUsersRequest { page_size: 5000, page_token: String::new() });
    assert_eq!(big.await.unwrap().into_inner().user_ids.len(), 1000);
}

#[tokio::test]
async fn paging_skips_users_who_went_offline() {
    let app = App::start().await;
    let mut c = app.presence_client().await;
    for i in 0..10 {
        c.login(login(&format!("u{i}"), "d", 60_000)).await.unwrap();
    }
    for i in (0..10).step_by(2) {
        c.logout(pb::LogoutRequest { user_id: format!("u{i}"), session_id: "d".into(), ..Default::default() })
            .await
            .unwrap();
    }
    let page = c.list_online_users(pb::ListOnlineUsersRequest { page_size: 100, page_token: String::new() });
    let mut ids = page.await.unwrap().into_inner().user_ids;
    ids.sort();
    assert_eq!(ids, ["u1", "u3", "u5", "u7", "u9"]);
    assert_eq!(count(&mut c).await, 5);
}

#[tokio::test]
async fn get_presence_answers_in_request_order() {
    let app = App::start().await;
    let mut c = app.presence_client().await;
    c.login(login("on", "d", 60_000)).await.unwrap();
    let req = pb::GetPresenceRequest { user_ids: vec!["never".into(), "on".into(), "never".into()] };
    let r = c.get_presence(req).await.unwrap().into_inner().presences;
    let summary: Vec<_> = r.iter().map(|p| (p.user_id.as_str(), p.online, p.last_seen_time.is_some())).collect();
    assert_eq!(summary, [("never", false, false), ("on", true, true), ("never", false, false)]);
    assert!(r[1].sessions[0].expire_time.is_some());
}

#[tokio::test]
async fn a_session_taken_over_by_another_owner_ignores_the_old_one() {
    let app = App::start().await;
    let mut c = app.presence_client().await;
    let with_owner = |owner: &str| pb::LoginRequest { owner: owner.into(), ..login("ann", "phone", 60_000) };
    c.login(with_owner("stream-1")).await.unwrap();
    c.login(with_owner("stream-2")).await.unwrap(); // the device reconnected elsewhere
    // The old owner's heartbeat extends nothing, and its logout ends nothing.
    let hb = pb::HeartbeatRequest {
        user_id: "ann".into(),
        session_id: "phone".into(),
        ttl: ttl(60_000),
        owner: "stream-1".into(),
        ..Default::default()
    };
    assert_eq!(c.heartbeat(hb.clone()).await.unwrap_err().code(), Code::Aborted);
    let out = pb::LogoutRequest {
        user_id: "ann".into(),
        session_id: "phone".into(),
        owner: "stream-1".into(),
        ..Default::default()
    };
    assert!(!c.logout(out.clone()).await.unwrap().into_inner().session_found);
    assert!(online(&mut c, "ann").await.online);
    // The holder's calls work; a logout without owner ends it whoever holds it.
    c.heartbeat(pb::HeartbeatRequest { owner: "stream-2".into(), ..hb }).await.unwrap();
    let out = pb::LogoutRequest { owner: String::new(), ..out };
    assert!(c.logout(out).await.unwrap().into_inner().session_found);
    assert!(!online(&mut c, "ann").await.online);
    let bad = pb::LoginRequest { owner: "a b".into(), ..login("ann", "phone", 60_000) };
    assert_eq!(c.login(bad).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_page_of_the_largest_page_size_allowed_works() {
    // 100,000 is the most --max-page-size takes; one bucket holds every user, so one
    // page step scans them all (more than Lua's unpack takes at once, ~8,000).
    const N: usize = 100_000;
    let app = App::builder().presence(&["--online-buckets", "1", "--max-page-size", "100000"]).start().await;
    let mut c = app.presence_client().await;
    c.login(login("user-000000", "d", 3_600_000)).await.unwrap();
    // The others are written straight into the index as a login would (N logins take
    // minutes); the first one shows the layout is the one Login writes.
    let keys = push_common::keys::Keys::new("push");
    let (by_expiry, by_id) = (keys.online_by_expiry(0), keys.online_by_id(0));
    let expiry: i64 = app.redis.query(redis::cmd("ZSCORE").arg(&by_expiry).arg("user-000000"));
    let by_id_score: i64 = app.redis.query(redis::cmd("ZSCORE").arg(&by_id).arg("user-000000"));
    assert_eq!(by_id_score, 0);
    for chunk in (1..N).collect::<Vec<_>>().chunks(10_000) {
        let (mut e, mut i) = (redis::cmd("ZADD"), redis::cmd("ZADD"));
        e.arg(&by_expiry);
        i.arg(&by_id);
        for n in chunk {
            let u = format!("user-{n:06}");
            e.arg(expiry).arg(&u);
            i.arg(0).arg(&u);
        }
        let _: () = app.redis.query(&e);
        let _: () = app.redis.query(&i);
    }
    assert_eq!(count(&mut c).await, N as i64);

    let req = pb::ListOnlineUsersRequest { page_size: N as i32, page_token: String::new() };
    let page = c.list_online_users(req).await.expect("a page of the maximum size").into_inner();
    assert_eq!(page.user_ids.len(), N);
    assert_eq!(page.user_ids.iter().collect::<HashSet<_>>().len(), N);
    let rest = pb::ListOnlineUsersRequest { page_size: N as i32, page_token: page.next_page_token };
    assert!(c.list_online_users(rest).await.unwrap().into_inner().user_ids.is_empty());
}

#[tokio::test]
async fn renew_sessions_answers_each_session_as_a_heartbeat_would() {
    let app = App::start().await;
    let mut c = app.presence_client().await;
    let with_owner = |user: &str, owner: &str| pb::LoginRequest { owner: owner.into(), ..login(user, "phone", 1_000) };
    c.login(with_owner("ann", "s1")).await.unwrap();
    c.login(with_owner("bob", "s2")).await.unwrap();
    let hb = |user: &str, owner: &str, ms: u64| pb::HeartbeatRequest {
        user_id: user.into(),
        session_id: "phone".into(),
        ttl: ttl(ms),
        owner: owner.into(),
        ..Default::default()
    };
    let sessions = vec![
        hb("ann", "s1", 60_000),
        hb("bob", "someone-else", 60_000),
        hb("cy", "", 60_000),
        hb("bad id", "", 60_000),
        hb("bob", "s2", 1), // under --min-ttl
    ];
    let r = c.renew_sessions(pb::RenewSessionsRequest { sessions }).await.unwrap().into_inner();
    let codes: Vec<Code> = r.renewals.iter().map(|r| Code::from_i32(r.code)).collect();
    assert_eq!(codes, [Code::Ok, Code::Aborted, Code::NotFound, Code::InvalidArgument, Code::InvalidArgument]);
    assert!(r.renewals[3].message.contains("user_id"), "{:?}", r.renewals[3]);
    assert!(r.renewals[4].message.contains("ttl"), "{:?}", r.renewals[4]);
    // ann's lease was extended to a minute, bob's was not touched: after his one second,
    // only ann is online.
    let ann = r.renewals[0].session.clone().expect("ann's session");
    assert!(ann.expire_time.unwrap().seconds > push_common::time::unix_secs() as i64 + 30);
    eventually(Duration::from_secs(5), "bob's lease ends, ann's lives on", async || {
        let (a, b) = (online(&mut c, "ann").await.online, online(&mut c, "bob").await.online);
        (a && !b, (a, b))
    })
    .await;
    let err = c.renew_sessions(pb::RenewSessionsRequest { sessions: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
