//! The make-before-break token refresh: a second stream opened with a fresh token while
//! the first goes on, judged on its first states, then switched to or dropped. Separate
//! from the event loop, which only wakes it (due, opened, an item, late).

use std::time::Duration;

use push_proto::wire::SubscribeResponse;
use tokio::time::Instant;
use tonic::{Status, transport::Channel};

use super::{
    Event, Events, Phase, lock,
    open::{Attempt, Failure, Opened, Opening, failure_status},
};
use crate::{
    history::History,
    subscription::Subscription,
    token::{MIN_REFRESH, Token},
};

pub(super) enum Refresh {
    /// When to open a stream with a fresh token (`None`: not any more, or the token
    /// does not expire).
    At(Option<Instant>),
    /// Opening it, while the current stream goes on.
    Opening(Opening),
    /// It is open; its first items are held (not handed out) until its states show it
    /// continues from where the current stream got to, while the current one goes on.
    Judging(Box<Successor>),
}

/// A stream opened by a refresh, not switched to yet.
pub(super) struct Successor {
    pub(super) sub: Subscription,
    channel: Channel,
    token: Option<Token>,
    /// The histories it has not sent a state for yet.
    pending: Vec<History>,
    /// What it sent so far.
    items: Vec<SubscribeResponse>,
    /// When to give up on it.
    pub(super) deadline: Instant,
}

/// Most items held from a successor before it is judged (its states come first, so
/// this is a successor that says nothing about some history).
const MAX_HELD_ITEMS: usize = 64;
/// Refreshes in a row that may fail (or be dropped) before the client stops trying,
/// and leaves the current stream until it ends.
const MAX_FAILED_REFRESHES: u32 = 8;

impl Events {
    /// Makes `token` the one in use, scheduling its refresh if it is new: ahead of its
    /// end ([`crate::token::refresh_in`]), or after a backoff when it came (nearly)
    /// expired, so a source that hands out such tokens is not asked every second.
    pub(super) fn adopt(&mut self, token: Option<Token>) {
        self.token = token.map(|mut t| {
            if !t.scheduled {
                t.scheduled = true;
                t.refresh_at = t.refresh_in.map(|d| {
                    if d >= MIN_REFRESH {
                        self.token_backoff.reset();
                        t.received + d
                    } else {
                        t.received + self.token_backoff.next().max(MIN_REFRESH)
                    }
                });
            }
            t
        });
    }

    /// The stream with a fresh token opened (its first items are judged before the
    /// client switches to it), or could not be.
    pub(super) fn refreshed(&mut self, a: Attempt) -> Option<Event> {
        let Phase::Open(live) = &mut self.phase else { return None };
        match a.outcome {
            Ok(Opened { sub, channel, histories }) => {
                let deadline = Instant::now() + self.shared.config.open_timeout;
                let next = Successor { sub, channel, token: a.token, pending: histories, items: Vec::new(), deadline };
                live.refresh = Refresh::Judging(Box::new(next));
                None
            }
            Err(Failure::SameToken) if live.ended.is_none() => {
                // Nothing to refresh to yet: ask again later (if the token expires
                // meanwhile, the gateway ends the stream and a reconnect follows).
                let wait = self.token_backoff.next().max(MIN_REFRESH);
                tracing::debug!(?wait, "the token source gave the token in use back; the stream goes on");
                live.refresh = Refresh::At(Some(Instant::now() + wait));
                None
            }
            Err(f) => {
                let status = match (f, live.ended.take()) {
                    // The old stream is gone too: reconnect as after any end.
                    (Failure::SameToken, Some(ended)) => ended,
                    (f, Some(_)) => failure_status(f),
                    (f, None) => {
                        let status = failure_status(f);
                        self.retry_refresh(&format!("{}: {}", status.code(), status.message()));
                        return None;
                    }
                };
                let (gateway, up) = (live.gateway, live.since.elapsed());
                Some(self.failed(gateway, Some(up), status))
            }
        }
    }

