//! The queue's state machine: pauses, positions, order, room and the cut-off.
use std::task::Waker;

use super::*;
use push_common::ids::Id;

fn group(g: &str) -> GroupId {
    GroupId::parse(g).unwrap()
}

fn poll(q: &Queue) -> Poll<Option<Result<SubscribeResponse, Status>>> {
    q.poll_batch(&mut Context::from_waker(Waker::noop()))
}

/// A queue that follows the broadcast history from its start.
fn queue(messages: usize, bytes: usize) -> Queue {
    let q = Queue::new(Limits { messages, bytes });
    q.state().positions.set(&Source::All, Pos { epoch: 1, id: StreamId::default() });
    q
}

fn id(n: u64) -> StreamId {
    StreamId { ms: n, seq: 0 }
}

/// Pushes live message `n` (id n-0, following n-1) of the broadcast history.
fn live(q: &Queue, n: u64, entry: Bytes) -> Pushed {
    q.push(&Source::All, Some(id(n - 1)), id(n), entry)
}

fn items(q: &Queue) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Poll::Ready(Some(Ok(r))) = poll(q) {
        out.extend(r.encoded);
    }
    out
}

fn bytes(n: u64) -> Bytes {
    Bytes::from(vec![n as u8])
}

#[test]
fn replay_then_live_without_gap_or_duplicate() {
    let q = queue(100, 1 << 20);
    q.pause();
    // Live messages 3..=5 arrive while the replay (1..=4) runs: held back.
    for n in 3..=5 {
        live(&q, n, bytes(n));
    }
    assert!(poll(&q).is_pending());
    for n in 1..=4 {
        q.replayed(&Source::All, id(n), bytes(n));
    }
    assert!(q.resume(true).is_empty());
    live(&q, 5, bytes(5)); // late duplicate of a held one
    live(&q, 6, bytes(6));
    let got: Vec<u8> = items(&q).iter().map(|b| b[0]).collect();
    assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
    // A history the stream does not follow delivers nothing.
    q.push(&Source::Group(group("g")), None, id(9), Bytes::from_static(b"x"));
    assert!(items(&q).is_empty());
}

#[test]
fn pauses_nest_and_only_the_last_releases() {
    let q = queue(100, 1 << 20);
    q.pause();
    q.pause();
    live(&q, 1, bytes(1));
    assert!(q.resume(true).is_empty());
    assert!(items(&q).is_empty(), "one pause is still taken");
    assert!(q.resume(true).is_empty());
    assert_eq!(items(&q).len(), 1);
}

#[test]
fn a_live_message_after_a_lost_one_waits_for_the_replay() {
    let q = queue(100, 1 << 20);
    assert_eq!(live(&q, 1, bytes(1)), Pushed::Taken);
    // Message 2 was lost; 3 says it follows 2.
    assert_eq!(live(&q, 3, bytes(3)), Pushed::Missing);
    assert_eq!(live(&q, 4, bytes(4)), Pushed::Taken, "held: the queue is paused");
    assert_eq!(items(&q).len(), 1, "only message 1 so far");
    // The replay brings 2 and 3; then the pause the queue took is given back.
    q.replayed(&Source::All, id(2), bytes(2));
    q.replayed(&Source::All, id(3), bytes(3));
    assert!(q.resume(true).is_empty());
    let got: Vec<u8> = items(&q).iter().map(|b| b[0]).collect();
    assert_eq!(got, vec![2, 3, 4]);
}

#[test]
fn a_release_that_finds_a_hole_keeps_holding_that_history() {
    let q = queue(100, 1 << 20);
    let g = Source::Group(group("g"));
    q.establish(&g, Pos { epoch: 1, id: id(0) }, Continuity::FromNow);
    items(&q);
    q.pause();
    live(&q, 2, bytes(2)); // follows 1, which the replay did not bring
    q.push(&g, Some(id(0)), id(1), bytes(11));
    assert_eq!(q.resume(true), vec![Source::All]);
    assert_eq!(items(&q), vec![bytes(11)], "the group flows on");
    q.replayed(&Source::All, id(1), bytes(1));
    assert!(q.resume(true).is_empty());
    let got: Vec<u8> = items(&q).iter().map(|b| b[0]).collect();
    assert_eq!(got, vec![1, 2]);
    // Shutting down: nothing can replay, so nothing is held on.
    q.pause();
    live(&q, 4, bytes(4));
    assert!(q.resume(false).is_empty());
    assert!(items(&q).is_empty());
}

#[test]
fn a_replay_never_brings_back_a_group_that_was_left() {
    let q = queue(100, 1 << 20);
    let g = Source::Group(group("g"));
    q.establish(&g, Pos { epoch: 1, id: id(0) }, Continuity::Resumed);
    q.forget(&[group("g")]);
    assert!(!q.reposition(&g, Pos { epoch: 2, id: id(5) }, Continuity::Gap));
    q.replayed(&g, id(6), bytes(6));
    assert_eq!(q.position(&g), None);
    assert_eq!(items(&q).len(), 1, "only the first state");
}

#[test]
fn room_bounds_a_replay_page_below_half_the_queue() {
    let q = queue(64, 1 << 20);
    assert_eq!(q.room(), 32);
    for n in 1..=30 {
        live(&q, n, bytes(n));
    }
    assert_eq!(q.room(), 2);
    for n in 31..=40 {
        live(&q, n, bytes(n));
    }
    assert!(q.is_busy());
    assert_eq!(q.room(), 1, "at least one, once the queue has drained below half");
}

#[test]
fn a_state_never_follows_a_message_in_one_item() {
    let q = queue(100, 1 << 20);
    live(&q, 1, SubscribeResponse::message_entry(b"m1"));
    q.reposition(&Source::All, Pos { epoch: 2, id: id(1) }, Continuity::Resumed);
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
    let g = Source::Group(group("g"));
    q.establish(&g, Pos { epoch: 7, id: id(3) }, Continuity::FromNow);
    let states = items(&q);
    assert_eq!(states.len(), 1, "a HistoryState entry");
    assert_eq!(q.positions().len(), 2);
    q.epoch_changed(&g, 8);
    assert_eq!(items(&q).len(), 1, "the new epoch is announced");
    assert!(q.positions().contains(&(g.clone(), Pos { epoch: 8, id: id(3) })));
    q.forget(&[group("g")]);
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
