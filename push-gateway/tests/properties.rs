//! Property tests of the gateway's parsers (message ids, cursors, acks) and of the
//! queue's promise: whatever the interleaving of live and replayed messages and of
//! replays starting and ending, a stream gets each history's messages once, in order.
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;
use prost::Message;
use push_gateway::{
    envelope,
    history::{self, Pos, Source, StreamId},
    stream::{Event, Limits, Pause, Stream},
};
use push_proto::{push::v1 as pb, wire::SubscribeResponse};

proptest! {
    #[test]
    fn stream_ids_round_trip_and_junk_never_panics(ms in 0u64..(1 << 53), seq in 0u64..(1 << 53), junk in any::<String>()) {
        let id = StreamId { ms, seq };
        prop_assert_eq!(id.to_string().parse::<StreamId>(), Ok(id));
        let _ = junk.parse::<StreamId>();
        let _ = history::parse_epoch(&junk);
        let _ = history::parse_position(&junk);
    }

    #[test]
    fn message_ids_are_found_or_refused(ms in 0u64..(1 << 53), seq in 0u64..1000, rest in proptest::collection::vec(any::<u8>(), 0..64), junk in proptest::collection::vec(any::<u8>(), 0..64)) {
        let id = format!("{ms}-{seq}");
        let mut m = vec![0x0A, id.len() as u8];
        m.extend_from_slice(id.as_bytes());
        m.extend_from_slice(&rest);
        prop_assert_eq!(envelope::message_id(&m), Some(StreamId { ms, seq }));
        let _ = envelope::message_id(&junk);
    }

    #[test]
    fn cursors_never_panic_and_accept_only_valid_ones(
        audience in -2i32..6,
        group in any::<String>(),
        epoch in any::<String>(),
        id in any::<String>(),
    ) {
        let c = pb::Cursor { audience, group_id: group.clone(), epoch, message_id: id };
        let mut v = push_common::validate::Violations::new();
        let parsed = history::parse_cursors(&mut v, "cursors", &[c], 10);
        if v.is_empty() {
            prop_assert_eq!(parsed.len(), 1);
            if let Source::Group(g) = &parsed[0].0 {
                prop_assert!(push_common::validate::id_problem(g).is_none());
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Live(u64),
    /// A live message that says it follows message n - 1.
    After(u64),
    Replayed(u64),
    Begin,
    End,
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..60).prop_map(Op::Live),
        (1u64..60).prop_map(Op::After),
        (1u64..60).prop_map(Op::Replayed),
        Just(Op::Begin),
        Just(Op::End),
        Just(Op::Drain),
    ]
}

/// The message ids the stream sends, reading what is queued now.
fn drain(stream: &Stream, out: &mut Vec<StreamId>) {
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(Some(Ok(item))) = stream.queue.poll_batch(&mut cx) {
        let r = SubscribeResponse::decode(item.encode_to_vec().as_slice()).unwrap();
        out.extend(r.messages.iter().map(|m| m.id.parse::<StreamId>().unwrap()));
    }
}

proptest! {
    #[test]
    fn each_message_reaches_a_stream_once_and_in_order(ops in proptest::collection::vec(op(), 0..200)) {
        use push_common::ids::{DeviceId, Id, UserId};
        let (user, device) = (UserId::parse("u").unwrap(), DeviceId::parse("d").unwrap());
        let s = Stream::new(Limits { messages: 100_000, bytes: 1 << 30 }, user, device, 0, None, 1);
        let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
        s.queue.establish(&Source::All, Pos { epoch: 1, id: StreamId::default() }, pb::Continuity::FromNow);
        let mut pauses = Vec::new();
        let mut got = Vec::new();
        let id = |n: u64| StreamId { ms: n, seq: 0 };
        for op in ops {
            match op {
                Op::Live(n) => s.deliver(&Source::All, None, id(n), entry(n), &events),
                Op::After(n) => s.deliver(&Source::All, Some(id(n - 1)), id(n), entry(n), &events),
                Op::Replayed(n) => s.queue.replayed(&Source::All, id(n), entry(n)),
                Op::Begin => pauses.push(Pause::new(&s, &events)),
                Op::End => drop(pauses.pop()),
                Op::Drain => drain(&s, &mut got),
            }
            // A pause the queue took for a lost message is ended like a replay's.
            while let Ok(Event::Missed(pause, _)) = rx.try_recv() {
                pauses.push(pause);
            }
        }
        drop(pauses);
        drain(&s, &mut got);
        prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "{:?}", got);
    }
}

fn entry(n: u64) -> prost::bytes::Bytes {
    let id = format!("{n}-0");
    let mut m = vec![0x0A, id.len() as u8];
    m.extend_from_slice(id.as_bytes());
    push_proto::wire::SubscribeResponse::message_entry(&m)
}
