//! WatchPresence: every watcher of a replica is served by one reader.
//!
//! One task per replica reads the presence events of every bucket (see
//! [`crate::store::Position`]) and broadcasts each batch, merged in id order: on one
//! Redis (or a Sentinel master) with one `XREAD BLOCK` over all the buckets' streams on
//! its one dedicated connection; on a Cluster, where the streams are in different slots,
//! by reading every bucket (one pipeline per slot) every [`POLL`] while idle. While no
//! one watches, the reader reads nothing. A watcher subscribes to the
//! broadcast first, then catches up from its cursor with `XRANGE` reads on the shared
//! pool until there is nothing more, then follows the broadcast, dropping what it
//! already has by id: whatever is appended after it subscribed reaches it through the
//! broadcast, whatever was there before through its catch-up. A watcher that falls
//! behind the broadcast catches up again the same way. Redis sees one blocking
//! connection per replica, whatever the number of watchers (it used to see one per
//! watcher, so one presence-scoped key could exhaust its connection limit), and the
//! number of watchers is capped (`--max-watchers`).
//!
//! Never a silent skip: when events after a watcher's cursor were trimmed away (its
//! cursor, or the reader, fell behind `--events-max-len`), the watcher gets
//! FAILED_PRECONDITION and resyncs from ListOnlineUsers.
use std::{sync::Arc, time::Duration};

use push_common::{
    Error,
    config::RedisArgs,
    redis::{Topology, dedicated},
};
use push_proto::presence::v1 as pb;
use tokio::sync::{Notify, Semaphore, broadcast, mpsc};
use tonic::Status;

use crate::store::{Event, Position, Store};

/// How long the reader's XREAD blocks before it reads again.
const BLOCK: Duration = Duration::from_secs(5);
/// How often a reader on a Cluster reads the buckets while there is nothing new.
const POLL: Duration = Duration::from_millis(100);
/// Most events in one read and one WatchPresence item.
const BATCH: usize = 500;
/// Batches the broadcast keeps for a slow watcher before it must catch up from Redis.
const BACKLOG: usize = 256;

/// What the reader broadcasts.
#[derive(Clone, Debug)]
enum Read {
    Events(Arc<[Event]>),
    /// Events were trimmed before the reader read them: every watcher must resync.
    Lost,
    /// The reader follows the events again, from the newest, after a time without
    /// watchers: a watcher catches up from Redis first (it may have caught up before the
    /// reader's start, and what came in between was not broadcast).
    Resumed,
}

/// The watchers of one replica; cheap to clone.
#[derive(Clone)]
pub struct Watchers {
    store: Store,
    live: broadcast::Sender<Read>,
    /// Wakes the reader, which reads nothing while no one watches.
    watched: Arc<Notify>,
    slots: Arc<Semaphore>,
    max: usize,
}

/// What a watcher whose cursor fell behind the retained events is told.
pub fn resync() -> Status {
    Status::failed_precondition(
        "cursor: events after it are no longer retained; resync with ListOnlineUsers and watch from now on",
    )
}

impl Watchers {
    /// Starts the replica's reader.
    pub fn start(store: Store, redis: RedisArgs, max: usize) -> (Watchers, tokio::task::JoinHandle<()>) {
        let (live, _) = broadcast::channel(BACKLOG);
        let watched = Arc::new(Notify::new());
        let reader = tokio::spawn(read(store.clone(), redis, live.clone(), watched.clone()));
        (Watchers { store, live, watched, slots: Arc::new(Semaphore::new(max)), max }, reader)
    }

    /// Opens a watch from `cursor` ('' for new events only, "0" for the oldest
    /// retained): checks it, then streams events in a task of its own.
    pub async fn watch(
        &self,
        cursor: &str,
    ) -> Result<mpsc::Receiver<Result<pb::WatchPresenceResponse, Status>>, Status> {
        let buckets = self.store.buckets();
        let start = match cursor {
            "" => None,
            c => Some(Position::parse(c, buckets).ok_or_else(|| {
                Error::invalid("cursor", "must be an event_id of this deployment's WatchPresence, \"0\" or empty")
            })?),
        };
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this replica serves its maximum of {} watchers (--max-watchers)",
                self.max
            ))
        })?;
        // Subscribed before the cursor is read: nothing appended from here on is missed.
        let live = self.live.subscribe();
        self.watched.notify_one();
        let cursor = match start {
            None => self.store.last_position().await?,
            Some(at) if self.store.trimmed_past(&at).await? => return Err(resync()),
            Some(at) => at,
        };
        let (tx, rx) = mpsc::channel(8);
        let watcher = Watcher { store: self.store.clone(), cursor, tx };
        tokio::spawn(async move {
            watcher.run(live).await;
            drop(slot);
        });
        Ok(rx)
    }
}

/// One watcher's task.
struct Watcher {
    store: Store,
    /// Past the last event sent.
    cursor: Position,
    tx: mpsc::Sender<Result<pb::WatchPresenceResponse, Status>>,
}

