//! The hub: this replica's one Pub/Sub connection and its registry of local streams.
//!
//! - One dedicated connection per replica (never one per stream, never a pooled one).
//!   A channel is subscribed when its first local stream needs it and unsubscribed
//!   when the last leaves.
//! - A message arrives encoded once (see [`crate::envelope`]), is copied into one `Bytes` and
//!   shared by every local receiver; pushing into a stream's queue never waits.
//! - When the connection drops the hub reconnects with backoff and re-subscribes every
//!   channel it held; `is_healthy` is false meanwhile (health says NOT_SERVING). What
//!   was published while it was away is not lost: before re-subscribing, every local
//!   stream is paused, and once subscribed the maintenance task replays each stream's
//!   histories from its positions and re-reads its groups ([`Event::Resubscribed`]).
//! - A message that does not follow what a stream has (one before it was lost) pauses
//!   that stream and has the history replayed first ([`Event::Missed`]).
//! - A connection can look alive and deliver nothing (after a failover, behind a
//!   proxy). The hub publishes to its own probe channels (one probe at a time on each, a
//!   quarter of `probe_interval` after its last came back) and reconnects, NOT_SERVING
//!   meanwhile, when any probe is not back within three quarters of it: a dead
//!   subscription is caught within one interval. On one Redis (or a Sentinel master)
//!   there is one probe channel; on a Cluster, where the link is a connection per
//!   shard, there is one per master, in that master's slots (learnt with
//!   `CLUSTER SLOTS` each time the link connects), so a link to any shard that stops
//!   delivering is caught too. A healthy connection answers every probe, so it is never
//!   restarted by one.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prost::bytes::Bytes;
use push_common::redis::Pool;
use push_common::{Error, keys::Keys};
use push_proto::wire::SubscribeResponse;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

mod connection;
mod link;

use super::{Event, Events, Stream};
use crate::{
    envelope::{self, Envelope},
    history::Source,
};

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Where Redis is, for the dedicated subscriber connection (the pool's topology
    /// says which kind it is).
    pub redis: push_common::config::RedisArgs,
    pub connect_timeout: Duration,
    pub probe_interval: Duration,
    /// How long to wait for the confirmation of a SUBSCRIBE before a stream gives up.
    pub subscribe_timeout: Duration,
}

pub(super) enum Cmd {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    /// Acknowledged once every command sent before it has been carried out.
    Barrier(oneshot::Sender<()>),
}

type Registry = HashMap<String, Vec<Arc<Stream>>>;

/// A handle on the hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    state: Arc<HubState>,
}

pub(super) struct HubState {
    /// To the maintenance task.
    pub(super) events: Events,
    pub(super) keys: Keys,
    /// channel → the local queues that receive it. A std `Mutex`: held only to look up
    /// or change a list, never across an `.await`. Commands to the connection are sent
    /// while it is held, so SUBSCRIBE/UNSUBSCRIBE reach Redis in registry order.
    pub(super) registry: Mutex<Registry>,
    pub(super) cmds: mpsc::UnboundedSender<Cmd>,
    pub(super) healthy: AtomicBool,
    /// Set once the replica ends its streams for good: no stream attaches any more.
    closing: AtomicBool,
    pub(super) subscribe_timeout: Duration,
}

impl Hub {
    /// Starts the hub's connection task. `pool` publishes the probes on `replica`'s
    /// probe channels; what the maintenance task must do is sent to `events`.
    pub fn start(
        config: HubConfig,
        pool: Pool,
        keys: &Keys,
        replica: &str,
        events: Events,
    ) -> (Hub, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(HubState {
            events,
            keys: keys.clone(),
            registry: Mutex::default(),
            cmds: tx,
            healthy: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            subscribe_timeout: config.subscribe_timeout,
        });
        // The replica's own channels (see `Link::probe_channels`): replicas never hear
        // each other's probes.
        let (replica, cmds, waiting) = (replica.to_owned(), rx, Vec::new());
        let task = connection::Task { state: state.clone(), pool, config, replica, cmds, waiting };
        (Hub { state }, tokio::spawn(task.run()))
    }

