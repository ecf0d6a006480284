//! The device client (push-client) against real services, with device tokens: it moves
//! to another replica when its gateway dies or drains and misses nothing, refreshes its
//! token before it expires without a loss or a duplicate (keeping its stream when the
//! refresh fails or its new stream cannot continue from where the old one got to),
//! resumes after being cut off as too slow, tells every gap and group left as events,
//! stops for good on ABORTED, PERMISSION_DENIED, a refused fresh token or a strict
//! resume it cannot honour, and acknowledges exactly the messages it handed out.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use push_client::{Client, Event, Events, History, TokenSource};
use push_proto::push::v1::{self as pb, DeliveryState};
use push_tests::{
    App, AuthorizedClient, Device, GatewayProcess, authorized,
    credentials::{Credentials, device_token_expiring_at, unix_now},
    eventually,
    fixtures::{to_all, to_group, to_users},
};
use tokio::task::JoinHandle;
use tonic::Code;

/// Long enough for anything these tests wait for on a loaded CI machine.
const WAIT: Duration = Duration::from_secs(30);

/// A system that authenticates devices, plus `gateway` flags.
async fn secure(gateway: &[&str]) -> (App, Credentials) {
    let creds = Credentials::new(gateway);
    let app = App::builder().credentials(&creds).presence(&["--min-ttl", "100ms"]).start().await;
    (app, creds)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A token source for `sub` whose tokens expire `ttl` seconds after they are made (in
/// the past when negative), and that counts its calls.
#[derive(Clone, Default)]
struct Tokens {
    calls: Arc<AtomicUsize>,
}

impl Tokens {
    fn source(&self, sub: &'static str, ttl: i64) -> impl TokenSource {
        let calls = self.calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let token = device_token_expiring_at(sub, unix_now().saturating_add_signed(ttl));
            async move { Ok::<_, Infallible>(token) }
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A client's events, read by a task of their own into a log, as an app would.
struct Run {
    client: Client,
    log: Arc<Mutex<Vec<Event>>>,
    task: JoinHandle<()>,
}

impl Run {
    fn start(client: Client, events: Events) -> Run {
        Run::paced(client, events, Duration::ZERO)
    }

    /// An app that takes `pace` to handle each event.
    fn paced(client: Client, mut events: Events, pace: Duration) -> Run {
        let log = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let log = log.clone();
            async move {
                while let Some(e) = events.recv().await {
                    log.lock().unwrap().push(e);
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                }
            }
        });
        Run { client, log, task }
    }

    fn log<T>(&self, f: impl FnOnce(&[Event]) -> T) -> T {
        f(&self.log.lock().unwrap())
    }

    /// Every message handed out: (history, id, topic).
    fn messages(&self) -> Vec<(History, String, String)> {
        self.log(|log| {
            log.iter()
                .filter_map(|e| match e {
                    Event::Message(m) => Some((History::of(m).unwrap(), m.id.clone(), m.topic.clone())),
                    _ => None,
                })
                .collect()
        })
    }

    /// The gateway of every Connected, in order.
    fn connected(&self) -> Vec<usize> {
        self.log(|log| {
            log.iter()
                .filter_map(|e| match e {
                    Event::Connected { gateway } => Some(*gateway),
                    _ => None,
                })
                .collect()
        })
    }

    /// The code of every Disconnected, in order.
    fn disconnects(&self) -> Vec<Code> {
        self.log(|log| {
            log.iter()
                .filter_map(|e| match e {
                    Event::Disconnected { status, .. } => Some(status.code()),
                    _ => None,
                })
                .collect()
        })
    }

    fn stopped(&self) -> Option<(Code, Option<History>)> {
        self.log(|log| {
            log.iter().find_map(|e| match e {
                Event::Stopped { status, resync } => Some((status.code(), resync.clone())),
                _ => None,
            })
        })
    }

    /// The events in short: "connected", "message <topic>", "gap inbox"...
    fn summary(&self) -> Vec<String> {
        self.log(|log| {
            log.iter()
                .map(|e| match e {
                    Event::Connected { .. } => "connected".to_string(),
                    Event::Message(m) => format!("message {}", m.topic),
                    Event::Gap(h) => format!("gap {h}"),
                    Event::Left(h) => format!("left {h}"),
                    Event::Disconnected { status, .. } => format!("disconnected {:?}", status.code()),
                    Event::Stopped { status, .. } => format!("stopped {:?}", status.code()),
                })
                .collect()
        })
    }

    /// Waits until the client follows `n` histories (their states were handed out).
    async fn attached(&self, n: usize) {
        eventually(WAIT, &format!("the client follows {n} histories"), async || {
            let have = self.client.cursors().len();
            (have >= n, (have, self.summary()))
        })
        .await;
    }

    /// Waits until `n` messages were handed out.
    async fn received(&self, n: usize) {
        eventually(WAIT, &format!("{n} messages handed out"), async || {
            let have = self.messages().len();
            (have >= n, have)
        })
        .await;
    }

    /// Waits until every message of `sent` was handed out.
    async fn received_all(&self, sent: &[(History, String)]) {
        eventually(WAIT, "every message pushed is handed out", async || {
            let got = self.messages();
            let missing = sent.iter().filter(|s| !got.iter().any(|g| g.0 == s.0 && g.1 == s.1)).count();
            (missing == 0, format!("{missing} of {} missing", sent.len()))
        })
        .await;
    }

    /// Waits until the client stopped and its events ended.
    async fn ended(&self) {
        eventually(WAIT, "the client stops", async || (self.task.is_finished(), self.summary())).await;
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.client.close();
        self.task.abort();
    }
}

/// Per history, the ids handed out are exactly the ids pushed, in push order: nothing
/// lost, nothing twice, nothing out of order.
#[track_caller]
fn assert_exactly_once_in_order(sent: &[(History, String)], got: &[(History, String, String)]) {
    for h in [History::Inbox, History::All] {
        let want: Vec<&String> = sent.iter().filter(|s| s.0 == h).map(|s| &s.1).collect();
        let have: Vec<&String> = got.iter().filter(|g| g.0 == h).map(|g| &g.1).collect();
        assert_eq!(have, want, "{h}");
    }
}

/// Pushes until stopped, to `user`'s inbox and to all in turn, through the backend's
/// gateway; every push must succeed.
struct Pusher {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<(History, String)>>,
}

impl Pusher {
    fn start(mut c: AuthorizedClient, user: &'static str) -> Pusher {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut sent = Vec::new();
                for k in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let topic = format!("p{k}");
                    sent.push(if k % 2 == 0 {
                        (
                            History::Inbox,
                            c.push_to_users(to_users(&[user], &topic)).await.unwrap().into_inner().message_id,
                        )
                    } else {
                        (History::All, c.push_to_all(to_all(&topic)).await.unwrap().into_inner().message_id)
                    });
                    tokio::time::sleep(ms(5)).await;
                }
                sent
            }
        });
        Pusher { stop, task }
    }

    async fn stop(self) -> Vec<(History, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// A client on `doomed` (first) and the app's own gateway (second) receives a steady
/// push load; `end` takes `doomed` away; the client moves to the other gateway and has
/// every message once, in order.
async fn moves_to_the_other_replica(app: &App, doomed: SocketAddr, end: impl AsyncFnOnce()) {
    let tokens = Tokens::default();
    let (client, events) = Client::builder([url(doomed), app.gateway.url()])
        .device("phone")
        .token_source(tokens.source("ann", 600))
        .backoff(ms(20), ms(200))
        .connect()
        .unwrap();
    let run = Run::start(client, events);
    run.attached(2).await;
    assert_eq!(run.connected(), [0], "it starts with the first gateway");

    let pusher = Pusher::start(authorized(app.gateway.addr, "k-admin").await, "ann");
    run.received(20).await;
    end().await;
    eventually(WAIT, "the client moved to the other replica", async || (run.connected() == [0, 1], run.summary()))
        .await;
    let moved = run.messages().len();
    run.received(moved + 20).await;
    let sent = pusher.stop().await;
    run.received_all(&sent).await;
    assert_exactly_once_in_order(&sent, &run.messages());
    assert!(!run.disconnects().is_empty() && run.stopped().is_none(), "{:?}", run.summary());
    assert_eq!(tokens.calls(), 1, "a token good for ten minutes is fetched once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_gateway_is_killed_resumes_on_another_and_misses_nothing() {
    let (app, creds) = secure(&[]).await;
    let mut doomed = GatewayProcess::start(env!("CARGO_BIN_EXE_gateway-process"), &app, &creds.gateway_flags()).await;
    let addr = doomed.addr;
    moves_to_the_other_replica(&app, addr, async || doomed.kill()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_gateway_shuts_down_resumes_on_another_and_misses_nothing() {
    let (app, creds) = secure(&[]).await;
    let draining = app.replica(&creds.gateway_flags()).await;
    let addr = draining.addr;
    moves_to_the_other_replica(&app, addr, async || draining.shutdown().await).await;
}

/// Tokens that live 8 s, on a gateway without leeway that ends a stream as soon as its
/// token expires: the client opens the next stream with a fresh token 5 s before that,
/// so its stream never ends, and the overlap of the two streams is not seen twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_refreshed_before_it_expires_without_a_loss_or_a_duplicate() {
    let (app, _creds) = secure(&["--jwt-leeway", "0s", "--stream-lease", "900ms"]).await;
    let tokens = Tokens::default();
    let (client, events) = Client::builder([app.gateway.url()])
        .device("phone")
        .token_source(tokens.source("ann", 8))
        .backoff(ms(20), ms(200))
        .connect()
        .unwrap();
    let run = Run::start(client, events);
    run.attached(2).await;
    let pusher = Pusher::start(authorized(app.gateway.addr, "k-admin").await, "ann");
    // Three refreshes: the first token has expired by then, and so has the second.
    eventually(WAIT, "the token source is asked again, ahead of each expiry", async || {
        (tokens.calls() >= 4, (tokens.calls(), run.summary()))
    })
    .await;
    let sent = pusher.stop().await;
    run.received_all(&sent).await;
    assert_exactly_once_in_order(&sent, &run.messages());
    assert_eq!(run.disconnects(), [], "the stream never ended: {:?}", run.summary());
    assert_eq!(run.connected(), [0], "a refresh replaces the stream without a reconnect");
}

/// The client stops reading while 400 large messages arrive: the gateway cuts it off
/// as too slow. When it reads again it resumes from what it had handed out: with the
/// inbox still holding everything, every message once and in order; with a short inbox,
/// a gap, then what is retained.
async fn a_slow_client(inbox_max_len: &str) -> (Run, Vec<(History, String)>, App, Credentials) {
    let (app, _creds) = secure(&["--stream-queue-messages", "16", "--inbox-max-len", inbox_max_len]).await;
    let (client, mut events) = Client::builder([app.gateway.url()])
        .device("phone")
        .token_source(Tokens::default().source("ann", 600))
        .backoff(ms(20), ms(200))
        .connect()
        .unwrap();
    // Read only until the stream is attached (recv is cancel-safe: a timed-out one
    // loses nothing).
    eventually(WAIT, "the client follows its histories", async || {
        let _ = tokio::time::timeout(ms(20), events.recv()).await;
        client.cursors().len() == 2
    })
    .await;
    let mut c = authorized(app.gateway.addr, "k-admin").await;
    let mut sent = Vec::new();
    let payload = vec![7u8; 16 * 1024];
    for k in 0..700 {
        // Large ones to overflow the transport's buffers, then small ones that outlast
        // a short inbox.
        let payload = if k < 400 { payload.clone() } else { Vec::new() };
        let req = pb::PushToUsersRequest { payload: payload.into(), ..to_users(&["ann"], &format!("m{k}")) };
        sent.push((History::Inbox, c.push_to_users(req).await.unwrap().into_inner().message_id));
    }
    let run = Run::start(client, events);
    eventually(WAIT, "the last message is handed out", async || {
        let last = run.messages().last().map(|m| m.1.clone());
        (last.as_ref() == Some(&sent.last().unwrap().1), run.messages().len())
    })
    .await;
    assert_eq!(run.disconnects(), [Code::ResourceExhausted], "{:?}", run.summary());
    // (The first Connected was read before the log started.)
    assert_eq!(run.connected(), [0], "one reconnect: {:?}", run.summary());
    (run, sent, app, _creds)
}

#[tokio::test]
async fn a_client_cut_off_as_too_slow_resumes_where_it_was() {
    let (run, sent, _app, _creds) = a_slow_client("100000").await;
    assert_exactly_once_in_order(&sent, &run.messages());
    assert!(!run.summary().iter().any(|e| e.starts_with("gap")), "{:?}", run.summary());
}

#[tokio::test]
async fn a_client_cut_off_beyond_the_retention_is_told_of_the_gap() {
    let (run, sent, _app, _creds) = a_slow_client("10").await;
    let summary = run.summary();
    let at = |what: &str| summary.iter().position(|e| e.starts_with(what)).unwrap_or_else(|| panic!("{summary:?}"));
    assert!(at("disconnected") < at("gap inbox"), "the gap is told when the stream resumes: {summary:?}");
    assert_eq!(summary.iter().filter(|e| e.starts_with("gap")).count(), 1, "{summary:?}");
    // Before the gap a prefix of what was pushed, after it a suffix, each in order.
    let (before, after) = summary.split_at(at("gap inbox"));
    let topics = |events: &[String]| -> Vec<usize> {
        events.iter().filter_map(|e| e.strip_prefix("message m")).map(|k| k.parse().unwrap()).collect()
    };
    let (before, after) = (topics(before), topics(after));
    assert_eq!(before, (0..before.len()).collect::<Vec<_>>());
    let first = after[0];
    assert!(first > before.len(), "something was lost: {} then {first}", before.len());
    assert_eq!(after, (first..sent.len()).collect::<Vec<_>>());
}

/// Saved cursors beyond the retention: the resumed client reports the gap first, then
/// what is retained; a group left while away ends with Left, and its cursor is gone.
#[tokio::test]
async fn gaps_and_groups_left_while_away_are_events() {
    let (app, _creds) = secure(&["--inbox-max-len", "10"]).await;
    let mut c = authorized(app.gateway.addr, "k-admin").await;
    c.join_group(pb::JoinGroupRequest { group_id: "team".into(), user_ids: vec!["ann".into()] }).await.unwrap();
    let connect = |saved: Vec<pb::Cursor>| {
        Client::builder([app.gateway.url()])
            .device("phone")
            .token_source(Tokens::default().source("ann", 600))
            .cursors(saved)
            .connect()
            .unwrap()
    };
    let (client, events) = connect(vec![]);
    let run = Run::start(client, events);
    run.attached(3).await;
    c.push_to_users(to_users(&["ann"], "seen")).await.unwrap();
    c.push_to_group(to_group("team", "seen-too")).await.unwrap();
    run.received(2).await;
    let saved = run.client.cursors();
    drop(run);

    let mut inbox = Vec::new();
    for k in 0..250 {
        inbox.push(c.push_to_users(to_users(&["ann"], &format!("m{k}"))).await.unwrap().into_inner().message_id);
    }
    c.push_to_group(to_group("team", "while-member")).await.unwrap();
    c.leave_group(pb::LeaveGroupRequest { group_id: "team".into(), user_ids: vec!["ann".into()] }).await.unwrap();
    c.push_to_group(to_group("team", "after-leaving")).await.unwrap();

    let (client, events) = connect(saved);
    let run = Run::start(client, events);
    eventually(WAIT, "the retained inbox and the group's last message arrive, and the leave", async || {
        let s = run.summary();
        let done = s.contains(&"left group:team".to_string()) && s.contains(&"message m249".to_string());
        (done, s)
    })
    .await;
    let summary = run.summary();
    let at = |what: &str| summary.iter().position(|e| e == what).unwrap_or_else(|| panic!("{what}: {summary:?}"));
    assert!(at("gap inbox") < summary.iter().position(|e| e.starts_with("message m")).unwrap(), "{summary:?}");
    assert!(at("message while-member") < at("left group:team"), "{summary:?}");
    assert!(!summary.iter().any(|e| e == "message after-leaving" || e.starts_with("gap group")), "{summary:?}");
    let got: Vec<String> = run.messages().into_iter().filter(|m| m.0 == History::Inbox).map(|m| m.1).collect();
    assert!(got.len() >= 10 && got.len() < 250, "{} retained", got.len());
    assert_eq!(got, inbox[inbox.len() - got.len()..], "a suffix of the inbox, in order");
    let histories: Vec<Option<History>> = run.client.cursors().iter().map(History::of_cursor).collect();
    assert_eq!(histories, [Some(History::Inbox), Some(History::All)], "the group's cursor is forgotten");
}

/// A newer stream of the same device (ABORTED) and a ban (PERMISSION_DENIED) stop the
/// client for good: its events end and it opens nothing more. A Disconnect that allows
/// a reconnect does not.
#[tokio::test]
async fn aborted_and_permission_denied_stop_the_client_without_a_retry() {
    let (app, _creds) = secure(&["--max-streams-per-device", "1"]).await;
    let mut c = authorized(app.gateway.addr, "k-admin").await;
    let connect = |user: &'static str, tokens: &Tokens| {
        let (client, events) = Client::builder([app.gateway.url()])
            .device("phone")
            .token_source(tokens.source(user, 600))
            .backoff(ms(20), ms(200))
            .connect()
            .unwrap();
        Run::start(client, events)
    };

    // Replaced by a newer stream of the same device.
    let tokens = Tokens::default();
    let ann = connect("ann", &tokens);
    ann.attached(2).await;
    let token = device_token_expiring_at("ann", unix_now() + 600);
    let mut newer = Device::options().bearer(&token).connect(app.gateway.addr, "", "phone").await.unwrap();
    ann.ended().await;
    assert_eq!(ann.stopped(), Some((Code::Aborted, None)), "{:?}", ann.summary());
    assert_eq!((ann.connected(), tokens.calls()), (vec![0], 1), "no new attempt");
    // Had the client reconnected, it would have replaced the newer stream in turn.
    newer.wait_states(2).await;
    c.push_to_users(to_users(&["ann"], "to-the-newer")).await.unwrap();
    assert_eq!(newer.next().await.topic, "to-the-newer");
    assert!(!newer.ended());

    // Disconnected with leave to come back: it does.
    let tokens = Tokens::default();
    let bob = connect("bob", &tokens);
    bob.attached(2).await;
    let disconnect = |reconnect: bool| pb::DisconnectRequest {
        user_id: "bob".into(),
        device_id: String::new(),
        reason: "test".into(),
        reconnect,
    };
    c.disconnect(disconnect(true)).await.unwrap();
    eventually(WAIT, "bob reconnects", async || (bob.connected().len() == 2, bob.summary())).await;
    assert_eq!(bob.disconnects(), [Code::Unavailable]);
    c.push_to_users(to_users(&["bob"], "still-here")).await.unwrap();
    eventually(WAIT, "bob still receives", async || bob.summary().contains(&"message still-here".into())).await;

    // Banned: it stops, and goes offline.
    c.disconnect(disconnect(false)).await.unwrap();
    bob.ended().await;
    assert_eq!(bob.stopped(), Some((Code::PermissionDenied, None)), "{:?}", bob.summary());
    assert_eq!((bob.connected().len(), tokens.calls()), (2, 1), "no new attempt");
    eventually(WAIT, "bob goes offline", async || {
        let mut c = c.clone();
        let req = pb::GetPresenceRequest { user_ids: vec!["bob".into()] };
        !c.get_presence(req).await.unwrap().into_inner().presences[0].online
    })
    .await;
}

/// A token the gateway refuses is replaced by a fresh one at once; when that one is
/// refused too, the client stops. A strict resume over a gap stops it naming the
/// history to resync.
#[tokio::test]
async fn a_refused_fresh_token_and_an_unhonoured_strict_resume_stop_the_client() {
    let (app, _creds) = secure(&["--inbox-max-len", "10"]).await;
    let tokens = Tokens::default();
    let (client, events) = Client::builder([app.gateway.url()])
        .device("phone")
        .token_source(tokens.source("ann", -120))
        .connect()
        .unwrap();
    let run = Run::start(client, events);
    run.ended().await;
    assert_eq!(run.stopped(), Some((Code::Unauthenticated, None)), "{:?}", run.summary());
    assert_eq!(run.disconnects(), [Code::Unauthenticated], "one retry, with a fresh token");
    assert_eq!(tokens.calls(), 2);

    // Strict: positions the inbox no longer holds.
    let mut c = authorized(app.gateway.addr, "k-admin").await;
    let builder =
        || Client::builder([app.gateway.url()]).device("phone").token_source(Tokens::default().source("ann", 600));
    let (client, events) = builder().connect().unwrap();
    let run = Run::start(client, events);
    run.attached(2).await;
    c.push_to_users(to_users(&["ann"], "seen")).await.unwrap();
    run.received(1).await;
    let saved = run.client.cursors();
    drop(run);
    for k in 0..250 {
        c.push_to_users(to_users(&["ann"], &format!("m{k}"))).await.unwrap();
    }
    let (client, events) = builder().cursors(saved).strict_resume(true).connect().unwrap();
    let run = Run::start(client, events);
    run.ended().await;
    assert_eq!(run.stopped(), Some((Code::FailedPrecondition, Some(History::Inbox))), "{:?}", run.summary());
    assert_eq!(run.messages(), [], "nothing is delivered");
}

/// Acks carry what the client handed out, with the device's token: delivery status
/// shows the device. A cursor the gateway refuses (a group the user is not in, or left
/// while the client was connected) is left out and the others are acknowledged.
#[tokio::test]
async fn acks_from_the_client_show_in_delivery_status() {
    let (app, _creds) = secure(&[]).await;
    let mut c = authorized(app.gateway.addr, "k-admin").await;
    c.join_group(pb::JoinGroupRequest { group_id: "team".into(), user_ids: vec!["ann".into()] }).await.unwrap();
    let (client, events) = Client::builder([app.gateway.url()])
        .device("phone")
        .token_source(Tokens::default().source("ann", 600))
        .connect()
        .unwrap();
    let run = Run::start(client, events);
    run.attached(3).await;
    let status = async |c: &mut AuthorizedClient, id: &str, audience: pb::Audience, group: &str| {
        let req = pb::GetDeliveryStatusRequest {
            message_id: id.into(),
            audience: audience as i32,
            group_id: group.into(),
            user_ids: vec!["ann".into()],
        };
        let d = c.get_delivery_status(req).await.unwrap().into_inner().deliveries.remove(0);
        (d.state(), d.device_ids)
    };
    let one = c.push_to_users(to_users(&["ann"], "one")).await.unwrap().into_inner().message_id;
    let g = c.push_to_group(to_group("team", "g")).await.unwrap().into_inner().message_id;
    run.received(2).await;
    assert_eq!(status(&mut c, &one, pb::Audience::User, "").await.0, DeliveryState::Pending);

    run.client.ack_all().await.unwrap();
    let delivered = (DeliveryState::Delivered, vec!["phone".to_string()]);
    assert_eq!(status(&mut c, &one, pb::Audience::User, "").await, delivered);
    assert_eq!(status(&mut c, &g, pb::Audience::Group, "team").await, delivered);
    run.client.ack_all().await.unwrap(); // nothing new: nothing sent

    // A cursor of a group ann is not in is refused by the gateway; the rest goes through.
    let two = c.push_to_users(to_users(&["ann"], "two")).await.unwrap().into_inner().message_id;
    run.received(3).await;
    let mut cursors = run.client.cursors();
    let not_hers = History::Group("not-hers".into()).cursor(&cursors[0].epoch, "1-0");
    cursors.insert(0, not_hers);
    run.client.ack(cursors).await.unwrap();
    assert_eq!(status(&mut c, &two, pb::Audience::User, "").await, delivered);

    // Ann leaves the group after one more of its messages: the open stream tells the
    // client (Left), which forgets the group's cursor; the inbox is acknowledged.
    c.push_to_group(to_group("team", "g2")).await.unwrap();
    run.received(4).await;
    c.leave_group(pb::LeaveGroupRequest { group_id: "team".into(), user_ids: vec!["ann".into()] }).await.unwrap();
    let three = c.push_to_users(to_users(&["ann"], "three")).await.unwrap().into_inner().message_id;
    run.received(5).await;
    eventually(WAIT, "the client is told ann left the group", async || {
        let left = run.summary().contains(&"left group:team".to_string());
        (left && run.client.cursors().iter().all(|c| c.group_id != "team"), run.summary())
    })
    .await;
    run.client.ack_all().await.unwrap();
    assert_eq!(status(&mut c, &three, pb::Audience::User, "").await, delivered);
}

/// A token refresh while the client is far behind its stream (a backlog it has not
/// read, which the inbox no longer holds): the new stream, opened with the client's
/// cursors, reports a gap that the old stream does not have. The client drops the new
/// stream, not the old one, and gets the whole backlog once, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_stream_that_cannot_continue_is_dropped_and_the_old_one_goes_on() {
    let (app, _creds) = secure(&["--inbox-max-len", "10"]).await;
    let tokens = Tokens::default();
    // Refreshed 2 s after it came (5 s ahead of its end).
    let (client, mut events) = Client::builder([app.gateway.url()])
        .device("phone")
        .token_source(tokens.source("ann", 7))
        .backoff(ms(20), ms(200))
        .connect()
        .unwrap();
    eventually(WAIT, "the client follows its histories", async || {
        let _ = tokio::time::timeout(ms(20), events.recv()).await;
        client.cursors().len() == 2
    })
    .await;
    // A backlog in many items, unread; the inbox keeps only its last entries (10, or
    // up to a node of Redis's stream more: trimming with ~).
    let mut c = authorized(app.gateway.addr, "k-admin").await;
    let payload = vec![7u8; 4 * 1024];
    let mut sent = Vec::new();
    for k in 0..250 {
        let req = pb::PushToUsersRequest { payload: payload.clone().into(), ..to_users(&["ann"], &format!("m{k}")) };
        sent.push((History::Inbox, c.push_to_users(req).await.unwrap().into_inner().message_id));
    }
    // Past the refresh time: the refresh opens its stream as soon as the client reads
    // again (an app that takes a moment per message), with the client still at the
    // start of the backlog.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let run = Run::paced(client, events, ms(2));
    run.received_all(&sent).await;
    eventually(WAIT, "a refresh was tried", async || (tokens.calls() >= 2, tokens.calls())).await;
    assert_exactly_once_in_order(&sent, &run.messages());
    assert!(!run.summary().iter().any(|e| e.starts_with("gap")), "{:?}", run.summary());
}

/// A refresh whose fresh token the gateway refuses (a token of another user:
/// PERMISSION_DENIED) leaves the stream alone and is tried again; it does not stop the
/// client. Once the source gives a good token again, the refresh goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_fails_leaves_the_stream_alone() {
    let (app, _creds) = secure(&[]).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let source = {
        let calls = calls.clone();
        move || {
            // The second and third tokens are bob's.
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let sub = if n == 2 || n == 3 { "bob" } else { "ann" };
            let token = device_token_expiring_at(sub, unix_now() + 8);
            async move { Ok::<_, Infallible>(token) }
        }
    };
    let (client, events) = Client::builder([app.gateway.url()])
        .user("ann")
        .device("phone")
        .token_source(source)
        .backoff(ms(20), ms(200))
        .connect()
        .unwrap();
    let run = Run::start(client, events);
    run.attached(2).await;
    eventually(WAIT, "refreshed after two refused tokens", async || {
        let n = calls.load(Ordering::SeqCst);
        (n >= 5, (n, run.summary()))
    })
    .await;
    let mut c = authorized(app.gateway.addr, "k-admin").await;
    c.push_to_users(to_users(&["ann"], "still-here")).await.unwrap();
    eventually(WAIT, "ann still receives", async || {
        (run.summary().contains(&"message still-here".into()), run.summary())
    })
    .await;
    assert_eq!(run.stopped(), None, "{:?}", run.summary());
    assert_eq!((run.connected(), run.disconnects()), (vec![0], vec![]), "{:?}", run.summary());
}

