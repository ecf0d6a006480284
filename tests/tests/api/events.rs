//! Presence events: online/offline transitions recorded once, and WatchPresence with
//! resume from a cursor.
use std::time::Duration;

use push_proto::{
    presence::v1 as ppb,
    push::v1::{
        self as pb, PresenceEvent,
        presence_event::{Kind, Reason},
    },
};
use push_tests::{
    App, Device, GatewayClient as Client, eventually,
    fixtures::{assert_invalid, presence_of, ttl},
    services,
};
use tokio::sync::mpsc;
use tonic::Code;

/// Follows WatchPresence from `cursor` in the background.
pub(crate) async fn watch(
    c: &mut Client,
    cursor: &str,
) -> Result<mpsc::UnboundedReceiver<PresenceEvent>, tonic::Status> {
    let mut stream = c.watch_presence(pb::WatchPresenceRequest { cursor: cursor.into() }).await?.into_inner();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(item)) = stream.message().await {
            for e in item.events {
                if tx.send(e).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// Logs `sentinel` in and returns every event before its online event, as
/// (user, kind, reason, session).
pub(crate) async fn until_sentinel(
    c: &mut Client,
    rx: &mut mpsc::UnboundedReceiver<PresenceEvent>,
    sentinel: &str,
) -> Vec<(String, Kind, Reason, String)> {
    let req = pb::LoginRequest { user_id: sentinel.into(), session_id: "s".into(), ttl: None, ..Default::default() };
    c.login(req).await.unwrap();
    let mut out = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("no event in 10 s").unwrap();
        if e.user_id == sentinel {
            return out;
        }
        let (kind, reason) = (e.kind(), e.reason());
        out.push((e.user_id, kind, reason, e.session_id));
    }
}

fn login(user: &str, session: &str) -> pb::LoginRequest {
    pb::LoginRequest { user_id: user.into(), session_id: session.into(), ttl: None, ..Default::default() }
}

fn logout(user: &str, session: &str) -> pb::LogoutRequest {
    pb::LogoutRequest { user_id: user.into(), session_id: session.into(), ..Default::default() }
}

fn ev(user: &str, kind: Kind, reason: Reason, session: &str) -> (String, Kind, Reason, String) {
    (user.into(), kind, reason, session.into())
}

#[tokio::test]
async fn each_transition_is_recorded_once() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let mut rx = watch(&mut c, "").await.unwrap();

    c.login(login("ann", "phone")).await.unwrap();
    c.login(login("ann", "laptop")).await.unwrap(); // already online: no event
    c.logout(logout("ann", "phone")).await.unwrap(); // still online: no event
    c.logout(logout("ann", "laptop")).await.unwrap();
    c.logout(logout("ann", "laptop")).await.unwrap(); // already offline: no event
    let bob = Device::connect(app.gateway.addr, "bob", "tablet").await.unwrap();
    drop(bob);
    // The stream's logout is asynchronous; wait for bob to be offline.
    eventually(Duration::from_secs(10), "bob offline once his stream closed", async || {
        !presence_of(&c, "bob").await.online
    })
    .await;

    let got = until_sentinel(&mut c, &mut rx, "zz-end").await;
    assert_eq!(
        got,
        [
            ev("ann", Kind::Online, Reason::Unspecified, "phone"),
            ev("ann", Kind::Offline, Reason::Logout, "laptop"),
            ev("bob", Kind::Online, Reason::Unspecified, "tablet"),
            ev("bob", Kind::Offline, Reason::Logout, "tablet"),
        ]
    );
}

