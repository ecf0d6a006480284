//! The bounded queue between the hub and one device stream, and where the stream
//! stands in each history it follows.
//!
//! The hub pushes pre-encoded messages without ever waiting: a full queue drops what it
//! holds and the stream ends with RESOURCE_EXHAUSTED, so a slow reader never slows
//! anyone else down. The stream drains everything queued into one `SubscribeResponse`
//! per poll (up to a batch limit): one write and one wakeup for many messages when a
//! burst arrives, which is what makes fan-out cheap per delivery.
//!
//! Once, in order, no gap: the queue knows its position in every history (the last id
//! queued) under the same lock as the items, so the check and the enqueue are one step.
//! - A live message at or before the position is a duplicate and is dropped.
//! - A live message whose predecessor (as the push script saw it) is past the position
//!   means one was lost on its way: the queue pauses itself, holds the message and
//!   tells the hub ([`Pushed::Missing`]), which has the history replayed from the
//!   position first.
//! - While paused (a replay runs: the stream opening, a group joined, the hub
//!   reconnected, a lost message) live messages are held back, and released through the
//!   same checks when the last pause ends, so replayed and live never interleave.
//!
//! The pause is counted here but owned elsewhere: only [`super::Pause`], a guard whose
//! drop releases it, takes and gives it back.
use std::{
    collections::VecDeque,
    sync::Mutex,
    task::{Context, Poll, Waker},
};

use prost::bytes::Bytes;
use push_proto::{
    push::v1::{Continuity, HistoryState},
    wire::SubscribeResponse,
};
use tonic::Status;

use crate::history::{Pos, Source, StreamId};
use push_common::ids::GroupId;

mod positions;
use positions::{Order, Positions};

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

/// What became of a live message.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued, held for a replay in progress, or dropped as a duplicate.
    Taken,
    /// It does not follow what the stream has: one before it was lost. The queue paused
    /// itself and holds the message; [`super::Stream::deliver`] hands that pause on so
    /// the history is replayed.
    Missing,
}

/// The byte queue, the held live messages and the positions of one stream. The `Mutex`
/// is a std one, held for a few instructions and never across an `.await`.
#[derive(Debug)]
pub struct Queue {
    state: Mutex<State>,
    limits: Limits,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Bytes>,
    /// Bytes of `items` and `held`.
    bytes: usize,
    waker: Option<Waker>,
    /// Set once: the stream ends with this status after what is already queued
    /// (or at once, for an overflow, since the queue was dropped).
    /// Boxed, as it is rarely there: an idle stream pays a pointer for it.
    end: Option<Box<Status>>,
    /// Pauses taken and not yet given back; live messages are held while above 0.
    pauses: u32,
    held: Vec<Held>,
    positions: Positions,
}

#[derive(Debug)]
struct Held {
    source: Source,
    prev: Option<StreamId>,
    id: StreamId,
    entry: Bytes,
}

/// Wakes the stream's task, outside the lock.
fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

