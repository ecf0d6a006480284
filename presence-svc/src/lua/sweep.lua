-- One sweep step of one bucket. KEYS: bucket by expiry, bucket by id, events, holders.
-- ARGV: limit, events max length, the bucket's key prefixes of sessions, owners, last
-- seen and held sets, last-seen ttl ms. Returns {how many held sessions and expired
-- users it looked at (`limit`: there may be more), when the bucket is next due (the
-- earliest holder lease or user expiry left, ms; -1: none)}.
-- Any number of sweepers may run at once: each step is atomic.
--
-- 1. Holders whose lease ended (gateway replicas that died, or lost Redis for longer
--    than their lease), up to 16: up to `limit` of their held sessions end, each handed to its live
--    backup if it has one; a user left without a session goes offline with one event,
--    timed at the lease's end. The holder leaves the ZSET once its set is empty.
-- 2. Users whose latest lease has ended leave the index, each with its offline event
--    (timed at its lease's end).
local now = now_ms()
local limit = tonumber(ARGV[1])
local done = 0
-- The dead holders, a few per step: each start of a gateway replica is a new holder.
local dead = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'WITHSCORES', 'LIMIT', 0, 16)
for d = 1, #dead, 2 do
  local holder, ended = dead[d], dead[d + 1]
  local held = ARGV[6] .. holder
  local members = redis.call('SPOP', held, limit - done)
  for _, m in ipairs(members) do
    local user, session = string.match(m, '^(.*)|([^|]*)$')
    local sessions, owners = ARGV[3] .. user, ARGV[4] .. user
    local backup = redis.call('HGET', owners, session .. '|backup')
    local backup_owner, backup_holder
    if backup then backup_owner, backup_holder = string.match(backup, '^(.+)|([^|]+)$') end
    if redis.call('HGET', owners, session .. '|h') ~= holder then
      -- Held by another now: this holder was at most its backup.
      if backup_holder == holder then redis.call('HDEL', owners, session .. '|backup') end
    elseif backup and backup_holder ~= holder and holds(KEYS[4], ARGV[6], backup_holder, m, now) then
      redis.call('HDEL', owners, session .. '|backup')
      hand_to(sessions, owners, KEYS[1], user, session, backup_owner, backup_holder)
    else
      redis.call('ZREM', sessions, session)
      redis.call('HDEL', owners, session, session .. '|h', session .. '|backup', session .. '|standby')
      redis.call('ZREMRANGEBYSCORE', sessions, '-inf', now)
      local top = redis.call('ZRANGE', sessions, -1, -1, 'WITHSCORES')
      if #top == 0 then
        redis.call('DEL', sessions, owners)
        if redis.call('ZREM', KEYS[1], user) == 1 then
          redis.call('ZREM', KEYS[2], user)
          redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'u', user, 'k', 'off', 'r', 'expired', 't', ended)
        end
        redis.call('SET', ARGV[5] .. user, ended, 'PX', ARGV[7])
      else
        local latest = tonumber(top[2])
        expire_at(sessions, latest)
        expire_at(owners, latest)
        redis.call('ZADD', KEYS[1], latest, user)
      end
    end
  end
  done = done + #members
  if done < limit then redis.call('ZREM', KEYS[4], holder) else return {done, now} end
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit - done)
for i = 1, #gone, 2 do
  redis.call('ZREM', KEYS[1], gone[i])
  redis.call('ZREM', KEYS[2], gone[i])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'u', gone[i], 'k', 'off', 'r', 'expired', 't', gone[i + 1])
end
local due = -1
for _, key in ipairs({KEYS[1], KEYS[4]}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first > 0 and (due < 0 or tonumber(first[2]) < due) then due = tonumber(first[2]) end
end
return {done + #gone / 2, due}
