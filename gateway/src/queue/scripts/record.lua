-- Shared by every script (prepended to each when it is loaded, see `queue/redis/scripts.rs`): the
-- clock, and the event record.
--
-- The event record, `<shard prefix>e:<event ulid>`, is one string (one key: a pending delivery costs
-- its event's bytes, a queue entry and little else), lines like an HTTP message's head:
--   <open><dead>       open deliveries (not acked, not buried) and dead ones, in hex, each as wide as
--                      the delivery count needs, rewritten in place (SETRANGE) as they change
--   <source>
--   <type>
--   <endpoint of delivery 1> ... <endpoint of delivery n>, a line each
--   (a blank line)
--   <header name>:<value>, a line per kept header
--   (a blank line)
--   <body>, to the end, as the producer sent it
-- A field that is empty, starts with a double quote or holds a newline is written as a JSON string
-- (so it starts with a double quote and holds no newline). `queue/redis/record.rs` writes it.
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

-- A field of the record: as it is, or a JSON string.
local function field(line)
  if string.byte(line, 1) == 34 then
    return cjson.decode('[' .. line .. ']')[1]
  end
  return line
end

-- The event record's key: `e:` and the event's bare ULID. With `sluice:{s<n>}:` that is 40 to 42
-- characters, which Redis' allocator keeps in a 48-byte slot up to 999 shards; with `evt_` it would
-- cross into the next size class from shard 10 on.
local function event_key(p, evid)
  return p .. 'e:' .. string.sub(evid, 5)
end

-- The record's type, its endpoints (by delivery number) and its body.
local function parse_event(s)
  local at = string.find(s, '\n', 1, true) + 1
  local lines = {}
  while true do
    local nl = string.find(s, '\n', at, true)
    if nl == at then
      break
    end
    lines[#lines + 1] = string.sub(s, at, nl - 1)
    at = nl + 1
  end
  -- Past the blank line: the headers, up to the next blank line (at once when there are none).
  local body = at + 2
  if string.byte(s, at + 1) ~= 10 then
    body = string.find(s, '\n\n', at + 1, true) + 2
  end
  local endpoints = {}
  for k = 3, #lines do
    endpoints[k - 2] = field(lines[k])
  end
  return field(lines[2]), endpoints, string.sub(s, body)
end

-- The record's open and dead counts and their width (nil when the record is gone or unreadable).
local function event_counts(ekey)
  local s = redis.call('GETRANGE', ekey, 0, 8)
  local nl = string.find(s, '\n', 1, true)
  if not nl then
    return nil
  end
  local w = (nl - 1) / 2
  if w < 1 or w ~= math.floor(w) then
    return nil
  end
  local open, dead = tonumber(string.sub(s, 1, w), 16), tonumber(string.sub(s, w + 1, 2 * w), 16)
  if not open or not dead then
    return nil
  end
  return open, dead, w
end

-- Rewrites the counts in place, as wide as before (the record keeps its size, so Redis does not
-- reallocate it).
local function set_event_counts(ekey, open, dead, w)
  redis.call('SETRANGE', ekey, 0, string.format('%0' .. w .. 'x%0' .. w .. 'x', open, dead))
end
