-- Login or Heartbeat. KEYS: sessions, last seen, bucket by expiry, bucket by id, events,
-- session owners, holders. ARGV: user, session, ttl ms, last-seen ttl ms, max sessions,
-- "login"|"heartbeat", events max length, owner ('' for none), holder ('' for none),
-- the bucket's held-set prefix. Returns {expiry, came_online, session_count} or {-1} (no
-- such session) or {-2, count} (session limit reached) or {-3} (a heartbeat by an owner
-- that no longer holds the session).
--
-- Owners: a login records who holds the session (or clears it); a heartbeat or logout
-- naming another owner changes nothing. So when a device's connection moves from one
-- gateway replica to another, the old replica's late logout cannot end the session the
-- new one holds. A heartbeat refused that way records its owner as the session's
-- standby (field `SESSION|standby` = `OWNER|lease expiry ms`; ids cannot contain `|`):
-- when the holder logs out while the standby's lease runs, the standby takes the
-- session over instead of the device going offline (see logout.lua).
--
-- Holders: a login with a holder (a gateway replica) makes the session held (score
-- HELD, field `SESSION|h` = holder, member `USER|SESSION` of the holder's held set):
-- it needs no renewal of its own, the holder's lease (hold.lua) keeps it. A login that
-- takes a held session over from another live holder that still holds it records that
-- one as the backup (field `SESSION|backup` = `OWNER|HOLDER`), which takes the session
-- back if the new holder's stream ends first.
--
-- Presence events are written exactly where the user enters or leaves the online index,
-- in the same atomic step, so each transition is recorded once, whoever causes it.
local now = now_ms()
local login, owner, holder = ARGV[6] == 'login', ARGV[8], ARGV[9]
local member = ARGV[1] .. '|' .. ARGV[2]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local before = redis.call('ZCARD', KEYS[1])
local exists = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not exists then
  if not login then return {-1} end
  if before >= tonumber(ARGV[5]) then return {-2, before} end
end
if not login and owner ~= '' then
  local current = redis.call('HGET', KEYS[6], ARGV[2])
  if current and current ~= owner then
    -- Another stream of the device holds the session: this one stands by (with its
    -- own lease), so it takes the session over if the holder's stream ends first.
    redis.call('HSET', KEYS[6], ARGV[2] .. '|standby', owner .. '|' .. (now + tonumber(ARGV[3])))
    return {-3}
  end
end
local held_by = redis.call('HGET', KEYS[6], ARGV[2] .. '|h')
if not login and tonumber(exists) >= HELD then
  -- Held: its holder's lease keeps it, and a heartbeat never extends that lease. A
  -- session whose holder's lease has ended is over (the sweep ends it).
  local lease = held_by and redis.call('ZSCORE', KEYS[7], held_by)
  if not lease or tonumber(lease) <= now then return {-1} end
  -- The holder's own stream repairs its membership, in case a late logout of the
  -- device's older stream took it.
  if owner ~= '' and holder == held_by then redis.call('SADD', ARGV[10] .. held_by, member) end
  return {tonumber(lease), 0, before}
end
-- A login with a holder, or a heartbeat by the session's owner naming its holder (a
-- gateway stream renewing on its own), makes the session held by that holder.
local hold = holder ~= '' and (login or owner ~= '')
local backup = redis.call('HGET', KEYS[6], ARGV[2] .. '|backup')
local backup_holder = backup and string.match(backup, '|([^|]+)$')
local expiry = now + tonumber(ARGV[3])
if hold then
  expiry = HELD
  redis.call('ZADD', KEYS[7], 'GT', now + tonumber(ARGV[3]), holder)
  redis.call('SADD', ARGV[10] .. holder, member)
  redis.call('HSET', KEYS[6], ARGV[2] .. '|h', holder)
  if not login then redis.call('HSET', KEYS[6], ARGV[2], owner) end
  if held_by and held_by ~= holder then
    -- A new holder: the previous one becomes the backup if it still holds the session;
    -- a backup before it is displaced, and leaves its holder's set, so that replica
    -- sees a session missing, renews it on its own and stands by.
    if backup_holder and backup_holder ~= holder and backup_holder ~= held_by then
      redis.call('SREM', ARGV[10] .. backup_holder, member)
    end
    redis.call('HDEL', KEYS[6], ARGV[2] .. '|backup')
    local before_owner = redis.call('HGET', KEYS[6], ARGV[2])
    if login and before_owner and holds(KEYS[7], ARGV[10], held_by, member, now) then
      redis.call('HSET', KEYS[6], ARGV[2] .. '|backup', before_owner .. '|' .. held_by)
    end
  elseif backup_holder == holder then
    -- A holder does not back itself up.
    redis.call('HDEL', KEYS[6], ARGV[2] .. '|backup')
  end
elseif login and held_by then
  -- A login without a holder makes the session a lease of its own again: its holder and
  -- its backup hold it no more.
  redis.call('SREM', ARGV[10] .. held_by, member)
  if backup_holder then redis.call('SREM', ARGV[10] .. backup_holder, member) end
  redis.call('HDEL', KEYS[6], ARGV[2] .. '|h', ARGV[2] .. '|backup')
end
redis.call('ZADD', KEYS[1], expiry, ARGV[2])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local latest = tonumber(top[2])
expire_at(KEYS[1], latest)
if login then
  if owner ~= '' then
    redis.call('HSET', KEYS[6], ARGV[2], owner)
  else
    redis.call('HDEL', KEYS[6], ARGV[2])
  end
  local standby = redis.call('HGET', KEYS[6], ARGV[2] .. '|standby')
  if standby and string.match(standby, '^(.+)|') == owner then redis.call('HDEL', KEYS[6], ARGV[2] .. '|standby') end
end
if redis.call('EXISTS', KEYS[6]) == 1 then expire_at(KEYS[6], latest) end
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
if expiry >= HELD then expiry = tonumber(redis.call('ZSCORE', KEYS[7], holder)) end
return {expiry, came_online, redis.call('ZCARD', KEYS[1])}
