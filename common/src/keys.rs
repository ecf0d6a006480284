//! The Redis key schema. No other module formats a key.
//!
//! | key                                  | type   | TTL                         | owner        |
//! |--------------------------------------|--------|-----------------------------|--------------|
//! | `P:presence:{b:N}:UID`               | ZSET   | until the last lease ends   | presence-svc |
//! | `P:owners:{b:N}:UID`                 | HASH   | as the sessions             | presence-svc |
//! | `P:seen:{b:N}:UID`                   | STRING | last-seen retention (30 d)  | presence-svc |
//! | `P:online:{b:N}`                     | ZSET   | none                        | presence-svc |
//! | `P:holders:{b:N}`                    | ZSET   | none                        | presence-svc |
//! | `P:held:{b:N}:HOLDER`                | SET    | none (emptied by the sweep) | presence-svc |
//! | `P:online:{b:N}:ids`                 | ZSET   | none                        | presence-svc |
//! | `P:presence:events:{b:N}`            | STREAM | capped (MAXLEN ~)           | presence-svc |
//! | `P:profile:{u:UID}`                  | HASH   | none                        | profile-svc  |
//! | `P:group:{g:GID}:members`           | ZSET   | none (gone with last member) | push-gateway |
//! | `P:groups:{u:UID}`                  | HASH   | none (gone with last group) | push-gateway |
//! | `P:idem:{TAG}:[CALLER|]KEY`         | STRING | idempotency window (24 h)   | push-gateway |
//! | `P:inbox:{u:UID}`, `P:history:{g:GID}`, `P:history:{all}` | STREAM | capped by count and age | push-gateway |
//! | the same + `:meta`                  | HASH   | meta TTL (7 d), renewed      | push-gateway |
//! | `P:acks:{u:UID}`                    | HASH   | meta TTL, renewed by acks    | push-gateway |
//! | `P:ackdevs:{u:UID}`                 | ZSET   | meta TTL, renewed by acks    | push-gateway |
//! | `P:left:{u:UID}`                    | HASH   | meta TTL, renewed by leaves  | push-gateway |
//! | `P:ch:all`, `P:ch:{u:UID}`, `P:ch:{g:GID}`, `P:ch:probe:{R}` | channels | — | push-gateway |
//! | `P:ch:probe:{R.N}` (a Cluster: one per master) | channels | — | push-gateway |
//!
//! `P` is the configurable prefix (default `push`). `presence` holds the user's sessions
//! (member = session id, score = lease expiry in ms). `online:{b:N}` is bucket N of the
//! online index (member = user id, score = the user's latest lease expiry) and
//! `online:{b:N}:ids` the same members with score 0, so a page walk can go in id order
//! (`ZRANGE BYLEX`), which heartbeats do not reorder. Users are spread over the buckets
//! by a stable hash of their id, so no single key is hot.
//!
//! A history (a user's inbox, a group's or the broadcast history) is a STREAM whose
//! entry ids are the message ids; its `:meta` HASH holds the epoch, the last id and
//! the floor (see push-gateway's `history` module). `acks` maps `DEVICE|SOURCE` to the
//! device's acknowledged `EPOCH/ID` in that history; `ackdevs` holds the devices with
//! positions there (score: their last ack, ms), so their number can be capped. `left`
//! maps a group the user left to where its history stood then (`EPOCH/ID`).
//!
//! Group members are a ZSET with every score 0, so `ListGroupMembers` pages in id order
//! with `ZRANGE BYLEX` (a SET's SSCAN cursor may repeat members). The probe channel is
//! each gateway replica's own, to check its Pub/Sub connection end to end. On a Cluster
//! a replica has one per master, `{R.N}` with the first `N` that puts it in one of the
//! master's slots, so the probes check the link to every shard.
//!
//! Hash tags put everything one script touches in one Redis Cluster slot:
//! - presence: a user's sessions, owners and last-seen carry the tag of the user's
//!   bucket `{b:N}`, with the bucket's online index and its own events stream, so a login,
//!   heartbeat, logout or sweep is one slot, and presence writes spread over the buckets
//!   (no key is hot);
//! - the gateway's per-user keys carry `{u:UID}`, a group's `{g:GID}`, the broadcast
//!   history `{all}`, each with its history's meta and its channel;
//! - an idempotency record carries the tag of the history it guards (the first of the
//!   push's targets in that slot), so it is written in the same step as the message.
//!
//! Ids are validated to contain no `{`, `}` or whitespace, so they cannot break a tag.

