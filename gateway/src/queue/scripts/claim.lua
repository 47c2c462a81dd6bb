-- Claims up to ARGV[2] due deliveries of one shard: each gets a fresh lease token and its score moves
-- to the lease expiry, so a worker that dies lets the lease run out and the delivery falls due again.
-- A claim counts no attempt: the settle that records an attempt does (a claim whose reply was lost
-- must not spend one). A delivery still holding a lease when claimed again had its lease run out
-- unsettled; `lapsed` counts those, so a delivery that keeps killing its workers can be given up.
-- A delivery that no hash describes yet (queued by enqueue.lua with a score ending in `.5`) is
-- leased without one: its lease is its score, the lease expiry plus a quarter of a millisecond.
-- Nothing is read or written per delivery but its event record, handed out whole (once per event
-- in a reply): the gateway reads it, and makes the lease's token, `~<s|m><expiry ms>:<endpoint>`
-- (`s`: the event's only delivery), from which the settle checks the lease against the score and
-- writes the hash whole. A score ending in `.25` seen here is such a lease that ran out: the
-- delivery is claimed as any other, and its lapsed lease counted. Any other claim makes (or
-- updates) the delivery's hash: lease, endpoint.
-- Deliveries stored by an older version (event hash `ev:<id>` with a `:b` string, a delivery hash
-- from the start, queued in the `due` ZSET, which older gateways still serve during an upgrade)
-- are claimed too, after this version's, and move to the queue ZSET when claimed.
-- Also trims the shard's dead letters older than the dead-letter retention: their records expire by
-- themselves, this drops their index entries (and removes records buried by a version that did not
-- let them expire).
-- KEYS[1] = the shard's queue ZSET, KEYS[2] = the shard's dead ZSET, KEYS[3] = the shard's `due`
-- ZSET of older versions, KEYS[4] = the shard's `done` ZSET (a trimmed dead letter leaves it).
-- ARGV: shard key prefix, limit, lease ms, token prefix (unique per worker and call), dead-letter
--       retention ms, retention s.
-- Returns { {row}..., wait ms, now ms, lease expiry ms }, where a row is {id, event record ('' when
-- an earlier row of this reply holds its event's)} for a lease without a hash, else {id, token,
-- endpoint, attempt, event id, type, payload, headers, lapsed}; attempt is the number the next
-- attempt will have and wait the time until the next delivery falls due (-1: none queued).
local now = now_ms()
local p = ARGV[1]
local limit = tonumber(ARGV[2])
-- A string: Redis would format the number with sprintf for every delivery.
local lease_until = tostring(now + tonumber(ARGV[3]))
local lease_fresh = lease_until .. '.25'
local out = {}
local zadd = { 'ZADD', KEYS[1] }
local events = {}
-- Event record keys whose records this reply holds (true), or that are gone (false).
local sent = {}

-- The event's type and body, the delivery's endpoint, and whether it is the event's only delivery,
-- from a record of this version (read once per event in this call); nil when the event is gone. A
-- record that cannot be read (or names no endpoint for this delivery) hands the delivery out under
-- an event id that does not parse, so the gateway dead-letters it with the reason rather than the
-- whole claim failing on it forever.
local function from_record(id)
  local evid, k = event_of(id)
  local rec = events[evid]
  if rec == nil then
    local s = redis.call('GET', event_key(p, evid))
    rec = false
    if s then
      local ok, etype, endpoints, body = pcall(parse_event, s)
      if ok and type(etype) == 'string' then
        rec = { etype = etype, endpoints = endpoints, body = body }
      else
        rec = { bad = true }
      end
    end
    events[evid] = rec
  end
  if not rec then
    return nil
  end
  if rec.bad or not rec.endpoints[k] then
    return evid .. ' (unreadable event record)', '', '', ''
  end
  return evid, rec.etype, rec.body, rec.endpoints[k], #rec.endpoints == 1
end

-- The same from an older version's records: event hash (body in its `:b` string, or older still,
-- in the hash).
local function from_older(evid)
  local evkey = p .. 'ev:' .. evid
  local e = redis.call('HMGET', evkey, 'type', 'payload')
  local b = redis.call('GET', evkey .. ':b')
  local body = e[2] or ''
  if b then
    -- After the headers and a newline.
    body = string.sub(b, (string.find(b, '\n', 1, true) or 0) + 1)
  end
  return evid, e[1] or '', body
end

-- Leases a delivery no hash describes yet (see above); false when its event is gone (or the id
-- names none: the general path hands such an id out, and drops it).
local function claim_fresh(id)
  local ekey = record_key_of(p, id)
  if not ekey then
    return nil
  end
  local record = ''
  local known = sent[ekey]
  if known == nil then
    record = redis.call('GET', ekey)
    known = record and true
    sent[ekey] = known
  end
  if not known then
    return false
  end
  zadd[#zadd + 1] = lease_fresh
  zadd[#zadd + 1] = id
  out[#out + 1] = { id, record }
  return true
end

-- Leases one delivery; false when no pending delivery is behind the id (expired, or settled
-- elsewhere): the caller drops it from its ZSET. `lapsed_fresh`: it held a lease without a hash
-- (see above) that ran out.
local function claim(id, i, lapsed_fresh)
  local dkey = p .. 'd:' .. id
  local d = redis.call('HMGET', dkey, 'event', 'endpoint', 'attempts', 'payload', 'headers', 'status', 'lease',
    'lapsed')
  if d[6] and d[6] ~= 'pending' then
    return false
  end
  if not d[1] and not event_of(id) then
    -- Not one of our delivery ids: handed out as it is (the gateway logs it), and dropped.
    out[#out + 1] = { id, '', '', 1, '', '', '', '', 0 }
    return false
  end
  local evid, etype, body, endpoint, only
  if d[1] then
    evid, etype, body = from_older(d[1])
  else
    evid, etype, body, endpoint, only = from_record(id)
  end
  endpoint = d[2] or endpoint
  if not evid or not endpoint then
    return false
  end
  -- The token ends in `s` when this is its event's only delivery (a record of this version): the
  -- settle that closes it then knows the event's counts without reading them (see settle.lua).
  local token = ARGV[4] .. '.' .. i .. (only and 's' or '')
  -- A record from another version may lack a field: count from zero rather than fail the batch.
  local attempt = (tonumber(d[3]) or 0) + 1
  local lapsed = tonumber(d[8]) or 0
  local set = { 'HSET', dkey, 'lease', token }
  if lapsed_fresh or (d[7] and d[7] ~= '') then
    lapsed = lapsed + 1
    set[#set + 1] = 'lapsed'
    set[#set + 1] = lapsed
  end
  if not d[2] then
    set[#set + 1] = 'endpoint'
    set[#set + 1] = endpoint
  end
  redis.call(unpack(set))
  zadd[#zadd + 1] = lease_until
  zadd[#zadd + 1] = id
  out[#out + 1] = { id, token, endpoint, attempt, evid, etype, d[4] or body, d[5] or '', lapsed }
  return true
end

-- Claims from one ZSET; returns how many of its ids were claimed or dropped.
local function claim_from(key, n)
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, n)
  local gone = { 'ZREM', key }
  for j = 1, #due, 2 do
    local id = due[j]
    -- What the score's fraction says (see above).
    local mark = tonumber(due[j + 1]) % 1
    local claimed
    if mark == 0.5 then
      claimed = claim_fresh(id)
    end
    if claimed == nil then
      claimed = claim(id, #out + 1, mark == 0.25)
    end
    if not claimed then
      gone[#gone + 1] = id
    elseif key ~= KEYS[1] then
      -- Moves to this version's queue (the lease's ZADD below puts it there).
      gone[#gone + 1] = id
    end
  end
  if #gone > 2 then
    redis.call(unpack(gone))
  end
  return #due / 2
end

local seen = claim_from(KEYS[1], limit)
if seen < limit then
  claim_from(KEYS[3], limit - seen)
end
if #zadd > 2 then
  redis.call(unpack(zadd))
end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - tonumber(ARGV[5])), 'LIMIT', 0, 100)
for _, id in ipairs(old) do
  local dkey = p .. 'd:' .. id
  local d = redis.call('HMGET', dkey, 'status', 'event', 'closed')
  if d[1] == 'dead' then
    redis.call('DEL', dkey, dkey .. ':log')
    if d[3] ~= '1' and d[2] then
      -- Buried before burials closed their delivery: its event still counts it as open.
      local evkey = p .. 'ev:' .. d[2]
      if redis.call('HINCRBY', evkey, 'open', -1) <= 0 then
        redis.call('EXPIRE', evkey, ARGV[6])
        redis.call('EXPIRE', evkey .. ':b', ARGV[6])
      end
    end
  end
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[4], id)
end
local wait = -1
for _, key in ipairs({ KEYS[1], KEYS[3] }) do
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if head[2] then
    local w = math.max(0, tonumber(head[2]) - now)
    if wait < 0 or w < wait then
      wait = w
    end
  end
end
return { out, wait, now, lease_until }
