-- Logout. KEYS as touch.lua; ARGV: user, session, last-seen ttl ms, events max length,
-- owner ('' for any). Returns {removed (0|1), sessions left}. A holder's logout hands
-- the session to its live standby instead (removed 0); a logout without an owner (a
-- backend's) always ends the session.
local now = now_ms()
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
