//! The audit: every renewal round, checks that each stream has what Redis says it
//! should, and repairs what it has not.
//!
//! - Positions: every stream must have reached the end of each history it follows, as
//!   the histories' meta record it. A message can be stored while its live notification
//!   is lost (a Pub/Sub hiccup the probe has not caught, and no later message showed
//!   the hole yet). A stream still behind after a grace period gets a replay (bounded
//!   by the replica's catch-up permits); one that looked behind only because a message
//!   was on its way gets a replay that the queue dedups, nothing worse.
//! - Groups: every stream's groups must be its user's groups. A membership change whose
//!   announcement was lost is reconciled here.
//!
//! One pipelined read per round for all distinct histories, one for all distinct users.
use std::{collections::HashMap, sync::Arc, time::Duration};

use super::{Pause, Shared, Stream, groups, replay};
use crate::history::{Pos, Source};
use push_common::ids::UserId;

/// How long the audit waits before it takes a stream that looks behind for one that
/// missed messages (rather than one whose messages are still on their way).
const GRACE: Duration = Duration::from_secs(1);

/// A stream and where it stands in the histories it is behind in.
type Behind<'a> = (&'a Arc<Stream>, Vec<(Source, Pos)>);

/// Audits `streams` (see the module's doc).
pub(super) async fn round(shared: &Arc<Shared>, streams: &[Arc<Stream>]) {
    let open: Vec<&Arc<Stream>> = streams.iter().filter(|s| !s.is_closed()).collect();
    check_groups(shared, &open).await;
    let suspects = behind(shared, &open).await;
    if suspects.is_empty() {
        return;
    }
    // What is merely on its way arrives within milliseconds; what is still missing after
    // a moment was lost.
    tokio::time::sleep(GRACE).await;
    let mut still: HashMap<u64, Behind> = HashMap::new();
    for (s, source, top) in suspects {
        if let Some(now) = s.queue.position(&source).filter(|p| p.epoch != top.epoch || p.id < top.id) {
            still.entry(s.serial).or_insert_with(|| (s, Vec::new())).1.push((source, now));
        }
    }
    for (s, sources) in still.into_values() {
        tracing::info!(user = &*s.user, histories = sources.len(), "a stream missed messages; catching up");
        replay::spawn(shared, Pause::new(s, &shared.events), sources, true);
    }
}

/// Streams whose position in a history is behind the history's top: (stream, history,
/// the top it must reach).
async fn behind<'a>(shared: &Shared, streams: &[&'a Arc<Stream>]) -> Vec<(&'a Arc<Stream>, Source, Pos)> {
    let mut index: HashMap<String, usize> = HashMap::new();
    // (stream, history, its position, index of the history's key)
    let mut checks = Vec::with_capacity(streams.len() * 2);
    for s in streams {
        let groups = s.groups();
        // A group position the stream is not attached to is one it only finishes (see
        // `groups::departed`): it must not be caught up past the leave.
        let followed = |source: &Source| match source {
            Source::Group(g) => groups.contains(g),
            _ => true,
        };
        for (source, pos) in s.queue.positions().into_iter().filter(|(src, _)| followed(src)) {
            let (key, _) = source.keys(shared.store.keys(), &s.user);
            let n = index.len();
            let k = *index.entry(key).or_insert(n);
            checks.push((*s, source, pos, k));
        }
    }
    let mut keys = vec![String::new(); index.len()];
    for (k, n) in index {
        keys[n] = k;
    }
    let tops = match shared.store.history_tops(&keys).await {
        Ok(tops) => tops,
        Err(e) => {
            tracing::debug!(error = %e, "cannot audit the streams' positions this round");
            return Vec::new();
        }
    };
    checks
        .into_iter()
        .filter_map(|(s, source, pos, k)| {
            let top = tops[k].filter(|top| top.epoch != pos.epoch || top.id > pos.id)?;
            Some((s, source, top))
        })
        .collect()
}

/// Reconciles the streams whose groups are not their user's groups in Redis.
async fn check_groups(shared: &Arc<Shared>, streams: &[&Arc<Stream>]) {
    let mut users: Vec<&UserId> = streams.iter().map(|s| &s.user).collect();
    users.sort_unstable();
    users.dedup();
    let groups = match shared.store.users_groups(&users).await {
        Ok(groups) => groups,
        Err(e) => {
            tracing::debug!(error = %e, "cannot audit the streams' groups this round");
            return;
        }
    };
    for s in streams {
        let Ok(i) = users.binary_search(&&s.user) else { continue };
        if s.groups() != groups[i] {
            tracing::info!(user = &*s.user, "a stream missed a membership change; reconciling");
            groups::schedule(shared, s);
        }
    }
}
