//! A stream's group channels follow its user's groups in Redis.
//!
//! JoinGroup and LeaveGroup announce a change on the user's channel; the hub marks the
//! user's streams and the maintenance task reconciles each. An announcement can be
//! missed (the hub was reconnecting), so every stream is also reconciled after the hub
//! re-subscribed, and the audit compares every stream's groups with Redis each round.
use std::{sync::Arc, time::Duration};

use push_common::Error;
use tonic::Status;

use super::{Pause, Shared, Stream, open::Plan, replay};
use crate::history::{Pos, Source, Start};
use push_common::ids::GroupId;

/// Makes `s`'s group channels match its user's groups in Redis. Runs only while `s` is
/// `scheduled`, so never twice at once for one stream; loops while changes arrive.
pub(super) async fn reconcile(shared: &Arc<Shared>, s: &Arc<Stream>, plan: &Plan) -> Result<(), Error> {
    loop {
        s.reconcile_pass();
        let result = apply(shared, s, plan).await;
        if !s.reconcile_again(result.is_ok()) {
            return result;
        }
    }
}

/// Attaches `s` to the groups its user joined (replaying each from the plan's start, in
/// a task) and detaches it from those the user left (telling the device, see [`settle`]).
async fn apply(shared: &Arc<Shared>, s: &Arc<Stream>, plan: &Plan) -> Result<(), Error> {
    let since = shared.store.user_groups_since(&s.user).await?;
    let mut now: Vec<GroupId> = since.keys().cloned().collect();
    now.sort();
    let (joined, left) = s.swap_groups(now);
    shared.hub.detach(s, &shared.group_channels(&left));
    // A group the stream follows ends with a CONTINUITY_LEFT state, after what was
    // pushed to it before the leave; one it does not follow is simply forgotten.
    let followed: Vec<(GroupId, Pos)> =
        left.iter().filter_map(|g| s.queue.position(&Source::Group(g.clone())).map(|p| (g.clone(), p))).collect();
    s.queue.forget(&left.iter().filter(|g| !followed.iter().any(|(f, _)| f == *g)).cloned().collect::<Vec<_>>());
    settle(shared, s, followed, false, false).await?;
    if joined.is_empty() {
        return Ok(());
    }
    // Live group messages wait from before the subscription until the replay is done.
    let pause = Pause::new(s, &shared.events);
    if let Err(e) = shared.hub.attach(s, &shared.group_channels(&joined)).await {
        // Not attached after all: the retry must see these groups as new again.
        shared.hub.detach(s, &shared.group_channels(&joined));
        s.drop_groups(&joined);
        return Err(e);
    }
    if s.is_closed() {
        // The stream ended while we attached: its cleanup may have run before our attach.
        shared.hub.detach(s, &shared.group_channels(&joined));
        return Ok(());
    }
    let mut replays = Vec::new();
    for g in joined {
        let source = Source::Group(g.clone());
        let start = plan.start_group(&source, since.get(&g).copied().flatten());
        match replay::establish(shared, s, &source, start, plan.strict).await {
            Ok(Some(from)) => replays.push((source, from)),
            Ok(None) => {}
            // Strict resume, only while opening: the Subscribe fails with it.
            Err(e @ Error::FailedPrecondition { .. }) => return Err(e),
            Err(e) => {
                // The device is told to reconnect: it resumes with its cursors.
                s.close(Status::unavailable("cannot read the message history; reconnect with your cursors"));
                return Err(e);
            }
        }
    }
    replay::spawn(shared, pause, replays, false);
    Ok(())
}

/// Groups the device has a position in but its user left while it was away. What was
/// pushed to such a group while the user was a member is theirs: it is replayed up to
/// where the group stood when they left (if the history still holds it, in the same
/// epoch), then a `CONTINUITY_LEFT` state tells the device to forget the cursor. Never
/// silence: without a record of the leave (it outlived the meta TTL) the state comes at
/// once. The stream is not attached to these groups, so no live message of theirs
/// arrives, and the audit does not follow them.
pub(super) async fn departed(shared: &Arc<Shared>, s: &Arc<Stream>, plan: &Plan) -> Result<(), Error> {
    let current = s.groups();
    let gone: Vec<(GroupId, Pos)> =
        plan.group_cursors().filter(|(g, _)| !current.contains(g)).map(|(g, p)| (g.clone(), p)).collect();
    settle(shared, s, gone, plan.strict, true).await
}

/// Ends the stream's part in groups its user left, each from a position (a cursor of
/// the device's, or where the stream got to while following it live): what was pushed
/// to the group up to the leave is replayed from there (in a task), then a
/// `CONTINUITY_LEFT` state follows. `establish`: the stream does not follow the group
/// yet (a resume), so its position is set up from the cursor first.
async fn settle(
    shared: &Arc<Shared>,
    s: &Arc<Stream>,
    gone: Vec<(GroupId, Pos)>,
    strict: bool,
    establish: bool,
) -> Result<(), Error> {
    if gone.is_empty() {
        return Ok(());
    }
    let names: Vec<&GroupId> = gone.iter().map(|(g, _)| g).collect();
    let left = shared.store.left_at(&s.user, &names).await?;
    let mut owed = Vec::new();
    for ((g, cursor), at) in gone.into_iter().zip(left) {
        let source = Source::Group(g);
        match at {
            Some(at) if at.epoch == cursor.epoch && at.id > cursor.id => {
                let from = match establish {
                    true => replay::establish(shared, s, &source, Start::After(cursor), strict).await?,
                    false => None,
                };
                owed.push((source, from.unwrap_or(cursor), at));
            }
            // Without a record of the leave in the cursor's epoch, what was owed is gone.
            Some(at) if strict && at.epoch != cursor.epoch => return Err(replay::unhonoured(&source, cursor)),
            None if strict => return Err(replay::unhonoured(&source, cursor)),
            at => s.queue.left(&source, at.unwrap_or(cursor)),
        }
    }
    if owed.is_empty() {
        return Ok(());
    }
    let (shared, s) = (shared.clone(), s.clone());
    tokio::spawn(async move {
        for (source, from, at) in owed {
            let replayed = async { replay::replay_until(&shared, &s, &source, from, Some(at.id)).await };
            if let Err(e) = replayed.await {
                tracing::warn!(error = %e, user = &*s.user, "cannot replay a group the user left; ending the stream");
                s.close(Status::unavailable("cannot read the message history; reconnect with your cursors"));
                return;
            }
            // Unless the user joined it again meanwhile (it is followed live then).
            if let Source::Group(g) = &source
                && !s.groups().contains(g)
            {
                s.queue.left(&source, at);
            }
        }
    });
    Ok(())
}

/// Reconciles a stream whose user's groups changed, retrying while Redis fails.
pub(super) async fn membership_changed(shared: Arc<Shared>, s: Arc<Stream>) {
    let plan = Plan::open_stream();
    while !s.is_closed() {
        match reconcile(&shared, &s, &plan).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, user = &*s.user, "cannot reconcile groups; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                if !s.membership_changed() {
                    return; // someone else scheduled it meanwhile
                }
            }
        }
    }
}

/// Schedules a reconciliation of `s` unless one is scheduled already.
pub(super) fn schedule(shared: &Arc<Shared>, s: &Arc<Stream>) {
    if s.membership_changed() {
        tokio::spawn(membership_changed(shared.clone(), s.clone()));
    }
}