    /// True while the Pub/Sub connection is up and answering probes.
    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Relaxed)
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.state.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `stream` for `channels` and returns once the hub is subscribed to all
    /// of them, so anything published after this returns reaches the stream.
    pub async fn attach(&self, stream: &Arc<Stream>, channels: &[String]) -> Result<(), Error> {
        if channels.is_empty() {
            return Ok(()); // most streams have no groups: no trip through the hub task
        }
        let (ack, acked) = oneshot::channel();
        {
            let mut reg = self.registry();
            // Under the registry's lock: `close_paced` sets the flag before it takes the
            // lock to list the streams, so no stream attaches after that list unseen.
            if self.state.closing.load(Ordering::Relaxed) {
                return Err(Error::Unavailable("the gateway is shutting down; reconnect to another replica".into()));
            }
            let mut new = Vec::new();
            for ch in channels {
                let list = reg.entry(ch.clone()).or_default();
                if list.is_empty() {
                    new.push(ch.clone());
                }
                if !list.iter().any(|s| Arc::ptr_eq(s, stream)) {
                    list.push(stream.clone());
                }
            }
            if !new.is_empty() {
                metrics::gauge!("push_gateway_hub_channels").set(reg.len() as f64);
                let _ = self.state.cmds.send(Cmd::Subscribe(new));
            }
            let _ = self.state.cmds.send(Cmd::Barrier(ack));
        }
        match tokio::time::timeout(self.state.subscribe_timeout, acked).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Error::Unavailable("the push hub is not connected to Redis".into())),
        }
    }

    /// Unregisters `stream` from `channels`; channels nobody needs any more are unsubscribed.
    pub fn detach(&self, stream: &Arc<Stream>, channels: &[String]) {
        let mut reg = self.registry();
        let mut gone = Vec::new();
        for ch in channels {
            if let Some(list) = reg.get_mut(ch) {
                if let Some(i) = list.iter().position(|s| Arc::ptr_eq(s, stream)) {
                    list.swap_remove(i);
                }
                if list.is_empty() {
                    reg.remove(ch);
                    gone.push(ch.clone());
                }
            }
        }
        if !gone.is_empty() {
            metrics::gauge!("push_gateway_hub_channels").set(reg.len() as f64);
            let _ = self.state.cmds.send(Cmd::Unsubscribe(gone));
        }
    }

    /// Ends every local stream with `status`, spread evenly over `window` (a slice
    /// every 50 ms), and refuses streams that try to attach from now on: a replica
    /// going away sends its devices to the others gradually, not as one storm.
    pub async fn close_paced(&self, status: Status, window: Duration) {
        self.state.closing.store(true, Ordering::Relaxed);
        let streams: Vec<Arc<Stream>> = {
            let reg = self.registry();
            let mut seen = std::collections::HashSet::new();
            reg.values().flatten().filter(|s| seen.insert(Arc::as_ptr(s))).cloned().collect()
        };
        // At most one slice per 50 ms; slices spread evenly, the first at once.
        let steps = (window.as_millis() / 50).clamp(1, u32::MAX as u128) as usize;
        let per_slice = streams.len().div_ceil(steps).max(1);
        let slices = streams.len().div_ceil(per_slice).max(1);
        tracing::info!(streams = streams.len(), ?window, "ending device streams");
        let period = window / slices as u32;
        for (i, slice) in streams.chunks(per_slice).enumerate() {
            if i > 0 && !period.is_zero() {
                tokio::time::sleep(period).await;
            }
            for s in slice {
                s.close(status.clone());
            }
        }
        // Any stream that attached while the list was taken.
        self.close_all(status);
    }

    /// Ends every local stream with `status` (graceful shutdown: devices reconnect
    /// to another replica).
    pub fn close_all(&self, status: Status) {
        let reg = self.registry();
        for list in reg.values() {
            for s in list {
                s.close(status.clone());
            }
        }
    }
}

/// Delivers one published payload to the local streams of `channel`.
pub(super) fn dispatch(state: &HubState, channel: &str, payload: &[u8], probes: &mut Probes) {
    let Some(envelope) = Envelope::parse(payload) else {
        tracing::warn!(channel, "ignoring a payload in an unknown format");
        return;
    };
    if let Envelope::Probe(n) = envelope {
        return probes.answered(channel, n);
    }
    let Some(source) = state.keys.parse_channel(channel).and_then(Source::of_channel) else {
        tracing::warn!(channel, "ignoring a payload on a channel of no history");
        return;
    };
    let reg = state.registry.lock().unwrap_or_else(|e| e.into_inner());
    let Some(list) = reg.get(channel) else { return };
    match envelope {
        Envelope::Message { prev, id, message, except } => {
            // One copy per message per replica; every receiver shares it.
            let entry = SubscribeResponse::message_entry(message);
            for s in list {
                // An excluded user's stream moves past it without sending anything.
                let entry = if envelope::excludes(except, &s.user) { Bytes::new() } else { entry.clone() };
                s.deliver(&source, prev, id, entry, &state.events);
            }
        }
        Envelope::Membership => {
            for s in list {
                if s.membership_changed() {
                    let _ = state.events.send(Event::Membership(s.clone()));
                }
            }
        }
        Envelope::Epoch(epoch) => list.iter().for_each(|s| s.queue.epoch_changed(&source, epoch)),
        Envelope::Disconnect(device) => {
            for s in list.iter().filter(|s| device.is_empty() || *s.device == *device) {
                s.close(tonic::Status::unauthenticated("the device was logged out by the backend"));
            }
        }
        Envelope::DisconnectWith { device, reconnect, reason } => {
            let status = envelope::disconnected(reconnect, reason);
            for s in list.iter().filter(|s| device.is_empty() || *s.device == *device) {
                s.close(status.clone());
            }
        }
        Envelope::Probe(_) => {}
    }
}