#[tokio::test]
async fn expiry_is_recorded_exactly_once_with_two_replicas_sweeping() {
    let flags = ["--min-ttl", "50ms", "--sweep-interval", "20ms"];
    let app = App::builder().presence(&flags).start().await;
    let _second_sweeper = services::presence(&app.redis.url(), &flags).await;
    let mut c = app.gateway_client().await;
    let mut rx = watch(&mut c, "").await.unwrap();

    const N: usize = 50;
    for i in 0..N {
        let req = pb::LoginRequest {
            user_id: format!("u{i:02}"),
            session_id: "d".into(),
            ttl: ttl(150),
            ..Default::default()
        };
        c.login(req).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await; // all leases end and are swept
    let got = until_sentinel(&mut c, &mut rx, "zz-end").await;
    for i in 0..N {
        let user = format!("u{i:02}");
        let mine: Vec<_> = got.iter().filter(|e| e.0 == user).map(|e| (e.1, e.2)).collect();
        assert_eq!(mine, [(Kind::Online, Reason::Unspecified), (Kind::Offline, Reason::Expired)], "{user}");
    }
    assert_eq!(got.len(), 2 * N);
}

#[tokio::test]
async fn a_lease_that_ran_out_unswept_is_recorded_before_the_next_login() {
    // No sweeps during the test: the next login must record the expiry itself, in order.
    let app = App::builder().presence(&["--min-ttl", "50ms", "--sweep-interval", "1h"]).start().await;
    let mut c = app.gateway_client().await;
    let mut rx = watch(&mut c, "").await.unwrap();
    let short = pb::LoginRequest { user_id: "ann".into(), session_id: "d".into(), ttl: ttl(100), ..Default::default() };
    c.login(short.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c.login(short).await.unwrap().into_inner().user_came_online);
    c.logout(logout("ann", "d")).await.unwrap();
    let got = until_sentinel(&mut c, &mut rx, "zz-end").await;
    assert_eq!(
        got,
        [
            ev("ann", Kind::Online, Reason::Unspecified, "d"),
            ev("ann", Kind::Offline, Reason::Expired, ""),
            ev("ann", Kind::Online, Reason::Unspecified, "d"),
            ev("ann", Kind::Offline, Reason::Logout, "d"),
        ]
    );
}

#[tokio::test]
async fn watching_resumes_after_a_cursor() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let mut all = watch(&mut c, "").await.unwrap();
    for u in ["a", "b", "c"] {
        c.login(login(u, "d")).await.unwrap();
    }
    let first = tokio::time::timeout(Duration::from_secs(10), all.recv()).await.unwrap().unwrap();
    assert_eq!(first.user_id, "a");

    // A watcher that saw "a" and reconnects gets exactly what followed.
    let mut resumed = watch(&mut c, &first.event_id).await.unwrap();
    let got = until_sentinel(&mut c, &mut resumed, "zz-end").await;
    let users: Vec<_> = got.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(users, ["b", "c"]);

    // "0" starts at the oldest retained event.
    let mut from_start = watch(&mut c, "0").await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), from_start.recv()).await.unwrap().unwrap();
    assert_eq!(e.event_id, first.event_id);
}

#[tokio::test]
async fn a_cursor_older_than_the_retained_events_is_refused() {
    let app = App::builder().presence(&["--events-max-len", "10"]).start().await;
    let mut c = app.gateway_client().await;
    let mut rx = watch(&mut c, "0").await.unwrap();
    c.login(login("first", "d")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    // Enough events in the first user's bucket that Redis trims whole blocks of its
    // stream (MAXLEN ~; the cap is per bucket).
    for _ in 0..150 {
        c.logout(logout("first", "d")).await.unwrap();
        c.login(login("first", "d")).await.unwrap();
    }
    let err = watch(&mut c, &first.event_id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("resync"));
    // Watching from now, or from the oldest retained, still works.
    watch(&mut c, "").await.unwrap();
    watch(&mut c, "0").await.unwrap();
}

#[tokio::test]
async fn a_malformed_cursor_is_invalid() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    for cursor in ["abc", "1-x", "-", "1-2-3", "{}"] {
        assert_invalid(&watch(&mut c, cursor).await.unwrap_err(), "cursor");
    }
    // The internal contract answers the same.
    let mut p = app.presence_client().await;
    let err = p.watch_presence(ppb::WatchPresenceRequest { cursor: "nope".into() }).await.unwrap_err();
    assert_invalid(&err, "cursor");
}
