//! Subscribe: opening device streams, and the one task that keeps them in step.
//!
//! A stream costs its transport and its [`Queue`] (which also holds who it is for and
//! which groups it is attached to), and nothing else: no task or timer per stream. One
//! session task per gateway does, for all of them:
//! - renew each stream's presence session every third of the lease (logging in again
//!   when the lease was lost, e.g. Redis restarted without persistence), and end a
//!   stream whose device token has expired (UNAUTHENTICATED: reconnect with a new one);
//! - reconcile a stream's group channels when its user's memberships change (announced
//!   on the user's channel), so join/leave takes effect on open streams;
//! - when a stream ends, detach it from every channel and log its device out.
//!
//! Opening a stream: the device gets a presence session, its queue is attached to the
//! broadcast channel and its user's channel, and only then are its groups read and
//! attached. A membership change committed in between is announced on the already
//! subscribed user channel, so none is lost.
//!
//! Resuming: a history is replayed only after its channel is subscribed, so whatever is
//! pushed after the replay's read arrives live; the queue holds live messages back
//! until the replays are done and drops what it already has by id. The replays run in
//! a task of their own once the stream is open, in pages, waiting while the device's
//! queue is half full, so a long replay never overflows it. The same replay catches
//! every stream up after the hub reconnected to Redis.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use push_common::{Error, validate::Violations};
use push_proto::{
    presence::v1::{HeartbeatRequest, LoginRequest, LogoutRequest, presence_client::PresenceClient},
    push::v1::{Continuity, SubscribeRequest},
};
use tokio::sync::{Semaphore, mpsc};
use tonic::{Code, Request, Status};

use crate::{
    auth::device_user,
    downstream::{Internal, passthrough},
    history::{self, Pos, Source, Start},
    hub::{Hub, HubEvent},
    queue::{DeviceStream, Limits, Queue},
    store::Store,
};

/// Presence calls in flight at once while renewing every stream.
const RENEW_CONCURRENCY: usize = 64;
/// Streams caught up at once after the hub reconnected.
const CATCH_UP_CONCURRENCY: usize = 64;
/// How long the audit waits before it takes a stream that looks behind for one that
/// missed messages (rather than one whose messages are still on their way).
const AUDIT_GRACE: Duration = Duration::from_secs(1);
/// Entries read per replay round trip.
const REPLAY_PAGE: usize = 256;

/// Opens device streams; cheap to clone.
#[derive(Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Hub,
    store: Store,
    presence: PresenceClient<Internal>,
    lease: Duration,
    limits: Limits,
    max_groups: usize,
    /// This replica's id and the next stream's number: together, a stream's presence
    /// session owner.
    replica: String,
    serials: std::sync::atomic::AtomicU64,
    /// Ended streams, for the session task to clean up.
    closed: mpsc::UnboundedSender<Arc<Queue>>,
    /// Open streams by address, for renewals, and how many are open per (user, device):
    /// a device that reconnects before its old stream is noticed gone has two, and only
    /// the last one to close may end the device's presence session.
    live: Mutex<Live>,
}

#[derive(Default)]
struct Live {
    streams: HashMap<usize, Arc<Queue>>,
    devices: HashMap<(Box<str>, Box<str>), usize>,
}

/// What the session task needs besides the streams.
pub struct StreamsConfig {
    pub store: Store,
    pub presence: PresenceClient<Internal>,
    pub lease: Duration,
    pub limits: Limits,
    /// Most groups per user (bounds the cursors of one request).
    pub max_groups: usize,
}

/// The user and device a device-side call (Subscribe, Ack) is for: the verified device
/// token's user (a request naming another user is PERMISSION_DENIED; it may leave
/// `user_id` empty), or the named user for an admin key or without authentication.
pub fn device_identity<T>(
    req: &Request<T>,
    user_id: &str,
    device_id: &str,
    v: &mut Violations,
) -> Result<(String, String), Status> {
    let user = device_user(req.extensions().get::<push_common::auth::Identity>(), user_id)?;
    v.id("user_id", &user);
    v.id("device_id", device_id);
    Ok((user, device_id.to_owned()))
}

