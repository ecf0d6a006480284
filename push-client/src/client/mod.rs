//! [`Client`]: the long-running device client. [`Events`] drives it: each
//! [`Events::recv`] hands out what came, and opens, reconnects and refreshes as needed.
//!
//! This file owns the public handle and events, the state they share, and the event
//! loop (wait for what comes next in the current phase, then handle it). What the loop
//! hands off is in files of its own, each with its tests, so that each concern reads
//! (and is reviewed) on its own: `builder.rs` (configuration and `connect`), `open.rs`
//! (gateways and opening a stream), `handout.rs` (items into events and positions),
//! `refresh.rs` (the make-before-break token refresh), `ending.rs` (what the end of a
//! stream asks for: retry, reauthenticate or stop), `ack.rs` (acks) and `testing.rs`
//! (the fixtures the tests share).

mod ack;
mod builder;
mod ending;
mod handout;
mod open;
mod refresh;
#[cfg(test)]
mod testing;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use push_proto::{
    push::v1::{Cursor, HistoryState, Message},
    wire::SubscribeResponse,
};
use tokio::{sync::watch, time::Instant};
use tonic::{Status, transport::Channel};

pub use self::{builder::Builder, open::Gateway};
use self::{
    open::{Attempt, Opened, Opening, Target, failure_status, opening},
    refresh::Refresh,
};
use crate::{
    backoff::Backoff,
    cursors::Cursors,
    history::History,
    subscription::Subscription,
    token::{BoxError, Token, TokenSource},
};

/// What happened, in order. See the crate docs for what each status means and what the
/// client does about it.
#[derive(Debug)]
pub enum Event {
    /// A stream is open on `gateway` (its index in [`Client::builder`]'s list). Its
    /// messages follow: first what was missed, then live ones.
    Connected { gateway: usize },
    /// A new message, in push order within its history (`audience` and `group_id`, or
    /// [`History::of`]). Never one seen before.
    Message(Message),
    /// Messages of this history were lost before the ones that follow (trimmed beyond
    /// the retention, or the history started over). Resync it from your backend, and
    /// persist cursors only once it is resynced. Told once per gap: a GAP state that is
    /// the same (epoch and point) as the last one told for the history is not told
    /// again; any other is, across reconnects too.
    Gap(History),
    /// The user left this group: nothing more comes from it; its cursor is forgotten.
    /// Told live when its user leaves the group (after what was pushed to it before the
    /// leave), or when the client resumes with a cursor for a group left while away.
    Left(History),
    /// The stream ended or could not be opened; the client tries again in `retry_in`
    /// (zero when it only needs a fresh token).
    Disconnected { status: Status, retry_in: Duration },
    /// The client gave up and will not reconnect; [`Events::recv`] returns `None` from
    /// now on. `resync` names the history a strict resume could not honour
    /// (FAILED_PRECONDITION): resync it, then build a new client with a fresh cursor
    /// for it ([`crate::Cursors::set`]).
    Stopped { status: Status, resync: Option<History> },
}

/// What never changes after `connect`.
struct Config {
    targets: Vec<Target>,
    user: String,
    device: String,
    strict: bool,
    source: Option<Arc<dyn TokenSource>>,
    token_timeout: Duration,
    open_timeout: Duration,
}

impl Config {
    /// A token from the source, within the token timeout.
    async fn fetch_token(&self, source: &dyn TokenSource) -> Result<String, BoxError> {
        match tokio::time::timeout(self.token_timeout, source.token()).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {:?}", self.token_timeout).into()),
        }
    }
}

/// What the handle and the events share.
struct Shared {
    config: Config,
    /// Positions of what [`Events::recv`] has handed out: what the app has, hence what
    /// it may persist and acknowledge, and where a new stream resumes. A std mutex:
    /// held for a few map operations, never across an await.
    cursors: Mutex<Cursors>,
    /// Per history, the epoch and id of the last message [`Events::recv`] handed out:
    /// what [`Client::ack_all`] acknowledges. Positions that come from states only (a
    /// history followed from now, a gap, a join) are not here: the app has not handled
    /// anything there. Locked after `cursors` when both are.
    handed: Mutex<Cursors>,
    /// The current (or last) stream's channel and token, for acks.
    conn: Mutex<Option<Conn>>,
    /// What was acknowledged, so acks never go back. A tokio mutex: held across the Ack
    /// call, so two acks cannot cross.
    acked: tokio::sync::Mutex<Cursors>,
    /// Set by [`Client::close`]. Kept here so it lives as long as the events do.
    closed: watch::Sender<bool>,
}

