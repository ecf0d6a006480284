-- Helpers shared by presence-svc's scripts; store.rs puts this file in front of each.

-- Redis's clock in ms: time comes from Redis, never from a replica's clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The score of a session held by a holder (a gateway replica; see hold.lua): it lives
-- until its logout, or until the sweep finds the holder's lease ended. Later than any
-- lease (year 33658), exact as a double, so readers comparing scores with now see it live.
local HELD = 1e15
-- Sets `key` to expire at `at` ms, or never while a held session keeps it.
local function expire_at(key, at)
  if at >= HELD then redis.call('PERSIST', key) else redis.call('PEXPIREAT', key, at) end
end
-- True while `holder`'s lease (KEYS `holders`) runs and it holds `member`.
local function holds(holders, held_prefix, holder, member, now)
  local lease = redis.call('ZSCORE', holders, holder)
  return lease and tonumber(lease) > now and redis.call('SISMEMBER', held_prefix .. holder, member) == 1
end
-- Makes `session` of `user` (KEYS `sessions` and `owners`) held by `owner` on `holder`,
-- and its user online until that holder's sweep. Returns the user's latest expiry.
local function hand_to(sessions, owners, online, user, session, owner, holder)
  redis.call('HSET', owners, session, owner, session .. '|h', holder)
  redis.call('ZADD', sessions, HELD, session)
  redis.call('PERSIST', sessions)
  redis.call('PERSIST', owners)
  redis.call('ZADD', online, HELD, user)
end
