-- Counts users whose latest lease is later than now over every bucket (KEYS).
local now = now_ms()
local n = 0
for _, k in ipairs(KEYS) do n = n + redis.call('ZCOUNT', k, '(' .. now, '+inf') end
return n
