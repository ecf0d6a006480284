-- Removes a group from one user, in the user's slot (store/groups.rs runs it per user,
-- after the user left the group's members).
--
-- KEYS: [1] the user's groups hash, [2] acks hash, [3] ack devices, [4] left groups.
-- ARGV: [1] group id, [2] max groups per user, [3] meta TTL in ms, [4] where the group's
-- history stands (`EPOCH/ID`, '' when it has no meta).
--
-- The devices' acknowledged positions in the group are deleted, and where the group's
-- history stood is recorded in the user's left groups (for the meta TTL, at most `max
-- groups` of them): a device that resumes later still gets what was pushed to the group
-- while its user was a member. Returns 1 when the user had the group.
local gid, max, at = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local had = redis.call('HDEL', KEYS[1], gid)
if had == 1 and at ~= '' then
  if redis.call('HEXISTS', KEYS[4], gid) == 0 and redis.call('HLEN', KEYS[4]) >= max then
    redis.call('HDEL', KEYS[4], redis.call('HRANDFIELD', KEYS[4]))
  end
  redis.call('HSET', KEYS[4], gid, at)
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
end
for _, dev in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  redis.call('HDEL', KEYS[2], ack_field(dev, 'g:' .. gid))
end
return had
