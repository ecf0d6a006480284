//! Every Redis command of presence-svc, behind typed methods.
//!
//! Invariants kept by the scripts (each runs atomically and reads Redis `TIME`, so
//! replicas with skewed clocks agree):
//! - `sessions(u)` holds only the user's sessions; a score is a lease expiry in ms.
//!   A session is alive while its expiry is later than now.
//! - While `sessions(u)` is non-empty, `online_by_expiry(bucket(u))` has `u` scored with
//!   the latest expiry in `sessions(u)`, `online_by_id(bucket(u))` has `u`, and
//!   `sessions(u)` itself expires (PEXPIREAT) at that latest expiry.
//! - Readers never trust that sweeping happened: a user is online only if their score
//!   is later than now. The sweeper merely keeps the index small.
//!
//! In Redis Cluster the session scripts touch the user's slot and a bucket's slot;
//! running them there needs the bucket chosen from the user's slot (noted in
//! docs/ARCHITECTURE.md). Each bucket's two keys already share a slot.
use std::time::Duration;

use push_common::redis::Pool;
use push_common::{
    Error,
    keys::{Keys, bucket_of},
    redis::conn,
};
use redis::Script;

/// Login or Heartbeat. KEYS: sessions, last seen, bucket by expiry, bucket by id.
/// ARGV: user, session, ttl ms, last-seen ttl ms, max sessions, "login"|"heartbeat".
/// Returns {expiry, came_online, session_count} or {-1} (no such session) or
/// {-2, count} (session limit reached).
const TOUCH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local before = redis.call('ZCARD', KEYS[1])
local exists = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not exists then
  if ARGV[6] == 'heartbeat' then return {-1} end
  if before >= tonumber(ARGV[5]) then return {-2, before} end
