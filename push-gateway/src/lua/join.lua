-- Adds one user to a group, in the user's slot (store/groups.rs runs it per user, after
-- the group's position was read and before the user is added to the group's members).
--
-- KEYS: [1] the user's groups hash, [2] their left groups. ARGV: [1] group id, [2] max
-- groups per user, [3] where the group's history stands (`EPOCH/ID`). Returns 1 when
-- the user is (now or already) in the group, -1 when they already have the maximum of
-- groups. The groups hash records where the group's history stood when they joined, so
-- their devices receive the group from there on, even what was pushed before their
-- streams attached.
local gid, max, at = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if redis.call('HEXISTS', KEYS[1], gid) == 0 then
  if redis.call('HLEN', KEYS[1]) >= max then return -1 end
  redis.call('HSET', KEYS[1], gid, at)
end
-- Rejoined: the join position supersedes where they left.
redis.call('HDEL', KEYS[2], gid)
return 1
