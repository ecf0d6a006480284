//! Device streams: everything between the hub's Pub/Sub connection and a device.
//!
//! Layout (one job per file):
//! - [`hub`]: this replica's one Pub/Sub connection (`hub/connection.rs`) and its
//!   registry channel → streams.
//! - [`record`]: the record of one stream ([`Stream`]) and the [`Pause`] guard.
//! - [`queue`]: a stream's bounded queue and its positions (dedup, order, gaps).
//! - [`device`]: the response stream tonic polls ([`DeviceStream`]).
//! - [`open`]: opening a stream (Subscribe) and device acks.
//! - [`replay`]: establishing positions and replaying histories (open, catch-up).
//! - [`groups`]: reconciling a stream's group channels with its user's groups.
//! - [`lease`]: the device's presence session while it streams.
//! - [`audit`]: finding streams that missed messages or membership changes.
//! - [`maintenance`]: the one task that serves [`Event`]s and the renewal rounds.
//!
//! A stream costs its transport and its [`Stream`] record, and nothing else: no task or
//! timer per stream. The state shared by all of them is [`Shared`].
pub mod audit;
pub mod device;
pub mod groups;
pub mod hub;
pub mod lease;
pub mod maintenance;
pub mod open;
pub mod queue;
pub mod record;
pub mod replay;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

pub use device::DeviceStream;
use push_proto::presence::v1::presence_client::PresenceClient;
pub use queue::Limits;
pub use record::{Pause, Stream};
use tokio::sync::{Semaphore, mpsc};
use tonic::Status;

use crate::{downstream::Internal, history::Source, store::Store};
use hub::Hub;
use push_common::ids::{DeviceId, GroupId, UserId};

/// Streams caught up at once by the hub's reconnect, the audit and lost messages.
const CATCH_UP_CONCURRENCY: usize = 64;

/// What the maintenance task is asked to do.
pub enum Event {
    /// A stream ended (its response stream dropped): detach it, end its session.
    Closed(Arc<Stream>),
    /// The stream's user's groups changed: reconcile its group channels.
    Membership(Arc<Stream>),
    /// The hub (re)subscribed every channel; these streams are paused until their
    /// histories are replayed from their positions, and their groups are re-read (a
    /// membership change announced while the hub was away was not heard).
    Resubscribed(Vec<Pause>),
    /// A live message showed that these histories of the paused stream lost one.
    Missed(Pause, Vec<Source>),
}

/// The sender of [`Event`]s.
pub type Events = mpsc::UnboundedSender<Event>;

/// Limits and timings of device streams.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The presence lease of a stream; renewed every third of it.
    pub lease: Duration,
    /// How long the audit takes to go through every stream once (a slice per round).
    pub audit_interval: Duration,
    pub limits: Limits,
    /// Most groups per user (bounds the cursors of one request).
    pub max_groups: usize,
    /// Most open streams of one (user, device) on a replica: a new one replaces the
    /// oldest.
    pub max_per_device: usize,
    /// Most open streams of one user on a replica: a new one over it is refused.
    pub max_per_user: usize,
    /// How long a stream may live before it is ended to be reopened (rebalancing after
    /// a scale-out); each stream's age is drawn from 80-100% of it. None: forever.
    pub max_age: Option<std::time::Duration>,
}

/// Opens device streams; cheap to clone.
#[derive(Clone)]
pub struct Streams {
    shared: Arc<Shared>,
}

/// What every part of the stream side shares.
pub struct Shared {
    hub: Hub,
    store: Store,
    presence: PresenceClient<Internal>,
    settings: Settings,
    /// This replica's id and the next stream's number: together, a stream's presence
    /// session owner.
    replica: String,
    serials: AtomicU64,
    /// Logouts of closed streams that failed, retried each renewal round.
    logouts: Mutex<Vec<push_proto::presence::v1::LogoutRequest>>,
    events: Events,
    /// Every open stream of this replica.
    live: Mutex<Live>,
    catch_ups: Arc<Semaphore>,
    /// Bounded catch-ups running now, and the most that ever ran at once.
    catch_ups_running: std::sync::atomic::AtomicUsize,
    catch_ups_peak: std::sync::atomic::AtomicUsize,
}

/// Open streams by serial, per (user, device) and per user: a device that reconnects
/// before its old stream is noticed gone has two, and only the last one to close may
/// end the device's presence session.
#[derive(Default)]
struct Live {
    streams: HashMap<u64, Arc<Stream>>,
    devices: HashMap<(UserId, DeviceId), Vec<u64>>,
    users: HashMap<UserId, usize>,
}

