//! Opening a device stream (Subscribe), ending a device's streams (Logout), and a
//! device's acks.
//!
//! Order matters: the stream is registered and its cleanup armed before anything else
//! (so an error or a cancelled call at any point cleans up); the device gets a presence
//! session; the stream is attached to the broadcast channel and its user's channel, and
//! only then are its positions read and its groups attached. A membership change
//! committed in between is announced on the already subscribed user channel, so none
//! is lost. Live messages wait (a [`Pause`]) until the replays are done.
use push_common::{
    ids::{DeviceId, GroupId, UserId},
    validate::Violations,
};
use push_proto::push::v1::{AckRequest, DisconnectRequest, SubscribeRequest};
use tonic::{Request, Status};

use super::{DeviceStream, Pause, Stream, Streams, groups, lease, replay};
use crate::{
    auth::device_user,
    history::{self, Pos, Source, Start},
};

/// The user and device a device-side call (Subscribe, Ack) is for: the verified device
/// token's user (a request naming another user is PERMISSION_DENIED; it may leave
/// `user_id` empty), or the named user for an admin key or without authentication.
pub fn device_identity<T>(
    req: &Request<T>,
    user_id: &str,
    device_id: &str,
    v: &mut Violations,
) -> Result<Option<(UserId, DeviceId)>, Status> {
    let user = device_user(req.extensions().get::<push_common::auth::Identity>(), user_id)?;
    let user = v.parse::<UserId>("user_id", &user);
    Ok(user.zip(v.parse::<DeviceId>("device_id", device_id)))
}

/// Longest Disconnect reason, in characters.
const MAX_REASON: usize = 256;

/// Most cursors in one request: the inbox, the broadcast history and every group.
pub fn max_cursors(max_groups_per_user: usize) -> usize {
    max_groups_per_user + 2
}

/// Where a stream starts in each history: the request's cursors, else the device's
/// acknowledged positions, else now. A group without either starts where its history
/// stood when the user joined, for a device that resumes (it has some cursor or ack)
/// and for a group joined while the stream is open: so a device misses nothing pushed
/// to a group after its user joined, not even in the moment before its stream attached.
pub(super) struct Plan {
    given: Vec<(Source, Pos)>,
    since_join: bool,
    /// Strict resume: a given position that cannot be honoured fails the Subscribe.
    pub(super) strict: bool,
}

impl Plan {
    /// The plan of a stream that is already open: groups start where the user joined.
    pub(super) fn open_stream() -> Plan {
        Plan { given: Vec::new(), since_join: true, strict: false }
    }

    pub(super) fn start(&self, source: &Source) -> Start {
        self.given.iter().find(|(s, _)| s == source).map_or(Start::Now, |(_, p)| Start::After(*p))
    }

    /// The given positions in groups.
    pub(super) fn group_cursors(&self) -> impl Iterator<Item = (&GroupId, Pos)> {
        self.given.iter().filter_map(|(s, p)| match s {
            Source::Group(g) => Some((g, *p)),
            _ => None,
        })
    }

    pub(super) fn start_group(&self, source: &Source, joined_at: Option<Pos>) -> Start {
        match (self.start(source), joined_at) {
            (Start::Now, Some(at)) if self.since_join => Start::After(at),
            (start, _) => start,
        }
    }
}