impl Queue {
    pub fn new(limits: Limits) -> Self {
        Self { state: Mutex::default(), limits }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one live message of `source` that followed `prev` in its history (unless
    /// it was queued already). A queue past its limits is emptied and its stream ends
    /// with RESOURCE_EXHAUSTED; the device resumes from its cursor by reconnecting.
    pub(in crate::stream) fn push(
        &self,
        source: &Source,
        prev: Option<StreamId>,
        id: StreamId,
        entry: Bytes,
    ) -> Pushed {
        let mut pushed = Pushed::Taken;
        let waker = {
            let mut s = self.state();
            if s.end.is_some() {
                return Pushed::Taken;
            }
            let order = if s.pauses > 0 { None } else { Some(s.positions.order(source, prev, id)) };
            match order {
                Some(Order::Next) => {
                    s.positions.advance(source, id);
                    self.enqueue(&mut s, entry);
                }
                Some(Order::Stale) => return Pushed::Taken,
                Some(Order::Missing) | None => {
                    if order.is_some() {
                        s.pauses += 1;
                        pushed = Pushed::Missing;
                    }
                    s.bytes += entry.len();
                    s.held.push(Held { source: source.clone(), prev, id, entry });
                    self.check_limits(&mut s);
                }
            }
            s.waker.take()
        };
        wake(waker);
        pushed
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
        wake(waker);
    }

    /// Starts following `source` at `pos` (or moves there) and tells the device with a
    /// HistoryState.
    pub fn establish(&self, source: &Source, pos: Pos, continuity: Continuity) {
        self.set_position(source, pos, continuity, true);
    }

    /// Moves an existing position (a replay found a gap or a new epoch) and tells the
    /// device. False when the stream no longer follows `source` (its user left the
    /// group): a replay must never bring back what membership removed.
    pub fn reposition(&self, source: &Source, pos: Pos, continuity: Continuity) -> bool {
        self.set_position(source, pos, continuity, false)
    }

    fn set_position(&self, source: &Source, pos: Pos, continuity: Continuity, create: bool) -> bool {
        let state = HistoryState { cursor: Some(source.cursor(pos.epoch, pos.id)), continuity: continuity as i32 };
        let waker = {
            let mut s = self.state();
            if s.end.is_some() || (!create && s.positions.get(source).is_none()) {
                return false;
            }
            s.positions.set(source, pos);
            self.enqueue(&mut s, SubscribeResponse::state_entry(&state));
            s.waker.take()
        };
        wake(waker);
        true
    }

    /// A history started over with a new epoch while the stream follows it live: the
    /// stream keeps its place and tells the device the new epoch.
    pub fn epoch_changed(&self, source: &Source, epoch: u64) {
        let current = self.position(source);
        if let Some(p) = current.filter(|p| p.epoch != epoch) {
            self.reposition(source, Pos { epoch, id: p.id }, Continuity::Resumed);
        }
    }

    /// Tells the device that its user left a group it has a cursor for, at `pos` (a
    /// `CONTINUITY_LEFT` state), and stops following it.
    pub fn left(&self, source: &Source, pos: Pos) {
        let state =
            HistoryState { cursor: Some(source.cursor(pos.epoch, pos.id)), continuity: Continuity::Left as i32 };
        let waker = {
            let mut s = self.state();
            if s.end.is_some() {
                return;
            }
            if let Source::Group(g) = source {
                s.positions.forget(std::slice::from_ref(g));
            }
            self.enqueue(&mut s, SubscribeResponse::state_entry(&state));
            s.waker.take()
        };
        wake(waker);
    }

    /// Stops following groups' histories (the user left them).
    pub fn forget(&self, groups: &[GroupId]) {
        self.state().positions.forget(groups);
    }

    /// The stream's position in `source`, if it follows it.
    pub fn position(&self, source: &Source) -> Option<Pos> {
        self.state().positions.get(source)
    }

    /// The stream's position in every history it follows.
    pub fn positions(&self) -> Vec<(Source, Pos)> {
        self.state().positions.list()
    }

    /// Takes one pause (see [`super::Pause`]).
    pub(super) fn pause(&self) {
        self.state().pauses += 1;
    }

    /// Gives one pause back; when none is left, releases the held live messages through
    /// the order checks. Returns the histories in which a released message does not
    /// follow the position: the queue then keeps one pause (the caller adopts it) and
    /// holds those histories' messages until they are replayed. With `hold_on` false
    /// (nobody can replay any more: shutting down) it never keeps a pause.
    pub(super) fn resume(&self, hold_on: bool) -> Vec<Source> {
        let mut missing: Vec<Source> = Vec::new();
        let waker = {
            let mut s = self.state();
            s.pauses = s.pauses.saturating_sub(1);
            if s.pauses > 0 || s.held.is_empty() {
                return missing;
            }
            let mut kept = Vec::new();
            for h in std::mem::take(&mut s.held) {
                s.bytes -= h.entry.len();
                if s.end.is_some() {
                    continue;
                }
                let order = match missing.contains(&h.source) {
                    true => Order::Missing,
                    false => s.positions.order(&h.source, h.prev, h.id),
                };
                match order {
                    Order::Next => {
                        s.positions.advance(&h.source, h.id);
                        self.enqueue(&mut s, h.entry);
                    }
                    Order::Missing if hold_on => {
                        if !missing.contains(&h.source) {
                            missing.push(h.source.clone());
                        }
                        s.bytes += h.entry.len();
                        kept.push(h);
                    }
                    Order::Missing | Order::Stale => {}
                }
            }
            s.held = kept;
            if !missing.is_empty() {
                s.pauses += 1;
            }
            s.waker.take()
        };
        wake(waker);
        missing
    }

    /// True while more than half the queue's room is taken (replays wait for room).
    pub fn is_busy(&self) -> bool {
        let s = self.state();
        s.items.len() + s.held.len() > self.limits.messages / 2 || s.bytes > self.limits.bytes / 2
    }

    /// How many messages a replay may add now without passing half the queue (at least
    /// one): replays read pages of at most this, so no backlog overflows the queue.
    pub fn room(&self) -> usize {
        let s = self.state();
        (self.limits.messages / 2).saturating_sub(s.items.len() + s.held.len()).max(1)
    }

    fn enqueue(&self, s: &mut State, entry: Bytes) {
        // An empty entry only moved the position (a message excluding this stream's user).
        if entry.is_empty() {
            return;
        }
        s.bytes += entry.len();
        s.items.push_back(entry);
        self.check_limits(s);
    }

    fn check_limits(&self, s: &mut State) {
        if s.items.len() + s.held.len() > self.limits.messages || s.bytes > self.limits.bytes {
            metrics::counter!("push_gateway_slow_consumer_cutoffs_total").increment(1);
            metrics::counter!("push_gateway_queue_dropped_total").increment((s.items.len() + s.held.len()) as u64);
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
            let mut s = self.state();
            if s.end.is_none() {
                s.end = Some(Box::new(status));
            }
            s.waker.take()
        };
        wake(waker);
    }

    /// The next stream item: everything queued (up to a batch), or the end.
    pub fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<Option<Result<SubscribeResponse, Status>>> {
        let mut s = self.state();
        if !s.items.is_empty() {
            let mut encoded = Vec::with_capacity(s.items.len().min(BATCH_MESSAGES));
            let mut size = 0;
            let mut has_message = false;
            let mut messages = 0u64;
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
                messages += u64::from(!is_state);
                size += front.len();
                encoded.extend(s.items.pop_front());
            }
            s.bytes -= size;
            // Handed to the transport: a delivery per message (live or replayed).
            metrics::counter!("push_gateway_deliveries_total").increment(messages);
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

#[cfg(test)]
mod tests;