#[derive(Clone)]
struct Conn {
    channel: Channel,
    token: Option<Arc<str>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The device client's handle: cursors to persist, acks, close. Cheap to clone.
///
/// ```no_run
/// use std::time::Duration;
/// use push_client::{Client, Event};
///
/// # async fn fetch_token() -> Result<String, std::io::Error> { Ok(String::new()) }
/// # fn save(_: Vec<push_proto::push::v1::Cursor>) {}
/// # async fn run(saved: Vec<push_proto::push::v1::Cursor>) -> Result<(), push_client::Error> {
/// let (client, mut events) = Client::builder(["http://gw-1:50051", "http://gw-2:50051"])
///     .device("phone")
///     .token_source(|| async { fetch_token().await })
///     .cursors(saved)
///     .backoff(Duration::from_millis(500), Duration::from_secs(30))
///     .connect()?;
/// while let Some(event) = events.recv().await {
///     match event {
///         Event::Message(m) => println!("{}: {:?}", m.topic, m.payload),
///         Event::Gap(history) => println!("resync {history} from the backend"),
///         Event::Stopped { status, .. } => eprintln!("stopped: {status:?}"),
///         _ => {}
///     }
///     // After a batch: what was handled (gaps resynced included) is persisted and
///     // acknowledged. An ack that fails (not connected yet, a gateway going away) is
///     // not the end of the app: the next one acknowledges it too.
///     if events.buffered() == 0 {
///         save(client.cursors());
///         if let Err(e) = client.ack_all().await {
///             eprintln!("ack: {e}");
///         }
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Where the device stands, to resume from: per history, the epoch of the last
    /// state and the last message [`Events::recv`] handed out (messages received but
    /// not handed out yet are not counted). Persist them after handling (a gap only
    /// once that history is resynced: a cursor saved past an unhandled gap hides the
    /// loss after a restart), and pass them to [`Builder::cursors`] next time.
    pub fn cursors(&self) -> Vec<Cursor> {
        lock(&self.shared.cursors).cursors()
    }

    /// What the app was handed: per history, the epoch and id of the last message
    /// [`Events::recv`] returned. This is what [`Client::ack_all`] acknowledges; unlike
    /// [`Client::cursors`] it holds no position that only a state gave (a history
    /// followed from now, a gap's point, a join).
    pub fn delivered(&self) -> Vec<Cursor> {
        lock(&self.shared.handed).cursors()
    }

    /// Stops the client: [`Events::recv`] returns `None` from now on and the stream is
    /// closed. Messages received but not handed out yet are dropped (they are not in
    /// the cursors, so a later resume brings them again).
    pub fn close(&self) {
        self.shared.closed.send_replace(true);
    }
}

enum Phase {
    /// About to open a stream on `next_gateway`.
    Start,
    /// Backing off until then.
    Waiting(Instant),
    Opening {
        gateway: usize,
        attempt: Opening,
    },
    Open(Box<Live>),
    Stopped,
}

/// An open stream.
struct Live {
    sub: Subscription,
    gateway: usize,
    channel: Channel,
    since: Instant,
    refresh: Refresh,
    /// Refreshes in a row that failed, or whose stream was dropped for not continuing
    /// from where this one got to.
    failed_refreshes: u32,
    /// How the stream ended while its successor was being opened (it is not read any
    /// more; the successor decides whether the client reconnects).
    ended: Option<Status>,
}

/// What one wait of [`Events::recv`] produced.
enum Woke {
    Closed,
    Item(Result<Option<SubscribeResponse>, Status>),
    RefreshDue,
    Refreshed(Attempt),
    SuccessorItem(Result<Option<SubscribeResponse>, Status>),
    SuccessorLate,
    Opened(Attempt),
    Waited,
}

