-- Helpers shared by presence-svc's scripts; store.rs puts this file in front of each.

-- Redis's clock in ms: time comes from Redis, never from a replica's clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
