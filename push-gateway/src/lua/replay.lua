-- One page of a history after a cursor.
--
-- KEYS: stream, meta. ARGV: cursor epoch ('' for none: start at the end), cursor id,
-- page size, meta TTL in ms, the reader ('' for none). An entry that excludes the
-- reader (field 'x', see push.lua) is returned with an empty message, so the reader's
-- position still moves past it. Creates the meta (a new epoch) when there is none, so the
-- epoch reported is the one later pushes use.
--
-- Returns {epoch, point, continuity, id1, message1, id2, ...}: the stream continues
-- after `point` with the entries listed. Continuity 1: resumed at the cursor, nothing
-- missed. 2: no cursor, `point` is the last id. 3: a gap: the cursor's epoch is not
-- the history's, or entries after it may have been trimmed or expired, or it is past
-- the last id (the history was rolled back); `point` is then just before the first
-- retained entry of the current epoch, and what is retained follows.
--
-- Redis does not record the largest trimmed id (`max-deleted-entry-id` counts only
-- XDEL), so a cursor before the first retained entry of a trimmed stream is a gap even
-- in the rare case that the cursor was itself the last entry trimmed: a needless
-- resync at worst, never a silent loss.
local s, meta = KEYS[1], KEYS[2]
local epoch = epoch_of(s, meta)
redis.call('PEXPIRE', meta, ARGV[4])
local last = redis.call('HGET', meta, 'last') or '0-0'
if ARGV[1] == '' then return {epoch, last, 2} end
local first = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)[1]
first = first and first[1]
-- At or before the floor, entries are gone or belong to a dead epoch.
local floor = redis.call('HGET', meta, 'floor')
-- Where a replay after a gap starts: just before the first retained entry, never
-- before the floor.
local function gap_point()
  local p = last
  if first then
    local a, b = split(first)
    if b > 0 then
      p = string.format('%d-%d', a, b - 1)
    else
      p = string.format('%d-%d', a - 1, 9007199254740991)
    end
  end
  if floor and less(p, floor) then p = floor end
  return p
end
local point, continuity = ARGV[2], 1
if ARGV[1] ~= epoch then
  point, continuity = gap_point(), 3
elseif less(last, point) then
  point, continuity = last, 3
elseif floor and less(point, floor) then
  point, continuity = gap_point(), 3
elseif not first then
  if less(point, last) then point, continuity = last, 3 end
elseif less(point, first) then
  -- Entries before the first retained one were trimmed when Redis counts more entries
  -- ever added than it holds.
  local info = redis.call('XINFO', 'STREAM', s)
  local added, length = 0, 0
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then added = info[i + 1] end
    if info[i] == 'length' then length = info[i + 1] end
  end
  if added > length then point, continuity = gap_point(), 3 end
end
local out = {epoch, point, continuity}
if tonumber(ARGV[3]) == 0 then return out end
local reader = ',' .. (ARGV[5] or '') .. ','
for _, e in ipairs(redis.call('XRANGE', s, '(' .. point, '+', 'COUNT', ARGV[3])) do
  out[#out + 1] = e[1]
  local f = e[2]
  if f[3] == 'x' and reader ~= ',,' and string.find(f[4], reader, 1, true) then
    out[#out + 1] = ''
  else
    out[#out + 1] = f[2]
  end
end
return out