/// A gateway that keeps one stream per device: the stream a refresh opens replaces the
/// old one, which ends ABORTED while its successor opens. ABORTED stops the client,
/// whatever the successor does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_aborted_while_its_successor_opens_stops_the_client() {
    let (app, _creds) = secure(&["--max-streams-per-device", "1"]).await;
    let tokens = Tokens::default();
    let (client, events) = Client::builder([app.gateway.url()])
        .device("phone")
        .token_source(tokens.source("ann", 7))
        .backoff(ms(20), ms(200))
        .connect()
        .unwrap();
    let run = Run::start(client, events);
    run.ended().await;
    assert_eq!(run.stopped(), Some((Code::Aborted, None)), "{:?}", run.summary());
    assert_eq!((run.connected(), tokens.calls()), (vec![0], 2), "one refresh, no reconnect");
}

/// Every inbox key of the user is lost (the history starts over in a new epoch).
fn lose_the_inbox(app: &App) {
    for key in app.redis.keys().into_iter().filter(|k| k.contains("inbox")) {
        let _: i64 = app.redis.query(redis::cmd("DEL").arg(&key));
    }
}

/// The inbox starts over twice, each time while the client is away (a Disconnect with
/// leave to come back): each resume reports a gap in a new epoch, with no message in
/// between. Both are told: the second is another loss, not the first told again.
#[tokio::test]
async fn a_second_gap_after_a_reconnect_is_told_too() {
    let (app, _creds) = secure(&[]).await;
    let mut c = authorized(app.gateway.addr, "k-admin").await;
    let (client, events) = Client::builder([app.gateway.url()])
        .device("phone")
        .token_source(Tokens::default().source("ann", 600))
        .backoff(ms(20), ms(200))
        .connect()
        .unwrap();
    let run = Run::start(client, events);
    run.attached(2).await;
    c.push_to_users(to_users(&["ann"], "a")).await.unwrap();
    run.received(1).await;
    let disconnect = pb::DisconnectRequest {
        user_id: "ann".into(),
        device_id: String::new(),
        reason: "test".into(),
        reconnect: true,
    };
    let gaps = || run.summary().iter().filter(|e| *e == "gap inbox").count();
    for n in 1..=2 {
        let epoch = run.client.cursors()[0].epoch.clone();
        lose_the_inbox(&app);
        c.disconnect(disconnect.clone()).await.unwrap();
        eventually(WAIT, &format!("gap {n} is told"), async || (gaps() == n, run.summary())).await;
        assert_ne!(run.client.cursors()[0].epoch, epoch, "a new epoch");
    }
    assert_eq!(run.messages().len(), 1, "{:?}", run.summary());
}

