//! Fixtures shared by the unit tests of the client's files: a client that never
//! connects, and items fed to its events by hand. Separate so that each file's tests,
//! next to what they test, can use them.

use push_proto::push::v1::{Audience, Continuity, HistoryState, Message};

use super::{Client, Event, Events};
use crate::history::History;

pub(super) const E1: &str = "1700000000001";
pub(super) const E2: &str = "1700000000002";

pub(super) fn state(h: &History, epoch: &str, id: &str, continuity: Continuity) -> HistoryState {
    HistoryState { cursor: Some(h.cursor(epoch, id)), continuity: continuity as i32 }
}

pub(super) fn msg(id: &str) -> Message {
    Message { id: id.into(), audience: Audience::User as i32, topic: id.into(), ..Default::default() }
}

/// A client that never connects: items are fed to its events by hand.
pub(super) fn offline() -> (Client, Events) {
    Client::builder(["http://127.0.0.1:1"]).device("d").connect().unwrap()
}

/// Hands one item to `events` as if the gateway sent it; returns what `recv` tells
/// of it, in short.
pub(super) fn feed(events: &mut Events, states: Vec<HistoryState>, messages: Vec<Message>) -> Vec<String> {
    events.states = states.into_iter();
    events.messages = messages.into_iter();
    let mut out = Vec::new();
    while let Some(e) = events.buffered_event() {
        out.push(match e {
            Event::Message(m) => format!("message {}", m.id),
            Event::Gap(h) => format!("gap {h}"),
            Event::Left(h) => format!("left {h}"),
            other => format!("{other:?}"),
        });
    }
    out
}