/// The client's events, and what drives it: every [`Events::recv`] hands out what the
/// gateway sent (deduplicated, cursors updated) and, between items, opens streams,
/// backs off, reconnects and refreshes the token. Keep one task awaiting it. If it is
/// not awaited, nothing is read: the gateway eventually ends the stream as too slow
/// (RESOURCE_EXHAUSTED), and the client resumes when read again.
pub struct Events {
    shared: Arc<Shared>,
    closed: watch::Receiver<bool>,
    phase: Phase,
    /// The current item, being handed out: states first, then messages.
    states: std::vec::IntoIter<HistoryState>,
    messages: std::vec::IntoIter<Message>,
    /// Items to hand out after it (a refreshed stream's first ones).
    queued: VecDeque<SubscribeResponse>,
    backoff: Backoff,
    /// For tokens that come (nearly) expired, and refreshes that get the token in use
    /// back.
    token_backoff: Backoff,
    rng: fastrand::Rng,
    next_gateway: usize,
    /// The token of the current stream (or of the next attempt).
    token: Option<Token>,
    /// Per history, the last gap told (epoch and point): the same one again (the
    /// gateway may send it twice while it replays, or again after a reconnect) is not
    /// told twice; any other is.
    gaps: BTreeMap<History, (String, String)>,
}

