//! [`Client`]: the long-running device client. [`Events`] drives it: each
//! [`Events::recv`] hands out what came, and opens, reconnects and refreshes as needed.
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use push_proto::push::v1::{
    AckRequest, Cursor, HistoryState, Message, SubscribeRequest, push_gateway_client::PushGatewayClient,
};
use tokio::{sync::watch, time::Instant};
use tonic::{
    Code, Request, Status,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;

use crate::{
    Error,
    backoff::Backoff,
    cursors::{Change, Cursors},
    history::History,
    subscription::{Subscription, bearer},
    token::{BoxError, Fixed, Token, TokenSource},
};

/// Where a gateway is: a URL, a configured [`Endpoint`] (TLS, window sizes...), or a
/// [`Channel`] you already have (shared by many clients).
///
/// For a URL or an endpoint each attempt opens a connection of its own, so a device
/// whose replica went away is not stuck on a dead connection, and a load balancer in
/// front of the replicas gets to pick again. A channel is used as it is. A URL is plain
/// `http://`, or `https://` with the roots of whichever `tls-*-roots` feature of tonic
/// the app enables (or give an [`Endpoint`] with its own `tls_config`). A URL gets
/// TCP_NODELAY, a 5 s connect timeout and HTTP/2 keep-alive pings every 30 s (10 s to
/// answer), so a silently dead connection is noticed; an endpoint is used as
/// configured (set the same on it).
#[derive(Clone, Debug)]
pub enum Gateway {
    Url(String),
    /// Boxed: an endpoint is large, and gateways are moved around only when building.
    Endpoint(Box<Endpoint>),
    Channel(Channel),
}

impl From<&str> for Gateway {
    fn from(url: &str) -> Self {
        Gateway::Url(url.to_owned())
    }
}

impl From<String> for Gateway {
    fn from(url: String) -> Self {
        Gateway::Url(url)
    }
}

impl From<Endpoint> for Gateway {
    fn from(e: Endpoint) -> Self {
        Gateway::Endpoint(Box::new(e))
    }
}

impl From<Channel> for Gateway {
    fn from(c: Channel) -> Self {
        Gateway::Channel(c)
    }
}

/// A gateway ready to connect to.
enum Target {
    Endpoint(Box<Endpoint>),
    Channel(Channel),
}

impl Target {
    fn resolve(g: Gateway) -> Result<Target, Error> {
        Ok(match g {
            Gateway::Url(url) => match Endpoint::from_shared(url.clone()) {
                Ok(e) => Target::Endpoint(Box::new(
                    e.connect_timeout(Duration::from_secs(5))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(30))
                        .keep_alive_timeout(Duration::from_secs(10)),
                )),
                Err(source) => return Err(Error::BadUrl { url, source }),
            },
            Gateway::Endpoint(e) => Target::Endpoint(e),
            Gateway::Channel(c) => Target::Channel(c),
        })
    }

    async fn channel(&self) -> Result<Channel, Status> {
        match self {
            Target::Endpoint(e) => e
                .connect()
                .await
                .map_err(|err| Status::unavailable(format!("cannot connect to {}: {}", e.uri(), error_chain(&err)))),
            Target::Channel(c) => Ok(c.clone()),
        }
    }
}

/// An error and its causes, on one line ("transport error: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

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
    /// the retention, or the history started over). Resync it from your backend. Told
    /// once per gap: the gateway may report one gap twice before the next message of
    /// the history (a replay that finds more trimmed, a reconnect in between).
    Gap(History),
    /// The user left this group: nothing more comes from it; its cursor is forgotten.
    /// Told when the client resumes with a cursor for a group its user has left (while
    /// it was away, or while it was connected: an open stream just stops receiving the
    /// group, and acks leave it out).
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

/// How to connect: see [`Client::builder`].
pub struct Builder {
    gateways: Vec<Gateway>,
    user: String,
    device: String,
    source: Option<Arc<dyn TokenSource>>,
    cursors: Vec<Cursor>,
    strict: bool,
    backoff: (Duration, Duration),
}

