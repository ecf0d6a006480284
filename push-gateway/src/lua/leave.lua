-- Removes users from a group, with their devices' acknowledged positions in it. KEYS
-- and ARGV as join.lua (the history keys and ARGV[2..3] unused). Returns how many
-- were members.
local gid, n = ARGV[1], #ARGV - 3
local removed = 0
for i = 1, n do
  redis.call('HDEL', KEYS[3 * i + 1], gid)
  for _, dev in ipairs(redis.call('ZRANGE', KEYS[3 * i + 3], 0, -1)) do
    redis.call('HDEL', KEYS[3 * i + 2], ack_field(dev, 'g:' .. gid))
  end
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[3 + i])
end
return removed
