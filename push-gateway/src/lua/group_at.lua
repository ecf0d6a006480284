-- Where a group's history stands, for a join: `EPOCH/LAST` ('0-0' before any push),
-- creating its meta (a new epoch) when there is none, and renewing the meta's TTL.
-- KEYS: [1] the history's stream, [2] its meta. ARGV: [1] meta TTL in ms.
local epoch = epoch_of(KEYS[1], KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return epoch .. '/' .. (redis.call('HGET', KEYS[2], 'last') or '0-0')
