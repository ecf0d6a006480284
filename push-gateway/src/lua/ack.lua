-- Moves a device's acknowledged positions forward (never back).
--
-- KEYS: [1] the user's acks hash, [2] the user's groups hash, [3] the user's ack
-- devices (ZSET device → last ack, ms). ARGV: [1] TTL in ms, [2] most devices, [3] the
-- device, then per position: field, epoch, id, group ('' for the inbox and broadcast).
--
-- Refuses the whole call, writing nothing, when a position names a group the user is
-- not in: {-1, index of that position}. A device new to the user when the user has
-- the most devices takes the place of the one that acked least recently, whose
-- positions are deleted. So the hash holds at most (most devices) × (groups + 2)
-- fields. A position is newer when its epoch is (epochs come from Redis's clock), or,
-- in the same epoch, its id. Returns {how many moved}.
local acks, groups, devices, dev = KEYS[1], KEYS[2], KEYS[3], ARGV[3]
for i = 4, #ARGV, 4 do
  local g = ARGV[i + 3]
  if g ~= '' and redis.call('HEXISTS', groups, g) == 0 then return {-1, (i - 4) / 4} end
end
if not redis.call('ZSCORE', devices, dev) then
  local n, max = redis.call('ZCARD', devices), tonumber(ARGV[2])
  if n >= max then
    for _, old in ipairs(redis.call('ZRANGE', devices, 0, n - max)) do
      forget_device(acks, groups, old)
      redis.call('ZREM', devices, old)
    end
  end
end
local t = redis.call('TIME')
redis.call('ZADD', devices, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), dev)
local moved = 0
for i = 4, #ARGV, 4 do
  local cur = redis.call('HGET', acks, ARGV[i])
  local newer = true
  if cur then
    local e, id = string.match(cur, '^(%d+)/(.+)$')
    e = tonumber(e)
    local ne = tonumber(ARGV[i + 1])
    newer = ne > e or (ne == e and less(id, ARGV[i + 2]))
  end
  if newer then
    redis.call('HSET', acks, ARGV[i], ARGV[i + 1] .. '/' .. ARGV[i + 2])
    moved = moved + 1
  end
end
redis.call('PEXPIRE', acks, ARGV[1])
redis.call('PEXPIRE', devices, ARGV[1])
return {moved}
