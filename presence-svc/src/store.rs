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
    ids::{DeviceId, UserId},
    keys::{Keys, bucket_of},
};
use redis::Script;

/// Login or Heartbeat. KEYS: sessions, last seen, bucket by expiry, bucket by id, events,
/// session owners. ARGV: user, session, ttl ms, last-seen ttl ms, max sessions,
/// "login"|"heartbeat", events max length, owner ('' for none). Returns {expiry,
/// came_online, session_count} or {-1} (no such session) or {-2, count} (session limit
/// reached) or {-3} (a heartbeat by an owner that no longer holds the session).
///
/// Owners: a login records who holds the session (or clears it); a heartbeat or logout
/// naming another owner changes nothing. So when a device's connection moves from one
/// gateway replica to another, the old replica's late logout cannot end the session the
/// new one holds. A heartbeat refused that way records its owner as the session's
/// standby (field `SESSION|standby` = `OWNER|lease expiry ms`; ids cannot contain `|`):
/// when the holder logs out while the standby's lease runs, the standby takes the
/// session over instead of the device going offline (see LOGOUT).
///
/// Presence events are written exactly where the user enters or leaves the online index,
/// in the same atomic step, so each transition is recorded once, whoever causes it.
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
if ARGV[6] == 'heartbeat' and ARGV[8] ~= '' then
  local holder = redis.call('HGET', KEYS[6], ARGV[2])
  if holder and holder ~= ARGV[8] then
    -- Another stream of the device holds the session: this one stands by (with its
    -- own lease), so it takes the session over if the holder's stream ends first.
    redis.call('HSET', KEYS[6], ARGV[2] .. '|standby', ARGV[8] .. '|' .. (now + tonumber(ARGV[3])))
    return {-3}
  end
end
local expiry = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], expiry, ARGV[2])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local latest = tonumber(top[2])
redis.call('PEXPIREAT', KEYS[1], latest)
if ARGV[6] == 'login' then
  if ARGV[8] ~= '' then
    redis.call('HSET', KEYS[6], ARGV[2], ARGV[8])
  else
    redis.call('HDEL', KEYS[6], ARGV[2])
  end
  local standby = redis.call('HGET', KEYS[6], ARGV[2] .. '|standby')
  if standby and string.match(standby, '^(.+)|') == ARGV[8] then redis.call('HDEL', KEYS[6], ARGV[2] .. '|standby') end
end
if redis.call('EXISTS', KEYS[6]) == 1 then redis.call('PEXPIREAT', KEYS[6], latest) end
local indexed = redis.call('ZSCORE', KEYS[3], ARGV[1])
if indexed and tonumber(indexed) <= now then
  -- The user's leases ran out before a sweep noticed: record that transition first.
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'u', ARGV[1], 'k', 'off', 'r', 'expired', 't', indexed)
  indexed = false
end
redis.call('ZADD', KEYS[3], latest, ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('SET', KEYS[2], now, 'PX', ARGV[4])
local came_online = 0
if not indexed then
  came_online = 1
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'u', ARGV[1], 'k', 'on', 's', ARGV[2], 't', now)
end
return {expiry, came_online, redis.call('ZCARD', KEYS[1])}
";

