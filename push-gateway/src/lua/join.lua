-- Adds users to a group.
--
-- KEYS: [1] members, [2] the group history's stream, [3] its meta, then per user its
-- groups hash, acks hash, ack devices and left groups (see `user_key`). ARGV: group id,
-- max groups per user, meta TTL in ms, then the user ids. Refuses the whole call when a
-- user would exceed the limit: {-1, index of that user}; else {added}. Each new
-- member's groups HASH records where the group's history stood when they joined
-- (`EPOCH/ID`), so their devices receive the group from there on, even what was pushed
-- before their streams attached.
local gid, max, n = ARGV[1], tonumber(ARGV[2]), #ARGV - 3
for i = 1, n do
  local groups = user_key(i, 1)
  if redis.call('HEXISTS', groups, gid) == 0 and redis.call('HLEN', groups) >= max then
    return {-1, i - 1}
  end
end
local epoch = epoch_of(KEYS[2], KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
local at = epoch .. '/' .. (redis.call('HGET', KEYS[3], 'last') or '0-0')
local added = 0
for i = 1, n do
  redis.call('HSETNX', user_key(i, 1), gid, at)
  -- Rejoined: the join position supersedes where they left.
  redis.call('HDEL', user_key(i, 4), gid)
  added = added + redis.call('ZADD', KEYS[1], 0, ARGV[3 + i])
end
return {added}