/// The probes in flight: at most one per probe channel (one channel on one Redis, one
/// per master on a Cluster).
pub(super) struct Probes {
    next: u64,
    /// Each probe channel, with the probe in flight on it: its number, when it was sent.
    channels: Vec<(String, Option<(u64, tokio::time::Instant)>)>,
}

impl Probes {
    pub(super) fn new(channels: Vec<String>) -> Self {
        Self { next: 0, channels: channels.into_iter().map(|c| (c, None)).collect() }
    }

    pub(super) fn channels(&self) -> impl Iterator<Item = &String> {
        self.channels.iter().map(|(c, _)| c)
    }

    /// The probe in flight the longest: its channel and when it was sent.
    pub(super) fn oldest(&self) -> Option<(&str, tokio::time::Instant)> {
        self.channels.iter().filter_map(|(c, out)| out.map(|(_, sent)| (c.as_str(), sent))).min_by_key(|(_, t)| *t)
    }

    /// When the probe in flight the longest is overdue.
    pub(super) fn deadline(&self, grace: Duration) -> tokio::time::Instant {
        self.oldest().map_or_else(tokio::time::Instant::now, |(_, sent)| sent + grace)
    }

    pub(super) fn is_outstanding(&self) -> bool {
        self.channels.iter().any(|(_, out)| out.is_some())
    }

    /// Publishes the next probe on each channel that has none in flight. Published from
    /// the pool, off the connection task: a slow PUBLISH must not stall delivery.
    pub(super) fn send(&mut self, pool: &Pool, keys: &Keys) {
        for (channel, n) in self.due() {
            let payload = envelope::probe(n);
            let publish = keys.publish_command(&channel, pool.is_cluster());
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut c = pool.get();
                let _: Result<i64, _> = redis::cmd(publish).arg(channel).arg(payload).query_async(&mut c).await;
            });
        }
    }

    /// Numbers a probe for each channel that has none in flight, as sent now.
    fn due(&mut self) -> Vec<(String, u64)> {
        let now = tokio::time::Instant::now();
        let mut due = Vec::new();
        for (channel, out) in self.channels.iter_mut().filter(|(_, out)| out.is_none()) {
            self.next += 1;
            *out = Some((self.next, now));
            due.push((channel.clone(), self.next));
        }
        due
    }

    fn answered(&mut self, channel: &str, n: &[u8]) {
        if let Some((_, out)) = self.channels.iter_mut().find(|(c, _)| c == channel)
            && out.is_some_and(|(want, _)| n == want.to_be_bytes())
        {
            *out = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_probe_at_a_time_per_channel_and_every_one_must_come_back() {
        let mut p = Probes::new(vec!["a".into(), "b".into()]);
        assert!(!p.is_outstanding());
        assert_eq!(p.oldest(), None);
        assert_eq!(p.due(), [("a".into(), 1), ("b".into(), 2)]);
        assert!(p.is_outstanding());
        assert_eq!(p.due(), [], "one probe at a time per channel");

        p.answered("a", &1u64.to_be_bytes());
        assert!(p.is_outstanding(), "b is still out");
        assert_eq!(p.oldest().map(|(c, _)| c), Some("b"));
        assert_eq!(p.due(), [("a".into(), 3)], "a again, b still out");

        // Another channel's number, a stale number: nothing comes back.
        p.answered("b", &3u64.to_be_bytes());
        p.answered("a", &2u64.to_be_bytes());
        p.answered("c", &2u64.to_be_bytes());
        assert_eq!(p.oldest().map(|(c, _)| c), Some("b"));
        p.answered("b", &2u64.to_be_bytes());
        assert_eq!(p.oldest().map(|(c, _)| c), Some("a"));
        p.answered("a", &3u64.to_be_bytes());
        assert!(!p.is_outstanding());
        assert_eq!(p.channels().collect::<Vec<_>>(), ["a", "b"]);
    }
}