impl Live {
    fn insert(&mut self, s: &Arc<Stream>) {
        self.streams.insert(s.serial, s.clone());
        self.devices.entry((s.user.clone(), s.device.clone())).or_default().push(s.serial);
        *self.users.entry(s.user.clone()).or_default() += 1;
        metrics::gauge!("push_gateway_streams").set(self.streams.len() as f64);
    }

    /// Removes a stream; None when it was not there (removed already, as a replaced one).
    fn remove(&mut self, s: &Stream) -> Option<Arc<Stream>> {
        let removed = self.streams.remove(&s.serial)?;
        metrics::gauge!("push_gateway_streams").set(self.streams.len() as f64);
        let device = (s.user.clone(), s.device.clone());
        if let Some(serials) = self.devices.get_mut(&device) {
            serials.retain(|n| *n != s.serial);
            if serials.is_empty() {
                self.devices.remove(&device);
            }
        }
        if let Some(n) = self.users.get_mut(&s.user) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(&s.user);
            }
        }
        Some(removed)
    }

    /// The newest open stream of (user, device).
    fn newest(&self, user: &UserId, device: &DeviceId) -> Option<Arc<Stream>> {
        let serials = self.devices.get(&(user.clone(), device.clone()))?;
        serials.iter().max().and_then(|n| self.streams.get(n)).cloned()
    }
}

impl Streams {
    /// Starts the maintenance task; `events` is the channel whose sender the hub was
    /// started with; `replica` is this replica's id (its sessions' owners).
    pub fn start(
        hub: Hub,
        store: Store,
        presence: PresenceClient<Internal>,
        settings: Settings,
        replica: String,
        events: (Events, mpsc::UnboundedReceiver<Event>),
    ) -> (Streams, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            hub,
            store,
            presence,
            settings,
            replica,
            serials: AtomicU64::new(1),
            logouts: Mutex::default(),
            events: events.0,
            live: Mutex::default(),
            catch_ups: Arc::new(Semaphore::new(CATCH_UP_CONCURRENCY)),
            catch_ups_running: Default::default(),
            catch_ups_peak: Default::default(),
        });
        let task = tokio::spawn(maintenance::run(shared.clone(), events.1));
        (Streams { shared }, task)
    }
}

impl Shared {
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every open stream.
    fn streams(&self) -> Vec<Arc<Stream>> {
        self.live().streams.values().cloned().collect()
    }

    /// Registers a new stream within the caps: it replaces the oldest stream of its
    /// device when the device has the most it may have (that one ends with ABORTED),
    /// and is refused when its user has the most streams.
    fn register(&self, s: &Arc<Stream>) -> Result<(), Status> {
        let mut live = self.live();
        let device = (s.user.clone(), s.device.clone());
        let of_device = live.devices.get(&device).map_or(&[][..], Vec::as_slice);
        let replaced = (of_device.len() >= self.settings.max_per_device).then(|| of_device.iter().min().copied());
        let replaced = replaced.flatten().and_then(|n| live.streams.get(&n).cloned());
        let of_user = live.users.get(&s.user).copied().unwrap_or(0) - usize::from(replaced.is_some());
        if of_user >= self.settings.max_per_user {
            let max = self.settings.max_per_user;
            return Err(Status::resource_exhausted(format!(
                "user {:?} already has {max} open streams on this replica (--max-streams-per-user)",
                s.user
            )));
        }
        if let Some(old) = replaced {
            live.remove(&old);
            old.close(Status::aborted(
                "replaced by a newer stream of the same device (--max-streams-per-device); do not reconnect this one",
            ));
        }
        live.insert(s);
        Ok(())
    }

    fn base_channels(&self, s: &Stream) -> Vec<String> {
        let keys = self.store.keys();
        vec![keys.channel_all(), keys.channel_user(&s.user)]
    }

