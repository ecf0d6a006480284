-- Removes users from a group. KEYS and ARGV as join.lua (the history keys and
-- ARGV[2..3] unused). Returns how many were members.
local gid = ARGV[1]
local removed = 0
for i = 4, #KEYS do
  redis.call('HDEL', KEYS[i], gid)
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
end
return removed