/// A fresh client follows the inbox from now (a message is already there): it has
/// handed out nothing, so an ack acknowledges nothing, and the message stays pending.
/// Once a message is handed out, acks carry it.
#[tokio::test]
async fn only_messages_handed_out_are_acknowledged() {
    let (app, _creds) = secure(&[]).await;
    let mut c = authorized(app.gateway.addr, "k-admin").await;
    let before = c.push_to_users(to_users(&["ann"], "before")).await.unwrap().into_inner().message_id;
    let (client, events) = Client::builder([app.gateway.url()])
        .device("phone")
        .token_source(Tokens::default().source("ann", 600))
        .connect()
        .unwrap();
    let run = Run::start(client, events);
    run.attached(2).await;
    let status = async |c: &mut AuthorizedClient, id: &str| {
        let req = pb::GetDeliveryStatusRequest {
            message_id: id.into(),
            audience: pb::Audience::User as i32,
            group_id: String::new(),
            user_ids: vec!["ann".into()],
        };
        c.get_delivery_status(req).await.unwrap().into_inner().deliveries.remove(0).state()
    };
    assert_eq!(run.client.delivered(), []);
    run.client.ack_all().await.unwrap();
    assert_eq!(status(&mut c, &before).await, DeliveryState::Pending, "a position from a state is not acked");

    let one = c.push_to_users(to_users(&["ann"], "one")).await.unwrap().into_inner().message_id;
    run.received(1).await;
    run.client.ack_all().await.unwrap();
    assert_eq!(status(&mut c, &one).await, DeliveryState::Delivered);
}