    fn group_channels<'a>(&self, groups: impl IntoIterator<Item = &'a GroupId>) -> Vec<String> {
        groups.into_iter().map(|g| self.store.keys().channel_group(g)).collect()
    }

    /// Detaches an ended stream everywhere and ends its presence session, or hands the
    /// session to the device's newest remaining stream.
    fn cleanup(self: &Arc<Self>, s: Arc<Stream>) {
        s.mark_closed();
        let (registered, survivor) = {
            let mut live = self.live();
            let registered = live.remove(&s).is_some();
            (registered, live.newest(&s.user, &s.device))
        };
        let mut channels = self.base_channels(&s);
        channels.extend(self.group_channels(s.groups().iter()));
        self.hub.detach(&s, &channels);
        if registered {
            lease::handed_on(self, s, survivor);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use push_common::{
        auth::SendBearer,
        config::RedisArgs,
        ids::{DeviceId, Id, UserId},
        keys::Keys,
    };
    use push_proto::push::v1::Continuity;

    use super::*;
    use crate::{
        history::Pos,
        store::{Retention, Store},
    };

    /// The stream side with nothing reachable behind it: every Redis command fails.
    fn offline(lease: Duration) -> (Arc<Shared>, mpsc::UnboundedReceiver<Event>) {
        let redis = RedisArgs {
            url: "redis://127.0.0.1:1".into(),
            pool_size: 1,
            timeout: Duration::from_millis(50),
            key_prefix: "t".into(),
            redis_tls_ca: None,
            redis_tls_cert: None,
            redis_tls_key: None,
            cluster_nodes: Vec::new(),
            sentinels: Vec::new(),
            sentinel_master: None,
        };
        let pool = push_common::redis::pool(&redis).unwrap();
        let keys = Keys::new("t");
        let day = Duration::from_secs(86_400);
        let retention =
            Retention { inbox_max_len: 10, history_max_len: 10, max_age: day, meta_ttl: day, max_ack_devices: 4 };
        let (events, rx) = mpsc::unbounded_channel();
        let config = hub::HubConfig {
            redis: redis.clone(),
            connect_timeout: Duration::from_millis(50),
            probe_interval: Duration::from_secs(60),
            subscribe_timeout: Duration::from_millis(100),
        };
        let (hub, _task) = hub::Hub::start(config, pool.clone(), &keys, "test", events.clone());
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let presence = PresenceClient::new(Internal::new(channel, SendBearer::new(None).unwrap()));
        let settings = Settings {
            lease,
            audit_interval: lease,
            limits: Limits { messages: 100, bytes: 1 << 20 },
            max_groups: 10,
            max_per_device: 4,
            max_per_user: 32,
            max_age: None,
        };
        let shared = Arc::new(Shared {
            hub,
            store: Store::new(pool, keys, retention),
            presence,
            settings,
            replica: "test".into(),
            serials: AtomicU64::new(1),
            logouts: Mutex::default(),
            events,
            live: Mutex::default(),
            catch_ups: Arc::new(Semaphore::new(CATCH_UP_CONCURRENCY)),
            catch_ups_running: Default::default(),
            catch_ups_peak: Default::default(),
        });
        (shared, rx)
    }

    /// Issue 11, defect 10: catch-ups that concern many streams at once (the audit, the
    /// hub's reconnect, lost messages) run at most CATCH_UP_CONCURRENCY at a time; the
    /// others wait for a place. Here every replay fails (no Redis) until a third of the
    /// lease has passed, and then ends its stream.
    #[tokio::test]
    async fn catch_ups_run_at_most_the_bound_at_once() {
        let (shared, _rx) = offline(Duration::from_millis(300));
        let pos = Pos { epoch: 1, id: Default::default() };
        let mut streams = Vec::new();
        for n in 0..(CATCH_UP_CONCURRENCY as u64 + 36) {
            let user = UserId::parse(&format!("u{n}")).unwrap();
            let s = Stream::new(shared.settings.limits, user, DeviceId::parse("d").unwrap(), 0, None, n);
            s.queue.establish(&Source::All, pos, Continuity::FromNow);
            replay::spawn(&shared, Pause::new(&s, &shared.events), vec![(Source::All, pos)], true);
            streams.push(s);
        }
        // Every stream is caught up (here: given up on) in the end.
        let ended = |s: &Arc<Stream>| {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            loop {
                match s.queue.poll_batch(&mut cx) {
                    std::task::Poll::Ready(Some(Ok(_))) => continue,
                    std::task::Poll::Ready(Some(Err(_))) => return true,
                    _ => return false,
                }
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !streams.iter().all(ended) {
            assert!(tokio::time::Instant::now() < deadline, "not every catch-up ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(shared.catch_ups_peak.load(Ordering::Relaxed), CATCH_UP_CONCURRENCY, "the bound, and no more");
    }
}