impl Builder {
    /// The user. With a device token it may be left unset (the token's user); it must
    /// not name another. An API key that may subscribe for anyone needs it.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// The device (required): its presence session and the owner of its acks.
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = device.into();
        self
    }

    /// Where fresh device tokens come from: called before the first attempt, again
    /// ahead of each token's expiry (its `exp`, read from the JWT), and after the
    /// gateway refused one.
    pub fn token_source(mut self, source: impl TokenSource) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// One token for good (an API key, or a device token the app replaces by building
    /// a new client). Without this or a token source, no credential is sent.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.source = Some(Arc::new(Fixed(token.into().into())));
        self
    }

    /// Positions saved from an earlier run ([`Client::cursors`]); histories without one
    /// start from the device's acknowledged position, or from now.
    pub fn cursors(mut self, saved: impl IntoIterator<Item = Cursor>) -> Self {
        self.cursors = saved.into_iter().collect();
        self
    }

    /// Stop with [`Event::Stopped`] naming the history (`resync`) instead of resuming
    /// after a gap: for apps that must resync before they show anything newer.
    pub fn strict_resume(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// The waits between attempts: the n-th is random in `[0, min(max, initial × 2ⁿ)]`,
    /// and starts over after a stream that stayed up at least `max`. Default 500 ms, 30 s.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = (initial, max);
        self
    }

    /// The client and its events. Nothing is sent until [`Events::recv`] is awaited.
    pub fn connect(self) -> Result<(Client, Events), Error> {
        if self.gateways.is_empty() {
            return Err(Error::NoGateway);
        }
        if self.device.is_empty() {
            return Err(Error::NoDevice);
        }
        let targets = self.gateways.into_iter().map(Target::resolve).collect::<Result<Vec<_>, _>>()?;
        let cursors = Cursors::from_saved(self.cursors)?;
        let (closed, closed_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config: Config { targets, user: self.user, device: self.device, strict: self.strict, source: self.source },
            cursors: Mutex::new(cursors),
            conn: Mutex::new(None),
            acked: tokio::sync::Mutex::new(Cursors::new()),
            closed,
        });
        let (initial, max) = self.backoff;
        let events = Events {
            shared: shared.clone(),
            closed: closed_rx,
            phase: Phase::Start,
            states: Vec::new().into_iter(),
            messages: Vec::new().into_iter(),
            backoff: Backoff::new(initial, max),
            refresh_backoff: Backoff::new(initial.max(Duration::from_millis(100)), max),
            next_gateway: 0,
            token: None,
            refusals: 0,
            gapped: Vec::new(),
        };
        Ok((Client { shared }, events))
    }
}

/// What never changes after `connect`.
struct Config {
    targets: Vec<Target>,
    user: String,
    device: String,
    strict: bool,
    source: Option<Arc<dyn TokenSource>>,
}

/// What the handle and the events share.
struct Shared {
    config: Config,
    /// Positions of what [`Events::recv`] has handed out: what the app has, hence what
    /// it may persist and acknowledge, and where a new stream resumes. A std mutex:
    /// held for a few map operations, never across an await.
    cursors: Mutex<Cursors>,
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
///     // After a batch: what was handled is persisted and acknowledged.
///     if events.buffered() == 0 {
///         save(client.cursors());
///         client.ack_all().await?;
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

/// Most cursors in one Ack (the gateway takes the inbox, the broadcast history and
/// every group: 1,002 by default).
const MAX_ACK_CURSORS: usize = 1000;
/// How long an Ack may take.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// A client of `gateways` (one or more; it starts with the first and moves to the
    /// next at each reconnect). Then `.device(..)`, a token, and `.connect()`.
    pub fn builder<G: Into<Gateway>>(gateways: impl IntoIterator<Item = G>) -> Builder {
        Builder {
            gateways: gateways.into_iter().map(Into::into).collect(),
            user: String::new(),
            device: String::new(),
            source: None,
            cursors: Vec::new(),
            strict: false,
            backoff: (Duration::from_millis(500), Duration::from_secs(30)),
        }
    }