    /// An item (or the end) of the successor being judged. It is switched to once every
    /// history it was given a cursor for has a state, and every state it sent so far
    /// continues from where the client is now (at or before its positions, in the same
    /// epoch); it is dropped as soon as one does not.
    pub(super) fn judge(&mut self, item: Result<Option<SubscribeResponse>, Status>) -> Option<Event> {
        let Phase::Open(live) = &mut self.phase else { return None };
        let Refresh::Judging(next) = &mut live.refresh else { return None };
        let item = match item {
            Ok(Some(item)) => item,
            Ok(None) => return self.drop_successor("it ended"),
            Err(s) => return self.drop_successor(&format!("it ended: {}: {}", s.code(), s.message())),
        };
        next.items.push(item);
        let broken = {
            let cursors = lock(&self.shared.cursors);
            next.items.iter().flat_map(|i| &i.states).find(|s| !cursors.continues(s)).cloned()
        };
        if let Some(state) = broken {
            return self.drop_successor(&format!("it does not continue from the current position: {state:?}"));
        }
        for state in &next.items.last().expect("just pushed").states {
            if let Some(h) = state.cursor.as_ref().and_then(History::of_cursor) {
                next.pending.retain(|p| *p != h);
            }
        }
        if !next.pending.is_empty() {
            if next.items.len() >= MAX_HELD_ITEMS {
                return self.drop_successor("it did not state every history");
            }
            return None;
        }
        // Switch: the current stream is dropped; what the successor sent is handed out
        // next, its overlap with what was handed out dropped as duplicates.
        let Refresh::Judging(next) = std::mem::replace(&mut live.refresh, Refresh::At(None)) else { unreachable!() };
        let Successor { sub, channel, token, items, .. } = *next;
        tracing::debug!(gateway = live.gateway, "token refreshed; stream replaced");
        live.sub = sub;
        live.channel = channel.clone();
        live.ended = None;
        live.failed_refreshes = 0;
        self.queued.extend(items);
        self.adopt(token);
        let Phase::Open(live) = &mut self.phase else { return None };
        live.refresh = Refresh::At(self.token.as_ref().and_then(|t| t.refresh_at));
        self.set_conn(&channel);
        None
    }

    /// Drops the successor being judged: the current stream goes on, and the refresh is
    /// tried again later; if the current stream has ended meanwhile, the client
    /// reconnects as after any end.
    pub(super) fn drop_successor(&mut self, why: &str) -> Option<Event> {
        let Phase::Open(live) = &mut self.phase else { return None };
        live.refresh = Refresh::At(None);
        if let Some(status) = live.ended.take() {
            tracing::debug!(why, "the stream ended and its successor is dropped; reconnecting");
            let (gateway, up) = (live.gateway, live.since.elapsed());
            return Some(self.failed(gateway, Some(up), status));
        }
        self.retry_refresh(why);
        None
    }

    /// A refresh failed, or its stream was dropped, while the current stream goes on:
    /// try again in 1-5 s, up to [`MAX_FAILED_REFRESHES`] times in a row; then leave
    /// the stream until it ends (its token expired: a reconnect with a fresh one).
    fn retry_refresh(&mut self, why: &str) {
        let Phase::Open(live) = &mut self.phase else { return };
        live.failed_refreshes += 1;
        if live.failed_refreshes >= MAX_FAILED_REFRESHES {
            tracing::warn!(why, "could not refresh the token; no more attempts on this stream");
            live.refresh = Refresh::At(None);
            return;
        }
        let wait = Duration::from_secs(1) + Duration::from_secs(4).mul_f64(self.rng.f64());
        tracing::warn!(why, ?wait, "could not refresh the token; the stream goes on");
        live.refresh = Refresh::At(Some(Instant::now() + wait));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::testing::offline;

    /// A token that comes (nearly) expired is refreshed after a growing, jittered wait,
    /// never within a second; one with a life ahead of it is refreshed ahead of its end,
    /// and starts the waits over.
    #[tokio::test(start_paused = true)]
    async fn tokens_that_come_expired_are_refreshed_after_a_backoff() {
        let (_client, mut events) = offline();
        let jwt = |life: u64| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let claims = format!(r#"{{"iat":1000,"exp":{}}}"#, 1000 + life);
            format!("{}.{}.sig", b64.encode("{}"), b64.encode(claims))
        };
        let mut wait = |life: u64| {
            let t = Token::new(jwt(life), false);
            let received = t.received;
            events.adopt(Some(t));
            events.token.as_ref().unwrap().refresh_at.unwrap() - received
        };
        let waits: Vec<Duration> = (0..8).map(|_| wait(0)).collect();
        assert!(waits.iter().all(|w| *w >= Duration::from_secs(1)), "{waits:?}");
        for (n, w) in waits.iter().enumerate() {
            assert!(*w <= Duration::from_secs(1 << n).max(Duration::from_secs(1)), "{n}: {waits:?}");
        }
        assert!(waits.iter().any(|w| *w > Duration::from_secs(2)), "the waits grow: {waits:?}");
        assert_eq!(wait(40), Duration::from_secs(35), "5 s ahead of its end");
        assert!(wait(3) <= Duration::from_secs(1), "the waits started over");
    }
}
