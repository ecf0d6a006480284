-- Counts the users of one bucket (KEYS[1], by expiry) whose latest lease is later than
-- now. store.rs sums the buckets.
return redis.call('ZCOUNT', KEYS[1], '(' .. now_ms(), '+inf')