use std::ops::RangeInclusive;

use crate::{
    ids::{GroupId, IdemKey, UserId},
    redis::slot,
};

/// Most tags tried for a probe channel in a set of slots: a million tags cover every
/// one of the 16384 slots many times over (a single slot takes ~16384 tries on average).
const PROBE_TAG_TRIES: u32 = 1 << 20;

/// Builds every key under one prefix, from parsed ids only.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A user's sessions (ZSET session id → lease expiry ms), in the user's bucket.
    pub fn sessions(&self, bucket: u32, user_id: &UserId) -> String {
        format!("{}:presence:{{b:{bucket}}}:{user_id}", self.prefix)
    }

    /// Who holds each of a user's sessions (HASH session id → owner), if anyone.
    pub fn session_owners(&self, bucket: u32, user_id: &UserId) -> String {
        format!("{}:owners:{{b:{bucket}}}:{user_id}", self.prefix)
    }

    /// When the user was last seen (STRING, ms since the epoch).
    pub fn last_seen(&self, bucket: u32, user_id: &UserId) -> String {
        format!("{}:seen:{{b:{bucket}}}:{user_id}", self.prefix)
    }

    /// Online-index bucket `n` by expiry (ZSET user id → latest lease expiry ms).
    pub fn online_by_expiry(&self, bucket: u32) -> String {
        format!("{}:online:{{b:{bucket}}}", self.prefix)
    }

    /// Online-index bucket `n` by id (ZSET user id → 0, for lexicographic paging).
    pub fn online_by_id(&self, bucket: u32) -> String {
        format!("{}:online:{{b:{bucket}}}:ids", self.prefix)
    }

    /// The holders of bucket `n` (ZSET holder → lease expiry ms): gateway replicas whose
    /// lease keeps the sessions they hold alive.
    pub fn holders(&self, bucket: u32) -> String {
        format!("{}:holders:{{b:{bucket}}}", self.prefix)
    }

    /// The sessions of bucket `n` that `holder` holds (SET of `USER|SESSION`).
    pub fn held(&self, bucket: u32, holder: &str) -> String {
        format!("{}{holder}", self.presence_prefixes(bucket)[3])
    }

    /// What a script of bucket `n` puts a user id (or a holder) after to name its keys:
    /// sessions, owners, last seen, held.
    pub fn presence_prefixes(&self, bucket: u32) -> [String; 4] {
        let p = &self.prefix;
        ["presence", "owners", "seen", "held"].map(|k| format!("{p}:{k}:{{b:{bucket}}}:"))
    }

    /// Users of bucket `n` going online and offline (STREAM).
    pub fn presence_events(&self, bucket: u32) -> String {
        format!("{}:presence:events:{{b:{bucket}}}", self.prefix)
    }

    /// A user's profile (HASH).
    pub fn profile(&self, user_id: &UserId) -> String {
        format!("{}:profile:{{u:{user_id}}}", self.prefix)
    }

    /// A group's members (ZSET user id → 0).
    pub fn group_members(&self, group_id: &GroupId) -> String {
        format!("{}:group:{{g:{group_id}}}:members", self.prefix)
    }

    /// The groups of a user (HASH group id → `EPOCH/ID`, the group history when they joined).
    pub fn user_groups(&self, user_id: &UserId) -> String {
        format!("{}:groups:{{u:{user_id}}}", self.prefix)
    }

    /// The message id of the push made with an idempotency key (STRING, expiring), in
    /// the slot of `history` (the history key it is written with). `caller` is the API
    /// key's name (None without authentication).
    pub fn idempotency(&self, history: &str, caller: Option<&IdemKey>, key: &IdemKey) -> String {
        let tag = hash_tag(history).unwrap_or(history);
        match caller {
            None => format!("{}:idem:{{{tag}}}:{key}", self.prefix),
            // '|' cannot occur in an id, so callers cannot alias through their names.
            Some(caller) => format!("{}:idem:{{{tag}}}:{caller}|{key}", self.prefix),
        }
    }

    /// A user's inbox (STREAM); its meta HASH is this key + `:meta`.
    pub fn inbox(&self, user_id: &UserId) -> String {
        format!("{}:inbox:{{u:{user_id}}}", self.prefix)
    }

    /// A group's history (STREAM); its meta HASH is this key + `:meta`.
    pub fn group_history(&self, group_id: &GroupId) -> String {
        format!("{}:history:{{g:{group_id}}}", self.prefix)
    }

    /// The broadcast history (STREAM); its meta HASH is this key + `:meta`.
    pub fn all_history(&self) -> String {
        format!("{}:history:{{all}}", self.prefix)
    }

    /// The meta HASH of a history stream (an inbox, a group's or the broadcast history):
    /// its epoch, last id and floor. Same slot as the stream.
    pub fn history_meta(stream: &str) -> String {
        format!("{stream}:meta")
    }

    /// Each device's acknowledged positions of a user (HASH `DEVICE|SOURCE` → `EPOCH/ID`).
    pub fn acks(&self, user_id: &UserId) -> String {
        format!("{}:acks:{{u:{user_id}}}", self.prefix)
    }

    /// The devices with acknowledged positions of a user (ZSET device → last ack, ms).
    pub fn ack_devices(&self, user_id: &UserId) -> String {
        format!("{}:ackdevs:{{u:{user_id}}}", self.prefix)
    }

    /// The groups a user left, with where each group's history stood then (HASH).
    pub fn left_groups(&self, user_id: &UserId) -> String {
        format!("{}:left:{{u:{user_id}}}", self.prefix)
    }

    /// What a channel built by this schema is for.
    pub fn parse_channel<'a>(&self, channel: &'a str) -> Option<ChannelOf<'a>> {
        let rest = channel.strip_prefix(self.prefix.as_str())?.strip_prefix(":ch:")?;
        if rest == "all" {
            return Some(ChannelOf::All);
        }
        if let Some(u) = rest.strip_prefix("{u:").and_then(|r| r.strip_suffix('}')) {
            return Some(ChannelOf::User(u));
        }
        rest.strip_prefix("{g:").and_then(|r| r.strip_suffix('}')).map(ChannelOf::Group)
    }

    /// The broadcast channel.
    pub fn channel_all(&self) -> String {
        format!("{}:ch:all", self.prefix)
    }

    /// A user's channel: their messages and membership changes.
    pub fn channel_user(&self, user_id: &UserId) -> String {
        format!("{}:ch:{{u:{user_id}}}", self.prefix)
    }

    /// A group's channel.
    pub fn channel_group(&self, group_id: &GroupId) -> String {
        format!("{}:ch:{{g:{group_id}}}", self.prefix)
    }

    /// How a message is published on `channel`: on a Cluster the per-user, per-group and
    /// probe channels are shard channels (`SPUBLISH`, carried only by the shard that owns
    /// the slot); the broadcast channel is a classic one, which every node forwards to
    /// every other (each gateway replica needs it anyway). On one Redis everything is
    /// classic.
    pub fn publish_command(&self, channel: &str, cluster: bool) -> &'static str {
        if cluster && channel != self.channel_all() { "SPUBLISH" } else { "PUBLISH" }
    }

    /// A gateway replica's own probe channel (on one Redis, or a Sentinel master).
    pub fn channel_probe(&self, replica: &str) -> String {
        format!("{}:ch:probe:{{{replica}}}", self.prefix)
    }

    /// A gateway replica's probe channel in one Cluster master's `slots` (inclusive
    /// ranges of hash slots): `P:ch:probe:{R.N}` with the first `N` whose tag hashes into
    /// them. The same slots give the same channel. None when no slot of `slots` exists.
    pub fn channel_probe_in(&self, replica: &str, slots: &[RangeInclusive<u16>]) -> Option<String> {
        if !slots.iter().any(|r| !r.is_empty() && *r.start() < 16384) {
            return None;
        }
        (0..PROBE_TAG_TRIES)
            .map(|n| format!("{}:ch:probe:{{{replica}.{n}}}", self.prefix))
            .find(|ch| slots.iter().any(|r| r.contains(&slot(ch.as_bytes()))))
    }
}

