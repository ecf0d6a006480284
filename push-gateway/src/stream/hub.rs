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
//!   proxy). The hub publishes to its own probe channel every `probe_interval` and
//!   reconnects when a probe does not come back in time. A healthy connection answers
//!   every probe, so it is never restarted by one.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use push_common::redis::Pool;
use push_common::{Error, keys::Keys};
use push_proto::wire::SubscribeResponse;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tonic::Status;

use super::{Event, Events, Pause, Pushed, Stream};
use crate::{
    envelope::{self, Envelope},
    history::Source,
};

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The client of the dedicated Pub/Sub connection (`push_common::redis::client`).
    pub client: redis::Client,
    pub connect_timeout: Duration,
    pub probe_interval: Duration,
    /// How long to wait for the confirmation of a SUBSCRIBE before a stream gives up.
    pub subscribe_timeout: Duration,
}

enum Cmd {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    /// Acknowledged once every command sent before it has been carried out.
    Barrier(oneshot::Sender<()>),
}

type Registry = HashMap<String, Vec<Arc<Stream>>>;

/// A handle on the hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    /// To the maintenance task.
    events: Events,
    keys: Keys,
    /// channel → the local queues that receive it. A std `Mutex`: held only to look up
    /// or change a list, never across an `.await`. Commands to the connection are sent
    /// while it is held, so SUBSCRIBE/UNSUBSCRIBE reach Redis in registry order.
    registry: Mutex<Registry>,
    cmds: mpsc::UnboundedSender<Cmd>,
    healthy: AtomicBool,
    subscribe_timeout: Duration,
}

impl Hub {
    /// Starts the hub's connection task. `pool` publishes the probes on `replica`'s
    /// probe channel; what the maintenance task must do is sent to `events`.
    pub fn start(
        config: HubConfig,
        pool: Pool,
        keys: &Keys,
        replica: &str,
        events: Events,
    ) -> (Hub, tokio::task::JoinHandle<()>) {
        let client = config.client.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            events,
            keys: keys.clone(),
            registry: Mutex::default(),
            cmds: tx,
            healthy: AtomicBool::new(false),
            subscribe_timeout: config.subscribe_timeout,
        });
        // The replica's own channel: replicas never hear each other's probes.
        let probe_channel = keys.channel_probe(replica);
        let task = tokio::spawn(run(inner.clone(), client, pool, config, probe_channel, rx));
        (Hub { inner }, task)
    }

    /// True while the Pub/Sub connection is up and answering probes.
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.registry.lock().unwrap_or_else(|e| e.into_inner())
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
                let _ = self.inner.cmds.send(Cmd::Subscribe(new));
            }
            let _ = self.inner.cmds.send(Cmd::Barrier(ack));
        }
        match tokio::time::timeout(self.inner.subscribe_timeout, acked).await {
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
            let _ = self.inner.cmds.send(Cmd::Unsubscribe(gone));
        }
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
fn dispatch(inner: &Inner, channel: &str, payload: &[u8], probe: &mut Probe) {
    let Some(envelope) = Envelope::parse(payload) else {
        tracing::warn!(channel, "ignoring a payload in an unknown format");
        return;
    };
    if let Envelope::Probe(n) = envelope {
        return probe.answered(n);
    }
    let Some(source) = inner.keys.parse_channel(channel).map(Source::of_channel) else {
        tracing::warn!(channel, "ignoring a payload on a channel of no history");
        return;
    };
    let reg = inner.registry.lock().unwrap_or_else(|e| e.into_inner());
    let Some(list) = reg.get(channel) else { return };
    match envelope {
        Envelope::Message { prev, id, message } => {
            // One copy per message per replica; every receiver shares it.
            let entry = SubscribeResponse::message_entry(message);
            for s in list {
                if s.queue.push(&source, prev, id, entry.clone()) == Pushed::Missing {
                    let pause = Pause::adopt(s.clone(), inner.events.clone());
                    let _ = inner.events.send(Event::Missed(pause, vec![source.clone()]));
                }
            }
        }
        Envelope::Membership => {
            for s in list {
                if s.membership_changed() {
                    let _ = inner.events.send(Event::Membership(s.clone()));
                }
            }
        }
        Envelope::Epoch(epoch) => list.iter().for_each(|s| s.queue.epoch_changed(&source, epoch)),
        Envelope::Disconnect(device) => {
            for s in list.iter().filter(|s| device.is_empty() || *s.device == *device) {
                s.close(tonic::Status::unauthenticated("the device was logged out by the backend"));
            }
        }
        Envelope::Probe(_) => {}
    }
}

