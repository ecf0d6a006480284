-- Logout. KEYS as touch.lua; ARGV: user, session, last-seen ttl ms, events max length,
-- owner ('' for any), holder (the caller's, '' for none), the bucket's held-set prefix.
-- Returns {removed (0|1), sessions left}. The caller's holder holds the session no more.
-- A holder's logout hands the session to its live backup or standby instead (removed
-- 0); a logout without an owner (a backend's) always ends the session.
local now = now_ms()
local member = ARGV[1] .. '|' .. ARGV[2]
if ARGV[6] ~= '' then
  -- Unless another stream on the same holder holds it (or backs it up): the logout
  -- of a device's older stream, sent late or retried.
  local current, current_h = unpack(redis.call('HMGET', KEYS[6], ARGV[2], ARGV[2] .. '|h'))
  local backup = redis.call('HGET', KEYS[6], ARGV[2] .. '|backup') or ''
  local other = (current_h == ARGV[6] and current ~= ARGV[5])
    or (backup ~= '' and backup ~= ARGV[5] .. '|' .. ARGV[6] and string.sub(backup, -#ARGV[6] - 1) == '|' .. ARGV[6])
  if not other then redis.call('SREM', ARGV[7] .. ARGV[6], member) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[5] ~= '' then
  local holder = redis.call('HGET', KEYS[6], ARGV[2])
  local field = ARGV[2] .. '|standby'
  local standby = redis.call('HGET', KEYS[6], field)
  local by, standby_until
  if standby then by, standby_until = string.match(standby, '^(.+)|(%d+)$') end
  local backup = redis.call('HGET', KEYS[6], ARGV[2] .. '|backup')
  local backup_owner, backup_holder
  if backup then backup_owner, backup_holder = string.match(backup, '^(.+)|([^|]+)$') end
  if holder and holder ~= ARGV[5] then
    -- Not the holder: it stands by no more, and the session stays as it is.
    if by == ARGV[5] then redis.call('HDEL', KEYS[6], field) end
    if backup_owner == ARGV[5] then redis.call('HDEL', KEYS[6], ARGV[2] .. '|backup') end
    return {0, redis.call('ZCARD', KEYS[1])}
  end
  if backup then
    redis.call('HDEL', KEYS[6], ARGV[2] .. '|backup')
    if backup_holder ~= ARGV[6] and redis.call('ZSCORE', KEYS[1], ARGV[2])
      and holds(KEYS[7], ARGV[7], backup_holder, member, now) then
      -- The device's stream on another replica takes the session back.
      hand_to(KEYS[1], KEYS[6], KEYS[3], ARGV[1], ARGV[2], backup_owner, backup_holder)
      return {0, redis.call('ZCARD', KEYS[1])}
    end
  end
  if standby then
    redis.call('HDEL', KEYS[6], field)
    if by ~= ARGV[5] and tonumber(standby_until) > now and redis.call('ZSCORE', KEYS[1], ARGV[2]) then
      -- The device's other stream takes the session over: the device never left.
      redis.call('HSET', KEYS[6], ARGV[2], by)
      redis.call('HDEL', KEYS[6], ARGV[2] .. '|h')
      redis.call('ZADD', KEYS[1], standby_until, ARGV[2])
      local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
      local latest = tonumber(top[2])
      expire_at(KEYS[1], latest)
      expire_at(KEYS[6], latest)
      redis.call('ZADD', KEYS[3], latest, ARGV[1])
      return {0, redis.call('ZCARD', KEYS[1])}
    end
  end
end
local was = redis.call('HGET', KEYS[6], ARGV[2] .. '|h')
if was then redis.call('SREM', ARGV[7] .. was, member) end
local removed = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[6], ARGV[2], ARGV[2] .. '|standby', ARGV[2] .. '|h', ARGV[2] .. '|backup')
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
  expire_at(KEYS[1], latest)
  expire_at(KEYS[6], latest)
  redis.call('ZADD', KEYS[3], latest, ARGV[1])
end
if removed == 1 then redis.call('SET', KEYS[2], now, 'PX', ARGV[3]) end
return {removed, left}
