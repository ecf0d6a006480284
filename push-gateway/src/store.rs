//! Every Redis command of the gateway: publishing, and group membership.
//!
//! A group's members are a ZSET (score 0, paged by id) and each user's groups a SET;
//! join and leave change both in one Lua script, so the two views never disagree. In
//! Redis Cluster the group key and the user keys live in different slots (see
//! docs/ARCHITECTURE.md).
use prost::bytes::Bytes;
use push_common::redis::Pool;
use push_common::{Error, keys::Keys};
use redis::Script;

/// KEYS: members, then each user's groups key. ARGV: group id, max groups per user,
/// then the user ids (in KEYS order). Refuses the whole call when a user would exceed
/// the limit: {-1, index of that user}; else {added}.
const JOIN: &str = r"
local gid, max = ARGV[1], tonumber(ARGV[2])
for i = 2, #KEYS do
  if redis.call('SISMEMBER', KEYS[i], gid) == 0 and redis.call('SCARD', KEYS[i]) >= max then
    return {-1, i - 2}
  end
end
local added = 0
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], gid)
  added = added + redis.call('ZADD', KEYS[1], 0, ARGV[i + 1])
end
return {added}
";

/// KEYS and ARGV as JOIN (ARGV[2] unused). Returns how many were members.
const LEAVE: &str = r"
local gid = ARGV[1]
local removed = 0
for i = 2, #KEYS do
  redis.call('SREM', KEYS[i], gid)
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[i + 1])
end
return removed
";

/// A push with an idempotency key. KEYS: the key's record. ARGV: the new message id, the
/// window in ms, the payload, then the channels. The check, the record and the publish
/// are one atomic step: concurrent retries publish once, and a key is never recorded
/// for a push that was not published. Returns the id of the push that was made.
const PUSH_ONCE: &str = r"
local first = redis.call('GET', KEYS[1])
if first then return first end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 4, #ARGV do redis.call('PUBLISH', ARGV[i], ARGV[3]) end
return ARGV[1]
";

/// The outcome of a join.
pub enum Joined {
    Added(i64),
    /// The user at this index of the request already has the maximum of groups.
    TooManyGroups(usize),
}

/// Typed access to the gateway's keys.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keys: Keys,
    join: Script,
    leave: Script,
    push_once: Script,
}

impl Store {
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys, join: Script::new(JOIN), leave: Script::new(LEAVE), push_once: Script::new(PUSH_ONCE) }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Publishes `payload` on every channel, in one round trip.
    #[tracing::instrument(skip(self, payload), fields(channels = channels.len()), err)]
    pub async fn publish(&self, channels: &[String], payload: &Bytes) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        for ch in channels {
            pipe.cmd("PUBLISH").arg(ch).arg(payload.as_ref()).ignore();
        }
        let mut c = self.pool.get();
        pipe.query_async::<()>(&mut c).await?;
        Ok(())
    }

    /// Publishes `payload` on every channel unless `key` was used within `window`.
    /// Returns the message id of the push that counts: `id`, or the first push's.
    #[tracing::instrument(skip(self, payload), fields(channels = channels.len()), err)]
    pub async fn publish_once(
        &self,
        key: &str,
        id: &str,
        window: std::time::Duration,
        channels: &[String],
        payload: &Bytes,
    ) -> Result<String, Error> {
        let mut inv = self.push_once.key(self.keys.idempotency(key));
        inv.arg(id).arg(window.as_millis() as u64).arg(payload.as_ref());
        for ch in channels {
            inv.arg(ch);
        }
        let mut c = self.pool.get();
        Ok(inv.invoke_async(&mut c).await?)
    }

    fn membership<'s>(
        &self,
        script: &'s Script,
        group: &str,
        users: &[String],
        max: usize,
    ) -> redis::ScriptInvocation<'s> {
        let mut inv = script.key(self.keys.group_members(group));
        for u in users {
            inv.key(self.keys.user_groups(u));
        }
        inv.arg(group).arg(max);
        for u in users {
            inv.arg(u);
        }
        inv
    }

    #[tracing::instrument(skip(self, users), fields(users = users.len()), err)]
    pub async fn join(&self, group: &str, users: &[String], max_groups: usize) -> Result<Joined, Error> {
        let inv = self.membership(&self.join, group, users, max_groups);
        let mut c = self.pool.get();
        let reply: Vec<i64> = inv.invoke_async(&mut c).await?;
        match reply.as_slice() {
            [-1, i] => Ok(Joined::TooManyGroups(*i as usize)),
            [n] => Ok(Joined::Added(*n)),
            other => Err(Error::Protocol(format!("join script returned {other:?}"))),
        }
    }

    #[tracing::instrument(skip(self, users), fields(users = users.len()), err)]
    pub async fn leave(&self, group: &str, users: &[String]) -> Result<i64, Error> {
        let inv = self.membership(&self.leave, group, users, 0);
        let mut c = self.pool.get();
        Ok(inv.invoke_async(&mut c).await?)
    }

    /// A page of members after `after` (exclusive; empty to start), in id order.
    #[tracing::instrument(skip(self), err)]
    pub async fn members(&self, group: &str, after: &str, count: usize) -> Result<Vec<String>, Error> {
        let start = if after.is_empty() { "-".to_owned() } else { format!("({after}") };
        let mut c = self.pool.get();
        Ok(redis::cmd("ZRANGE")
            .arg(self.keys.group_members(group))
            .arg(start)
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut c)
            .await?)
    }

    /// The user's groups, sorted.
    #[tracing::instrument(skip(self), err)]
    pub async fn user_groups(&self, user: &str) -> Result<Vec<String>, Error> {
        let mut c = self.pool.get();
        let mut groups: Vec<String> =
            redis::cmd("SMEMBERS").arg(self.keys.user_groups(user)).query_async(&mut c).await?;
        groups.sort();
        Ok(groups)
    }
}