impl Streams {
    /// Opens one device stream.
    pub async fn open(&self, req: Request<SubscribeRequest>) -> Result<DeviceStream, Status> {
        let shared = &self.shared;
        let mut v = Violations::new();
        let r = req.get_ref();
        let identity = device_identity(&req, &r.user_id, &r.device_id, &mut v)?;
        let cursors = history::parse_cursors(&mut v, "cursors", &r.cursors, max_cursors(shared.settings.max_groups));
        let (user, device) = v.check_with(identity)?;
        let mut given = shared.store.acked(&user, &device).await?;
        given.retain(|(s, _)| !cursors.iter().any(|(c, _)| c == s));
        given.extend(cursors);
        let plan = Plan { since_join: !given.is_empty(), given, strict: r.strict_resume };
        let until = match req.extensions().get::<push_common::auth::Identity>() {
            Some(push_common::auth::Identity::Device { until, .. }) => *until,
            _ => 0,
        };
        let serial = shared.serials.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // An age too large to add to now is no age limit.
        let retire_at =
            shared.settings.max_age.and_then(|age| std::time::Instant::now().checked_add(jittered(age, serial)));
        let stream = Stream::new(shared.settings.limits, user, device, until, retire_at, serial);
        // Live messages wait until the broadcast history and the inbox are replayed.
        let pause = Pause::new(&stream, &shared.events);
        shared.register(&stream)?;
        // No await between registering and arming the cleanup: from here on, dropping
        // `device` (an error below, or the caller going away) cleans the stream up.
        let device = DeviceStream::new(stream.clone(), shared.events.clone());
        lease::login(shared, &stream).await?;
        shared.hub.attach(&stream, &shared.base_channels(&stream)).await?;
        let mut replays = Vec::new();
        for source in [Source::All, Source::Inbox] {
            if let Some(from) = replay::establish(shared, &stream, &source, plan.start(&source), plan.strict).await? {
                replays.push((source, from));
            }
        }
        replay::spawn(shared, pause, replays, false);
        // The stream was created `scheduled`, so announcements arriving meanwhile only
        // mark it dirty and this first reconciliation picks them up.
        groups::reconcile(shared, &stream, &plan).await?;
        groups::departed(shared, &stream, &plan).await?;
        Ok(device)
    }

    /// Ends the streams of `device` of `user` on every replica (after a Logout): a
    /// DISCONNECT on the user's channel.
    pub async fn disconnect(&self, user: &UserId, device: &DeviceId) -> Result<(), push_common::Error> {
        let channel = [self.shared.store.keys().channel_user(user)];
        let payload = prost::bytes::Bytes::from(crate::envelope::disconnect(device));
        self.shared.store.publish(&channel, &payload).await
    }

    /// Disconnect: ends a user's streams, or one device's, on every replica (a
    /// DISCONNECT_WITH on the user's channel), with the reason and whether to reconnect.
    pub async fn disconnect_with(&self, r: DisconnectRequest) -> Result<(), push_common::Error> {
        let mut v = Violations::new();
        let user = v.parse::<UserId>("user_id", &r.user_id);
        if !r.device_id.is_empty() {
            v.parse::<DeviceId>("device_id", &r.device_id);
        }
        v.text("reason", &r.reason, MAX_REASON, false);
        let user = v.check_with(user)?;
        let channel = [self.shared.store.keys().channel_user(&user)];
        let payload = crate::envelope::disconnect_with(&r.device_id, r.reconnect, &r.reason);
        self.shared.store.publish(&channel, &prost::bytes::Bytes::from(payload)).await
    }

    /// A device acknowledges what it has processed.
    pub async fn ack(&self, req: Request<AckRequest>) -> Result<(), Status> {
        let shared = &self.shared;
        let mut v = Violations::new();
        let r = req.get_ref();
        let identity = device_identity(&req, &r.user_id, &r.device_id, &mut v)?;
        let cursors = history::parse_cursors(&mut v, "cursors", &r.cursors, max_cursors(shared.settings.max_groups));
        if r.cursors.is_empty() {
            v.add("cursors", "must hold at least one cursor");
        }
        let (user, device) = v.check_with(identity)?;
        Ok(shared.store.ack(&user, &device, &cursors).await?)
    }
}

/// A stream's maximum age: between 80% and 100% of `age`, drawn per stream, so the
/// streams that opened together (after a deploy, a scale-out) do not all end together.
fn jittered(age: std::time::Duration, serial: u64) -> std::time::Duration {
    use std::hash::{BuildHasher, RandomState};
    let draw = RandomState::new().hash_one(serial) % 1_000_000;
    age.mul_f64(0.8 + 0.2 * draw as f64 / 1_000_000.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// Ages spread over 80-100% of the maximum, never past it.
    #[test]
    fn maximum_ages_are_spread_below_the_maximum() {
        let age = Duration::from_secs(1800);
        let ages: Vec<Duration> = (0..1000).map(|n| super::jittered(age, n)).collect();
        assert!(ages.iter().all(|a| *a >= age.mul_f64(0.8) && *a <= age), "all within 80-100%");
        let (lo, hi) = (ages.iter().min().unwrap(), ages.iter().max().unwrap());
        assert!(*hi - *lo > age.mul_f64(0.15), "spread over the range: {lo:?}..{hi:?}");
    }
}
