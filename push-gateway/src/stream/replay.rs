//! Positions and replays: where a stream starts in a history, and replaying what it
//! has not got, page by page, while its live messages wait (a [`Pause`]).
//!
//! A history is replayed only after its channel is subscribed, so whatever is pushed
//! after the replay's read arrives live; the queue holds live messages back until the
//! replay is done and drops what it already has by id. Replays read pages no larger
//! than half the stream's queue and wait while it is half full, so a backlog of any
//! size is caught up by a device that reads, and only one that stops reading is cut off.
use std::{sync::Arc, time::Duration};

use prost::bytes::Bytes;
use push_common::Error;
use push_proto::{push::v1::Continuity, wire::SubscribeResponse};
use tonic::Status;

use super::{Pause, Shared, Stream};
use crate::history::{Pos, Source, Start, StreamId};

/// Most entries read per replay round trip.
const REPLAY_PAGE: usize = 256;

/// Sets `s`'s position in `source` from `start` and tells the device (a HistoryState).
/// Runs after the history's channel is subscribed and before anything is pushed to
/// the stream's caller, so a push made once Subscribe answered is never taken for an
/// old one. Returns where the replay continues from, when a cursor asks for one.
/// With `strict` (strict resume), a position that cannot be honoured is an error
/// instead of a gap.
pub(super) async fn establish(
    shared: &Shared,
    s: &Stream,
    source: &Source,
    start: Start,
    strict: bool,
) -> Result<Option<Pos>, Error> {
    let (stream, _) = source.keys(shared.store.keys(), &s.user);
    let cursor = match start {
        Start::After(p) => Some(p),
        Start::Now => None,
    };
    let page = shared.store.replay(&stream, cursor, 0, &s.user).await?;
    let pos = Pos { epoch: page.epoch, id: page.point };
    let continuity = Continuity::try_from(page.continuity).unwrap_or(Continuity::Gap);
    if let (Some(_), Continuity::Gap) = (cursor, continuity) {
        metrics::counter!("push_gateway_resume_gaps_total").increment(1);
    }
    if let (true, Some(from), Continuity::Gap) = (strict, cursor, continuity) {
        return Err(unhonoured(source, from));
    }
    s.queue.establish(source, pos, continuity);
    Ok(cursor.map(|_| pos))
}

/// Strict resume: the position `from` in `source` cannot be honoured.
pub(super) fn unhonoured(source: &Source, from: Pos) -> Error {
    Error::FailedPrecondition {
        kind: "CURSOR",
        subject: source.name(),
        description: format!(
            "messages after {} (epoch {}) are no longer retained; fetch what was missed and subscribe with fresh cursors (strict_resume)",
            from.id, from.epoch
        ),
    }
}

/// Replays `sources` into the paused stream in a task of its own, then gives the pause
/// back (by dropping it). With `bounded`, the task waits for one of the replica's
/// catch-up permits first (reconnects, audits and lost messages can concern every
/// stream at once; opening a stream does not wait behind them).
pub(super) fn spawn(shared: &Arc<Shared>, pause: Pause, sources: Vec<(Source, Pos)>, bounded: bool) {
    if sources.is_empty() {
        return; // dropping the pause releases what it held
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let _permit = match bounded {
            true => shared.catch_ups.clone().acquire_owned().await.ok(),
            false => None,
        };
        use std::sync::atomic::Ordering::Relaxed;
        if bounded {
            let running = shared.catch_ups_running.fetch_add(1, Relaxed) + 1;
            shared.catch_ups_peak.fetch_max(running, Relaxed);
        }
        catch_up(&shared, &pause, sources).await;
        if bounded {
            shared.catch_ups_running.fetch_sub(1, Relaxed);
        }
    });
}

/// Replays each of `sources` into the paused stream after its position. Redis errors
/// are retried for a while (the hub may be back before the pool is); then the stream
/// ends with UNAVAILABLE and the device resumes from its cursors.
pub(super) async fn catch_up(shared: &Shared, pause: &Pause, sources: Vec<(Source, Pos)>) {
    let s = pause.stream();
    for (source, from) in sources {
        let mut backoff = Duration::from_millis(50);
        let give_up = tokio::time::Instant::now() + shared.settings.lease / 3;
        loop {
            if s.is_closed() {
                return;
            }
            match replay_until(shared, s, &source, from, None).await {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() < give_up => {
                    tracing::debug!(error = %e, user = &*s.user, "cannot replay a history yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    tracing::warn!(error = %e, user = &*s.user, "cannot replay a history; ending the stream");
                    s.close(Status::unavailable("cannot read the message history; reconnect with your cursors"));
                    return;
                }
            }
        }
    }
}

/// Replays one history into `s`, page by page, after `from` (or after where `s` got
/// to by now, if further), up to `until` if given. Tells the device when the history
/// has a gap or a new epoch. Stops when the stream no longer follows the history (its
/// user left the group).
pub(super) async fn replay_until(
    shared: &Shared,
    s: &Stream,
    source: &Source,
    from: Pos,
    until: Option<StreamId>,
) -> Result<(), Error> {
    let (stream, _) = source.keys(shared.store.keys(), &s.user);
    let mut cursor = from;
    loop {
        wait_for_room(s).await;
        let want = REPLAY_PAGE.min(s.queue.room());
        let page = shared.store.replay(&stream, Some(cursor), want, &s.user).await?;
        let continuity = Continuity::try_from(page.continuity).unwrap_or(Continuity::Gap);
        if (page.epoch != cursor.epoch || continuity == Continuity::Gap)
            && !s.queue.reposition(source, Pos { epoch: page.epoch, id: page.point }, continuity)
        {
            return Ok(());
        }
        let full = page.entries.len() == want;
        metrics::counter!("push_gateway_replayed_total").increment(page.entries.len() as u64);
        let mut last = page.point;
        for (id, message) in page.entries {
            if until.is_some_and(|u| id > u) {
                return Ok(());
            }
            // An empty message is one pushed with this user excluded: the position moves
            // past it, nothing is sent.
            let entry = if message.is_empty() { Bytes::new() } else { SubscribeResponse::message_entry(&message) };
            s.queue.replayed(source, id, entry);
            last = id;
        }
        if !full || s.is_closed() || s.queue.position(source).is_none() || until.is_some_and(|u| last >= u) {
            return Ok(());
        }
        cursor = Pos { epoch: page.epoch, id: last };
    }
}

/// Waits while the stream's queue is half full (the device is reading what it has).
async fn wait_for_room(s: &Stream) {
    while s.queue.is_busy() && !s.is_closed() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