/// Most cursors in one request: the inbox, the broadcast history and every group.
pub fn max_cursors(max_groups_per_user: usize) -> usize {
    max_groups_per_user + 2
}

/// Where a stream starts in each history: the request's cursors, else the device's
/// acknowledged positions, else now. A group without either starts where its history
/// stood when the user joined, for a device that resumes (it has some cursor or ack)
/// and for a group joined while the stream is open: so a device misses nothing pushed
/// to a group after its user joined, not even in the moment before its stream attached.
struct Plan {
    given: Vec<(Source, Pos)>,
    since_join: bool,
}

impl Plan {
    fn start(&self, source: &Source) -> Start {
        self.given.iter().find(|(s, _)| s == source).map_or(Start::Now, |(_, p)| Start::After(*p))
    }

    fn start_group(&self, source: &Source, joined_at: Option<Pos>) -> Start {
        match (self.start(source), joined_at) {
            (Start::Now, Some(at)) if self.since_join => Start::After(at),
            (start, _) => start,
        }
    }
}

impl Streams {
    /// Starts the session task. `events` receives what the hub asks for: streams whose
    /// user's groups changed, and streams to catch up after it (re)subscribed.
    pub fn start(
        hub: Hub,
        config: StreamsConfig,
        events: mpsc::UnboundedReceiver<HubEvent>,
    ) -> (Streams, tokio::task::JoinHandle<()>) {
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            hub,
            store: config.store,
            presence: config.presence,
            lease: config.lease,
            limits: config.limits,
            max_groups: config.max_groups,
            replica: uuid::Uuid::now_v7().simple().to_string(),
            serials: std::sync::atomic::AtomicU64::new(1),
            closed: closed_tx,
            live: Mutex::default(),
        });
        let task = tokio::spawn(run(inner.clone(), closed_rx, events));
        (Streams { inner }, task)
    }

    /// Opens one device stream.
    pub async fn open(&self, req: Request<SubscribeRequest>) -> Result<DeviceStream, Status> {
        let i = &self.inner;
        let mut v = Violations::new();
        let r = req.get_ref();
        let (user, device) = device_identity(&req, &r.user_id, &r.device_id, &mut v)?;
        let cursors = history::parse_cursors(&mut v, "cursors", &r.cursors, max_cursors(i.max_groups));
        v.check()?;
        let mut given = i.store.acked(&user, &device).await?;
        given.retain(|(s, _)| !cursors.iter().any(|(c, _)| c == s));
        given.extend(cursors);
        let plan = Plan { since_join: !given.is_empty(), given };
        let until = match req.extensions().get::<push_common::auth::Identity>() {
            Some(push_common::auth::Identity::Device { until, .. }) => *until,
            _ => 0,
        };
        let serial = i.serials.fetch_add(1, Ordering::Relaxed);
        i.login(&user, &device, &i.owner(serial)).await?;
        let queue = Queue::open(i.limits, &user, &device, until, serial);
        // Live messages wait until the broadcast history and the inbox are replayed.
        queue.begin_sync();
        // From here on the stream's cleanup runs when `stream` drops, error or not.
        let stream = DeviceStream::new(queue.clone(), i.closed.clone());
        {
            let mut live = i.live();
            live.streams.insert(key(&queue), queue.clone());
            *live.devices.entry((queue.user.clone(), queue.device.clone())).or_default() += 1;
        }
        let mut replays = Vec::new();
        let attached = async {
            i.hub.attach(&queue, &i.base_channels(&queue)).await?;
            for source in [Source::All, Source::Inbox] {
                if let Some(from) = establish(i, &queue, &source, plan.start(&source)).await? {
                    replays.push((source, from));
                }
            }
            Ok::<_, Error>(())
        };
        if let Err(e) = attached.await {
            queue.end_sync();
            return Err(e.into());
        }
        spawn_sync(i, &queue, replays);
        // The queue was created `scheduled`, so announcements arriving meanwhile only mark
        // it dirty and this first reconciliation picks them up.
        reconcile(i, &queue, &plan).await?;
        Ok(stream)
    }

    /// A device acknowledges what it has processed.
    pub async fn ack(&self, req: Request<push_proto::push::v1::AckRequest>) -> Result<(), Status> {
        let i = &self.inner;
        let mut v = Violations::new();
        let r = req.get_ref();
        let (user, device) = device_identity(&req, &r.user_id, &r.device_id, &mut v)?;
        let cursors = history::parse_cursors(&mut v, "cursors", &r.cursors, max_cursors(i.max_groups));
        if r.cursors.is_empty() {
            v.add("cursors", "must hold at least one cursor");
        }
        v.check()?;
        Ok(i.store.ack(&user, &device, &cursors).await?)
    }
}

