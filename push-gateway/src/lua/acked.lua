-- A device's acknowledged positions: only its own, in the histories its user reads.
--
-- KEYS: [1] the user's acks hash, [2] the user's groups hash. ARGV: [1] the device.
-- Returns {field1, position1, field2, ...} for the fields that exist.
local dev = ARGV[1]
local fields = {ack_field(dev, 'a'), ack_field(dev, 'i')}
for _, g in ipairs(redis.call('HKEYS', KEYS[2])) do fields[#fields + 1] = ack_field(dev, 'g:' .. g) end
-- One HGET each (not HMGET with unpack, which Lua caps at a few thousand values).
local out = {}
for _, f in ipairs(fields) do
  local v = redis.call('HGET', KEYS[1], f)
  if v then
    out[#out + 1] = f
    out[#out + 1] = v
  end
end
return out
