-- Shared by every script (prepended to each when it is loaded, see `queue/redis/scripts.rs`): the
-- clock, and the event record.
--
-- The event record, `<shard prefix>e:<event id>`, is one string (one key: a pending delivery costs
-- its event's bytes, a queue entry and little else):
--   OOOODDDD   open deliveries (not acked, not buried) and dead ones, 4 hex digits each, changed
--              in place (SETRANGE) as deliveries close or are replayed
--   a JSON line [source, type, [endpoint of delivery 1, ..., endpoint of delivery n]]
--   the kept headers (JSON) and a newline
--   the body, to the end
-- A delivery has a hash (`d:<id>`) only once it is claimed (lease, attempts, state), or from the
-- start when a plugin gave it its own headers or payload. Its event is named by its id (`crate::id`:
-- the delivery's ULID with the low 16 bits zero; those bits are its number in the event).

-- Redis' clock in ms: several gateways' clocks drift apart, the store's is the one they share.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local B32 = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'

-- `dlv_<ulid>` -> `evt_<ulid with the low 16 bits zero>`, and the delivery's number in its event
-- (nil for what is not a delivery id). The low 16 bits are the last three characters and the
-- lowest bit of the fourth from last.
local function event_of(delivery)
  if #delivery ~= 30 or string.sub(delivery, 1, 4) ~= 'dlv_' then
    return nil
  end
  local u = string.sub(delivery, 5)
  local v = {}
  for i = 23, 26 do
    local at = string.find(B32, string.sub(u, i, i), 1, true)
    if not at then
      return nil
    end
    v[i] = at - 1
  end
  local k = (v[23] % 2) * 32768 + v[24] * 1024 + v[25] * 32 + v[26]
  local c = v[23] - v[23] % 2
  return 'evt_' .. string.sub(u, 1, 22) .. string.sub(B32, c + 1, c + 1) .. '000', k
end

-- The record's metadata {source, type, {endpoints}} and its body.
local function parse_event(s)
  local meta_end = string.find(s, '\n', 9, true)
  local headers_end = string.find(s, '\n', meta_end + 1, true)
  return cjson.decode(string.sub(s, 9, meta_end - 1)), string.sub(s, headers_end + 1)
end

-- The record's open and dead counts (nil when the record is gone).
local function event_counts(ekey)
  local s = redis.call('GETRANGE', ekey, 0, 7)
  if #s < 8 then
    return nil
  end
  return tonumber(string.sub(s, 1, 4), 16), tonumber(string.sub(s, 5, 8), 16)
end

-- Rewrites the counts in place (the record keeps its size, so Redis does not reallocate it).
local function set_event_counts(ekey, open, dead)
  redis.call('SETRANGE', ekey, 0, string.format('%04x%04x', open, dead))
end
