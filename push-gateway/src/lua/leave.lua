-- Removes users from a group. KEYS and ARGV as join.lua (the history's stream unused).
--
-- Each user's devices' acknowledged positions in the group are deleted, and where the
-- group's history stood is recorded in the user's left groups (`EPOCH/ID`, for the meta
-- TTL, at most `max groups` of them): a device that resumes later still gets what was
-- pushed to the group while its user was a member. Returns how many were members.
local gid, max, n = ARGV[1], tonumber(ARGV[2]), #ARGV - 3
local epoch = redis.call('HGET', KEYS[3], 'epoch')
local at = epoch and (epoch .. '/' .. (redis.call('HGET', KEYS[3], 'last') or '0-0'))
local removed = 0
for i = 1, n do
  if redis.call('HDEL', user_key(i, 1), gid) == 1 and at then
    local left = user_key(i, 4)
    if redis.call('HEXISTS', left, gid) == 0 and redis.call('HLEN', left) >= max then
      redis.call('HDEL', left, redis.call('HRANDFIELD', left))
    end
    redis.call('HSET', left, gid, at)
    redis.call('PEXPIRE', left, ARGV[3])
  end
  for _, dev in ipairs(redis.call('ZRANGE', user_key(i, 3), 0, -1)) do
    redis.call('HDEL', user_key(i, 2), ack_field(dev, 'g:' .. gid))
  end
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[3 + i])
end
return removed
