//! The bounded queue between the hub and one device stream, and the stream itself.
//!
//! The hub pushes pre-encoded messages without ever waiting: a full queue marks the
//! stream as overflowed and the stream ends with RESOURCE_EXHAUSTED, so a slow reader
//! never slows anyone else down. The stream drains everything queued into one
//! `SubscribeResponse` per poll (up to a batch limit): one write and one wakeup for many
//! messages when a burst arrives, which is what makes fan-out cheap per delivery.
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
use push_proto::wire::SubscribeResponse;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

/// Most messages in one stream item.
const BATCH_MESSAGES: usize = 64;
/// Most bytes in one stream item (a single larger message still goes alone).
const BATCH_BYTES: usize = 64 * 1024;

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
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Bytes>,
    bytes: usize,
    waker: Option<Waker>,
    /// Set once: the stream ends with this status after what is already queued
    /// (or at once, for an overflow, since the queue was dropped).
    end: Option<Status>,
}

impl Queue {
    pub fn new(limits: Limits, user: &str, device: &str) -> Arc<Self> {
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
        })
    }

    /// Queues one encoded message. A queue past its limits is emptied and its stream
    /// ends with RESOURCE_EXHAUSTED; the device resumes by reconnecting.
    pub fn push(&self, entry: Bytes) {
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.end.is_some() {
                return;
            }
            s.bytes += entry.len();
            s.items.push_back(entry);
            if s.items.len() > self.limits.messages || s.bytes > self.limits.bytes {
                s.items = VecDeque::new();
                s.bytes = 0;
                s.end =
                    Some(Status::resource_exhausted("the device fell too far behind: its queue overflowed; reconnect"));
                tracing::info!("slow consumer disconnected");
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the stream with `status` once what is queued has been sent.
    pub fn close(&self, status: Status) {
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.end.is_none() {
                s.end = Some(status);
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
            while let Some(front) = s.items.front() {
                if !encoded.is_empty() && (encoded.len() == BATCH_MESSAGES || size + front.len() > BATCH_BYTES) {
                    break;
                }
                size += front.len();
                encoded.extend(s.items.pop_front());
            }
            s.bytes -= size;
            if s.items.is_empty() && s.items.capacity() > 64 {
                // Give back a burst's memory; an idle stream should cost next to nothing.
                s.items = VecDeque::new();
            }
            return Poll::Ready(Some(Ok(SubscribeResponse { messages: Vec::new(), encoded })));
        }
        if let Some(status) = &s.end {
            // Kept (not taken): an ended queue stays ended and ignores late pushes.
            return Poll::Ready(Some(Err(status.clone())));
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

    #[test]
    fn drains_what_is_queued_into_one_item() {
        let q = Queue::new(Limits { messages: 1000, bytes: 1 << 20 }, "u", "d");
        assert!(poll(&q).is_pending());
        for i in 0..100u8 {
            q.push(Bytes::from(vec![i; 10]));
        }
        let Poll::Ready(Some(Ok(first))) = poll(&q) else { panic!() };
        assert_eq!(first.encoded.len(), BATCH_MESSAGES);
        let Poll::Ready(Some(Ok(rest))) = poll(&q) else { panic!() };
        assert_eq!(rest.encoded.len(), 100 - BATCH_MESSAGES);
        assert_eq!(rest.encoded.last().unwrap()[0], 99, "order kept");
        assert!(poll(&q).is_pending());
    }

    #[test]
    fn overflow_ends_the_stream_with_resource_exhausted() {
        let q = Queue::new(Limits { messages: 3, bytes: 1 << 20 }, "u", "d");
        for _ in 0..4 {
            q.push(Bytes::from_static(b"x"));
        }
        let Poll::Ready(Some(Err(s))) = poll(&q) else { panic!("expected the end") };
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        q.push(Bytes::from_static(b"late"));
        assert!(matches!(poll(&q), Poll::Ready(Some(Err(_)))), "still ended; the late message is dropped");

        let q = Queue::new(Limits { messages: 100, bytes: 10 }, "u", "d");
        q.push(Bytes::from(vec![0; 11]));
        assert!(matches!(poll(&q), Poll::Ready(Some(Err(_)))));
    }

    #[test]
    fn close_ends_after_queued_messages() {
        let q = Queue::new(Limits { messages: 10, bytes: 1 << 20 }, "u", "d");
        q.push(Bytes::from_static(b"a"));
        q.close(Status::unavailable("shutting down"));
        assert!(matches!(poll(&q), Poll::Ready(Some(Ok(_)))));
        let Poll::Ready(Some(Err(s))) = poll(&q) else { panic!() };
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }
}
