-- Stores a batch of events of one shard with all their deliveries, and schedules the deliveries.
-- KEYS[1] = the shard's queue ZSET.
-- ARGV: shard key prefix, retention seconds, number of events E; then per event: id, its record
--       (see record.lua: counts, metadata, headers, body, as the gateway wrote it), number of
--       deliveries N, idempotency key ('' for none), the pending mark it must hold, the answer to
--       record, window ms; then per delivery: id, delay ms, headers JSON ('' for none), payload ('' with
--       has-payload '0' for the event's own), has-payload.
-- An event with an idempotency key is stored only while the key holds the mark its request set
-- (the key expired, or was released as not stored: skip it), and the key takes the answer in the
-- same step; so a lost reply leaves the key saying what happened. The key is in this shard's slot.
-- A delivery gets no hash of its own here unless a plugin gave it its own headers or payload: the
-- event record names its endpoint, and its first settle (or a claim after a lapsed lease) makes
-- the hash. One without a hash is queued half a millisecond before it is due: a score ending in
-- `.5` tells the claim that nothing but the event record describes the delivery (see claim.lua).
-- A batch with no idempotency key and no delivery of its own headers or payload is usually stored
-- without this script, by a transaction writing the same keys and scores (`redis/enqueue.rs`);
-- what this script does for such a batch, that one must do too.
-- Returns { now ms, {ids of events skipped} }.
local now = now_ms()
-- Most deliveries are due at once: their score goes as a string (Redis formats a number with
-- sprintf for every argument).
local now_s = tostring(now)
local fresh_now = tostring(now - 1) .. '.5'
local p = ARGV[1]
local retention = ARGV[2]
local at = 4
local zadd = { 'ZADD', KEYS[1] }
local skipped = {}
for _ = 1, tonumber(ARGV[3]) do
  local evid, n = ARGV[at], tonumber(ARGV[at + 2])
  local idem = ARGV[at + 3]
  local store = idem == '' or redis.call('GET', idem) == ARGV[at + 4]
  if store then
    if idem ~= '' then
      redis.call('SET', idem, ARGV[at + 5], 'PX', ARGV[at + 6])
    end
    local ekey = event_key(p, evid)
    redis.call('SET', ekey, ARGV[at + 1])
    if n == 0 then
      redis.call('EXPIRE', ekey, retention)
    end
  else
    skipped[#skipped + 1] = evid
  end
  at = at + 7
  for _ = 1, n do
    if store then
      local id = ARGV[at]
      local dkey = p .. 'd:' .. id
      local own = false
      if ARGV[at + 2] ~= '' then
        redis.call('HSET', dkey, 'headers', ARGV[at + 2])
        own = true
      end
      if ARGV[at + 4] == '1' then
        redis.call('HSET', dkey, 'payload', ARGV[at + 3])
        own = true
      end
      local delay = ARGV[at + 1]
      if own then
        zadd[#zadd + 1] = (delay == '0') and now_s or (now + tonumber(delay))
      elseif delay == '0' then
        zadd[#zadd + 1] = fresh_now
      else
        zadd[#zadd + 1] = tostring(now + tonumber(delay) - 1) .. '.5'
      end
      zadd[#zadd + 1] = id
      if #zadd >= 2000 then
        -- Stay well below Lua's limit on unpacked arguments.
        redis.call(unpack(zadd))
        zadd = { 'ZADD', KEYS[1] }
      end
    end
    at = at + 5
  end
end
if #zadd > 2 then
  redis.call(unpack(zadd))
end
return { now, skipped }
