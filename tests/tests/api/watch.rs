//! WatchPresence at scale: one Redis reader per presence replica, whatever the number of
//! watchers, and caps per replica and per API key (issue 11, defect 9).
use std::time::Duration;

use push_proto::push::v1 as pb;
use push_tests::{App, Device, eventually};
use tonic::Code;

fn connected_clients(app: &App) -> i64 {
    let infos: Vec<String> = app.redis.on_masters(redis::cmd("INFO").arg("clients"));
    let clients = |info: &String| -> i64 {
        let line = info.lines().find(|l| l.starts_with("connected_clients:")).unwrap();
        line.split(':').nth(1).unwrap().trim().parse().unwrap()
    };
    infos.iter().map(clients).sum()
}

async fn watch(
    c: &mut push_tests::GatewayClient,
) -> Result<tonic::Streaming<pb::WatchPresenceResponse>, tonic::Status> {
    c.watch_presence(pb::WatchPresenceRequest { cursor: String::new() }).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn many_watchers_share_one_redis_reader_and_all_get_every_event() {
    let app = App::builder().gateway(&["--max-watchers-per-key", "100"]).start().await;
    let mut c = app.gateway_client().await;
    let mut first = watch(&mut c).await.unwrap();
    // Counted once the first watcher is seen to be served (its events arrived): the
    // reader, which starts with the first watcher, is reading by then. (The first event
    // may reach the watcher by its own catch-up, before the reader's connection is up.)
    let _ann = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    assert_eq!(next_user(&mut first).await, "ann");
    let _amy = Device::connect(app.gateway.addr, "amy", "phone").await.unwrap();
    assert_eq!(next_user(&mut first).await, "amy");
    // The services' pools connect lazily, one connection at a time as they are first
    // used: counted once every one is up (health probes use them in turn every 100 ms).
    let mut last = 0;
    eventually(Duration::from_secs(10), "the pools' connections are all up", async || {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let now = connected_clients(&app);
        let stable = now == last;
        last = now;
        (stable, now)
    })
    .await;
    let before = connected_clients(&app);
    let mut watchers = Vec::new();
    for _ in 0..50 {
        watchers.push(watch(&mut c).await.unwrap());
    }
    // Every watcher, the first and the last, gets the next event: all are being served
    // when Redis's clients are counted again.
    let _bob = Device::connect(app.gateway.addr, "bob", "phone").await.unwrap();
    for w in std::iter::once(&mut first).chain(watchers.iter_mut()) {
        assert_eq!(next_user(w).await, "bob");
    }
    let after = connected_clients(&app);
    assert!(after <= before + 1, "50 more watchers took Redis from {before} to {after} clients");
}

async fn next_user(w: &mut tonic::Streaming<pb::WatchPresenceResponse>) -> String {
    let item = tokio::time::timeout(Duration::from_secs(10), w.message()).await.unwrap().unwrap().unwrap();
    item.events[0].user_id.clone()
}

#[tokio::test]
async fn watchers_are_capped_per_replica_and_per_key() {
    let app = App::builder().presence(&["--max-watchers", "3"]).gateway(&["--max-watchers-per-key", "2"]).start().await;
    let mut c = app.gateway_client().await;
    let _a = watch(&mut c).await.unwrap();
    let b = watch(&mut c).await.unwrap();
    let err = watch(&mut c).await.expect_err("a third watch of one key");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // A watch that ends frees its place.
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _b = watch(&mut c).await.unwrap();
    // presence-svc's own cap, reached directly.
    let mut p = app.presence_client().await;
    let req = || push_proto::presence::v1::WatchPresenceRequest { cursor: String::new() };
    let _x = p.watch_presence(req()).await.unwrap();
    let err = p.watch_presence(req()).await.expect_err("a fourth watch on the replica");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

/// Reads of the presence events (XREAD, XRANGE) that Redis answered with an error so
/// far, on every master.
fn failed_reads(app: &App) -> u64 {
    let stats = app.redis.command_stats();
    ["xread", "xrange"].iter().filter_map(|c| stats.get(*c)).map(|(_, failed)| failed).sum()
}

#[tokio::test]
async fn a_reader_whose_reads_fail_backs_off_instead_of_spinning() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let mut w = watch(&mut c).await.unwrap();
    let _ann = Device::connect(app.gateway.addr, "ann", "phone").await.unwrap();
    assert_eq!(next_user(&mut w).await, "ann");
    // Every read of the events now fails at once (WRONGTYPE): an operator's mistake, or
    // a cluster whose nodes are all gone, fails as fast.
    let key = "push:presence:events:{b:0}";
    let before = failed_reads(&app);
    app.redis.query::<()>(redis::cmd("DEL").arg(key));
    app.redis.query::<()>(redis::cmd("SET").arg(key).arg("not a stream"));
    // Events in the other buckets wake a blocked reader (whose next read fails).
    let mut devices = Vec::new();
    for u in 0..8 {
        devices.push(Device::connect(app.gateway.addr, &format!("u{u}"), "phone").await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failed = failed_reads(&app) - before;
    // With backoff (50 ms doubling to 2 s) a handful; a reader that retried at once
    // would have failed thousands of times.
    assert!((1..=20).contains(&failed), "{failed} failed reads in 1.5 s");
}

/// Reads of the presence events (XREAD, XRANGE, XREVRANGE, XINFO) so far, on every master.
fn event_reads(app: &App) -> u64 {
    let stats = app.redis.command_stats();
    stats.iter().filter(|(name, _)| name.starts_with('x') && *name != "xadd").map(|(_, (calls, _))| calls).sum()
}

#[tokio::test]
async fn with_no_watcher_the_events_are_not_read() {
    let app = App::start().await;
    let mut c = app.gateway_client().await;
    let mut w = watch(&mut c).await.unwrap();
    c.login(login("ann")).await.unwrap();
    assert_eq!(next_user(&mut w).await, "ann");
    drop(w);
    // Once the reader has noticed (at its next read), events come and nothing reads them
    // (a login writes its event, XADD, and reads no stream).
    let mut n = 0;
    eventually(Duration::from_secs(10), "no event read with no watcher", async || {
        let before = event_reads(&app);
        n += 1;
        c.login(login(&format!("u{n}"))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let read = event_reads(&app) - before;
        (read == 0, read)
    })
    .await;
    // Control: a new watcher is served from the newest event on.
    let mut w = watch(&mut c).await.unwrap();
    c.login(login("bob")).await.unwrap();
    assert_eq!(next_user(&mut w).await, "bob");
}

fn login(user: &str) -> pb::LoginRequest {
    pb::LoginRequest { user_id: user.into(), session_id: "phone".into(), ..Default::default() }
}