    /// Where the device stands: per history, the epoch and the last message
    /// [`Events::recv`] handed out (messages received but not handed out yet are not
    /// counted). Persist them after handling, and pass them to
    /// [`Builder::cursors`] next time.
    pub fn cursors(&self) -> Vec<Cursor> {
        lock(&self.shared.cursors).cursors()
    }

    /// Acknowledges everything handed out so far ([`Client::cursors`]).
    pub async fn ack_all(&self) -> Result<(), Error> {
        let cursors = self.cursors();
        self.ack(cursors).await
    }

    /// Acknowledges `cursors` (typically a snapshot of [`Client::cursors`] taken after
    /// handling): with the device's token, on the current (or last) stream's gateway.
    /// Only what is after the last acknowledged position of each history is sent, so
    /// acks never go back; with nothing new, nothing is sent. A cursor the gateway
    /// refuses because the user is no longer in that group (left while this client was
    /// connected: the gateway tells an open stream nothing, the next resume brings
    /// [`Event::Left`]) is left out and not sent again; the others are acknowledged.
    pub async fn ack(&self, cursors: impl IntoIterator<Item = Cursor>) -> Result<(), Error> {
        let wanted = Cursors::from_saved(cursors)?;
        let mut acked = self.shared.acked.lock().await;
        let forward = wanted.after(&acked);
        if forward.is_empty() {
            return Ok(());
        }
        let conn = lock(&self.shared.conn).clone().ok_or(Error::NotConnected)?;
        for chunk in forward.chunks(MAX_ACK_CURSORS) {
            let sent = self.send_ack(conn.clone(), chunk.to_vec()).await?;
            acked.advance(&sent);
        }
        Ok(())
    }

    /// Sends one Ack; returns the cursors now settled: acknowledged, or refused as not
    /// the user's to acknowledge (not to be sent again).
    async fn send_ack(&self, mut conn: Conn, chunk: Vec<Cursor>) -> Result<Vec<Cursor>, Error> {
        let mut cursors = chunk.clone();
        let (mut refreshed, mut pruned) = (false, false);
        while !cursors.is_empty() {
            let status = match self.ack_once(&conn, cursors.clone()).await {
                Ok(()) => break,
                Err(s) => s,
            };
            match status.code() {
                Code::Unauthenticated if !refreshed => {
                    let Some(source) = self.shared.config.source.clone() else { return Err(status.into()) };
                    let token: Arc<str> = source.token().await.map_err(Error::Token)?.into();
                    conn.token = Some(token.clone());
                    if let Some(c) = lock(&self.shared.conn).as_mut() {
                        c.token = Some(token);
                    }
                    refreshed = true;
                }
                Code::InvalidArgument if !pruned => {
                    // A group the user left while this stream was open: the gateway tells
                    // an open stream nothing (the next resume brings CONTINUITY_LEFT) and
                    // refuses acks for it. The other histories are acknowledged.
                    let refused = refused_cursors(&status);
                    if refused.is_empty() {
                        return Err(status.into());
                    }
                    tracing::debug!(?refused, "the gateway refused acks for histories the user no longer reads");
                    let mut i = 0;
                    cursors.retain(|_| {
                        i += 1;
                        !refused.contains(&(i - 1))
                    });
                    pruned = true;
                }
                _ => return Err(status.into()),
            }
        }
        Ok(chunk)
    }