/// The probe in flight, if any.
#[derive(Default)]
struct Probe {
    next: u64,
    outstanding: Option<(u64, tokio::time::Instant)>,
}

impl Probe {
    /// When the outstanding probe is overdue.
    fn deadline(&self, interval: Duration) -> tokio::time::Instant {
        self.outstanding.map_or_else(tokio::time::Instant::now, |(_, sent)| sent + interval)
    }

    fn answered(&mut self, n: &[u8]) {
        if let Some((want, _)) = self.outstanding
            && n == want.to_be_bytes()
        {
            self.outstanding = None;
        }
    }
}

/// The connection task: connect, (re-)subscribe, pump messages and commands, probe;
/// on any failure mark unhealthy, back off, and start over.
async fn run(
    inner: Arc<Inner>,
    client: redis::Client,
    pool: Pool,
    config: HubConfig,
    probe_channel: String,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut waiting = Vec::new();
    loop {
        match session(&inner, &client, &pool, &config, &probe_channel, &mut cmds, &mut waiting).await {
            Ok(()) => return, // every Hub handle is gone: the server is shutting down
            Err(why) => {
                if inner.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%why, "push hub lost its Redis connection; reconnecting");
                } else {
                    tracing::debug!(%why, ?backoff, "push hub cannot connect yet");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        if inner.healthy.load(Ordering::Relaxed) {
            backoff = Duration::from_millis(50);
        }
    }
}

/// One connection's life. Returns Ok when the hub is dropped, Err when the connection failed.
async fn session(
    inner: &Inner,
    client: &redis::Client,
    pool: &Pool,
    config: &HubConfig,
    probe_channel: &str,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    waiting: &mut Vec<oneshot::Sender<()>>,
) -> Result<(), String> {
    let pubsub = tokio::time::timeout(config.connect_timeout, client.get_async_pubsub())
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = pubsub.split();

    // Re-subscribe everything the registry holds (commands already queued are replayed
    // after this and are idempotent), plus our probe channel. Every stream holds live
    // messages back from before the subscription until its catch-up has replayed what
    // was published while the hub was away.
    let (mut channels, pauses) = {
        let reg = inner.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut streams: Vec<&Arc<Stream>> = reg.values().flatten().collect();
        streams.sort_by_key(|s| s.serial);
        streams.dedup_by_key(|s| s.serial);
        let pauses: Vec<Pause> = streams.into_iter().map(|s| Pause::new(s, &inner.events)).collect();
        (reg.keys().cloned().collect::<Vec<_>>(), pauses)
    };
    channels.push(probe_channel.to_owned());
    // Every (un)subscribe waits for Redis's confirmation, with a deadline: a connection
    // that swallows replies must not hang the hub.
    let deadline = config.subscribe_timeout;
    for chunk in channels.chunks(1000) {
        // On failure the pauses drop here, releasing what they held.
        confirm(deadline, sink.subscribe(chunk)).await?;
    }
    if !pauses.is_empty() {
        let _ = inner.events.send(Event::Resubscribed(pauses));
    }
    // Attaches cut short by the previous connection: their channels are subscribed now.
    for ack in waiting.drain(..) {
        let _ = ack.send(());
    }
    inner.healthy.store(true, Ordering::Relaxed);
    tracing::info!(channels = channels.len() - 1, "push hub subscribed");

    let mut probe = Probe::default();
    let mut tick = tokio::time::interval(config.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return Err("connection closed".into()) };
                dispatch(inner, msg.get_channel_name(), msg.get_payload_bytes(), &mut probe);
            }
            cmd = cmds.recv() => match cmd {
                None => return Ok(()),
                Some(first) => {
                    // A reconnect storm opens thousands of streams at once: take whatever
                    // is queued and send runs of (un)subscribes as one command each.
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        let Ok(cmd) = cmds.try_recv() else { break };
                        batch.push(cmd);
                    }
                    carry_out(&mut sink, deadline, batch, waiting).await?;
                }
            },
            // A probe gets one interval to come back, measured from when it was sent.
            _ = tokio::time::sleep_until(probe.deadline(config.probe_interval)), if probe.outstanding.is_some() => {
                return Err("a probe was not heard back: the subscription is dead".into());
            }
            _ = tick.tick() => {
                if probe.outstanding.is_none() {
                    probe.next += 1;
                    let n = probe.next;
                    probe.outstanding = Some((n, tokio::time::Instant::now()));
                    let payload = envelope::probe(n);
                    let pool = pool.clone();
                    let ch = probe_channel.to_owned();
                    // Published from the pool, off this task: a slow PUBLISH must not stall delivery.
                    tokio::spawn(async move {
                        let mut c = pool.get();
                        let _: Result<i64, _> = redis::cmd("PUBLISH").arg(ch).arg(payload).query_async(&mut c).await;
                    });
                }
            }
        }
    }
}

