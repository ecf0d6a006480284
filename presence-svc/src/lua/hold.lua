-- RenewHolder, for one bucket. KEYS: holders, the holder's held set. ARGV: holder, ttl
-- ms. Returns {sessions held, lease expiry}. A holder that holds nothing in the bucket
-- leaves its holders ZSET, so the sweep has nothing of it to look at.
local now = now_ms()
local expiry = now + tonumber(ARGV[2])
local n = redis.call('SCARD', KEYS[2])
if n == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], expiry, ARGV[1])
end
return {n, expiry}
