-- Login or Heartbeat. KEYS: sessions, last seen, bucket by expiry, bucket by id, events,
-- session owners. ARGV: user, session, ttl ms, last-seen ttl ms, max sessions,
-- "login"|"heartbeat", events max length, owner ('' for none). Returns {expiry,
-- came_online, session_count} or {-1} (no such session) or {-2, count} (session limit
-- reached) or {-3} (a heartbeat by an owner that no longer holds the session).
--
-- Owners: a login records who holds the session (or clears it); a heartbeat or logout
-- naming another owner changes nothing. So when a device's connection moves from one
-- gateway replica to another, the old replica's late logout cannot end the session the
-- new one holds. A heartbeat refused that way records its owner as the session's
-- standby (field `SESSION|standby` = `OWNER|lease expiry ms`; ids cannot contain `|`):
-- when the holder logs out while the standby's lease runs, the standby takes the
-- session over instead of the device going offline (see logout.lua).
--
-- Presence events are written exactly where the user enters or leaves the online index,
-- in the same atomic step, so each transition is recorded once, whoever causes it.
local now = now_ms()
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
