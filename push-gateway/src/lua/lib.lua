-- Helpers shared by the gateway's scripts; store.rs puts this file in front of each.
-- Ids are stream ids, '<ms>-<seq>', with parts below 2^53 (Lua compares doubles).

local function split(id)
  local a, b = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(a), tonumber(b)
end

local function less(x, y)
  local a, b = split(x)
  local c, d = split(y)
  return a < c or (a == c and b < d)
end

-- Publishes on `how_channel`: a channel after how to publish on it, 'S' (SPUBLISH, a
-- shard channel on a Cluster) or 'P' (PUBLISH).
local function publish(how_channel, message)
  local cmd = 'PUBLISH'
  if string.sub(how_channel, 1, 1) == 'S' then cmd = 'SPUBLISH' end
  return redis.call(cmd, string.sub(how_channel, 2), message)
end

-- The epoch of the history `stream` with meta hash `meta`, creating the meta when
-- there is none: a new epoch from Redis's clock (µs). Entries that outlived their
-- meta belong to a dead epoch: the new meta's floor and last are the stream's last
-- entry, so a resume in the new epoch never replays them and new ids still grow.
-- Returns the epoch and whether it was just made.
local function epoch_of(stream, meta)
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch then return epoch, false end
  local t = redis.call('TIME')
  epoch = string.format('%d%06d', t[1], t[2])
  redis.call('HSET', meta, 'epoch', epoch)
  local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if top then redis.call('HSET', meta, 'floor', top[1], 'last', top[1]) end
  return epoch, true
end

-- The field of a device's position in a user's acks hash: `DEVICE|a` (broadcast),
-- `DEVICE|i` (inbox), `DEVICE|g:GID` (a group); history::Source::ack_field in Rust.
local function ack_field(device, source)
  return device .. '|' .. source
end

-- Deletes a device's positions from a user's acks hash.
local function forget_device(acks, groups, device)
  redis.call('HDEL', acks, ack_field(device, 'a'), ack_field(device, 'i'))
  for _, g in ipairs(redis.call('HKEYS', groups)) do redis.call('HDEL', acks, ack_field(device, 'g:' .. g)) end
end
