//! Subscribe: opening device streams, and the one task that keeps them in step.
//!
//! A stream costs its transport and its [`Queue`] (which also holds who it is for and
//! which groups it is attached to), and nothing else: no task or timer per stream. One
//! session task per gateway does, for all of them:
//! - renew each stream's presence session every third of the lease (logging in again
//!   when the lease was lost, e.g. Redis restarted without persistence);
//! - reconcile a stream's group channels when its user's memberships change (announced
//!   on the user's channel), so join/leave takes effect on open streams;
//! - when a stream ends, detach it from every channel and log its device out.
//!
//! Opening a stream: the device gets a presence session, its queue is attached to the
//! broadcast channel and its user's channel, and only then are its groups read and
//! attached. A membership change committed in between is announced on the already
//! subscribed user channel, so none is lost.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use push_common::{Error, validate::Violations};
use push_proto::{
    presence::v1::{HeartbeatRequest, LoginRequest, LogoutRequest, presence_client::PresenceClient},
    push::v1::SubscribeRequest,
};
use tokio::sync::{Semaphore, mpsc};
use tonic::{Code, Request, Status, transport::Channel};

use crate::{
    downstream::passthrough,
    hub::Hub,
    queue::{DeviceStream, Limits, Queue},
    store::Store,
};

/// Presence calls in flight at once while renewing every stream.
const RENEW_CONCURRENCY: usize = 64;

/// Opens device streams; cheap to clone.
#[derive(Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Hub,
    store: Store,
    presence: PresenceClient<Channel>,
    lease: Duration,
    limits: Limits,
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
    pub presence: PresenceClient<Channel>,
    pub lease: Duration,
    pub limits: Limits,
}

/// The user and device a stream is for.
///
/// This is the one seam where device authentication plugs in: today the request names
/// its user and device and is taken on trust; with device credentials the user comes
/// from the verified token instead, and a request naming another user is refused.
fn device_identity(req: &Request<SubscribeRequest>) -> Result<(String, String), Error> {
    let r = req.get_ref();
    let mut v = Violations::new();
    v.id("user_id", &r.user_id);
    v.id("device_id", &r.device_id);
    v.check()?;
    Ok((r.user_id.clone(), r.device_id.clone()))
}

impl Streams {
    /// Starts the session task. `membership` receives what the hub announces: streams
    /// whose user's groups changed.
    pub fn start(
        hub: Hub,
        config: StreamsConfig,
        membership: mpsc::UnboundedReceiver<Arc<Queue>>,
    ) -> (Streams, tokio::task::JoinHandle<()>) {
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            hub,
            store: config.store,
            presence: config.presence,
            lease: config.lease,
            limits: config.limits,
            closed: closed_tx,
            live: Mutex::default(),
        });
        let task = tokio::spawn(run(inner.clone(), closed_rx, membership));
        (Streams { inner }, task)
    }

    /// Opens one device stream.
    pub async fn open(&self, req: Request<SubscribeRequest>) -> Result<DeviceStream, Status> {
        let i = &self.inner;
        let (user, device) = device_identity(&req)?;
        i.login(&user, &device).await?;
        let queue = Queue::new(i.limits, &user, &device);
        // From here on the stream's cleanup runs when `stream` drops, error or not.
        let stream = DeviceStream::new(queue.clone(), i.closed.clone());
        {
            let mut live = i.live();
            live.streams.insert(key(&queue), queue.clone());
            *live.devices.entry((queue.user.clone(), queue.device.clone())).or_default() += 1;
        }
        i.hub.attach(&queue, &i.base_channels(&queue)).await?;
        // The queue was created `scheduled`, so announcements arriving meanwhile only mark
        // it dirty and this first reconciliation picks them up.
        reconcile(i, &queue).await?;
        Ok(stream)
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

    async fn login(&self, user: &str, device: &str) -> Result<(), Status> {
        let ttl = prost_types::Duration::try_from(self.lease).ok();
        let req = LoginRequest { user_id: user.to_owned(), session_id: device.to_owned(), ttl };
        self.presence.clone().login(req).await.map(drop).map_err(passthrough)
    }

    /// Renews one stream's session, logging in again if the lease was lost.
    async fn renew(&self, q: &Queue) {
        let ttl = prost_types::Duration::try_from(self.lease).ok();
        let req = HeartbeatRequest { user_id: q.user.to_string(), session_id: q.device.to_string(), ttl };
        let result = match self.presence.clone().heartbeat(req).await {
            // The lease was lost (it expired while presence was unreachable, or Redis lost
            // it): the device is still connected, so it is online again.
            Err(s) if s.code() == Code::NotFound => self.login(&q.user, &q.device).await,
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
            let req = LogoutRequest { user_id: q.user.to_string(), session_id: q.device.to_string() };
            if let Err(e) = inner.presence.clone().logout(req).await {
                // The lease ends by itself; the user shows offline after it at the latest.
                tracing::debug!(error = %e, user = &*q.user, "logout of a closed stream failed");
            }
        });
    }
}

/// Makes `q`'s group channels match its user's groups in Redis. Runs only while `q` is
/// `scheduled`, so never twice at once for one stream; loops while changes arrive.
async fn reconcile(i: &Inner, q: &Arc<Queue>) -> Result<(), Error> {
    loop {
        q.dirty.store(false, Ordering::Release);
        if let Err(e) = apply_groups(i, q).await {
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

async fn apply_groups(i: &Inner, q: &Arc<Queue>) -> Result<(), Error> {
    let now = i.store.user_groups(&q.user).await?;
    let (joined, left) = {
        let mut cur = q.groups.lock().unwrap_or_else(|e| e.into_inner());
        let joined: Vec<String> = now.iter().filter(|g| !cur.contains(g)).cloned().collect();
        let left: Vec<String> = cur.iter().filter(|g| !now.contains(g)).cloned().collect();
        *cur = now;
        (joined, left)
    };
    i.hub.detach(q, &i.group_channels(&left));
    i.hub.attach(q, &i.group_channels(&joined)).await?;
    if q.closed.load(Ordering::Acquire) {
        // The stream ended while we attached: its cleanup may have run before our attach.
        i.hub.detach(q, &i.group_channels(&joined));
    }
    Ok(())
}

/// The session task.
async fn run(
    inner: Arc<Inner>,
    mut closed: mpsc::UnboundedReceiver<Arc<Queue>>,
    mut membership: mpsc::UnboundedReceiver<Arc<Queue>>,
) {
    let every = inner.lease / 3;
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let renewing = Arc::new(Semaphore::new(1));
    loop {
        tokio::select! {
            Some(q) = closed.recv() => inner.close(q),
            Some(q) = membership.recv() => {
                let inner = inner.clone();
                tokio::spawn(async move {
                    while !q.closed.load(Ordering::Acquire) {
                        match reconcile(&inner, &q).await {
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
                });
            }
            _ = renew.tick() => {
                // One renewal round at a time; a slow round delays the next, never doubles it.
                let Ok(round) = renewing.clone().try_acquire_owned() else { continue };
                let streams: Vec<Arc<Queue>> = inner.live().streams.values().cloned().collect();
                let inner = inner.clone();
                tokio::spawn(async move {
                    let gate = Arc::new(Semaphore::new(RENEW_CONCURRENCY));
                    let mut calls = tokio::task::JoinSet::new();
                    for q in streams {
                        let (inner, permit) = (inner.clone(), gate.clone().acquire_owned().await);
                        calls.spawn(async move {
                            if !q.closed.load(Ordering::Acquire) {
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