/// Sets `q`'s position in `source` from `start` and tells the device (a HistoryState).
/// Runs after the history's channel is subscribed and before anything is pushed to
/// the stream's caller, so a push made once Subscribe answered is never taken for an
/// old one. Returns where the replay continues from, when a cursor asks for one.
async fn establish(i: &Inner, q: &Queue, source: &Source, start: Start) -> Result<Option<Pos>, Error> {
    let (stream, _) = source.keys(i.store.keys(), &q.user);
    let cursor = match start {
        Start::After(p) => Some(p),
        Start::Now => None,
    };
    let page = i.store.replay(&stream, cursor, 0).await?;
    let pos = Pos { epoch: page.epoch, id: page.point };
    q.set_position(source, pos, Continuity::try_from(page.continuity).unwrap_or(Continuity::Gap));
    Ok(cursor.map(|_| pos))
}

/// Replays each of `sources` into `q` after its position, then ends one sync of `q`.
/// Redis errors are retried for a while (the hub may be back before the pool is); then
/// the stream ends with UNAVAILABLE and the device resumes from its cursors.
/// Runs [`sync`] in a task of its own when there is anything to replay.
fn spawn_sync(i: &Arc<Inner>, q: &Arc<Queue>, sources: Vec<(Source, Pos)>) {
    if sources.is_empty() {
        q.end_sync();
    } else {
        tokio::spawn(sync(i.clone(), q.clone(), sources));
    }
}

async fn sync(i: Arc<Inner>, q: Arc<Queue>, sources: Vec<(Source, Pos)>) {
    'sources: for (source, from) in sources {
        let mut backoff = Duration::from_millis(50);
        let give_up = tokio::time::Instant::now() + i.lease / 3;
        loop {
            if q.closed.load(Ordering::Acquire) {
                break 'sources;
            }
            match replay(&i, &q, &source, from).await {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() < give_up => {
                    tracing::debug!(error = %e, user = &*q.user, "cannot replay a history yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    tracing::warn!(error = %e, user = &*q.user, "cannot replay a history; ending the stream");
                    q.close(Status::unavailable("cannot read the message history; reconnect with your cursors"));
                    break 'sources;
                }
            }
        }
    }
    q.end_sync();
}

/// Replays one history into `q`, page by page, after `from` (or after where `q` got to
/// by now, if further). Tells the device when the history has a gap or a new epoch.
async fn replay(i: &Inner, q: &Queue, source: &Source, from: Pos) -> Result<(), Error> {
    let (stream, _) = source.keys(i.store.keys(), &q.user);
    let mut cursor = from;
    loop {
        while q.is_busy() && !q.closed.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let page = i.store.replay(&stream, Some(cursor), REPLAY_PAGE).await?;
        let continuity = Continuity::try_from(page.continuity).unwrap_or(Continuity::Gap);
        if page.epoch != cursor.epoch || continuity == Continuity::Gap {
            q.set_position(source, Pos { epoch: page.epoch, id: page.point }, continuity);
        }
        let full = page.entries.len() == REPLAY_PAGE;
        let mut last = page.point;
        for (id, message) in page.entries {
            q.replayed(source, id, push_proto::wire::SubscribeResponse::message_entry(&message));
            last = id;
        }
        if !full || q.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        cursor = Pos { epoch: page.epoch, id: last };
    }
}