/// Most commands taken from the queue at once.
const MAX_BATCH: usize = 4096;

/// Carries out `batch` in order, merging adjacent subscribes (and unsubscribes) into
/// one command; barriers are acknowledged once everything in the batch is confirmed.
///
/// When the connection fails, the barriers not yet reached are kept in `waiting`: the
/// next connection subscribes everything the registry holds (their channels included)
/// and then acknowledges them, so a stream opening during a reconnect waits instead of
/// failing.
async fn carry_out(
    sink: &mut redis::aio::PubSubSink,
    deadline: Duration,
    batch: Vec<Cmd>,
    waiting: &mut Vec<oneshot::Sender<()>>,
) -> Result<(), String> {
    let mut batch = batch.into_iter();
    let result = carry_out_in_order(sink, deadline, &mut batch, waiting).await;
    if result.is_err() {
        waiting.extend(batch.filter_map(|c| match c {
            Cmd::Barrier(ack) => Some(ack),
            _ => None,
        }));
    }
    result
}

async fn carry_out_in_order(
    sink: &mut redis::aio::PubSubSink,
    deadline: Duration,
    batch: &mut std::vec::IntoIter<Cmd>,
    waiting: &mut Vec<oneshot::Sender<()>>,
) -> Result<(), String> {
    async fn flush(
        sink: &mut redis::aio::PubSubSink,
        deadline: Duration,
        run: Option<(bool, Vec<String>)>,
    ) -> Result<(), String> {
        let Some((subscribe, channels)) = run else { return Ok(()) };
        for chunk in channels.chunks(1000) {
            match subscribe {
                true => confirm(deadline, sink.subscribe(chunk)).await?,
                false => confirm(deadline, sink.unsubscribe(chunk)).await?,
            }
        }
        Ok(())
    }
    // Barriers are acknowledged at the end of the batch, once everything before them is
    // confirmed; so they do not split runs of (un)subscribes.
    let mut run: Option<(bool, Vec<String>)> = None;
    let mut acks = Vec::new();
    let mut result = Ok(());
    for cmd in batch.by_ref() {
        let (subscribe, channels) = match cmd {
            Cmd::Subscribe(chs) => (true, chs),
            Cmd::Unsubscribe(chs) => (false, chs),
            Cmd::Barrier(ack) => {
                acks.push(ack);
                continue;
            }
        };
        match &mut run {
            Some((kind, pending)) if *kind == subscribe => pending.extend(channels),
            _ => {
                result = flush(sink, deadline, run.replace((subscribe, channels))).await;
                if result.is_err() {
                    break;
                }
            }
        }
    }
    if result.is_ok() {
        result = flush(sink, deadline, run).await;
    }
    match result {
        Ok(()) => {
            for ack in acks {
                let _ = ack.send(());
            }
        }
        Err(_) => waiting.extend(acks),
    }
    result
}

/// Awaits a SUBSCRIBE/UNSUBSCRIBE confirmation for at most `deadline`.
async fn confirm(deadline: Duration, f: impl Future<Output = redis::RedisResult<()>>) -> Result<(), String> {
    match tokio::time::timeout(deadline, f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("Redis did not confirm a (un)subscribe in time".into()),
    }
}