/// Logout. KEYS as TOUCH; ARGV: user, session, last-seen ttl ms, events max length,
/// owner ('' for any). Returns {removed (0|1), sessions left}. A holder's logout hands
/// the session to its live standby instead (removed 0); a logout without an owner (a
/// backend's) always ends the session.
const LOGOUT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[5] ~= '' then
  local holder = redis.call('HGET', KEYS[6], ARGV[2])
  local field = ARGV[2] .. '|standby'
  local standby = redis.call('HGET', KEYS[6], field)
  local by, standby_until
  if standby then by, standby_until = string.match(standby, '^(.+)|(%d+)$') end
  if holder and holder ~= ARGV[5] then
    -- Not the holder: it stands by no more, and the session stays as it is.
    if by == ARGV[5] then redis.call('HDEL', KEYS[6], field) end
    return {0, redis.call('ZCARD', KEYS[1])}
  end
  if standby then
    redis.call('HDEL', KEYS[6], field)
    if by ~= ARGV[5] and tonumber(standby_until) > now and redis.call('ZSCORE', KEYS[1], ARGV[2]) then
      -- The device's other stream takes the session over: the device never left.
      redis.call('HSET', KEYS[6], ARGV[2], by)
      redis.call('ZADD', KEYS[1], standby_until, ARGV[2])
      local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
      local latest = tonumber(top[2])
      redis.call('PEXPIREAT', KEYS[1], latest)
      redis.call('PEXPIREAT', KEYS[6], latest)
      redis.call('ZADD', KEYS[3], latest, ARGV[1])
      return {0, redis.call('ZCARD', KEYS[1])}
    end
  end
end
local removed = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[6], ARGV[2], ARGV[2] .. '|standby')
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[6])
  local indexed = redis.call('ZSCORE', KEYS[3], ARGV[1])
  if indexed then
    redis.call('ZREM', KEYS[3], ARGV[1])
    redis.call('ZREM', KEYS[4], ARGV[1])
    if tonumber(indexed) <= now then
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'u', ARGV[1], 'k', 'off', 'r', 'expired', 't', indexed)
    else
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'u', ARGV[1], 'k', 'off', 'r', 'logout', 's', ARGV[2], 't', now)
    end
  end
else
  local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local latest = tonumber(top[2])
  redis.call('PEXPIREAT', KEYS[1], latest)
  redis.call('ZADD', KEYS[3], latest, ARGV[1])
end
if removed == 1 then redis.call('SET', KEYS[2], now, 'PX', ARGV[3]) end
return {removed, left}
";

/// Removes up to ARGV[1] users whose latest lease has ended from one bucket, recording
/// each one's offline event (timed at its lease's end). KEYS: bucket by expiry, bucket
/// by id, events. ARGV: limit, events max length. Returns how many were removed. Any
/// number of sweepers may run at once: a user is removed, and recorded, by one of them.
const SWEEP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
for i = 1, #gone, 2 do
  redis.call('ZREM', KEYS[1], gone[i])
  redis.call('ZREM', KEYS[2], gone[i])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'u', gone[i], 'k', 'off', 'r', 'expired', 't', gone[i + 1])
end
return #gone / 2
";

/// One step of a page walk through one bucket, in id order. KEYS: bucket by expiry,
/// bucket by id. ARGV: the last id already returned ('' to start), how many to scan.
/// Returns {last id scanned, number scanned, {online ids among them}}.
///
/// Scores are read 512 ids at a time: Lua's `unpack` fails past ~8,000 values, and a
/// page may scan up to `--max-page-size` (100,000) ids.
const PAGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = '-'
if ARGV[1] ~= '' then start = '(' .. ARGV[1] end
local ids = redis.call('ZRANGEBYLEX', KEYS[2], start, '+', 'LIMIT', 0, tonumber(ARGV[2]))
local online = {}
if #ids == 0 then return {'', 0, online} end
for first = 1, #ids, 512 do
  local last = math.min(first + 511, #ids)
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids, first, last))
  for i = first, last do
    local score = scores[i - first + 1]
    if score and tonumber(score) > now then online[#online + 1] = ids[i] end
  end
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

/// What a login or heartbeat asks for.
#[derive(Debug, Clone, Copy)]
pub struct Touch<'a> {
    pub ttl: Duration,
    /// How long last-seen is kept.
    pub seen_ttl: Duration,
    pub max_sessions: u32,
    /// A login (creates the session) rather than a heartbeat (renews it).
    pub login: bool,
    /// Who holds the session ('' for no one in particular).
    pub owner: &'a str,
}

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
    /// Heartbeat by an owner that no longer holds the session.
    TakenOver,
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
    events_max_len: u64,
    touch: Script,
    logout: Script,
    sweep: Script,
    page: Script,
    count: Script,
}

