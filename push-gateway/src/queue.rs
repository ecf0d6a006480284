//! The bounded queue between the hub and one device stream, and the stream itself.
//!
//! The hub pushes pre-encoded messages without ever waiting: a full queue marks the
//! stream as overflowed and the stream ends with RESOURCE_EXHAUSTED, so a slow reader
//! never slows anyone else down. The stream drains everything queued into one
//! `SubscribeResponse` per poll (up to a batch limit): one write and one wakeup for many
//! messages when a burst arrives, which is what makes fan-out cheap per delivery.
//!
//! Gap-free and duplicate-free: the queue knows its position in every history it
//! receives (the last id queued) and drops a live message at or before it. While a
//! replay runs (`begin_sync` .. `end_sync`: the stream opening, a group joined, the hub
//! reconnected), live messages are held back, and released through the same filter
//! once the replays have caught up, so replayed and live messages never interleave.
use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
};

use prost::bytes::Bytes;
use push_proto::{
    push::v1::{Continuity, HistoryState},
    wire::SubscribeResponse,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

use crate::history::{Pos, Source, StreamId};

/// Most messages in one stream item.
const BATCH_MESSAGES: usize = 64;
/// Most bytes in one stream item (a single larger message still goes alone).
const BATCH_BYTES: usize = 64 * 1024;

/// The first byte of a pre-encoded `SubscribeResponse.states` entry (field 2, bytes).
const STATE_TAG: u8 = 0x12;

/// Limits of one queue.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub messages: usize,
    pub bytes: usize,
}

/// One device stream: its queue and who it is for. Shared by the hub (which pushes),
/// the stream (which drains) and the gateway's session task (which renews, reconciles
/// groups and cleans up). It is everything a stream costs beyond the transport, so it
/// is kept small: no task, no timer per stream. The `Mutex`es are std ones, held for a
/// few instructions and never across an `.await`.
#[derive(Debug)]
pub struct Queue {
    state: Mutex<State>,
    limits: Limits,
    pub user: Box<str>,
    pub device: Box<str>,
    /// The groups whose channels this stream is attached to.
    pub groups: Mutex<Vec<String>>,
    /// Reconciling groups: `dirty` says the user's groups changed since the stream last
    /// read them; `scheduled` says a reconciliation is queued or running. Together they
    /// make changes coalesce without ever being lost or reconciled twice at once (see
    /// `subscribe::reconcile`).
    pub dirty: AtomicBool,
    pub scheduled: AtomicBool,
    /// Set once when the stream has ended, before its channels are detached.
    pub closed: AtomicBool,
    /// When the device's credential runs out (seconds since the Unix epoch; 0: never):
    /// the stream is ended then, and the device reconnects with a fresh token.
    pub until: u64,
    /// This stream's number on its replica: with the replica's id, the owner of the
    /// device's presence session while the stream holds it.
    pub serial: u64,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Bytes>,
    bytes: usize,
    waker: Option<Waker>,
    /// Set once: the stream ends with this status after what is already queued
    /// (or at once, for an overflow, since the queue was dropped).
    /// Boxed, as it is rarely there: an idle stream pays a pointer for it.
    end: Option<Box<Status>>,
    /// Replays in progress; live messages are held while it is above 0.
    syncing: u32,
    held: Vec<(Source, StreamId, Bytes)>,
    positions: Positions,
}

impl State {
    fn held_len(&self) -> usize {
        self.held.len()
    }
}

/// The last id queued per history.
#[derive(Debug, Default)]
struct Positions {
    all: Option<Pos>,
    inbox: Option<Pos>,
    groups: Vec<(Box<str>, Pos)>,
}

impl Positions {
    fn get_mut(&mut self, source: &Source) -> Option<&mut Pos> {
        match source {
            Source::All => self.all.as_mut(),
            Source::Inbox => self.inbox.as_mut(),
            Source::Group(g) => self.groups.iter_mut().find(|(h, _)| h == g).map(|(_, p)| p),
        }
    }

    fn set(&mut self, source: &Source, pos: Pos) {
        match source {
            Source::All => self.all = Some(pos),
            Source::Inbox => self.inbox = Some(pos),
            Source::Group(g) => match self.groups.iter_mut().find(|(h, _)| h == g) {
                Some((_, p)) => *p = pos,
                None => self.groups.push((g.clone(), pos)),
            },
        }
    }