/// What a Pub/Sub channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOf<'a> {
    All,
    User(&'a str),
    Group(&'a str),
}

/// The hash tag of a key (between its first `{` and the next `}`), if it has one.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// The online-index bucket of a user: FNV-1a of the id, stable across processes,
/// versions and machines (unlike `std`'s randomly seeded hasher).
pub fn bucket_of(user_id: &str, buckets: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(buckets.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Id;

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn g(s: &str) -> GroupId {
        GroupId::parse(s).unwrap()
    }

    fn i(s: &str) -> IdemKey {
        IdemKey::parse(s).unwrap()
    }

    #[test]
    fn user_keys_share_one_hash_tag() {
        let k = Keys::new("push");
        assert_eq!(k.sessions(7, &u("alice")), "push:presence:{b:7}:alice");
        assert_eq!(k.session_owners(7, &u("alice")), "push:owners:{b:7}:alice");
        assert_eq!(k.presence_events(7), "push:presence:events:{b:7}");
        assert_eq!(k.last_seen(7, &u("alice")), "push:seen:{b:7}:alice");
        assert_eq!(k.profile(&u("alice")), "push:profile:{u:alice}");
        assert_eq!(k.online_by_expiry(3), "push:online:{b:3}");
        assert_eq!(k.online_by_id(3), "push:online:{b:3}:ids");
        assert_eq!(k.holders(3), "push:holders:{b:3}");
        assert_eq!(k.held(3, "gw-1"), "push:held:{b:3}:gw-1");
        let [sessions, owners, seen, _] = k.presence_prefixes(3);
        assert_eq!(sessions + "alice", k.sessions(3, &u("alice")));
        assert_eq!(owners + "alice", k.session_owners(3, &u("alice")));
        assert_eq!(seen + "alice", k.last_seen(3, &u("alice")));
        assert_eq!(k.user_groups(&u("alice")), "push:groups:{u:alice}");
        assert_eq!(k.group_members(&g("g1")), "push:group:{g:g1}:members");
        assert_eq!(k.channel_user(&u("alice")), "push:ch:{u:alice}");
        assert_eq!(k.channel_group(&g("g1")), "push:ch:{g:g1}");
        assert_eq!(k.channel_all(), "push:ch:all");
        assert_eq!(k.inbox(&u("alice")), "push:inbox:{u:alice}");
        assert_eq!(k.acks(&u("alice")), "push:acks:{u:alice}");
        assert_eq!(k.ack_devices(&u("alice")), "push:ackdevs:{u:alice}");
        assert_eq!(k.left_groups(&u("alice")), "push:left:{u:alice}");
        assert_eq!(k.channel_probe("r1"), "push:ch:probe:{r1}");
        assert_eq!(k.publish_command(&k.channel_all(), true), "PUBLISH");
        assert_eq!(k.publish_command(&k.channel_user(&u("a")), true), "SPUBLISH");
        assert_eq!(k.publish_command(&k.channel_user(&u("a")), false), "PUBLISH");
        let inbox = k.inbox(&u("alice"));
        assert_eq!(k.idempotency(&inbox, None, &i("k1")), "push:idem:{u:alice}:k1");
        assert_eq!(k.idempotency(&inbox, Some(&i("billing")), &i("k1")), "push:idem:{u:alice}:billing|k1");
        assert_eq!(k.idempotency(&k.all_history(), None, &i("k1")), "push:idem:{all}:k1");
        assert_eq!(k.group_history(&g("g1")), "push:history:{g:g1}");
        assert_eq!(k.all_history(), "push:history:{all}");
        assert_eq!(Keys::history_meta(&k.all_history()), "push:history:{all}:meta");
        assert_eq!(hash_tag("a{b}c{d}"), Some("b"));
        assert_eq!(hash_tag("a{}c"), None);
        assert_eq!(hash_tag("abc"), None);
        assert_eq!(Keys::history_meta(&k.inbox(&u("alice"))), "push:inbox:{u:alice}:meta");
        assert_eq!(Keys::history_meta(&k.group_history(&g("g1"))), "push:history:{g:g1}:meta");
        assert_eq!(k.parse_channel(&k.channel_all()), Some(ChannelOf::All));
        assert_eq!(k.parse_channel(&k.channel_user(&u("a.b"))), Some(ChannelOf::User("a.b")));
        assert_eq!(k.parse_channel(&k.channel_group(&g("g1"))), Some(ChannelOf::Group("g1")));
        assert_eq!(k.parse_channel(&k.channel_probe("r")), None);
        assert_eq!(k.parse_channel("other:ch:all"), None);
    }

    #[test]
    fn probe_channels_land_in_the_slots_asked_for() {
        let k = Keys::new("push");
        let in_ = |ranges: &[RangeInclusive<u16>]| k.channel_probe_in("r1", ranges);
        // The three masters of a fresh 3-master cluster: one channel each, in its slots.
        let masters = [0..=5460, 5461..=10922, 10923..=16383];
        let channels: Vec<String> = masters.iter().map(|r| in_(std::slice::from_ref(r)).unwrap()).collect();
        for (ch, r) in channels.iter().zip(&masters) {
            assert!(r.contains(&slot(ch.as_bytes())), "{ch} in {r:?}");
            let tag = hash_tag(ch).unwrap();
            let n = tag.strip_prefix("r1.").unwrap_or_else(|| panic!("{ch}"));
            assert_eq!(*ch, format!("push:ch:probe:{{r1.{n}}}"));
            // The first number that lands there: the same slots, the same channel.
            let first = (0..n.parse::<u32>().unwrap())
                .all(|m| !r.contains(&slot(format!("push:ch:probe:{{r1.{m}}}").as_bytes())));
            assert!(first, "{ch} is the first tag in {r:?}");
            assert_eq!(k.parse_channel(ch), None);
        }
        assert_eq!(in_(&[0..=5460]), Some(channels[0].clone()));
        // One slot only, at either end; a master with several ranges.
        for s in [0, 16383, 7000] {
            let ch = in_(&[s..=s]).unwrap();
            assert_eq!(slot(ch.as_bytes()), s, "{ch}");
        }
        let ch = in_(&[100..=100, 9000..=9001]).unwrap();
        assert!([100, 9000, 9001].contains(&slot(ch.as_bytes())), "{ch}");
        // Another replica, other channels.
        assert!(k.channel_probe_in("r2", &[0..=5460]).unwrap().starts_with("push:ch:probe:{r2."));
        // No slot at all: no channel.
        assert_eq!(in_(&[]), None);
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 5..=4;
        assert_eq!(in_(&[empty]), None);
        assert_eq!(in_(&[16384..=20000]), None);
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // Pinned to values computed outside this code: a change of the hash would strand
        // users in the wrong bucket after an upgrade. FNV-1a 64 of "a" is the published
        // test vector 0xaf63dc4c8601ec8c; of "" it is the offset basis 0xcbf29ce484222325;
        // of "alice" 0x508b2abb65a03907.
        assert_eq!(bucket_of("a", 16), 0xc);
        assert_eq!(bucket_of("a", 1 << 16), 0xec8c);
        assert_eq!(bucket_of("", 16), 5);
        assert_eq!(bucket_of("alice", 16), 7);
        assert_eq!(bucket_of("alice", 1024), 263);
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[bucket_of(&format!("user-{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800 && c < 1200), "{counts:?}");
        assert_eq!(bucket_of("x", 0), 0);
    }
}
