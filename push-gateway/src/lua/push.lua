-- Appends a message to histories and publishes it, once per idempotency key.
--
-- KEYS: per target its stream and meta key; then the idempotency record (if any).
-- ARGV: [1] targets, [2] idempotency window in ms (0: no key), [3] max entries,
-- [4] max age in ms, [5] meta TTL in ms, [6] the encoded message without its id,
-- [6 + i] target i's channel after how to publish on it ('S' SPUBLISH, 'P' PUBLISH),
-- [7 + n] the users who must not receive it, as ',a,b,' ('' for none), [8 + n] the
-- least id to use ('' for none: Redis's clock).
--
-- One id serves every target: at least Redis's clock now (or the floor given: on a
-- Cluster, a push to several slots runs once per slot with one floor, so they agree),
-- and above each target's last id, so ids grow within every history. The id is written as the message's first
-- field (protobuf tag 1, '\10'). A history without meta gets a new epoch, announced on
-- its channel ('\4' epoch). Each target's notification ('\5') carries the id that
-- preceded the message in that history, so a stream can tell that it missed one.
-- With excluded users, the entry keeps them in field 'x' and the notification is '\7':
-- the same, with the excluded list (4-byte length) between the predecessor and the
-- message; their streams skip it, live and replayed.
-- Returns the message id (the first push's, for a repeated idempotency key).
local n = tonumber(ARGV[1])
if ARGV[2] ~= '0' then
  local first = redis.call('GET', KEYS[2 * n + 1])
  if first then return first end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms, seq = now, 0
local floor = ARGV[8 + n] or ''
if floor ~= '' then ms, seq = split(floor) end
local prev = {}
for i = 1, n do
  local s, meta = KEYS[2 * i - 1], KEYS[2 * i]
  local epoch, new = epoch_of(s, meta)
  if new then publish(ARGV[6 + i], '\4' .. epoch) end
  local last = redis.call('HGET', meta, 'last')
  prev[i] = last or ''
  if last then
    local a, b = split(last)
    if a > ms or (a == ms and b >= seq) then ms, seq = a, b + 1 end
    -- The stream expired while its meta lived on: what it held is gone.
    if redis.call('EXISTS', s) == 0 then redis.call('HSET', meta, 'floor', last) end
  end
end
local id = string.format('%d-%d', ms, seq)
local msg = '\10' .. string.char(#id) .. id .. ARGV[6]
local minid = string.format('%d', now - tonumber(ARGV[4]))
local x = ARGV[7 + n] or ''
local xlen = ''
if x ~= '' then
  local l = #x
  xlen = string.char(math.floor(l / 16777216) % 256, math.floor(l / 65536) % 256, math.floor(l / 256) % 256, l % 256)
end
for i = 1, n do
  local s, meta = KEYS[2 * i - 1], KEYS[2 * i]
  local after = string.char(#prev[i]) .. prev[i]
  if x == '' then
    redis.call('XADD', s, 'MAXLEN', '~', ARGV[3], id, 'm', msg)
  else
    redis.call('XADD', s, 'MAXLEN', '~', ARGV[3], id, 'm', msg, 'x', x)
  end
  redis.call('XTRIM', s, 'MINID', '~', minid)
  redis.call('PEXPIRE', s, ARGV[4])
  redis.call('HSET', meta, 'last', id)
  redis.call('PEXPIRE', meta, ARGV[5])
  if x == '' then
    publish(ARGV[6 + i], '\5' .. after .. msg)
  else
    publish(ARGV[6 + i], '\7' .. after .. xlen .. x .. msg)
  end
end
if ARGV[2] ~= '0' then redis.call('SET', KEYS[2 * n + 1], id, 'PX', ARGV[2]) end
return id
