//! WatchPresence: every watcher of a replica is served by one reader.
//!
//! One task per replica reads the presence events with `XREAD BLOCK` on its one
//! dedicated connection and broadcasts each batch. A watcher subscribes to the
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

use push_common::{Error, config::RedisArgs};
use push_proto::presence::v1 as pb;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tonic::Status;

use crate::store::{Event, Store, parse_event_id};

/// How long the reader's XREAD blocks before it reads again.
const BLOCK: Duration = Duration::from_secs(5);
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
}

/// The watchers of one replica; cheap to clone.
#[derive(Clone)]
pub struct Watchers {
    store: Store,
    live: broadcast::Sender<Read>,
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
        let reader = tokio::spawn(read(store.clone(), redis, live.clone()));
        (Watchers { store, live, slots: Arc::new(Semaphore::new(max)), max }, reader)
    }

    /// Opens a watch from `cursor` ('' for new events only, "0" for the oldest
    /// retained): checks it, then streams events in a task of its own.
    pub async fn watch(
        &self,
        cursor: &str,
    ) -> Result<mpsc::Receiver<Result<pb::WatchPresenceResponse, Status>>, Status> {
        let start = match cursor {
            "" => None,
            c => Some(
                parse_event_id(c)
                    .ok_or_else(|| Error::invalid("cursor", "must be an event_id from this stream, \"0\" or empty"))?,
            ),
        };
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this replica serves its maximum of {} watchers (--max-watchers)",
                self.max
            ))
        })?;
        // Subscribed before the cursor is read: nothing appended from here on is missed.
        let live = self.live.subscribe();
        let cursor = match start {
            None => self.store.last_event_id().await?,
            Some(id) if id != (0, 0) && self.store.trimmed_past(id).await? => return Err(resync()),
            Some(_) => cursor.to_owned(),
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
    /// The last event sent.
    cursor: String,
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
            if let Some(c) = parse_event_id(&self.cursor).filter(|c| *c != (0, 0))
                && self.store.trimmed_past(c).await?
            {
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
        parse_event_id(&e.id) > parse_event_id(&self.cursor)
    }

    /// Sends `events` as one item (nothing for none); false when the watcher went away.
    async fn send(&mut self, events: Vec<Event>) -> bool {
        let Some(last) = events.last() else { return !self.tx.is_closed() };
        self.cursor = last.id.clone();
        let item = pb::WatchPresenceResponse { events: events.into_iter().map(crate::service::to_pb).collect() };
        self.tx.send(Ok(item)).await.is_ok()
    }

    async fn end(&self, status: Status) {
        let _ = self.tx.send(Err(status)).await;
    }
}

/// The replica's reader: follows the events from the newest at start, on one dedicated
/// connection, reconnecting with backoff, and broadcasts what it reads.
async fn read(store: Store, redis: RedisArgs, live: broadcast::Sender<Read>) {
    let mut cursor: Option<String> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let conn = push_common::redis::dedicated(&redis, BLOCK + redis.timeout).await;
        let start = match &cursor {
            Some(c) => Ok(c.clone()),
            None => store.last_event_id().await,
        };
        let (mut conn, mut at) = match (conn, start) {
            (Ok(conn), Ok(at)) => (conn, at),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "presence watch reader cannot connect yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        loop {
            let events = match store.wait_for_events(&mut conn, &at, BLOCK, BATCH).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "presence watch reader lost its connection; reconnecting");
                    break;
                }
            };
            let Some(last) = events.last().map(|e| e.id.clone()) else { continue };
            // Trimming may have overtaken the reader: say so rather than skip silently.
            let lost = match parse_event_id(&at).filter(|c| *c != (0, 0)) {
                Some(c) => store.trimmed_past(c).await.unwrap_or(false),
                None => false,
            };
            at = last;
            let _ = live.send(if lost { Read::Lost } else { Read::Events(events.into()) });
        }
        cursor = Some(at);
    }
}
