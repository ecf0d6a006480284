//! The record of one device stream (who it is for, its groups, its queue) and the
//! [`Pause`] guard that holds its live messages back while a replay runs.
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use tonic::Status;

use prost::bytes::Bytes;

use super::{
    Event, Events,
    queue::{Limits, Pushed, Queue},
};
use crate::history::{Source, StreamId};
use push_common::ids::{DeviceId, GroupId, UserId};

/// One device stream. Shared by the hub (which pushes), the response stream (which
/// drains) and the maintenance task (which renews, reconciles groups and cleans up).
/// It is everything a stream costs beyond the transport, so it is kept small: no
/// task, no timer per stream. The `Mutex` is a std one, held for a few instructions
/// and never across an `.await`.
#[derive(Debug)]
pub struct Stream {
    pub user: UserId,
    pub device: DeviceId,
    /// When the device's credential runs out (seconds since the Unix epoch; 0: never):
    /// the stream is ended then, and the device reconnects with a fresh token.
    pub until: u64,
    /// When the stream has lived its maximum age (`--max-stream-age`, jittered): it is
    /// ended then with UNAVAILABLE and the device reconnects, wherever the load
    /// balancer sends it now (None: never).
    pub retire_at: Option<std::time::Instant>,
    /// This stream's number on its replica: with the replica's id, the owner of the
    /// device's presence session while the stream holds it.
    pub serial: u64,
    pub queue: Queue,
    /// The groups whose channels this stream is attached to, sorted.
    groups: Mutex<Vec<GroupId>>,
    /// `dirty`: the user's groups changed since the stream last read them; `scheduled`:
    /// a reconciliation is queued or running. Together they make changes coalesce
    /// without ever being lost or reconciled twice at once (see `groups::reconcile`).
    dirty: AtomicBool,
    scheduled: AtomicBool,
    /// Set once when the stream has ended, before its channels are detached.
    closed: AtomicBool,
    /// The device's presence session is held by this replica for this stream (its
    /// login succeeded, and no other owner took the session over since).
    holding: AtomicBool,
}

impl Stream {
    pub fn new(
        limits: Limits,
        user: UserId,
        device: DeviceId,
        until: u64,
        retire_at: Option<std::time::Instant>,
        serial: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            user,
            device,
            until,
            retire_at,
            serial,
            queue: Queue::new(limits),
            groups: Mutex::default(),
            // A new stream has its groups read as part of opening it.
            dirty: AtomicBool::new(true),
            scheduled: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            holding: AtomicBool::new(false),
        })
    }

    /// Delivers one live message of `source` that followed `prev` in its history. When
    /// one before it was lost, the queue pauses itself and holds the message; the pause
    /// travels to the maintenance task with the history to replay first
    /// ([`Event::Missed`]), so no caller has to give it back by hand.
    pub fn deliver(
        self: &Arc<Self>,
        source: &Source,
        prev: Option<StreamId>,
        id: StreamId,
        entry: Bytes,
        events: &Events,
    ) {
        if self.queue.push(source, prev, id, entry) == Pushed::Missing {
            let pause = Pause::adopt(self.clone(), events.clone());
            let _ = events.send(Event::Missed(pause, vec![source.clone()]));
        }
    }

    /// Ends delivery with `status` once what is queued has been sent; the stream's
    /// cleanup runs when its response stream drops.
    pub fn close(&self, status: Status) {
        self.queue.close(status);
    }

    /// Whether this replica holds the device's session for this stream.
    pub fn is_holding(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }

    pub(super) fn set_holding(&self, holding: bool) {
        self.holding.store(holding, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(super) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The groups the stream is attached to.
    pub fn groups(&self) -> Vec<GroupId> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the groups to `now` (sorted); returns those joined and those left.
    pub(super) fn swap_groups(&self, now: Vec<GroupId>) -> (Vec<GroupId>, Vec<GroupId>) {
        let mut cur = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let joined = now.iter().filter(|g| !cur.contains(g)).cloned().collect();
        let left = cur.iter().filter(|g| !now.contains(g)).cloned().collect();
        *cur = now;
        (joined, left)
    }

    /// Forgets groups whose attach failed, so the next reconciliation sees them as new.
    pub(super) fn drop_groups(&self, groups: &[GroupId]) {
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).retain(|g| !groups.contains(g));
    }

    /// Marks a membership change; true when no reconciliation was scheduled (the caller
    /// then schedules one).
    pub fn membership_changed(&self) -> bool {
        self.dirty.store(true, Ordering::Release);
        !self.scheduled.swap(true, Ordering::AcqRel)
    }

    /// A reconciliation pass starts: what changes from here on makes it run again.
    pub(super) fn reconcile_pass(&self) {
        self.dirty.store(false, Ordering::Release);
    }

    /// A reconciliation pass ended (`ok`: it succeeded). True when it must run again: a
    /// change arrived during the pass, or between its end and now (that change saw
    /// `scheduled` still set and scheduled nothing).
    pub(super) fn reconcile_again(&self, ok: bool) -> bool {
        if ok && self.dirty.load(Ordering::Acquire) {
            return true;
        }
        self.scheduled.store(false, Ordering::Release);
        ok && self.dirty.load(Ordering::Acquire) && !self.scheduled.swap(true, Ordering::AcqRel)
    }
}