impl Store {
    pub fn new(pool: Pool, keys: Keys, buckets: u32, events_max_len: u64) -> Self {
        Self {
            pool,
            keys,
            buckets: buckets.max(1),
            events_max_len,
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

    fn user_keys(&self, user: &UserId) -> [String; 6] {
        let b = bucket_of(user, self.buckets);
        [
            self.keys.sessions(user),
            self.keys.last_seen(user),
            self.keys.online_by_expiry(b),
            self.keys.online_by_id(b),
            self.keys.presence_events(),
            self.keys.session_owners(user),
        ]
    }

    /// Creates (`login`) or renews a session's lease.
    #[tracing::instrument(skip(self), err)]
    pub async fn touch(&self, user: &UserId, session: &DeviceId, t: Touch<'_>) -> Result<TouchOutcome, Error> {
        let Touch { ttl, seen_ttl, max_sessions, login, owner } = t;
        let mut c = self.pool.get();
        let reply: Vec<i64> = self
            .touch
            .key(&self.user_keys(user)[..])
            .arg(user.as_str())
            .arg(session.as_str())
            .arg(ms(ttl))
            .arg(ms(seen_ttl))
            .arg(max_sessions)
            .arg(if login { "login" } else { "heartbeat" })
            .arg(self.events_max_len)
            .arg(owner)
            .invoke_async(&mut c)
            .await?;
        match reply.as_slice() {
            [-1] => Ok(TouchOutcome::NoSuchSession),
            [-3] => Ok(TouchOutcome::TakenOver),
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
    pub async fn logout(
        &self,
        user: &UserId,
        session: &DeviceId,
        seen_ttl: Duration,
        owner: &str,
    ) -> Result<(bool, i64), Error> {
        let mut c = self.pool.get();
        let (removed, left): (i64, i64) = self
            .logout
            .key(&self.user_keys(user)[..])
            .arg(user.as_str())
            .arg(session.as_str())
            .arg(ms(seen_ttl))
            .arg(self.events_max_len)
            .arg(owner)
            .invoke_async(&mut c)
            .await?;
        Ok((removed == 1, left))
    }

    /// Sessions and last-seen of many users in one round trip (a read-only pipeline
    /// whose first command reads the server clock the filter uses).
    #[tracing::instrument(skip(self, users), fields(users = users.len()), err)]
    pub async fn get(&self, users: &[UserId]) -> Result<Vec<UserState>, Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        for u in users {
            pipe.cmd("ZRANGE").arg(self.keys.sessions(u)).arg(0).arg(-1).arg("WITHSCORES");
            pipe.cmd("GET").arg(self.keys.last_seen(u));
        }
        let mut c = self.pool.get();
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
        let mut c = self.pool.get();
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
        let mut c = self.pool.get();
        Ok(self.count.key(keys).invoke_async(&mut c).await?)
    }

    /// Removes up to `limit` expired users from one bucket; returns how many.
    pub async fn sweep(&self, bucket: u32, limit: usize) -> Result<usize, Error> {
        let mut c = self.pool.get();
        Ok(self
            .sweep
            .key(self.keys.online_by_expiry(bucket))
            .key(self.keys.online_by_id(bucket))
            .key(self.keys.presence_events())
            .arg(limit)
            .arg(self.events_max_len)
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

/// One recorded presence event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub user: String,
    pub online: bool,
    /// When the lease ended (expiry) or when the call happened.
    pub time_ms: i64,
    pub session: String,
    pub expired: bool,
}

/// A stream id `MS-SEQ` (or `MS`), for ordering cursors.
pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn event(id: String, fields: Vec<String>) -> Event {
    let mut e = Event { id, user: String::new(), online: false, time_ms: 0, session: String::new(), expired: false };
    for pair in fields.chunks(2) {
        if let [k, v] = pair {
            match k.as_str() {
                "u" => e.user = v.clone(),
                "k" => e.online = v == "on",
                "s" => e.session = v.clone(),
                "r" => e.expired = v == "expired",
                "t" => e.time_ms = v.parse().unwrap_or_default(),
                _ => {}
            }
        }
    }
    e
}

impl Store {
    /// The id of the newest event, or "0-0" when there is none.
    pub async fn last_event_id(&self) -> Result<String, Error> {
        let mut c = self.pool.get();
        let newest: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
            .arg(self.keys.presence_events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await?;
        Ok(newest.into_iter().next().map(|(id, _)| id).unwrap_or_else(|| "0-0".into()))
    }

    /// True when events after `cursor` may already have been trimmed away: the stream has
    /// lost entries to its length cap and the cursor is older than the oldest one kept.
    /// (Trimming does not record which ids it removed, so a cursor that was exactly the
    /// last trimmed entry is also refused: the error errs toward a resync, never toward
    /// a silent gap.)
    pub async fn trimmed_past(&self, cursor: (u64, u64)) -> Result<bool, Error> {
        let mut c = self.pool.get();
        let info: redis::RedisResult<Vec<redis::Value>> =
            redis::cmd("XINFO").arg("STREAM").arg(self.keys.presence_events()).query_async(&mut c).await;
        let info = match info {
            Ok(v) => v,
            // No stream yet: nothing was ever trimmed.
            Err(e) if e.code() == Some("ERR") => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let (mut length, mut added, mut first, mut last) = (0u64, 0u64, None, None);
        let mut it = info.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match redis::from_redis_value::<String>(k).unwrap_or_default().as_str() {
                "length" => length = redis::from_redis_value(v)?,
                "entries-added" => added = redis::from_redis_value(v)?,
                "recorded-first-entry-id" => first = parse_event_id(&redis::from_redis_value::<String>(v)?),
                "last-generated-id" => last = parse_event_id(&redis::from_redis_value::<String>(v)?),
                _ => {}
            }
        }
        if added <= length {
            return Ok(false);
        }
        let oldest_kept = if length == 0 { last } else { first };
        Ok(oldest_kept.is_some_and(|kept| cursor < kept))
    }
}

type EventsReply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;

impl Store {
    /// Reads up to `count` events after `cursor`, waiting up to `block` for the first, on
    /// a connection of the caller's own (a blocking read would stall a shared one).
    pub async fn wait_for_events(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        cursor: &str,
        block: Duration,
        count: usize,
    ) -> Result<Vec<Event>, Error> {
        let reply: EventsReply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(ms(block))
            .arg("STREAMS")
            .arg(self.keys.presence_events())
            .arg(cursor)
            .query_async(conn)
            .await?;
        Ok(reply.into_iter().flatten().flat_map(|(_, entries)| entries).map(|(id, f)| event(id, f)).collect())
    }

    /// Up to `count` events after `cursor`, without waiting, on the pool.
    pub async fn events_after(&self, cursor: &str, count: usize) -> Result<Vec<Event>, Error> {
        let mut c = self.pool.get();
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(self.keys.presence_events())
            .arg(format!("({cursor}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await?;
        Ok(entries.into_iter().map(|(id, f)| event(id, f)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_order_like_redis() {
        assert!(parse_event_id("1700000000000-1") > parse_event_id("1700000000000-0"));
        assert!(parse_event_id("1700000000001") > parse_event_id("1700000000000-9"));
        assert_eq!(parse_event_id("0"), Some((0, 0)));
        assert_eq!(parse_event_id("x-1"), None);
        assert_eq!(parse_event_id("1-"), None);
    }

    #[test]
    fn events_decode_their_fields() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = event("5-0".into(), f(&["u", "ann", "k", "off", "r", "expired", "t", "123"]));
        assert_eq!((e.user.as_str(), e.online, e.expired, e.time_ms), ("ann", false, true, 123));
        let e = event("6-0".into(), f(&["u", "bob", "k", "on", "s", "phone", "t", "7"]));
        assert_eq!((e.online, e.session.as_str()), (true, "phone"));
    }
}