fn key(q: &Arc<Queue>) -> usize {
    Arc::as_ptr(q) as usize
}

impl Inner {
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn base_channels(&self, q: &Queue) -> Vec<String> {
        let keys = self.store.keys();
        vec![keys.channel_all(), keys.channel_user(&q.user)]
    }

    fn group_channels<'a>(&self, groups: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        groups.into_iter().map(|g| self.store.keys().channel_group(g)).collect()
    }

    /// The owner of a stream's presence session: this replica and the stream's number, so
    /// a device that moved to another stream (here or on another replica) is not logged
    /// out, or kept alive, by its old one.
    fn owner(&self, serial: u64) -> String {
        format!("{}.{serial}", self.replica)
    }

    async fn login(&self, user: &str, device: &str, owner: &str) -> Result<(), Status> {
        let ttl = prost_types::Duration::try_from(self.lease).ok();
        let req =
            LoginRequest { user_id: user.to_owned(), session_id: device.to_owned(), ttl, owner: owner.to_owned() };
        self.presence.clone().login(req).await.map(drop).map_err(passthrough)
    }

    /// Renews one stream's session, logging in again if the lease was lost.
    async fn renew(&self, q: &Queue) {
        let ttl = prost_types::Duration::try_from(self.lease).ok();
        let owner = self.owner(q.serial);
        let req = HeartbeatRequest {
            user_id: q.user.to_string(),
            session_id: q.device.to_string(),
            ttl,
            owner: owner.clone(),
        };
        let result = match self.presence.clone().heartbeat(req).await {
            // The lease was lost (it expired while presence was unreachable, or Redis lost
            // it): the device is still connected, so it is online again.
            Err(s) if s.code() == Code::NotFound => self.login(&q.user, &q.device, &owner).await,
            // The device opened a newer stream, which holds its session now.
            Err(s) if s.code() == Code::Aborted => Ok(()),
            other => other.map(drop),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, user = &*q.user, "cannot renew a stream's presence");
        }
    }

    /// Detaches an ended stream everywhere and ends its presence session.
    fn close(self: &Arc<Self>, q: Arc<Queue>) {
        q.closed.store(true, Ordering::Release);
        let last_of_device = {
            let mut live = self.live();
            live.streams.remove(&key(&q));
            let device = (q.user.clone(), q.device.clone());
            let left = live.devices.get_mut(&device).map(|n| {
                *n -= 1;
                *n
            });
            if left == Some(0) {
                live.devices.remove(&device);
            }
            left.unwrap_or(0) == 0
        };
        let mut channels = self.base_channels(&q);
        channels.extend(self.group_channels(q.groups.lock().unwrap_or_else(|e| e.into_inner()).iter()));
        self.hub.detach(&q, &channels);
        if !last_of_device {
            return; // the device's newer stream keeps its session
        }
        let inner = self.clone();
        tokio::spawn(async move {
            let req = LogoutRequest {
                user_id: q.user.to_string(),
                session_id: q.device.to_string(),
                owner: inner.owner(q.serial),
            };
            if let Err(e) = inner.presence.clone().logout(req).await {
                // The lease ends by itself; the user shows offline after it at the latest.
                tracing::debug!(error = %e, user = &*q.user, "logout of a closed stream failed");
            }
        });
    }
}

/// Makes `q`'s group channels match its user's groups in Redis. Runs only while `q` is
/// `scheduled`, so never twice at once for one stream; loops while changes arrive.
async fn reconcile(i: &Arc<Inner>, q: &Arc<Queue>, plan: &Plan) -> Result<(), Error> {
    loop {
        q.dirty.store(false, Ordering::Release);
        if let Err(e) = apply_groups(i, q, plan).await {
            q.scheduled.store(false, Ordering::Release);
            return Err(e);
        }
        if q.dirty.load(Ordering::Acquire) {
            continue;
        }
        q.scheduled.store(false, Ordering::Release);
        // A change that arrived between the check and the store saw `scheduled` still set
        // and scheduled nothing: take it on here.
        let take_it_on = q.dirty.load(Ordering::Acquire) && !q.scheduled.swap(true, Ordering::AcqRel);
        if !take_it_on {
            return Ok(());
        }
    }
}

