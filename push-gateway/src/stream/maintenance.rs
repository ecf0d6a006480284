//! The one task that keeps every stream of the replica in step: it serves the
//! [`Event`]s (ended streams, membership changes, the hub's re-subscriptions, lost
//! messages) and, every third of the lease, runs a renewal round: the audit of one
//! slice of the streams, then the presence renewal, ending streams whose device token
//! expired.
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tonic::Status;

use super::{Event, Shared, Stream, audit, groups, replay};

/// Sessions renewed per presence call (presence-svc's batch limit is 500 by default),
/// and such calls in flight at once. One call per session made a renewal round of
/// 5,000 streams a burst of 5,000 RPCs that delayed every push on the replica for as
/// long (p99 12-19 ms instead of 4-5 ms at 5,000 pushes/s; docs/BENCHMARKS.md).
const RENEW_BATCH: usize = 250;
const RENEW_CONCURRENCY: usize = 2;

/// The task; it ends when every sender of events is gone.
pub(super) async fn run(shared: Arc<Shared>, mut events: mpsc::UnboundedReceiver<Event>) {
    let every = shared.settings.lease / 3;
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let renewing = Arc::new(Semaphore::new(1));
    // The audit checks one slice of the streams per round: all of them once per
    // --audit-interval.
    let slices = shared.settings.audit_interval.as_millis().div_ceil(every.as_millis().max(1)).max(1) as u64;
    let mut round_no = 0u64;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => serve(&shared, event),
                None => return,
            },
            _ = renew.tick() => {
                // One round at a time; a slow round delays the next, never doubles it.
                let Ok(round) = renewing.clone().try_acquire_owned() else { continue };
                let shared = shared.clone();
                let slice = round_no % slices;
                round_no += 1;
                tokio::spawn(async move {
                    let streams = shared.streams();
                    let audited: Vec<_> = streams.iter().filter(|s| s.serial % slices == slice).cloned().collect();
                    audit::round(&shared, &audited).await;
                    renew_all(&shared, streams).await;
                    drop(round);
                });
            }
        }
    }
}

fn serve(shared: &Arc<Shared>, event: Event) {
    match event {
        Event::Closed(s) => shared.cleanup(s),
        Event::Membership(s) => {
            tokio::spawn(groups::membership_changed(shared.clone(), s));
        }
        Event::Resubscribed(pauses) => {
            tracing::info!(streams = pauses.len(), "catching streams up after the hub subscribed");
            for pause in pauses {
                // Membership announced while the hub was away was not heard.
                groups::schedule(shared, pause.stream());
                let sources = pause.stream().queue.positions();
                replay::spawn(shared, pause, sources, true);
            }
        }
        Event::Missed(pause, missing) => {
            let s = pause.stream();
            tracing::info!(user = &*s.user, histories = missing.len(), "a live message followed a lost one; replaying");
            let sources = missing.into_iter().filter_map(|src| Some((src.clone(), s.queue.position(&src)?))).collect();
            replay::spawn(shared, pause, sources, true);
        }
    }
}

/// Renews the replica's presence lease, and the sessions that need renewing on their
/// own in batches (see `lease.rs`), ending the streams whose device token expired or
/// that reached their maximum age.
async fn renew_all(shared: &Arc<Shared>, streams: Vec<Arc<Stream>>) {
    let (now, instant) = (push_common::time::unix_secs(), std::time::Instant::now());
    let mut live = Vec::with_capacity(streams.len());
    for s in streams {
        if s.until != 0 && now >= s.until {
            s.close(Status::unauthenticated("the device token expired; reconnect with a fresh one"));
        } else if s.retire_at.is_some_and(|at| instant >= at) {
            s.close(Status::unavailable("the stream reached its maximum age; reconnect and resume"));
        } else if !s.is_closed() {
            live.push(s);
        }
    }
    let live = shared.renew_held(&live).await;
    let gate = Arc::new(Semaphore::new(RENEW_CONCURRENCY));
    let mut calls = tokio::task::JoinSet::new();
    for batch in live.chunks(RENEW_BATCH) {
        let (shared, batch, permit) = (shared.clone(), batch.to_vec(), gate.clone().acquire_owned().await);
        calls.spawn(async move {
            shared.renew(&batch).await;
            drop(permit);
        });
    }
    calls.join_all().await;
}