impl Events {
    /// The next event; `None` once the client stopped ([`Event::Stopped`]) or was
    /// closed.
    ///
    /// Cancel-safe: in a `select!`, a `recv` dropped before it returned loses nothing
    /// (an attempt in progress goes on at the next call).
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            if *self.closed.borrow() {
                self.stop_quietly();
                return None;
            }
            if let Some(e) = self.buffered_event() {
                return Some(e);
            }
            if matches!(self.phase, Phase::Stopped) {
                return None;
            }
            let woke = self.wait().await;
            if let Some(e) = self.handle(woke) {
                return Some(e);
            }
        }
    }

    /// Messages received and not handed out yet (some may turn out duplicates): 0 means
    /// the next [`Events::recv`] waits for the gateway, so a batch was just handled.
    pub fn buffered(&self) -> usize {
        self.messages.len() + self.queued.iter().map(|i| i.messages.len()).sum::<usize>()
    }

    /// Waits for whatever comes next in the current phase.
    async fn wait(&mut self) -> Woke {
        let closed = &mut self.closed;
        match &mut self.phase {
            Phase::Start => {
                let gateway = self.next_gateway;
                let fetch = self.token.as_ref().is_none_or(|t| t.stale(Instant::now()));
                let attempt = opening(&self.shared, gateway, None, self.token.clone(), fetch, false);
                self.phase = Phase::Opening { gateway, attempt };
                Woke::Waited
            }
            Phase::Waiting(until) => tokio::select! {
                _ = closed.changed() => Woke::Closed,
                _ = tokio::time::sleep_until(*until) => Woke::Waited,
            },
            Phase::Opening { attempt, .. } => tokio::select! {
                _ = closed.changed() => Woke::Closed,
                a = attempt => Woke::Opened(a),
            },
            Phase::Open(live) => {
                let Live { sub, refresh, ended, .. } = &mut **live;
                let (due, late) = match refresh {
                    Refresh::At(at) => (*at, None),
                    Refresh::Opening(_) => (None, None),
                    Refresh::Judging(next) => (None, Some(next.deadline)),
                };
                let successor = async {
                    match refresh {
                        Refresh::Opening(attempt) => Woke::Refreshed(attempt.await),
                        Refresh::Judging(next) => Woke::SuccessorItem(next.sub.next().await),
                        Refresh::At(_) => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = closed.changed() => Woke::Closed,
                    item = sub.next(), if ended.is_none() => Woke::Item(item),
                    w = successor => w,
                    _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => Woke::RefreshDue,
                    _ = tokio::time::sleep_until(late.unwrap_or_else(Instant::now)), if late.is_some() => Woke::SuccessorLate,
                }
            }
            Phase::Stopped => Woke::Closed,
        }
    }

    fn handle(&mut self, woke: Woke) -> Option<Event> {
        match woke {
            Woke::Closed => None,
            Woke::Waited => {
                if matches!(self.phase, Phase::Waiting(_)) {
                    self.phase = Phase::Start;
                }
                None
            }
            Woke::Opened(a) => self.opened(a),
            Woke::Item(Ok(Some(item))) => {
                self.states = item.states.into_iter();
                self.messages = item.messages.into_iter();
                None
            }
            Woke::Item(Ok(None)) => self.ended(Status::unavailable("the gateway ended the stream without a status")),
            Woke::Item(Err(status)) => self.ended(status),
            Woke::RefreshDue => {
                let Phase::Open(live) = &mut self.phase else { return None };
                tracing::debug!(gateway = live.gateway, "refreshing the token: opening the next stream");
                let attempt =
                    opening(&self.shared, live.gateway, Some(live.channel.clone()), self.token.clone(), true, true);
                live.refresh = Refresh::Opening(attempt);
                None
            }
            Woke::Refreshed(a) => self.refreshed(a),
            Woke::SuccessorItem(item) => self.judge(item),
            Woke::SuccessorLate => self.drop_successor("it did not state every history in time"),
        }
    }

    /// A stream opened, or could not be.
    fn opened(&mut self, a: Attempt) -> Option<Event> {
        let Phase::Opening { gateway, .. } = self.phase else { return None };
        self.adopt(a.token);
        match a.outcome {
            Ok(Opened { sub, channel, .. }) => {
                tracing::debug!(gateway, "stream open");
                self.set_conn(&channel);
                let refresh = Refresh::At(self.token.as_ref().and_then(|t| t.refresh_at));
                let live =
                    Live { sub, gateway, channel, since: Instant::now(), refresh, failed_refreshes: 0, ended: None };
                self.phase = Phase::Open(Box::new(live));
                Some(Event::Connected { gateway })
            }
            Err(f) => Some(self.failed(gateway, None, failure_status(f))),
        }
    }

    fn set_conn(&self, channel: &Channel) {
        let token = self.token.as_ref().map(|t| t.value.clone());
        *lock(&self.shared.conn) = Some(Conn { channel: channel.clone(), token });
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match &self.phase {
            Phase::Start => "start",
            Phase::Waiting(_) => "waiting",
            Phase::Opening { .. } => "opening",
            Phase::Open(_) => "open",
            Phase::Stopped => "stopped",
        };
        f.debug_struct("Events").field("phase", &phase).field("buffered", &self.buffered()).finish()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.shared.config;
        f.debug_struct("Client").field("user", &c.user).field("device", &c.device).finish()
    }
}

/// Apps run the client in tasks of their own: the handle, the events and the future of
/// `recv` must be `Send`.
#[allow(dead_code)]
fn assert_send(client: Client, mut events: Events) {
    fn send<T: Send>(_: &T) {}
    fn sync<T: Sync>(_: &T) {}
    send(&client);
    sync(&client);
    send(&client.ack_all());
    send(&events.recv());
    send(&events);
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    /// Nothing listens: every attempt is UNAVAILABLE, reported with its wait, and the
    /// client moves through its gateways until closed.
    #[tokio::test]
    async fn an_unreachable_gateway_is_retried_in_turn_until_closed() {
        let (client, mut events) = Client::builder(["http://127.0.0.1:1", "http://127.0.0.1:2"])
            .device("d")
            .backoff(Duration::from_millis(1), Duration::from_millis(5))
            .connect()
            .unwrap();
        for n in 0..4 {
            match events.recv().await {
                Some(Event::Disconnected { status, retry_in }) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    assert!(status.message().contains(&format!("127.0.0.1:{}", n % 2 + 1)), "{status:?}");
                    assert!(retry_in <= Duration::from_millis(5));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(client.ack_all().await, Ok(())), "nothing to acknowledge");
        client.close();
        assert!(events.recv().await.is_none());
        assert!(events.recv().await.is_none());
    }
}
