-- Moves a device's acknowledged positions forward (never back).
--
-- KEYS: the user's acks hash. ARGV: TTL in ms, then per position: field, epoch, id.
-- A position is newer when its epoch is (epochs come from Redis's clock), or, in the
-- same epoch, its id. Returns how many moved.
local moved = 0
for i = 2, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local newer = true
  if cur then
    local e, id = string.match(cur, '^(%d+)/(.+)$')
    e = tonumber(e)
    local ne = tonumber(ARGV[i + 1])
    newer = ne > e or (ne == e and less(id, ARGV[i + 2]))
  end
  if newer then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. '/' .. ARGV[i + 2])
    moved = moved + 1
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return moved
