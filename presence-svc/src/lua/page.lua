-- One step of a page walk through one bucket, in id order. KEYS: bucket by expiry,
-- bucket by id. ARGV: the last id already returned ('' to start), how many to scan.
-- Returns {last id scanned, number scanned, {online ids among them}}.
--
-- Scores are read 512 ids at a time: Lua's `unpack` fails past ~8,000 values, and a
-- page may scan up to `--max-page-size` (100,000) ids.
local now = now_ms()
local start = '-'
if ARGV[1] ~= '' then start = '(' .. ARGV[1] end
local ids = redis.call('ZRANGEBYLEX', KEYS[2], start, '+', 'LIMIT', 0, tonumber(ARGV[2]))
local online = {}
if #ids == 0 then return {'', 0, online} end
for first = 1, #ids, 512 do
  local last = math.min(first + 511, #ids)
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids, first, last))
  for i = first, last do
    local score = scores[i - first + 1]
    if score and tonumber(score) > now then online[#online + 1] = ids[i] end
  end
end
return {ids[#ids], #ids, online}