end
local expiry = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], expiry, ARGV[2])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local latest = tonumber(top[2])
redis.call('PEXPIREAT', KEYS[1], latest)
redis.call('ZADD', KEYS[3], latest, ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('SET', KEYS[2], now, 'PX', ARGV[4])
local came_online = 0
if before == 0 then came_online = 1 end
return {expiry, came_online, redis.call('ZCARD', KEYS[1])}
";

/// Logout. KEYS as TOUCH; ARGV: user, session, last-seen ttl ms.
/// Returns {removed (0|1), sessions left}.
const LOGOUT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local removed = redis.call('ZREM', KEYS[1], ARGV[2])
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
else
  local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local latest = tonumber(top[2])
  redis.call('PEXPIREAT', KEYS[1], latest)
  redis.call('ZADD', KEYS[3], latest, ARGV[1])
end
if removed == 1 then redis.call('SET', KEYS[2], now, 'PX', ARGV[3]) end
return {removed, left}
";

/// Removes up to ARGV[1] users whose latest lease has ended from one bucket.
/// KEYS: bucket by expiry, bucket by id. Returns how many were removed.
const SWEEP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
return #gone
";

/// One step of a page walk through one bucket, in id order. KEYS: bucket by expiry,
/// bucket by id. ARGV: the last id already returned ('' to start), how many to scan.
/// Returns {last id scanned, number scanned, {online ids among them}}.
const PAGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = '-'
if ARGV[1] ~= '' then start = '(' .. ARGV[1] end
local ids = redis.call('ZRANGEBYLEX', KEYS[2], start, '+', 'LIMIT', 0, tonumber(ARGV[2]))
local online = {}
if #ids == 0 then return {'', 0, online} end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))
for i, id in ipairs(ids) do
  if scores[i] and tonumber(scores[i]) > now then online[#online + 1] = id end
end
return {ids[#ids], #ids, online}
";

/// Counts users whose latest lease is later than now over every bucket (KEYS).
const COUNT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for _, k in ipairs(KEYS) do n = n + redis.call('ZCOUNT', k, '(' .. now, '+inf') end
return n
";

/// A session that was created or renewed.
#[derive(Debug, Clone, PartialEq)]
pub struct Touched {
    pub expire_ms: i64,
    pub came_online: bool,
    pub session_count: i64,
}

/// The outcome of a Login or Heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub enum TouchOutcome {
    Touched(Touched),
    /// Heartbeat of a session that expired or never existed.
    NoSuchSession,
    /// Login of one session more than the per-user limit.
    TooManySessions(i64),
}

/// What is known of one user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserState {
    /// Live sessions (id, expiry ms), soonest expiry first.
    pub sessions: Vec<(String, i64)>,
    pub last_seen_ms: Option<i64>,
}

/// Typed access to presence data.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keys: Keys,
    buckets: u32,
    touch: Script,
    logout: Script,
    sweep: Script,
    page: Script,
    count: Script,
}

impl Store {
    pub fn new(pool: Pool, keys: Keys, buckets: u32) -> Self {
        Self {
            pool,
            keys,
            buckets: buckets.max(1),
            touch: Script::new(TOUCH),
            logout: Script::new(LOGOUT),
            sweep: Script::new(SWEEP),
            page: Script::new(PAGE),
            count: Script::new(COUNT),
        }
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    fn user_keys(&self, user: &str) -> [String; 4] {
        let b = bucket_of(user, self.buckets);
        [self.keys.sessions(user), self.keys.last_seen(user), self.keys.online_by_expiry(b), self.keys.online_by_id(b)]
    }

    /// Creates (`login`) or renews a session's lease.
    #[tracing::instrument(skip(self), err)]
    pub async fn touch(
        &self,
        user: &str,
        session: &str,
        ttl: Duration,
        seen_ttl: Duration,
        max_sessions: u32,
        login: bool,
    ) -> Result<TouchOutcome, Error> {
        let mut c = conn(&self.pool).await?;
        let reply: Vec<i64> = self
            .touch
            .key(&self.user_keys(user)[..])
            .arg(user)
            .arg(session)
            .arg(ms(ttl))
            .arg(ms(seen_ttl))
            .arg(max_sessions)
            .arg(if login { "login" } else { "heartbeat" })
            .invoke_async(&mut c)
            .await?;
        match reply.as_slice() {
            [-1] => Ok(TouchOutcome::NoSuchSession),
            [-2, n] => Ok(TouchOutcome::TooManySessions(*n)),
            [expire_ms, came, count] => Ok(TouchOutcome::Touched(Touched {
                expire_ms: *expire_ms,
                came_online: *came == 1,
                session_count: *count,
            })),
            other => Err(Error::Protocol(format!("touch script returned {other:?}"))),
        }
    }

    /// Ends a session; returns (whether it existed, sessions left).
    #[tracing::instrument(skip(self), err)]
    pub async fn logout(&self, user: &str, session: &str, seen_ttl: Duration) -> Result<(bool, i64), Error> {
        let mut c = conn(&self.pool).await?;
        let (removed, left): (i64, i64) = self
            .logout
            .key(&self.user_keys(user)[..])
            .arg(user)
            .arg(session)
            .arg(ms(seen_ttl))
            .invoke_async(&mut c)
            .await?;
        Ok((removed == 1, left))
    }

    /// Sessions and last-seen of many users in one round trip (a read-only pipeline
    /// whose first command reads the server clock the filter uses).
    #[tracing::instrument(skip(self, users), fields(users = users.len()), err)]
    pub async fn get(&self, users: &[String]) -> Result<Vec<UserState>, Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        for u in users {
            pipe.cmd("ZRANGE").arg(self.keys.sessions(u)).arg(0).arg(-1).arg("WITHSCORES");
            pipe.cmd("GET").arg(self.keys.last_seen(u));
        }
        let mut c = conn(&self.pool).await?;
        let mut replies: Vec<redis::Value> = pipe.query_async(&mut c).await?;
        if replies.len() != 1 + 2 * users.len() {
            return Err(Error::Protocol("pipeline reply has the wrong length".into()));
        }
        let (secs, micros): (i64, i64) = redis::from_redis_value(replies.remove(0))?;
        let now = secs * 1000 + micros / 1000;
        let mut out = Vec::with_capacity(users.len());
        let mut it = replies.into_iter();
        while let (Some(sessions), Some(seen)) = (it.next(), it.next()) {
            let sessions: Vec<(String, f64)> = redis::from_redis_value(sessions)?;
            let seen: Option<i64> = redis::from_redis_value(seen)?;
            out.push(UserState {
                sessions: sessions.into_iter().map(|(s, e)| (s, e as i64)).filter(|(_, e)| *e > now).collect(),
                last_seen_ms: seen,
            });
        }
        Ok(out)
    }

    /// One step of a page walk in `bucket` after id `after`, scanning up to `count` ids.
    /// Returns (last id scanned, ids scanned, online ids among them).
    #[tracing::instrument(skip(self), err)]
    pub async fn page(&self, bucket: u32, after: &str, count: usize) -> Result<(String, usize, Vec<String>), Error> {
        let mut c = conn(&self.pool).await?;
        let (last, scanned, online): (String, usize, Vec<String>) = self
            .page
            .key(self.keys.online_by_expiry(bucket))
            .key(self.keys.online_by_id(bucket))
            .arg(after)
            .arg(count)
            .invoke_async(&mut c)
            .await?;
        Ok((last, scanned, online))
    }

    /// Users online now.
    #[tracing::instrument(skip(self), err)]
    pub async fn count(&self) -> Result<i64, Error> {
        let keys: Vec<String> = (0..self.buckets).map(|b| self.keys.online_by_expiry(b)).collect();
        let mut c = conn(&self.pool).await?;
        Ok(self.count.key(keys).invoke_async(&mut c).await?)
    }

    /// Removes up to `limit` expired users from one bucket; returns how many.
    pub async fn sweep(&self, bucket: u32, limit: usize) -> Result<usize, Error> {
        let mut c = conn(&self.pool).await?;
        Ok(self
            .sweep
            .key(self.keys.online_by_expiry(bucket))
            .key(self.keys.online_by_id(bucket))
            .arg(limit)
            .invoke_async(&mut c)
            .await?)
    }

    /// Sweeps every bucket until none has expired users left (batches of 500).
    pub async fn sweep_all(&self) -> Result<usize, Error> {
        const BATCH: usize = 500;
        let mut total = 0;
        for b in 0..self.buckets {
            loop {
                let n = self.sweep(b, BATCH).await?;
                total += n;
                if n < BATCH {
                    break;
                }
            }
        }
        Ok(total)
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