/// The gateway refuses an ack's cursors for groups that are not the user's (a group
/// left while connected), naming one per answer: with two of them, the client leaves
/// out each in turn and acknowledges the rest.
#[tokio::test]
async fn acks_leave_out_every_refused_group() {
    let (app, _creds) = secure(&[]).await;
    let mut c = authorized(app.gateway.addr, "k-admin").await;
    let (client, events) = Client::builder([app.gateway.url()])
        .device("phone")
        .token_source(Tokens::default().source("ann", 600))
        .connect()
        .unwrap();
    let run = Run::start(client, events);
    run.attached(2).await;
    let one = c.push_to_users(to_users(&["ann"], "one")).await.unwrap().into_inner().message_id;
    run.received(1).await;
    let mut cursors = run.client.delivered();
    for g in ["not-hers", "nor-this"] {
        cursors.push(History::Group(g.into()).cursor(&cursors[0].epoch, "1-0"));
    }
    run.client.ack(cursors.clone()).await.unwrap();
    let req = pb::GetDeliveryStatusRequest {
        message_id: one,
        audience: pb::Audience::User as i32,
        group_id: String::new(),
        user_ids: vec!["ann".into()],
    };
    let d = c.get_delivery_status(req).await.unwrap().into_inner().deliveries.remove(0);
    assert_eq!((d.state(), d.device_ids), (DeliveryState::Delivered, vec!["phone".to_string()]));
    run.client.ack(cursors).await.unwrap(); // settled, refused ones included: nothing sent
}