    async fn ack_once(&self, conn: &Conn, cursors: Vec<Cursor>) -> Result<(), Status> {
        let config = &self.shared.config;
        let mut req =
            Request::new(AckRequest { user_id: config.user.clone(), device_id: config.device.clone(), cursors });
        if let Some(t) = &conn.token {
            req.metadata_mut().insert("authorization", bearer(t)?);
        }
        req.set_timeout(ACK_TIMEOUT);
        let mut client = PushGatewayClient::new(conn.channel.clone());
        match tokio::time::timeout(ACK_TIMEOUT, client.ack(req)).await {
            Ok(answer) => answer.map(drop),
            Err(_) => Err(Status::deadline_exceeded("the ack was not answered in time")),
        }
    }

    /// Stops the client: [`Events::recv`] returns `None` from now on and the stream is
    /// closed. Messages received but not handed out yet are dropped (they are not in
    /// the cursors, so a later resume brings them again).
    pub fn close(&self) {
        self.shared.closed.send_replace(true);
    }
}

/// The indexes of the cursors an INVALID_ARGUMENT names (`cursors[i]...`).
fn refused_cursors(status: &Status) -> Vec<usize> {
    let details = status.get_error_details();
    let Some(bad) = details.bad_request() else { return Vec::new() };
    let mut out: Vec<usize> = bad
        .field_violations
        .iter()
        .filter_map(|v| v.field.strip_prefix("cursors[")?.split_once(']')?.0.parse().ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// A stream being opened: a fresh token first when needed, then a connection, then
/// Subscribe with the cursors of that moment.
type Opening = Pin<Box<dyn Future<Output = Attempt> + Send>>;

struct Attempt {
    /// The token it used (fetched or not), kept whatever the outcome so that a retry
    /// does not ask the token source again.
    token: Option<Token>,
    outcome: Result<(Subscription, Channel), Failure>,
}

enum Failure {
    Status(Status),
    /// The token source failed.
    Token(BoxError),
    /// A refresh got the token in use back: there is nothing to refresh to.
    SameToken,
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
    /// How the stream ended while its successor was being opened (it is not read any
    /// more; the successor's outcome decides what happens).
    ended: Option<Status>,
}

enum Refresh {
    /// When to open a stream with a fresh token (`None`: the token does not expire).
    At(Option<Instant>),
    /// Opening it, while the current stream goes on.
    Opening(Opening),
}

/// What one wait of [`Events::recv`] produced.
enum Woke {
    Closed,
    Item(Result<Option<push_proto::wire::SubscribeResponse>, Status>),
    RefreshDue,
    Refreshed(Attempt),
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
    backoff: Backoff,
    /// For refreshes that fail while the stream goes on.
    refresh_backoff: Backoff,
    next_gateway: usize,
    token: Option<Token>,
    /// UNAUTHENTICATED answers in a row: the second, with a fresh token, stops.
    refusals: u8,
    /// Histories told a gap with no message since: a further GAP state of one of them
    /// (the gateway may send a second while it replays, or again after a reconnect) is
    /// the same gap, and is not told twice.
    gapped: Vec<History>,
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
        self.messages.len()
    }

    /// The next event of the current item, updating the cursors as it goes.
    fn buffered_event(&mut self) -> Option<Event> {
        if self.states.len() == 0 && self.messages.len() == 0 {
            return None;
        }
        let mut cursors = lock(&self.shared.cursors);
        for state in self.states.by_ref() {
            match cursors.apply_state(&state) {
                Some(Change::Gap(h)) if !self.gapped.contains(&h) => {
                    self.gapped.push(h.clone());
                    return Some(Event::Gap(h));
                }
                Some(Change::Left(h)) => {
                    self.gapped.retain(|g| *g != h);
                    return Some(Event::Left(h));
                }
                _ => {}
            }
        }
        let m = self.messages.by_ref().find(|m| cursors.apply_message(m))?;
        if !self.gapped.is_empty() {
            self.gapped.retain(|g| g.audience() as i32 != m.audience || g.group_id() != m.group_id);
        }
        Some(Event::Message(m))
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
                let due = match refresh {
                    Refresh::At(at) => *at,
                    Refresh::Opening(_) => None,
                };
                let refreshing = async {
                    match refresh {
                        Refresh::Opening(attempt) => attempt.await,
                        Refresh::At(_) => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = closed.changed() => Woke::Closed,
                    item = sub.next(), if ended.is_none() => Woke::Item(item),
                    a = refreshing => Woke::Refreshed(a),
                    _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => Woke::RefreshDue,
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
        }
    }

    /// A stream opened, or could not be.
    fn opened(&mut self, a: Attempt) -> Option<Event> {
        let Phase::Opening { gateway, .. } = self.phase else { return None };
        self.token = a.token;
        match a.outcome {
            Ok((sub, channel)) => {
                tracing::debug!(gateway, "stream open");
                self.refusals = 0;
                self.set_conn(&channel);
                let refresh = Refresh::At(self.token.as_ref().and_then(|t| t.refresh_at));
                let live = Live { sub, gateway, channel, since: Instant::now(), refresh, ended: None };
                self.phase = Phase::Open(Box::new(live));
                Some(Event::Connected { gateway })
            }
            Err(f) => Some(self.failed(gateway, None, failure_status(f))),
        }
    }

    /// The stream ended with `status`.
    fn ended(&mut self, status: Status) -> Option<Event> {
        let Phase::Open(live) = &mut self.phase else { return None };
        if matches!(live.refresh, Refresh::Opening(_)) {
            // Its successor is being opened: that decides.
            tracing::debug!(?status, "the stream ended while its successor opened");
            live.ended = Some(status);
            return None;
        }
        let (gateway, up) = (live.gateway, live.since.elapsed());
        Some(self.failed(gateway, Some(up), status))
    }

    /// The stream with a fresh token opened (make-before-break: the old one is dropped
    /// now, and the new one's replay of what the old one delivered meanwhile is dropped
    /// as duplicates), or could not be.
    fn refreshed(&mut self, a: Attempt) -> Option<Event> {
        let Phase::Open(live) = &mut self.phase else { return None };
        match a.outcome {
            Ok((sub, channel)) => {
                tracing::debug!(gateway = live.gateway, "token refreshed; stream replaced");
                live.sub = sub;
                live.ended = None;
                live.refresh = Refresh::At(a.token.as_ref().and_then(|t| t.refresh_at));
                self.token = a.token;
                self.refusals = 0;
                self.refresh_backoff.reset();
                self.set_conn(&channel);
                None
            }
            Err(f) => {
                // A fresh token the gateway did not refuse serves the next attempts; a
                // refused one does not replace the one the stream still runs on.
                if let (Failure::Status(s), Some(t)) = (&f, a.token)
                    && s.code() != Code::Unauthenticated
                {
                    self.token = Some(t);
                }
                let status = match (&f, live.ended.take()) {
                    // The old stream is gone too: reconnect as after any end.
                    (Failure::SameToken, Some(ended)) => ended,
                    (_, Some(_)) => failure_status(f),
                    (_, None) => {
                        let status = failure_status(f);
                        if verdict(status.code()) == Verdict::Stop {
                            let gateway = live.gateway;
                            return Some(self.failed(gateway, None, status));
                        }
                        // The stream goes on; try again later (if the token expires
                        // meanwhile, the gateway ends the stream and a reconnect follows).
                        let wait = self.refresh_backoff.next().max(Duration::from_secs(1));
                        tracing::warn!(?status, ?wait, "could not refresh the token; the stream goes on");
                        live.refresh = Refresh::At(Some(Instant::now() + wait));
                        return None;
                    }
                };
                let (gateway, up) = (live.gateway, live.since.elapsed());
                Some(self.failed(gateway, Some(up), status))
            }
        }
    }

    /// What to do after `status` ended (or refused) a stream on `gateway` that had been
    /// up for `up`.
    fn failed(&mut self, gateway: usize, up: Option<Duration>, status: Status) -> Event {
        match verdict(status.code()) {
            Verdict::Stop => self.stop(status),
            Verdict::Reauthenticate => {
                self.refusals += 1;
                if self.refusals >= 2 {
                    return self.stop(status);
                }
                // Once, at once, with a fresh token and on the same gateway.
                if let Some(t) = self.token.as_mut() {
                    t.refused = true;
                }
                self.next_gateway = gateway;
                self.phase = Phase::Start;
                tracing::debug!(?status, "token refused; reconnecting with a fresh one");
                Event::Disconnected { status, retry_in: Duration::ZERO }
            }
            Verdict::Retry => {
                if up.is_some_and(|up| up >= self.backoff.max()) {
                    self.backoff.reset();
                }
                let retry_in = self.backoff.next();
                self.next_gateway = (gateway + 1) % self.shared.config.targets.len();
                self.phase = Phase::Waiting(Instant::now() + retry_in);
                tracing::debug!(?status, ?retry_in, "stream ended; reconnecting");
                Event::Disconnected { status, retry_in }
            }
        }
    }

    fn stop(&mut self, status: Status) -> Event {
        self.phase = Phase::Stopped;
        self.states = Vec::new().into_iter();
        self.messages = Vec::new().into_iter();
        let resync = (status.code() == Code::FailedPrecondition).then(|| resync_history(&status)).flatten();
        tracing::debug!(?status, ?resync, "stopped");
        Event::Stopped { status, resync }
    }

    fn stop_quietly(&mut self) {
        self.phase = Phase::Stopped;
        self.states = Vec::new().into_iter();
        self.messages = Vec::new().into_iter();
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Try again after a backoff, on the next gateway.
    Retry,
    /// Try again at once with a fresh token.
    Reauthenticate,
    /// Give up.
    Stop,
}

/// What a status that ends (or refuses) a stream asks of the device (docs/DELIVERY.md):
/// ABORTED is a stream replaced by a newer one of the same device, PERMISSION_DENIED a
/// ban (or a token of another user), INVALID_ARGUMENT a request that will not get
/// better, FAILED_PRECONDITION a strict resume that cannot be honoured. Everything
/// else (UNAVAILABLE on a drain or a Disconnect with reconnect, RESOURCE_EXHAUSTED for a
/// slow device or too many streams, a lost connection...) passes.
fn verdict(code: Code) -> Verdict {
    match code {
        Code::Aborted | Code::PermissionDenied | Code::InvalidArgument | Code::FailedPrecondition => Verdict::Stop,
        Code::Unauthenticated => Verdict::Reauthenticate,
        _ => Verdict::Retry,
    }
}

fn failure_status(f: Failure) -> Status {
    match f {
        Failure::Status(s) => s,
        Failure::Token(e) => Status::unavailable(format!("the token source failed: {}", error_chain(&*e))),
        Failure::SameToken => Status::unauthenticated("the token source returned the token in use"),
    }
}

/// The history a FAILED_PRECONDITION names (a PreconditionFailure of type CURSOR).
fn resync_history(status: &Status) -> Option<History> {
    let details = status.get_error_details();
    let failure = details.precondition_failure()?;
    failure.violations.iter().find(|v| v.r#type == "CURSOR").and_then(|v| v.subject.parse().ok())
}

/// Opens a stream on `gateway` (on `channel` when given), with the token in use or a
/// fresh one (`fetch`). With `refresh`, a fresh token equal to the one in use ends it
/// early: opening a stream with it would change nothing.
fn opening(
    shared: &Arc<Shared>,
    gateway: usize,
    channel: Option<Channel>,
    current: Option<Token>,
    fetch: bool,
    refresh: bool,
) -> Opening {
    let shared = shared.clone();
    Box::pin(async move {
        let mut token = current.clone();
        if let (true, Some(source)) = (fetch, shared.config.source.as_ref()) {
            match source.token().await {
                Ok(t) if refresh && current.as_ref().is_some_and(|c| *c.value == *t) => {
                    return Attempt { token: current, outcome: Err(Failure::SameToken) };
                }
                Ok(t) => token = Some(Token::new(t)),
                Err(e) => return Attempt { token: current, outcome: Err(Failure::Token(e)) },
            }
        }
        let outcome = open(&shared, gateway, channel, token.as_ref()).await.map_err(Failure::Status);
        Attempt { token, outcome }
    })
}

async fn open(
    shared: &Shared,
    gateway: usize,
    channel: Option<Channel>,
    token: Option<&Token>,
) -> Result<(Subscription, Channel), Status> {
    let channel = match channel {
        Some(c) => c,
        None => shared.config.targets[gateway].channel().await?,
    };
    let config = &shared.config;
    // The cursors of this moment: everything handed out so far (nothing is buffered
    // while a stream opens, except during a refresh, whose overlap is deduplicated).
    let request = SubscribeRequest {
        user_id: config.user.clone(),
        device_id: config.device.clone(),
        cursors: lock(&shared.cursors).cursors(),
        strict_resume: config.strict,
    };
    let sub = Subscription::open(channel.clone(), token.map(|t| &*t.value), request).await?;
    Ok((sub, channel))
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
    use super::*;

    #[test]
    fn statuses_decide_between_retrying_reauthenticating_and_stopping() {
        for code in [Code::Aborted, Code::PermissionDenied, Code::InvalidArgument, Code::FailedPrecondition] {
            assert_eq!(verdict(code), Verdict::Stop, "{code:?}");
        }
        assert_eq!(verdict(Code::Unauthenticated), Verdict::Reauthenticate);
        for code in [Code::Unavailable, Code::ResourceExhausted, Code::DeadlineExceeded, Code::Internal, Code::Unknown]
        {
            assert_eq!(verdict(code), Verdict::Retry, "{code:?}");
        }
    }

    #[test]
    fn a_strict_resume_failure_names_its_history() {
        use tonic_types::{ErrorDetails, StatusExt};
        let details = ErrorDetails::with_precondition_failure_violation("CURSOR", "group:team", "gone");
        let status = Status::with_error_details(Code::FailedPrecondition, "resync", details);
        assert_eq!(resync_history(&status), Some(History::Group("team".into())));
        assert_eq!(resync_history(&Status::failed_precondition("no details")), None);
    }

    #[test]
    fn refused_ack_cursors_are_read_from_the_bad_request() {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut details = ErrorDetails::with_bad_request_violation("cursors[2].group_id", "not a member");
        details.add_bad_request_violation("cursors[0].group_id", "not a member");
        details.add_bad_request_violation("user_id", "bad");
        let status = Status::with_error_details(Code::InvalidArgument, "bad", details);
        assert_eq!(refused_cursors(&status), [0, 2]);
    }

    #[test]
    fn the_builder_needs_a_gateway_a_device_and_valid_urls_and_cursors() {
        assert!(matches!(Client::builder(Vec::<String>::new()).device("d").connect(), Err(Error::NoGateway)));
        assert!(matches!(Client::builder(["http://127.0.0.1:1"]).connect(), Err(Error::NoDevice)));
        assert!(matches!(Client::builder(["not a url"]).device("d").connect(), Err(Error::BadUrl { .. })));
        let bad = Cursor { audience: 0, ..Default::default() };
        assert!(matches!(
            Client::builder(["http://127.0.0.1:1"]).device("d").cursors([bad]).connect(),
            Err(Error::BadCursor(_))
        ));
    }

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

    /// A token source that fails is retried like a gateway that does.
    #[tokio::test]
    async fn a_failing_token_source_is_retried() {
        let (_client, mut events) = Client::builder(["http://127.0.0.1:1"])
            .device("d")
            .token_source(|| async { Err::<String, _>("auth service down") })
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .connect()
            .unwrap();
        for _ in 0..2 {
            match events.recv().await {
                Some(Event::Disconnected { status, .. }) => {
                    assert_eq!(status.code(), Code::Unavailable);
                    assert!(status.message().contains("auth service down"), "{status:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
