//! [`Client`]: the long-running device client. [`Events`] drives it: each
//! [`Events::recv`] hands out what came, and opens, reconnects and refreshes as needed.
use std::{
    collections::{BTreeMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use push_proto::{
    push::v1::{AckRequest, Cursor, HistoryState, Message, SubscribeRequest, push_gateway_client::PushGatewayClient},
    wire::SubscribeResponse,
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
    history::{History, MessageId},
    subscription::{Subscription, bearer},
    token::{BoxError, Fixed, MIN_REFRESH, Token, TokenSource},
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

/// How to connect: see [`Client::builder`].
pub struct Builder {
    gateways: Vec<Gateway>,
    user: String,
    device: String,
    source: Option<Arc<dyn TokenSource>>,
    cursors: Vec<Cursor>,
    strict: bool,
    backoff: (Duration, Duration),
    token_timeout: Duration,
    open_timeout: Duration,
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
    /// ahead of each token's expiry (from its `exp` and `iat`, read from the JWT), and
    /// after the gateway refused one.
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

    /// How long the token source may take to answer (default 30 s). One that does not
    /// answer in time counts as UNAVAILABLE: the client backs off and asks again.
    pub fn token_timeout(mut self, timeout: Duration) -> Self {
        self.token_timeout = timeout;
        self
    }

    /// How long opening a stream may take, from connecting until the gateway's
    /// response headers (default 15 s). A gateway that does not answer in time counts
    /// as UNAVAILABLE: the client backs off and tries the next one.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
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
            config: Config {
                targets,
                user: self.user,
                device: self.device,
                strict: self.strict,
                source: self.source,
                token_timeout: self.token_timeout,
                open_timeout: self.open_timeout,
            },
            cursors: Mutex::new(cursors),
            handed: Mutex::new(Cursors::new()),
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
            queued: VecDeque::new(),
            backoff: Backoff::new(initial, max),
            token_backoff: Backoff::new(MIN_REFRESH, max.max(MIN_REFRESH)),
            rng: fastrand::Rng::new(),
            next_gateway: 0,
            token: None,
            gaps: BTreeMap::new(),
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
            token_timeout: Duration::from_secs(30),
            open_timeout: Duration::from_secs(15),
        }
    }

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

    /// Acknowledges every message handed out so far ([`Client::delivered`]).
    pub async fn ack_all(&self) -> Result<(), Error> {
        let cursors = self.delivered();
        self.ack(cursors).await
    }

    /// Acknowledges `cursors` (positions of messages the app handled, e.g. a snapshot of
    /// [`Client::delivered`]): with the device's token, on the current (or last)
    /// stream's gateway. Only what is after the last acknowledged position of each
    /// history is sent, so acks never go back; with nothing new, nothing is sent. A
    /// cursor the gateway refuses because the user is not in that group (any more: left
    /// in the moment before the stream's [`Event::Left`] came) is left out and not sent
    /// again; the others are acknowledged. The gateway names one refused cursor per
    /// answer: each is left out in turn (one more call per cursor at most) until the
    /// rest goes through.
    pub async fn ack(&self, cursors: impl IntoIterator<Item = Cursor>) -> Result<(), Error> {
        let wanted = Cursors::from_saved(cursors)?;
        let mut acked = self.shared.acked.lock().await;
        let forward = wanted.after(&acked);
        if forward.is_empty() {
            return Ok(());
        }
        if lock(&self.shared.conn).is_none() {
            return Err(Error::NotConnected);
        }
        for chunk in forward.chunks(MAX_ACK_CURSORS) {
            let (mut cursors, mut settled, mut refreshed) = (chunk.to_vec(), Vec::new(), false);
            let result = loop {
                if cursors.is_empty() {
                    break Ok(());
                }
                match self.send_ack(cursors.clone(), &mut refreshed).await {
                    Ok(()) => {
                        settled.append(&mut cursors);
                        break Ok(());
                    }
                    Err(e) if leave_out_refused(&mut cursors, &mut settled, &e) => {}
                    Err(e) => break Err(e),
                }
            };
            // Refused cursors are settled even when a later call failed: not sent again.
            acked.advance(&settled);
            result?;
        }
        Ok(())
    }

    /// Sends one Ack on the current connection; once per [`Client::ack`] call, a
    /// refused token is replaced by a fresh one and the call tried again.
    async fn send_ack(&self, cursors: Vec<Cursor>, refreshed: &mut bool) -> Result<(), Error> {
        let conn = lock(&self.shared.conn).clone().ok_or(Error::NotConnected)?;
        let status = match self.ack_once(&conn, cursors.clone()).await {
            Ok(()) => return Ok(()),
            Err(s) => s,
        };
        let config = &self.shared.config;
        match (status.code(), config.source.as_ref()) {
            (Code::Unauthenticated, Some(source)) if !*refreshed => {
                *refreshed = true;
                let token: Arc<str> = config.fetch_token(&**source).await.map_err(Error::Token)?.into();
                if let Some(c) = lock(&self.shared.conn).as_mut() {
                    c.token = Some(token.clone());
                }
                let conn = Conn { token: Some(token), ..conn };
                Ok(self.ack_once(&conn, cursors).await?)
            }
            _ => Err(status.into()),
        }
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

/// After an Ack of `cursors` failed with `error`: when the gateway refused cursors as
/// not the user's (INVALID_ARGUMENT naming `cursors[i]`; it names one per answer),
/// moves them from `cursors` to `settled` (not to be sent again) and returns true: the
/// rest is sent again. Each call after the first has left out at least one cursor, so
/// there is one more call per cursor at most.
fn leave_out_refused(cursors: &mut Vec<Cursor>, settled: &mut Vec<Cursor>, error: &Error) -> bool {
    let refused = match error.status() {
        Some(s) if s.code() == Code::InvalidArgument => refused_cursors(s),
        _ => return false,
    };
    let refused: Vec<usize> = refused.into_iter().filter(|i| *i < cursors.len()).collect();
    if refused.is_empty() {
        return false;
    }
    // A group the user is not in (any more: left before the stream's LEFT state came).
    // The other histories are acknowledged.
    tracing::debug!(?refused, "the gateway refused acks for histories the user no longer reads");
    for i in refused.into_iter().rev() {
        settled.push(cursors.remove(i));
    }
    true
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
    outcome: Result<Opened, Failure>,
}

/// A stream that opened: the gateway answered with its headers.
struct Opened {
    sub: Subscription,
    channel: Channel,
    /// The histories it was given cursors for: each gets a state first.
    histories: Vec<History>,
}

enum Failure {
    Status(Status),
    /// The token source failed (or did not answer in time).
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
    /// Refreshes in a row that failed, or whose stream was dropped for not continuing
    /// from where this one got to.
    failed_refreshes: u32,
    /// How the stream ended while its successor was being opened (it is not read any
    /// more; the successor decides whether the client reconnects).
    ended: Option<Status>,
}

enum Refresh {
    /// When to open a stream with a fresh token (`None`: not any more, or the token
    /// does not expire).
    At(Option<Instant>),
    /// Opening it, while the current stream goes on.
    Opening(Opening),
    /// It is open; its first items are held (not handed out) until its states show it
    /// continues from where the current stream got to, while the current one goes on.
    Judging(Box<Successor>),
}

/// A stream opened by a refresh, not switched to yet.
struct Successor {
    sub: Subscription,
    channel: Channel,
    token: Option<Token>,
    /// The histories it has not sent a state for yet.
    pending: Vec<History>,
    /// What it sent so far.
    items: Vec<SubscribeResponse>,
    /// When to give up on it.
    deadline: Instant,
}

/// Most items held from a successor before it is judged (its states come first, so
/// this is a successor that says nothing about some history).
const MAX_HELD_ITEMS: usize = 64;
/// Refreshes in a row that may fail (or be dropped) before the client stops trying,
/// and leaves the current stream until it ends.
const MAX_FAILED_REFRESHES: u32 = 8;

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

    /// The next event of the items received, updating the cursors as it goes.
    fn buffered_event(&mut self) -> Option<Event> {
        loop {
            if self.states.len() == 0 && self.messages.len() == 0 {
                let item = self.queued.pop_front()?;
                self.states = item.states.into_iter();
                self.messages = item.messages.into_iter();
            }
            if let Some(e) = self.next_of_item() {
                return Some(e);
            }
        }
    }

    /// The next event of the current item, if any.
    fn next_of_item(&mut self) -> Option<Event> {
        let mut cursors = lock(&self.shared.cursors);
        for state in self.states.by_ref() {
            match cursors.apply_state(&state) {
                Some(Change::Gap(h)) => {
                    let c = state.cursor.as_ref()?;
                    // "5" and "5-0" are one point.
                    let point =
                        c.message_id.parse::<MessageId>().map_or_else(|_| c.message_id.clone(), |id| id.to_string());
                    let gap = (c.epoch.clone(), point);
                    if self.gaps.get(&h) != Some(&gap) {
                        self.gaps.insert(h.clone(), gap);
                        return Some(Event::Gap(h));
                    }
                }
                Some(Change::Left(h)) => {
                    self.gaps.remove(&h);
                    lock(&self.shared.handed).forget(&h);
                    return Some(Event::Left(h));
                }
                _ => {}
            }
        }
        let m = self.messages.by_ref().find(|m| cursors.apply_message(m))?;
        // What the app is handed, to acknowledge: the message's position, when it has one.
        if let Some(h) = History::of(&m)
            && let Some(c) = cursors.cursor(&h)
            && c.message_id.parse::<MessageId>() == m.id.parse::<MessageId>()
        {
            lock(&self.shared.handed).advance_to(&h, &c);
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

    /// Makes `token` the one in use, scheduling its refresh if it is new: ahead of its
    /// end ([`crate::token::refresh_in`]), or after a backoff when it came (nearly)
    /// expired, so a source that hands out such tokens is not asked every second.
    fn adopt(&mut self, token: Option<Token>) {
        self.token = token.map(|mut t| {
            if !t.scheduled {
                t.scheduled = true;
                t.refresh_at = t.refresh_in.map(|d| {
                    if d >= MIN_REFRESH {
                        self.token_backoff.reset();
                        t.received + d
                    } else {
                        t.received + self.token_backoff.next().max(MIN_REFRESH)
                    }
                });
            }
            t
        });
    }

    /// The stream ended with `status`.
    fn ended(&mut self, status: Status) -> Option<Event> {
        let verdict = self.verdict(&status);
        let Phase::Open(live) = &mut self.phase else { return None };
        if !matches!(live.refresh, Refresh::At(_)) && verdict != Verdict::Stop {
            // Its successor is being opened: that decides.
            tracing::debug!(?status, "the stream ended while its successor opened");
            live.ended = Some(status);
            return None;
        }
        let (gateway, up) = (live.gateway, live.since.elapsed());
        Some(self.failed(gateway, Some(up), status))
    }

    /// The stream with a fresh token opened (its first items are judged before the
    /// client switches to it), or could not be.
    fn refreshed(&mut self, a: Attempt) -> Option<Event> {
        let Phase::Open(live) = &mut self.phase else { return None };
        match a.outcome {
            Ok(Opened { sub, channel, histories }) => {
                let deadline = Instant::now() + self.shared.config.open_timeout;
                let next = Successor { sub, channel, token: a.token, pending: histories, items: Vec::new(), deadline };
                live.refresh = Refresh::Judging(Box::new(next));
                None
            }
            Err(Failure::SameToken) if live.ended.is_none() => {
                // Nothing to refresh to yet: ask again later (if the token expires
                // meanwhile, the gateway ends the stream and a reconnect follows).
                let wait = self.token_backoff.next().max(MIN_REFRESH);
                tracing::debug!(?wait, "the token source gave the token in use back; the stream goes on");
                live.refresh = Refresh::At(Some(Instant::now() + wait));
                None
            }
            Err(f) => {
                let status = match (f, live.ended.take()) {
                    // The old stream is gone too: reconnect as after any end.
                    (Failure::SameToken, Some(ended)) => ended,
                    (f, Some(_)) => failure_status(f),
                    (f, None) => {
                        let status = failure_status(f);
                        self.retry_refresh(&format!("{}: {}", status.code(), status.message()));
                        return None;
                    }
                };
                let (gateway, up) = (live.gateway, live.since.elapsed());
                Some(self.failed(gateway, Some(up), status))
            }
        }
    }

    /// An item (or the end) of the successor being judged. It is switched to once every
    /// history it was given a cursor for has a state, and every state it sent so far
    /// continues from where the client is now (at or before its positions, in the same
    /// epoch); it is dropped as soon as one does not.
    fn judge(&mut self, item: Result<Option<SubscribeResponse>, Status>) -> Option<Event> {
        let Phase::Open(live) = &mut self.phase else { return None };
        let Refresh::Judging(next) = &mut live.refresh else { return None };
        let item = match item {
            Ok(Some(item)) => item,
            Ok(None) => return self.drop_successor("it ended"),
            Err(s) => return self.drop_successor(&format!("it ended: {}: {}", s.code(), s.message())),
        };
        next.items.push(item);
        let broken = {
            let cursors = lock(&self.shared.cursors);
            next.items.iter().flat_map(|i| &i.states).find(|s| !cursors.continues(s)).cloned()
        };
        if let Some(state) = broken {
            return self.drop_successor(&format!("it does not continue from the current position: {state:?}"));
        }
        for state in &next.items.last().expect("just pushed").states {
            if let Some(h) = state.cursor.as_ref().and_then(History::of_cursor) {
                next.pending.retain(|p| *p != h);
            }
        }
        if !next.pending.is_empty() {
            if next.items.len() >= MAX_HELD_ITEMS {
                return self.drop_successor("it did not state every history");
            }
            return None;
        }
        // Switch: the current stream is dropped; what the successor sent is handed out
        // next, its overlap with what was handed out dropped as duplicates.
        let Refresh::Judging(next) = std::mem::replace(&mut live.refresh, Refresh::At(None)) else { unreachable!() };
        let Successor { sub, channel, token, items, .. } = *next;
        tracing::debug!(gateway = live.gateway, "token refreshed; stream replaced");
        live.sub = sub;
        live.channel = channel.clone();
        live.ended = None;
        live.failed_refreshes = 0;
        self.queued.extend(items);
        self.adopt(token);
        let Phase::Open(live) = &mut self.phase else { return None };
        live.refresh = Refresh::At(self.token.as_ref().and_then(|t| t.refresh_at));
        self.set_conn(&channel);
        None
    }

    /// Drops the successor being judged: the current stream goes on, and the refresh is
    /// tried again later; if the current stream has ended meanwhile, the client
    /// reconnects as after any end.
    fn drop_successor(&mut self, why: &str) -> Option<Event> {
        let Phase::Open(live) = &mut self.phase else { return None };
        live.refresh = Refresh::At(None);
        if let Some(status) = live.ended.take() {
            tracing::debug!(why, "the stream ended and its successor is dropped; reconnecting");
            let (gateway, up) = (live.gateway, live.since.elapsed());
            return Some(self.failed(gateway, Some(up), status));
        }
        self.retry_refresh(why);
        None
    }

    /// A refresh failed, or its stream was dropped, while the current stream goes on:
    /// try again in 1-5 s, up to [`MAX_FAILED_REFRESHES`] times in a row; then leave
    /// the stream until it ends (its token expired: a reconnect with a fresh one).
    fn retry_refresh(&mut self, why: &str) {
        let Phase::Open(live) = &mut self.phase else { return };
        live.failed_refreshes += 1;
        if live.failed_refreshes >= MAX_FAILED_REFRESHES {
            tracing::warn!(why, "could not refresh the token; no more attempts on this stream");
            live.refresh = Refresh::At(None);
            return;
        }
        let wait = Duration::from_secs(1) + Duration::from_secs(4).mul_f64(self.rng.f64());
        tracing::warn!(why, ?wait, "could not refresh the token; the stream goes on");
        live.refresh = Refresh::At(Some(Instant::now() + wait));
    }

    /// What to do after `status` ended (or refused) a stream on `gateway` that had been
    /// up for `up`.
    fn failed(&mut self, gateway: usize, up: Option<Duration>, status: Status) -> Event {
        match self.verdict(&status) {
            Verdict::Stop => self.stop(status),
            Verdict::Reauthenticate => {
                // At once, with a fresh token and on the same gateway.
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

    /// What `status`, ending (or refusing) a stream, asks of the client: see
    /// [`verdict`]; UNAUTHENTICATED stops only when the token was fetched after a
    /// refusal already, and is retried after a backoff when there is no token source
    /// to get another from.
    fn verdict(&self, status: &Status) -> Verdict {
        match verdict(status.code(), self.shared.config.strict) {
            Verdict::Reauthenticate if self.shared.config.source.is_none() => Verdict::Retry,
            Verdict::Reauthenticate if self.token.as_ref().is_some_and(|t| t.after_refusal) => Verdict::Stop,
            v => v,
        }
    }

    fn stop(&mut self, status: Status) -> Event {
        self.stop_quietly();
        let resync = (status.code() == Code::FailedPrecondition).then(|| resync_history(&status)).flatten();
        tracing::debug!(?status, ?resync, "stopped");
        Event::Stopped { status, resync }
    }

    fn stop_quietly(&mut self) {
        self.phase = Phase::Stopped;
        self.states = Vec::new().into_iter();
        self.messages = Vec::new().into_iter();
        self.queued.clear();
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
/// better, FAILED_PRECONDITION under strict resume a position that cannot be honoured
/// (the app resyncs). UNAUTHENTICATED asks for a fresh token. Everything else
/// (UNAVAILABLE on a drain or a Disconnect with reconnect, RESOURCE_EXHAUSTED for a
/// slow device or too many streams, a lost connection, UNIMPLEMENTED or NOT_FOUND from
/// a proxy in the way...) passes: retried after a backoff.
fn verdict(code: Code, strict: bool) -> Verdict {
    match code {
        Code::Aborted | Code::PermissionDenied | Code::InvalidArgument => Verdict::Stop,
        Code::FailedPrecondition if strict => Verdict::Stop,
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
/// early: opening a stream with it would change nothing. The token source has
/// `token_timeout` to answer, and the stream `open_timeout` to open (connection and
/// response headers); past either, the attempt fails as UNAVAILABLE.
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
            match shared.config.fetch_token(&**source).await {
                Ok(t) if refresh && current.as_ref().is_some_and(|c| *c.value == *t) => {
                    return Attempt { token: current, outcome: Err(Failure::SameToken) };
                }
                Ok(t) => {
                    let after_refusal = !refresh && current.as_ref().is_some_and(|c| c.refused);
                    token = Some(Token::new(t, after_refusal));
                }
                Err(e) => return Attempt { token: current, outcome: Err(Failure::Token(e)) },
            }
        }
        let timeout = shared.config.open_timeout;
        let outcome = match tokio::time::timeout(timeout, open(&shared, gateway, channel, token.as_ref())).await {
            Ok(opened) => opened.map_err(Failure::Status),
            Err(_) => Err(Failure::Status(Status::unavailable(format!(
                "the gateway did not open the stream within {timeout:?}"
            )))),
        };
        Attempt { token, outcome }
    })
}

async fn open(
    shared: &Shared,
    gateway: usize,
    channel: Option<Channel>,
    token: Option<&Token>,
) -> Result<Opened, Status> {
    let channel = match channel {
        Some(c) => c,
        None => shared.config.targets[gateway].channel().await?,
    };
    let config = &shared.config;
    // The cursors of this moment: everything handed out so far (nothing is buffered
    // while a stream opens, except during a refresh, whose overlap is deduplicated).
    let cursors = lock(&shared.cursors).cursors();
    let histories = cursors.iter().filter_map(History::of_cursor).collect();
    let request = SubscribeRequest {
        user_id: config.user.clone(),
        device_id: config.device.clone(),
        cursors,
        strict_resume: config.strict,
    };
    let sub = Subscription::open(channel.clone(), token.map(|t| &*t.value), request).await?;
    Ok(Opened { sub, channel, histories })
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
        for strict in [false, true] {
            for code in [Code::Aborted, Code::PermissionDenied, Code::InvalidArgument] {
                assert_eq!(verdict(code, strict), Verdict::Stop, "{code:?}");
            }
            assert_eq!(verdict(Code::Unauthenticated, strict), Verdict::Reauthenticate);
            for code in [
                Code::Unavailable,
                Code::ResourceExhausted,
                Code::DeadlineExceeded,
                Code::Internal,
                Code::Unknown,
                Code::Unimplemented,
                Code::NotFound,
                Code::DataLoss,
                Code::Cancelled,
                Code::AlreadyExists,
                Code::OutOfRange,
                Code::Ok,
            ] {
                assert_eq!(verdict(code, strict), Verdict::Retry, "{code:?}");
            }
        }
        // A strict resume that cannot be honoured stops (naming the history); without
        // strict resume the gateway has no reason to say it, and it is retried.
        assert_eq!(verdict(Code::FailedPrecondition, true), Verdict::Stop);
        assert_eq!(verdict(Code::FailedPrecondition, false), Verdict::Retry);
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
    use push_proto::push::v1::{Audience, Continuity};

    const E1: &str = "1700000000001";
    const E2: &str = "1700000000002";

    fn state(h: &History, epoch: &str, id: &str, continuity: Continuity) -> HistoryState {
        HistoryState { cursor: Some(h.cursor(epoch, id)), continuity: continuity as i32 }
    }

    fn msg(id: &str) -> Message {
        Message { id: id.into(), audience: Audience::User as i32, topic: id.into(), ..Default::default() }
    }

    /// A client that never connects: items are fed to its events by hand.
    fn offline() -> (Client, Events) {
        Client::builder(["http://127.0.0.1:1"]).device("d").connect().unwrap()
    }

    /// Hands one item to `events` as if the gateway sent it; returns what `recv` tells
    /// of it, in short.
    fn feed(events: &mut Events, states: Vec<HistoryState>, messages: Vec<Message>) -> Vec<String> {
        events.states = states.into_iter();
        events.messages = messages.into_iter();
        let mut out = Vec::new();
        while let Some(e) = events.buffered_event() {
            out.push(match e {
                Event::Message(m) => format!("message {}", m.id),
                Event::Gap(h) => format!("gap {h}"),
                Event::Left(h) => format!("left {h}"),
                other => format!("{other:?}"),
            });
        }
        out
    }

    /// A gap is told unless it is the very one told last for that history (same epoch,
    /// same point, "5" being "5-0"): a second gap at another point or in another epoch
    /// is a second loss, told even when no message came in between (a reconnect).
    #[test]
    fn a_gap_is_told_unless_it_is_the_one_told_last() {
        let (_client, mut events) = offline();
        let gap = |epoch: &str, id: &str| state(&History::Inbox, epoch, id, Continuity::Gap);
        assert_eq!(feed(&mut events, vec![gap(E1, "5-0")], vec![]), ["gap inbox"]);
        assert_eq!(feed(&mut events, vec![gap(E1, "5")], vec![]), Vec::<String>::new(), "the same gap again");
        assert_eq!(feed(&mut events, vec![gap(E1, "9-0")], vec![]), ["gap inbox"], "another point");
        assert_eq!(feed(&mut events, vec![gap(E2, "9-0")], vec![]), ["gap inbox"], "another epoch");
        assert_eq!(feed(&mut events, vec![gap(E2, "9-0")], vec![msg("10-0")]), ["message 10-0"]);
        assert_eq!(feed(&mut events, vec![gap(E2, "9-0")], vec![]), Vec::<String>::new(), "still the same gap");
        assert_eq!(feed(&mut events, vec![gap(E2, "12-0")], vec![]), ["gap inbox"]);
        // Another history's gaps are its own.
        assert_eq!(feed(&mut events, vec![state(&History::All, E2, "12-0", Continuity::Gap)], vec![]), ["gap all"]);
    }

    /// Acks carry only what the app was handed in Message events: positions that only
    /// a state gave (from now, a gap's point, a join) are resumed from, not acked.
    #[test]
    fn only_positions_of_messages_handed_out_are_acknowledged() {
        let (client, mut events) = offline();
        let team = History::Group("team".into());
        feed(
            &mut events,
            vec![
                state(&History::Inbox, E1, "5-0", Continuity::FromNow),
                state(&History::All, E1, "7-0", Continuity::Resumed),
                state(&team, E1, "3-0", Continuity::FromNow),
            ],
            vec![],
        );
        assert_eq!(client.cursors().len(), 3);
        assert_eq!(client.delivered(), [], "nothing was handed out");
        feed(&mut events, vec![], vec![msg("6-0"), msg("6-0")]);
        assert_eq!(client.delivered(), [History::Inbox.cursor(E1, "6-0")]);
        // A gap moves the position (to resume from), not what was handed out.
        feed(&mut events, vec![state(&History::Inbox, E2, "40-0", Continuity::Gap)], vec![]);
        assert_eq!(client.cursors()[0], History::Inbox.cursor(E2, "40-0"));
        assert_eq!(client.delivered(), [History::Inbox.cursor(E1, "6-0")]);
        feed(&mut events, vec![], vec![msg("41-0")]);
        assert_eq!(client.delivered(), [History::Inbox.cursor(E2, "41-0")]);
        // A message whose id does not parse is handed out, and has no position.
        assert_eq!(feed(&mut events, vec![], vec![msg("not-an-id")]), ["message not-an-id"]);
        assert_eq!(client.delivered(), [History::Inbox.cursor(E2, "41-0")]);
        // A group left is not acknowledged any more.
        let group_msg = Message { audience: Audience::Group as i32, group_id: "team".into(), ..msg("4-0") };
        feed(&mut events, vec![], vec![group_msg]);
        assert_eq!(client.delivered().len(), 2);
        assert_eq!(feed(&mut events, vec![state(&team, E1, "4-0", Continuity::Left)], vec![]), ["left group:team"]);
        assert_eq!(client.delivered(), [History::Inbox.cursor(E2, "41-0")]);
    }

    /// A token that comes (nearly) expired is refreshed after a growing, jittered wait,
    /// never within a second; one with a life ahead of it is refreshed ahead of its end,
    /// and starts the waits over.
    #[tokio::test(start_paused = true)]
    async fn tokens_that_come_expired_are_refreshed_after_a_backoff() {
        let (_client, mut events) = offline();
        let jwt = |life: u64| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let claims = format!(r#"{{"iat":1000,"exp":{}}}"#, 1000 + life);
            format!("{}.{}.sig", b64.encode("{}"), b64.encode(claims))
        };
        let mut wait = |life: u64| {
            let t = Token::new(jwt(life), false);
            let received = t.received;
            events.adopt(Some(t));
            events.token.as_ref().unwrap().refresh_at.unwrap() - received
        };
        let waits: Vec<Duration> = (0..8).map(|_| wait(0)).collect();
        assert!(waits.iter().all(|w| *w >= Duration::from_secs(1)), "{waits:?}");
        for (n, w) in waits.iter().enumerate() {
            assert!(*w <= Duration::from_secs(1 << n).max(Duration::from_secs(1)), "{n}: {waits:?}");
        }
        assert!(waits.iter().any(|w| *w > Duration::from_secs(2)), "the waits grow: {waits:?}");
        assert_eq!(wait(40), Duration::from_secs(35), "5 s ahead of its end");
        assert!(wait(3) <= Duration::from_secs(1), "the waits started over");
    }

    /// A token source that never answers is given up on after the token timeout, as
    /// UNAVAILABLE, and asked again after a backoff: the client does not hang.
    #[tokio::test(start_paused = true)]
    async fn a_token_source_that_never_answers_times_out() {
        let (_client, mut events) = Client::builder(["http://127.0.0.1:1"])
            .device("d")
            .token_source(std::future::pending::<Result<String, BoxError>>)
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .connect()
            .unwrap();
        for _ in 0..2 {
            let event = tokio::time::timeout(Duration::from_secs(3600), events.recv()).await;
            match event.expect("an event, not a hang") {
                Some(Event::Disconnected { status, .. }) => {
                    assert_eq!(status.code(), Code::Unavailable);
                    assert!(status.message().contains("token source"), "{status:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A gateway that takes the connection and never answers is given up on after the
    /// open timeout, as UNAVAILABLE, and the client moves on: it does not hang.
    #[tokio::test]
    async fn a_gateway_that_never_answers_times_out() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                conns.push(c);
            }
        });
        let (_client, mut events) = Client::builder([format!("http://{addr}")])
            .device("d")
            .open_timeout(Duration::from_millis(200))
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .connect()
            .unwrap();
        for _ in 0..2 {
            let event = tokio::time::timeout(Duration::from_secs(60), events.recv()).await;
            match event.expect("an event, not a hang") {
                Some(Event::Disconnected { status, .. }) => {
                    assert_eq!(status.code(), Code::Unavailable);
                    assert!(status.message().contains("did not open the stream"), "{status:?}");
                }
                other => panic!("{other:?}"),
            }
        }
        held.abort();
    }

    /// The gateway refuses one cursor per answer: each is left out in turn (settled, not
    /// to be sent again) until the rest goes through, or another error ends the ack;
    /// the cursors refused before it stay settled.
    #[test]
    fn refused_ack_cursors_are_left_out_one_answer_at_a_time() {
        use tonic_types::{ErrorDetails, StatusExt};
        let refusal = |i: usize| -> Error {
            let details = ErrorDetails::with_bad_request_violation(format!("cursors[{i}].group_id"), "not a member");
            Status::with_error_details(Code::InvalidArgument, "bad", details).into()
        };
        let group = |g: &str| History::Group(g.into()).cursor(E1, "1-0");
        let all = vec![History::Inbox.cursor(E1, "1-0"), group("a"), group("b"), group("c")];
        // The gateway's answers to the successive calls: "a" refused, then "c" (index
        // 2 of what is left), then another error.
        let mut answers = vec![refusal(1), refusal(2), Error::from(Status::unavailable("going away"))].into_iter();
        let (mut cursors, mut settled) = (all.clone(), Vec::new());
        let mut calls = 0;
        let last = loop {
            calls += 1;
            let e = answers.next().unwrap();
            if !leave_out_refused(&mut cursors, &mut settled, &e) {
                break e;
            }
        };
        assert_eq!(calls, 3);
        assert_eq!(last.status().unwrap().code(), Code::Unavailable);
        assert_eq!(settled, [group("a"), group("c")]);
        assert_eq!(cursors, [all[0].clone(), group("b")]);
        // A refusal that names nothing sent, or another kind of error, ends it.
        assert!(!leave_out_refused(&mut cursors, &mut settled, &refusal(5)));
        assert!(!leave_out_refused(&mut cursors, &mut settled, &Status::invalid_argument("no details").into()));
    }
}