/// Holds a stream's live messages back while a replay runs; dropping it gives the pause
/// back and releases them. Whatever finishes the replay owns the guard, so no exit path
/// can forget to release it. When the released messages show that one was lost, the
/// queue keeps a pause and a new guard travels to the maintenance task with the
/// histories to replay ([`Event::Missed`]).
pub struct Pause {
    stream: Arc<Stream>,
    events: Events,
}

impl Pause {
    pub fn new(stream: &Arc<Stream>, events: &Events) -> Pause {
        stream.queue.pause();
        Pause::adopt(stream.clone(), events.clone())
    }

    /// A guard for a pause the queue already took itself ([`Pushed::Missing`]).
    fn adopt(stream: Arc<Stream>, events: Events) -> Pause {
        Pause { stream, events }
    }

    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        let hold_on = !self.events.is_closed();
        let missing: Vec<Source> = self.stream.queue.resume(hold_on);
        if !missing.is_empty() {
            let pause = Pause::adopt(self.stream.clone(), self.events.clone());
            // If the task is gone meanwhile, the event drops with the guard, which then
            // releases without holding on.
            let _ = self.events.send(Event::Missed(pause, missing));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Arc<Stream> {
        use push_common::ids::Id;
        let (u, d) = (UserId::parse("u").unwrap(), DeviceId::parse("d").unwrap());
        Stream::new(Limits { messages: 10, bytes: 1 << 10 }, u, d, 0, None, 1)
    }

    #[test]
    fn membership_changes_coalesce_and_are_never_lost() {
        let s = stream();
        // A new stream is scheduled (its opening reconciles); a change during the pass
        // only marks it, and makes the pass run again.
        s.reconcile_pass();
        assert!(!s.membership_changed());
        assert!(s.reconcile_again(true), "the change during the pass makes it run again");
        s.reconcile_pass();
        assert!(!s.reconcile_again(true), "nothing changed: done, unscheduled");
        assert!(s.membership_changed(), "the next change schedules a reconciliation");
        assert!(!s.membership_changed(), "and a second one coalesces into it");
        s.reconcile_pass();
        assert!(!s.reconcile_again(false), "a failed pass unschedules; its caller retries");
        assert!(s.membership_changed());
    }

    #[test]
    fn a_pause_is_given_back_when_its_guard_drops() {
        let s = stream();
        let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
        s.queue.establish(&Source::All, crate::history::Pos { epoch: 1, id: Default::default() }, Default::default());
        let id = |n| crate::history::StreamId { ms: n, seq: 0 };
        let pause = Pause::new(&s, &events);
        s.queue.push(&Source::All, Some(id(1)), id(2), prost::bytes::Bytes::from_static(b"2"));
        drop(pause);
        // Message 1 is missing: the queue holds on, and a guard travels with the event.
        let Ok(Event::Missed(pause, missing)) = rx.try_recv() else { panic!("expected a Missed event") };
        assert_eq!(missing, vec![Source::All]);
        assert!(Arc::ptr_eq(pause.stream(), &s));
        s.queue.replayed(&Source::All, id(1), prost::bytes::Bytes::from_static(b"1"));
        drop(pause);
        assert!(rx.try_recv().is_err(), "released: nothing more to replay");
        assert_eq!(s.queue.position(&Source::All).map(|p| p.id), Some(id(2)));
    }
}
