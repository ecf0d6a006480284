//! The hub's connection task: connect, (re-)subscribe, pump messages and commands,
//! probe; on any failure mark the hub unhealthy, back off, and start over.
use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures_util::FutureExt as _;
use push_common::redis::Pool;
use tokio::sync::{mpsc, oneshot};

use super::{Cmd, HubConfig, HubState, Probes, dispatch, link::Link};
use crate::stream::{Event, Pause, Stream};

/// Most commands taken from the queue at once.
const MAX_BATCH: usize = 4096;

/// The task and what it keeps across connections.
pub(super) struct Task {
    pub(super) state: Arc<HubState>,
    pub(super) pool: Pool,
    pub(super) config: HubConfig,
    /// This replica's id, which names its probe channels.
    pub(super) replica: String,
    pub(super) cmds: mpsc::UnboundedReceiver<Cmd>,
    /// Barriers a failed connection did not reach: acknowledged once the next one has
    /// re-subscribed the registry (their channels included), so a stream opening during
    /// a reconnect waits instead of failing.
    pub(super) waiting: Vec<oneshot::Sender<()>>,
}

impl Task {
    /// Keeps a connection up until every `Hub` handle is gone.
    pub(super) async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.connection().await {
                Ok(()) => return, // every Hub handle is gone: the server is shutting down
                Err(why) => {
                    if self.state.healthy.swap(false, Ordering::Relaxed) {
                        tracing::warn!(%why, "push hub lost its Redis connection; reconnecting");
                        metrics::counter!("push_gateway_hub_reconnects_total").increment(1);
                    } else {
                        tracing::debug!(%why, ?backoff, "push hub cannot connect yet");
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            if self.state.healthy.load(Ordering::Relaxed) {
                backoff = Duration::from_millis(50);
            }
        }
    }

    /// One connection's life. Ok when the hub is dropped, Err when the connection failed.
    async fn connection(&mut self) -> Result<(), String> {
        let (keys, replica) = (&self.state.keys, self.replica.as_str());
        let connect = async {
            let mut link = Link::connect(self.pool.topology(), &self.config.redis, keys.channel_all()).await?;
            // Where the shards are now: a slot that moves later ends the link (see `Link`).
            let probes = link.probe_channels(keys, replica).await?;
            Ok::<_, String>((link, probes))
        };
        let (mut link, probes) = tokio::time::timeout(self.config.connect_timeout, connect)
            .await
            .map_err(|_| "connect timed out".to_string())??;
        let mut probes = Probes::new(probes);
        self.resubscribe(&mut link, &probes).await?;
        // On each probe channel a probe goes out a quarter interval after the last came
        // back and gets three quarters to return: a subscription that dies (to any shard)
        // is caught within one interval.
        let (every, grace) = (self.config.probe_interval / 4, self.config.probe_interval * 3 / 4);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                heard = link.next() => {
                    let heard = heard?;
                    dispatch(&self.state, &heard.channel, &heard.payload, &mut probes);
                }
                cmd = self.cmds.recv() => match cmd {
                    None => return Ok(()),
                    Some(first) => {
                        // A reconnect storm opens thousands of streams at once: take whatever
                        // is queued and send runs of (un)subscribes as one command each.
                        let mut batch = vec![first];
                        while batch.len() < MAX_BATCH {
                            let Ok(cmd) = self.cmds.try_recv() else { break };
                            batch.push(cmd);
                        }
                        carry_out(&mut link, self.config.subscribe_timeout, batch, &mut self.waiting).await?;
                    }
                },
                _ = tokio::time::sleep_until(probes.deadline(grace)), if probes.is_outstanding() => {
                    // What arrived while a batch of (un)subscribes ran is still queued, and
                    // this branch may be picked first: hear it before judging the probes.
                    while let Some(heard) = link.next().now_or_never() {
                        let heard = heard?;
                        dispatch(&self.state, &heard.channel, &heard.payload, &mut probes);
                    }
                    if probes.is_outstanding() && probes.deadline(grace) <= tokio::time::Instant::now() {
                        let channel = probes.oldest().map_or("", |(c, _)| c);
                        return Err(format!("a probe on {channel} was not heard back: the subscription is dead"));
                    }
                }
                _ = tick.tick() => probes.send(&self.pool, &self.state.keys),
            }
        }
    }

    /// Re-subscribes everything the registry holds (commands already queued are carried
    /// out after this and are idempotent), plus the probe channels. Every stream is
    /// paused from before the subscription until the maintenance task has replayed what
    /// was published while the hub was away.
    async fn resubscribe(&mut self, link: &mut Link, probes: &Probes) -> Result<(), String> {
        let (mut channels, pauses) = {
            let reg = self.state.registry.lock().unwrap_or_else(|e| e.into_inner());
            let mut streams: Vec<&Arc<Stream>> = reg.values().flatten().collect();
            streams.sort_by_key(|s| s.serial);
            streams.dedup_by_key(|s| s.serial);
            let pauses: Vec<Pause> = streams.into_iter().map(|s| Pause::new(s, &self.state.events)).collect();
            (reg.keys().cloned().collect::<Vec<_>>(), pauses)
        };
        let streams = channels.len();
        channels.extend(probes.channels().cloned());
        // Every (un)subscribe waits for Redis's confirmation, with a deadline: a
        // connection that swallows replies must not hang the hub.
        for chunk in channels.chunks(1000) {
            // On failure the pauses drop here, releasing what they held.
            confirm(self.config.subscribe_timeout, link.subscribe(chunk)).await?;
        }
        if !pauses.is_empty() {
            let _ = self.state.events.send(Event::Resubscribed(pauses));
        }
        // Attaches cut short by the previous connection: their channels are subscribed now.
        for ack in self.waiting.drain(..) {
            let _ = ack.send(());
        }
        self.state.healthy.store(true, Ordering::Relaxed);
        tracing::info!(channels = streams, probes = channels.len() - streams, "push hub subscribed");
        Ok(())
    }
}

/// Carries out `batch` in order, merging adjacent subscribes (and unsubscribes) into
/// one command; barriers are acknowledged once everything in the batch is confirmed.
///
/// When the connection fails, the barriers not yet reached are kept in `waiting`.
async fn carry_out(
    link: &mut Link,
    deadline: Duration,
    batch: Vec<Cmd>,
    waiting: &mut Vec<oneshot::Sender<()>>,
) -> Result<(), String> {
    let mut batch = batch.into_iter();
    let result = carry_out_in_order(link, deadline, &mut batch, waiting).await;
    if result.is_err() {
        waiting.extend(batch.filter_map(|c| match c {
            Cmd::Barrier(ack) => Some(ack),
            _ => None,
        }));
    }
    result
}

async fn carry_out_in_order(
    link: &mut Link,
    deadline: Duration,
    batch: &mut std::vec::IntoIter<Cmd>,
    waiting: &mut Vec<oneshot::Sender<()>>,
) -> Result<(), String> {
    async fn flush(link: &mut Link, deadline: Duration, run: Option<(bool, Vec<String>)>) -> Result<(), String> {
        let Some((subscribe, channels)) = run else { return Ok(()) };
        tracing::debug!(subscribe, ?channels, "push hub (un)subscribes");
        for chunk in channels.chunks(1000) {
            match subscribe {
                true => confirm(deadline, link.subscribe(chunk)).await?,
                false => confirm(deadline, link.unsubscribe(chunk)).await?,
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
                result = flush(link, deadline, run.replace((subscribe, channels))).await;
                if result.is_err() {
                    break;
                }
            }
        }
    }
    if result.is_ok() {
        result = flush(link, deadline, run).await;
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
