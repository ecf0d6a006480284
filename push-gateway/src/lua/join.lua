-- Adds users to a group.
--
-- KEYS: members, the group history's stream and meta, then each user's groups key.
-- ARGV: group id, max groups per user, meta TTL in ms, then the user ids (in KEYS
-- order). Refuses the whole call when a user would exceed the limit: {-1, index of
-- that user}; else {added}. Each new member's groups HASH records where the group's
-- history stood when they joined (`EPOCH/ID`), so their devices receive the group from
-- there on, even what was pushed before their streams attached.
local gid, max = ARGV[1], tonumber(ARGV[2])
for i = 4, #KEYS do
  if redis.call('HEXISTS', KEYS[i], gid) == 0 and redis.call('HLEN', KEYS[i]) >= max then
    return {-1, i - 4}
  end
end
local epoch = epoch_of(KEYS[2], KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
local at = epoch .. '/' .. (redis.call('HGET', KEYS[3], 'last') or '0-0')
local added = 0
for i = 4, #KEYS do
  redis.call('HSETNX', KEYS[i], gid, at)
  added = added + redis.call('ZADD', KEYS[1], 0, ARGV[i])
end
return {added}