impl Watcher {
    async fn run(mut self, mut live: broadcast::Receiver<Read>) {
        let mut caught_up = false;
        loop {
            if !caught_up {
                match self.catch_up().await {
                    Ok(true) => caught_up = true,
                    Ok(false) => return,
                    Err(status) => return self.end(status).await,
                }
            }
            let read = tokio::select! {
                _ = self.tx.closed() => return,
                r = live.recv() => r,
            };
            match read {
                Ok(Read::Events(events)) => {
                    let new: Vec<Event> = events.iter().filter(|e| self.is_new(e)).cloned().collect();
                    if !self.send(new).await {
                        return;
                    }
                }
                Ok(Read::Lost) => return self.end(resync()).await,
                Ok(Read::Resumed) => caught_up = false,
                // Fell behind the broadcast: what it dropped is still in Redis.
                Err(broadcast::error::RecvError::Lagged(_)) => caught_up = false,
                Err(broadcast::error::RecvError::Closed) => {
                    return self.end(Status::unavailable("the presence service is shutting down")).await;
                }
            }
        }
    }

    /// Sends what Redis holds after the cursor until there is nothing more. False when
    /// the watcher went away.
    async fn catch_up(&mut self) -> Result<bool, Status> {
        loop {
            if self.store.trimmed_past(&self.cursor).await? {
                return Err(resync());
            }
            let events = self.store.events_after(&self.cursor, BATCH).await?;
            let done = events.len() < BATCH;
            if !self.send(events).await {
                return Ok(false);
            }
            if done {
                return Ok(true);
            }
        }
    }

    fn is_new(&self, e: &Event) -> bool {
        self.cursor.is_new(e)
    }

    /// Sends `events` as one item (nothing for none), each with the position past it as
    /// its `event_id`; false when the watcher went away.
    async fn send(&mut self, events: Vec<Event>) -> bool {
        if events.is_empty() {
            return !self.tx.is_closed();
        }
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            self.cursor.advance(&e);
            out.push(crate::service::to_pb(e, self.cursor.encode()));
        }
        self.tx.send(Ok(pb::WatchPresenceResponse { events: out })).await.is_ok()
    }

    async fn end(&self, status: Status) {
        let _ = self.tx.send(Err(status)).await;
    }
}

/// The replica's reader: follows the events from the newest while anyone watches,
/// reconnecting with backoff, and broadcasts what it reads. While no one watches it
/// reads nothing (an idle replica costs Redis nothing here; on a Cluster the reader
/// polls every bucket), and it starts again from the newest when a watcher comes.
async fn read(store: Store, redis: RedisArgs, live: broadcast::Sender<Read>, watched: Arc<Notify>) {
    let mut cursor: Option<Position> = None;
    let mut backoff = Duration::from_millis(50);
    let mut failing = false;
    let topology = match Topology::from_args(&redis) {
        Ok(t) => t,
        Err(e) => return tracing::error!(error = %e, "presence watch reader cannot start"),
    };
    loop {
        if live.receiver_count() == 0 {
            cursor = None;
            while live.receiver_count() == 0 {
                watched.notified().await;
            }
        }
        let conn = match topology.is_cluster() {
            true => None,
            false => Some(dedicated(&topology, &redis, BLOCK + redis.timeout).await),
        };
        let start = match &cursor {
            Some(c) => Ok(c.clone()),
            None => store.last_position().await,
        };
        let (mut conn, mut at) = match (conn.transpose(), start) {
            (Ok(conn), Ok(at)) => {
                if cursor.is_none() {
                    let _ = live.send(Read::Resumed);
                }
                (conn, at)
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "presence watch reader cannot connect yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        while live.receiver_count() > 0 {
            let read = match &mut conn {
                Some(conn) => store.wait_for_events(conn, &at, BLOCK, BATCH).await,
                None => store.events_after(&at, BATCH).await,
            };
            let events = match read {
                Ok(events) => events,
                Err(e) => {
                    // Once per outage at warn; a read that fails at once (every node gone,
                    // a key of the wrong type) is retried with backoff, never in a spin.
                    if !failing {
                        tracing::warn!(error = %e, "presence watch reader lost its connection; reconnecting");
                    } else {
                        tracing::debug!(error = %e, ?backoff, "presence watch reader still cannot read");
                    }
                    failing = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    break;
                }
            };
            if failing {
                tracing::info!("presence watch reader reads again");
                failing = false;
            }
            backoff = Duration::from_millis(50);
            if events.is_empty() {
                if conn.is_none() {
                    tokio::time::sleep(POLL).await;
                }
                continue;
            }
            // Trimming may have overtaken the reader: say so rather than skip silently.
            let lost = store.trimmed_past(&at).await.unwrap_or(false);
            for e in &events {
                at.advance(e);
            }
            let _ = live.send(if lost { Read::Lost } else { Read::Events(events.into()) });
        }
        cursor = Some(at);
    }
}
