-- Removes up to ARGV[1] users whose latest lease has ended from one bucket, recording
-- each one's offline event (timed at its lease's end). KEYS: bucket by expiry, bucket
-- by id, events. ARGV: limit, events max length. Returns how many were removed. Any
-- number of sweepers may run at once: a user is removed, and recorded, by one of them.
local now = now_ms()
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
for i = 1, #gone, 2 do
  redis.call('ZREM', KEYS[1], gone[i])
  redis.call('ZREM', KEYS[2], gone[i])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'u', gone[i], 'k', 'off', 'r', 'expired', 't', gone[i + 1])
end
return #gone / 2
