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

-- Byte -> digit of Crockford's base 32, as ids are written (upper case): one table lookup per
-- character instead of a search of B32 (the claim and the settle run this for every delivery).
local B32_DIGIT = {}
for i = 1, 32 do
  B32_DIGIT[string.byte(B32, i)] = i - 1
end

-- `dlv_<ulid>` -> `evt_<ulid with the low 16 bits zero>`, and the delivery's number in its event
-- (nil for what is not a delivery id). The low 16 bits are the last three characters and the
-- lowest bit of the fourth from last.
local function event_of(delivery)
  if #delivery ~= 30 or string.sub(delivery, 1, 4) ~= 'dlv_' then
    return nil
  end
  -- The ULID's last four characters (the id's 27th to 30th), as digits.
  local a, b, c, d = string.byte(delivery, 27, 30)
  a, b, c, d = B32_DIGIT[a], B32_DIGIT[b], B32_DIGIT[c], B32_DIGIT[d]
  if not (a and b and c and d) then
    return nil
  end
  local k = (a % 2) * 32768 + b * 1024 + c * 32 + d
  local high = a - a % 2
  return 'evt_' .. string.sub(delivery, 5, 26) .. string.sub(B32, high + 1, high + 1) .. '000', k
end

-- Byte of a ULID digit -> the digit with its lowest bit cleared, as a character (an event id's
-- 23rd character from its delivery's).
local B32_EVEN = {}
for i = 1, 32 do
  local even = i - (i - 1) % 2
  B32_EVEN[string.byte(B32, i)] = string.sub(B32, even, even)
end

-- The key of delivery `id`'s event record (nil for what is not a delivery id): what `event_of` and
-- `event_key` make together, with one new string instead of four (the claim runs it for every
-- delivery).
local function record_key_of(p, id)
  if #id ~= 30 or string.sub(id, 1, 4) ~= 'dlv_' then
    return nil
  end
  local a, b, c, d = string.byte(id, 27, 30)
  local even = B32_EVEN[a]
  if not (even and B32_DIGIT[b] and B32_DIGIT[c] and B32_DIGIT[d]) then
    return nil
  end
  return p .. 'e:' .. string.sub(id, 5, 26) .. even .. '000'
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

-- The record's type, its endpoints (by delivery number) and its body, read in one pass (no table
-- of lines). Errors on a record whose metadata is cut short or has a blank source or type (a
-- field is never empty as written): the callers run it under pcall.
local function parse_event(s)
  -- Past the counts: the source, then the type.
  local at = string.find(s, '\n', 1, true) + 1
  local nl = string.find(s, '\n', at, true)
  if nl == at then
    error('no source')
  end
  at = nl + 1
  nl = string.find(s, '\n', at, true)
  if nl == at then
    error('no type')
  end
  local etype = field(string.sub(s, at, nl - 1))
  local endpoints = {}
  at = nl + 1
  while true do
    nl = string.find(s, '\n', at, true)
    if nl == at then
      break
    end
    endpoints[#endpoints + 1] = field(string.sub(s, at, nl - 1))
    at = nl + 1
  end
  -- Past the blank line: the headers, up to the next blank line (at once when there are none).
  local body = at + 2
  if string.byte(s, at + 1) ~= 10 then
    body = string.find(s, '\n\n', at + 1, true) + 2
  end
  return etype, endpoints, string.sub(s, body)
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