    /// Moves past `id` if it is new; false for a message already queued (or from a
    /// history the stream does not follow).
    fn advance(&mut self, source: &Source, id: StreamId) -> bool {
        match self.get_mut(source) {
            Some(p) if id > p.id => {
                p.id = id;
                true
            }
            _ => false,
        }
    }
}

impl Queue {
    pub fn new(limits: Limits, user: &str, device: &str) -> Arc<Self> {
        Self::open(limits, user, device, 0, 0)
    }

    /// A queue whose stream must end at `until` (seconds since the Unix epoch; 0: never),
    /// number `serial` on its replica.
    pub fn open(limits: Limits, user: &str, device: &str, until: u64, serial: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            limits,
            user: user.into(),
            device: device.into(),
            groups: Mutex::default(),
            // A new stream has its groups read as part of opening it.
            dirty: AtomicBool::new(true),
            scheduled: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            until,
            serial,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one live message of `source` (unless it was queued already). A queue past
    /// its limits is emptied and its stream ends with RESOURCE_EXHAUSTED; the device
    /// resumes from its cursor by reconnecting.
    pub fn push(&self, source: &Source, id: StreamId, entry: Bytes) {
        let waker = {
            let mut s = self.state();
            if s.end.is_some() {
                return;
            }
            if s.syncing > 0 {
                s.bytes += entry.len();
                s.held.push((source.clone(), id, entry));
                self.check_limits(&mut s);
            } else if s.positions.advance(source, id) {
                self.enqueue(&mut s, entry);
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues one replayed message of `source` (unless it was queued already).
    pub fn replayed(&self, source: &Source, id: StreamId, entry: Bytes) {
        let waker = {
            let mut s = self.state();
            if s.end.is_some() || !s.positions.advance(source, id) {
                return;
            }
            self.enqueue(&mut s, entry);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Sets the stream's position in `source` and tells the device with a HistoryState.
    pub fn set_position(&self, source: &Source, pos: Pos, continuity: Continuity) {
        let state = HistoryState { cursor: Some(source.cursor(pos.epoch, pos.id)), continuity: continuity as i32 };
        let waker = {
            let mut s = self.state();
            if s.end.is_some() {
                return;
            }
            s.positions.set(source, pos);
            self.enqueue(&mut s, SubscribeResponse::state_entry(&state));
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// A history started over with a new epoch while the stream follows it live: the
    /// stream keeps its place and tells the device the new epoch.
    pub fn epoch_changed(&self, source: &Source, epoch: u64) {
        let current = self.state().positions.get_mut(source).copied();
        if let Some(p) = current.filter(|p| p.epoch != epoch) {
            self.set_position(source, Pos { epoch, id: p.id }, Continuity::Resumed);
        }
    }

    /// Stops following a group's history (the user left it).
    pub fn forget(&self, groups: &[String]) {
        self.state().positions.groups.retain(|(g, _)| !groups.iter().any(|l| **l == **g));
    }

    /// The stream's position in every history it follows.
    pub fn positions(&self) -> Vec<(Source, Pos)> {
        let s = self.state();
        let p = &s.positions;
        let fixed = [(Source::All, p.all), (Source::Inbox, p.inbox)];
        let fixed = fixed.into_iter().filter_map(|(src, pos)| Some((src, pos?)));
        fixed.chain(p.groups.iter().map(|(g, pos)| (Source::Group(g.clone()), *pos))).collect()
    }

    /// Holds live messages back until the matching [`Queue::end_sync`].
    pub fn begin_sync(&self) {
        self.state().syncing += 1;
    }

    /// Ends one replay; when none is left, releases the held live messages that are new.
    pub fn end_sync(&self) {
        let waker = {
            let mut s = self.state();
            s.syncing = s.syncing.saturating_sub(1);
            if s.syncing > 0 {
                return;
            }
            if s.held.is_empty() {
                return;
            }
            for (source, id, entry) in std::mem::take(&mut s.held) {
                s.bytes -= entry.len();
                if s.end.is_none() && s.positions.advance(&source, id) {
                    self.enqueue(&mut s, entry);
                }
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// True while more than half the queue's room is taken (replays wait for room).
    pub fn is_busy(&self) -> bool {
        let s = self.state();
        s.items.len() + s.held_len() > self.limits.messages / 2 || s.bytes > self.limits.bytes / 2
    }

    fn enqueue(&self, s: &mut State, entry: Bytes) {
        s.bytes += entry.len();
        s.items.push_back(entry);
        self.check_limits(s);
    }

    fn check_limits(&self, s: &mut State) {
        if s.items.len() + s.held_len() > self.limits.messages || s.bytes > self.limits.bytes {
            s.items = VecDeque::new();
            s.held = Vec::new();
            s.bytes = 0;
            let status = Status::resource_exhausted("the device fell too far behind: its queue overflowed; reconnect");
            s.end = Some(Box::new(status));
            tracing::info!("slow consumer disconnected");
        }
    }

    /// Ends the stream with `status` once what is queued has been sent.
    pub fn close(&self, status: Status) {
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.end.is_none() {
                s.end = Some(Box::new(status));
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Marks a membership change; true when no reconciliation was scheduled (the caller
    /// then schedules one).
    pub fn mark_membership_changed(&self) -> bool {
        self.dirty.store(true, Ordering::Release);
        !self.scheduled.swap(true, Ordering::AcqRel)
    }

    fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<Option<Result<SubscribeResponse, Status>>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.items.is_empty() {
            let mut encoded = Vec::with_capacity(s.items.len().min(BATCH_MESSAGES));
            let mut size = 0;
            let mut has_message = false;
            while let Some(front) = s.items.front() {
                if !encoded.is_empty() && (encoded.len() == BATCH_MESSAGES || size + front.len() > BATCH_BYTES) {
                    break;
                }
                // A client reads an item's states and messages as two lists, so a state
                // never follows a message within one item: it starts the next one.
                let is_state = front.first() == Some(&STATE_TAG);
                if is_state && has_message {
                    break;
                }
                has_message |= !is_state;
                size += front.len();
                encoded.extend(s.items.pop_front());
            }
            s.bytes -= size;
            if s.items.is_empty() {
                // Give the memory back: an idle stream should cost next to nothing (one
                // allocation per batch is noise next to the write that sends it).
                s.items = VecDeque::new();
            }
            return Poll::Ready(Some(Ok(SubscribeResponse { messages: Vec::new(), states: Vec::new(), encoded })));
        }
        if let Some(status) = &s.end {
            // Kept (not taken): an ended queue stays ended and ignores late pushes.
            return Poll::Ready(Some(Err(Status::clone(status))));
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The response stream of one Subscribe. Dropping it (the device went away, or the
/// stream ended) hands the queue to the session task, which detaches and logs out.
pub struct DeviceStream {
    queue: Arc<Queue>,
    finished: bool,
    closed: mpsc::UnboundedSender<Arc<Queue>>,
}

impl DeviceStream {
    pub fn new(queue: Arc<Queue>, closed: mpsc::UnboundedSender<Arc<Queue>>) -> Self {
        Self { queue, finished: false, closed }
    }
}

impl Drop for DeviceStream {
    fn drop(&mut self) {
        let _ = self.closed.send(self.queue.clone());
    }
}

impl Stream for DeviceStream {
    type Item = Result<SubscribeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let item = self.queue.poll_batch(cx);
        if let Poll::Ready(Some(Err(_))) = item {
            self.finished = true;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn poll(q: &Queue) -> Poll<Option<Result<SubscribeResponse, Status>>> {
        q.poll_batch(&mut Context::from_waker(Waker::noop()))
    }

    /// A queue that follows the broadcast history from its start.
    fn queue(messages: usize, bytes: usize) -> Arc<Queue> {
        let q = Queue::new(Limits { messages, bytes }, "u", "d");
        q.state().positions.all = Some(Pos { epoch: 1, id: StreamId::default() });
        q
    }

    fn id(n: u64) -> StreamId {
        StreamId { ms: n, seq: 0 }
    }

    /// Pushes live message `n` (id n-0) of the broadcast history.
    fn live(q: &Queue, n: u64, entry: Bytes) {
        q.push(&Source::All, id(n), entry);
    }

    fn items(q: &Queue) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Poll::Ready(Some(Ok(r))) = poll(q) {
            out.extend(r.encoded);
        }
        out
    }

    #[test]
    fn replay_then_live_without_gap_or_duplicate() {
        let q = queue(100, 1 << 20);
        q.begin_sync();
        // Live messages 3..=5 arrive while the replay (1..=4) runs: held back.
        for n in 3..=5 {
            live(&q, n, Bytes::from(vec![n as u8]));
        }
        assert!(poll(&q).is_pending());
        for n in 1..=4 {
            q.replayed(&Source::All, id(n), Bytes::from(vec![n as u8]));
        }
        q.end_sync();
        live(&q, 5, Bytes::from_static(&[5])); // late duplicate of a held one
        live(&q, 6, Bytes::from_static(&[6]));
        let got: Vec<u8> = items(&q).iter().map(|b| b[0]).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
        // A history the stream does not follow delivers nothing.
        q.push(&Source::Group("g".into()), id(9), Bytes::from_static(b"x"));
        assert!(items(&q).is_empty());
    }

    #[test]
    fn a_state_never_follows_a_message_in_one_item() {
        let q = queue(100, 1 << 20);
        live(&q, 1, SubscribeResponse::message_entry(b"m1"));
        q.set_position(&Source::All, Pos { epoch: 2, id: id(1) }, Continuity::Resumed);
        live(&q, 2, SubscribeResponse::message_entry(b"m2"));
        let Poll::Ready(Some(Ok(first))) = poll(&q) else { panic!() };
        assert_eq!(first.encoded.len(), 1, "the message alone");
        let Poll::Ready(Some(Ok(second))) = poll(&q) else { panic!() };
        assert_eq!(second.encoded.len(), 2, "the state, then the message after it");
        assert_eq!(second.encoded[0][0], STATE_TAG);
    }

    #[test]
    fn positions_are_reported_and_forgotten() {
        let q = queue(100, 1 << 20);
        let g = Source::Group("g".into());
        q.set_position(&g, Pos { epoch: 7, id: id(3) }, Continuity::FromNow);
        let states = items(&q);
        assert_eq!(states.len(), 1, "a HistoryState entry");
        assert_eq!(q.positions().len(), 2);
        q.epoch_changed(&g, 8);
        assert_eq!(items(&q).len(), 1, "the new epoch is announced");
        assert!(q.positions().contains(&(g.clone(), Pos { epoch: 8, id: id(3) })));
        q.forget(&["g".to_string()]);
        assert_eq!(q.positions(), vec![(Source::All, Pos { epoch: 1, id: StreamId::default() })]);
    }

    #[test]
    fn drains_what_is_queued_into_one_item() {
        let q = queue(1000, 1 << 20);
        assert!(poll(&q).is_pending());
        for i in 0..100u8 {
            live(&q, u64::from(i) + 1, SubscribeResponse::message_entry(&[i; 10]));
        }
        let Poll::Ready(Some(Ok(first))) = poll(&q) else { panic!() };
        assert_eq!(first.encoded.len(), BATCH_MESSAGES);
        let Poll::Ready(Some(Ok(rest))) = poll(&q) else { panic!() };
        assert_eq!(rest.encoded.len(), 100 - BATCH_MESSAGES);
        assert_eq!(rest.encoded.last().unwrap().last(), Some(&99), "order kept");
        assert!(poll(&q).is_pending());
    }

    #[test]
    fn overflow_ends_the_stream_with_resource_exhausted() {
        let q = queue(3, 1 << 20);
        for n in 1..=4 {
            live(&q, n, Bytes::from_static(b"x"));
        }
        let Poll::Ready(Some(Err(s))) = poll(&q) else { panic!("expected the end") };
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        live(&q, 9, Bytes::from_static(b"late"));
        assert!(matches!(poll(&q), Poll::Ready(Some(Err(_)))), "still ended; the late message is dropped");

        let q = queue(100, 10);
        live(&q, 1, Bytes::from(vec![0; 11]));
        assert!(matches!(poll(&q), Poll::Ready(Some(Err(_)))));
    }

    #[test]
    fn close_ends_after_queued_messages() {
        let q = queue(10, 1 << 20);
        live(&q, 1, Bytes::from_static(b"a"));
        q.close(Status::unavailable("shutting down"));
        assert!(matches!(poll(&q), Poll::Ready(Some(Ok(_)))));
        let Poll::Ready(Some(Err(s))) = poll(&q) else { panic!() };
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }
}
