-- Stores a batch of events of one shard with all their deliveries, and schedules the deliveries.
-- KEYS[1] = the shard's due ZSET.
-- ARGV: shard key prefix, retention seconds, number of events E; then per event: id, source, type,
--       headers JSON, payload, number of deliveries N, idempotency key ('' for none), the pending
--       mark it must hold, the answer to record, window ms; then per delivery: id, endpoint, delay
--       ms, headers JSON ('' for none), payload ('' with has-payload '0' for the event's own),
--       has-payload.
-- An event with an idempotency key is stored only while the key holds the mark its request set
-- (the key expired, or was released as not stored: skip it), and the key takes the answer in the
-- same step; so a lost reply leaves the key saying what happened. The key is in this shard's slot.
-- Time comes from Redis, not the gateway: several gateways' clocks drift apart.
-- Returns { now ms, {ids of events skipped} }.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = ARGV[1]
local retention = ARGV[2]
local at = 4
local zadd = { 'ZADD', KEYS[1] }
local skipped = {}
for _ = 1, tonumber(ARGV[3]) do
  local evid, n = ARGV[at], tonumber(ARGV[at + 5])
  local idem = ARGV[at + 6]
  local store = idem == '' or redis.call('GET', idem) == ARGV[at + 7]
  if store then
    if idem ~= '' then
      redis.call('SET', idem, ARGV[at + 8], 'PX', ARGV[at + 9])
    end
    local evkey = p .. 'ev:' .. evid
    -- The small fields in the hash (so Redis keeps it compact, as a listpack), the headers and the
    -- body in one string beside it: headers JSON, a newline (JSON has none of its own), the body.
    redis.call('HSET', evkey, 'source', ARGV[at + 1], 'type', ARGV[at + 2], 'n', n, 'open', n)
    redis.call('SET', evkey .. ':b', ARGV[at + 3] .. '\n' .. ARGV[at + 4])
    if n == 0 then
      redis.call('EXPIRE', evkey, retention)
      redis.call('EXPIRE', evkey .. ':b', retention)
    end
  else
    skipped[#skipped + 1] = evid
  end
  at = at + 10
  for _ = 1, n do
    if store then
      local id = ARGV[at]
      local dkey = p .. 'd:' .. id
      redis.call('HSET', dkey, 'event', evid, 'endpoint', ARGV[at + 1], 'attempts', 0, 'status', 'pending')
      if ARGV[at + 3] ~= '' then
        redis.call('HSET', dkey, 'headers', ARGV[at + 3])
      end
      if ARGV[at + 5] == '1' then
        redis.call('HSET', dkey, 'payload', ARGV[at + 4])
      end
      zadd[#zadd + 1] = now + tonumber(ARGV[at + 2])
      zadd[#zadd + 1] = id
      if #zadd >= 2000 then
        -- Stay well below Lua's limit on unpacked arguments.
        redis.call(unpack(zadd))
        zadd = { 'ZADD', KEYS[1] }
      end
    end
    at = at + 6
  end
end
if #zadd > 2 then
  redis.call(unpack(zadd))
end
return { now, skipped }