/// Attaches `q` to the groups its user joined (replaying each from the plan's start, in
/// a task) and detaches it from those the user left.
async fn apply_groups(i: &Arc<Inner>, q: &Arc<Queue>, plan: &Plan) -> Result<(), Error> {
    let since = i.store.user_groups_since(&q.user).await?;
    let mut now: Vec<String> = since.keys().cloned().collect();
    now.sort();
    let (joined, left) = {
        let mut cur = q.groups.lock().unwrap_or_else(|e| e.into_inner());
        let joined: Vec<String> = now.iter().filter(|g| !cur.contains(g)).cloned().collect();
        let left: Vec<String> = cur.iter().filter(|g| !now.contains(g)).cloned().collect();
        *cur = now;
        (joined, left)
    };
    i.hub.detach(q, &i.group_channels(&left));
    q.forget(&left);
    if joined.is_empty() {
        return Ok(());
    }
    // Live group messages wait from before the subscription until the replay is done.
    q.begin_sync();
    if let Err(e) = i.hub.attach(q, &i.group_channels(&joined)).await {
        // Not attached after all: the retry must see these groups as new again.
        i.hub.detach(q, &i.group_channels(&joined));
        q.groups.lock().unwrap_or_else(|e| e.into_inner()).retain(|g| !joined.contains(g));
        q.end_sync();
        return Err(e);
    }
    if q.closed.load(Ordering::Acquire) {
        // The stream ended while we attached: its cleanup may have run before our attach.
        i.hub.detach(q, &i.group_channels(&joined));
        q.end_sync();
        return Ok(());
    }
    let mut replays = Vec::new();
    for g in joined {
        let source = Source::Group(g.as_str().into());
        let start = plan.start_group(&source, since.get(&g).copied().flatten());
        match establish(i, q, &source, start).await {
            Ok(Some(from)) => replays.push((source, from)),
            Ok(None) => {}
            Err(e) => {
                // The device is told to reconnect: it resumes with its cursors.
                q.close(Status::unavailable("cannot read the message history; reconnect with your cursors"));
                q.end_sync();
                return Err(e);
            }
        }
    }
    spawn_sync(i, q, replays);
    Ok(())
}

/// Reconciles a stream whose user's groups changed, retrying while Redis fails.
async fn membership_changed(inner: Arc<Inner>, q: Arc<Queue>) {
    let plan = Plan { given: Vec::new(), since_join: true };
    while !q.closed.load(Ordering::Acquire) {
        match reconcile(&inner, &q, &plan).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, user = &*q.user, "cannot reconcile groups; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                if !q.mark_membership_changed() {
                    return; // someone else scheduled it meanwhile
                }
            }
        }
    }
}

/// A stream and where it stands in the histories it is behind in.
type Behind = (Arc<Queue>, Vec<(Source, Pos)>);

/// Checks that every stream has reached the end of each history it follows, as its
/// histories' meta record it, and catches up the ones behind (or told of a new epoch).
/// A message can be stored while its live notification is lost (a Pub/Sub hiccup the
/// probe has not caught yet); this finds it within a renewal round. A stream that looks
/// behind only because the message is still on its way gets a replay that the queue
/// dedups, nothing worse. One pipelined read per round for all distinct histories.
async fn audit(i: &Arc<Inner>, streams: &[Arc<Queue>]) {
    let mut index: HashMap<String, usize> = HashMap::new();
    // (stream, history, its position, index of the history's key)
    let mut checks = Vec::with_capacity(streams.len() * 2);
    for q in streams.iter().filter(|q| !q.closed.load(Ordering::Acquire)) {
        for (source, pos) in q.positions() {
            let (stream, _) = source.keys(i.store.keys(), &q.user);
            let n = index.len();
            let k = *index.entry(stream).or_insert(n);
            checks.push((q, source, pos, k));
        }
    }
    let mut keys = vec![String::new(); index.len()];
    for (k, n) in index {
        keys[n] = k;
    }
    let tops = match i.store.history_tops(&keys).await {
        Ok(tops) => tops,
        Err(e) => {
            tracing::debug!(error = %e, "cannot audit the streams' positions this round");
            return;
        }
    };
    // Streams that look behind: (stream, history, the top it must reach).
    let mut suspects: Vec<(&Arc<Queue>, Source, Pos)> = Vec::new();
    for (q, source, pos, k) in checks {
        if let Some(top) = tops[k].filter(|top| top.epoch != pos.epoch || top.id > pos.id) {
            suspects.push((q, source, top));
        }
    }
    if suspects.is_empty() {
        return;
    }
    // What is merely on its way arrives within milliseconds; what is still missing after
    // a moment was lost.
    tokio::time::sleep(AUDIT_GRACE).await;
    let mut behind: HashMap<usize, Behind> = HashMap::new();
    for (q, source, top) in suspects {
        let now = q.positions().into_iter().find(|(s, _)| *s == source).map(|(_, p)| p);
        if let Some(now) = now.filter(|p| p.epoch != top.epoch || p.id < top.id) {
            behind.entry(key(q)).or_insert_with(|| (q.clone(), Vec::new())).1.push((source, now));
        }
    }
    for (q, sources) in behind.into_values() {
        tracing::info!(user = &*q.user, histories = sources.len(), "a stream missed messages; catching up");
        q.begin_sync();
        tokio::spawn(sync(i.clone(), q, sources));
    }
}

/// After the hub (re)subscribed: replays every history of each stream from its
/// position, then releases the live messages it held (the hub began the sync).
async fn catch_up(inner: Arc<Inner>, queues: Vec<Arc<Queue>>) {
    tracing::info!(streams = queues.len(), "catching streams up after the hub subscribed");
    let gate = Arc::new(Semaphore::new(CATCH_UP_CONCURRENCY));
    let mut jobs = tokio::task::JoinSet::new();
    for q in queues {
        let permit = gate.clone().acquire_owned().await;
        let inner = inner.clone();
        jobs.spawn(async move {
            let sources = q.positions();
            sync(inner, q, sources).await;
            drop(permit);
        });
    }
    jobs.join_all().await;
}

/// The session task.
async fn run(
    inner: Arc<Inner>,
    mut closed: mpsc::UnboundedReceiver<Arc<Queue>>,
    mut events: mpsc::UnboundedReceiver<HubEvent>,
) {
    let every = inner.lease / 3;
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let renewing = Arc::new(Semaphore::new(1));
    loop {
        tokio::select! {
            Some(q) = closed.recv() => inner.close(q),
            Some(event) = events.recv() => match event {
                HubEvent::CatchUp(queues) => {
                    tokio::spawn(catch_up(inner.clone(), queues));
                }
                HubEvent::Membership(q) => {
                    tokio::spawn(membership_changed(inner.clone(), q));
                }
            },
            _ = renew.tick() => {
                // One renewal round at a time; a slow round delays the next, never doubles it.
                let Ok(round) = renewing.clone().try_acquire_owned() else { continue };
                let streams: Vec<Arc<Queue>> = inner.live().streams.values().cloned().collect();
                let inner = inner.clone();
                tokio::spawn(async move {
                    audit(&inner, &streams).await;
                    let gate = Arc::new(Semaphore::new(RENEW_CONCURRENCY));
                    let mut calls = tokio::task::JoinSet::new();
                    for q in streams {
                        let (inner, permit) = (inner.clone(), gate.clone().acquire_owned().await);
                        calls.spawn(async move {
                            if q.until != 0 && push_common::time::unix_secs() >= q.until {
                                q.close(Status::unauthenticated("the device token expired; reconnect with a fresh one"));
                            } else if !q.closed.load(Ordering::Acquire) {
                                inner.renew(&q).await;
                            }
                            drop(permit);
                        });
                    }
                    calls.join_all().await;
                    drop(round);
                });
            }
            else => return,
        }
    }
}
