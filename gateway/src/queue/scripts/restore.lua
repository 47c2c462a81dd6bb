-- Brings back a dead letter that only history still holds (its records expired from Redis): the
-- delivery is pending again, due ARGV[3] ms from now, with its attempt log and a `replayed` record
-- (as replay.lua leaves a replayed one); its event is stored again when it is gone, else it counts
-- one more open delivery and one fewer dead.
-- KEYS[1] = the shard's queue ZSET.
-- ARGV: shard key prefix, delivery id, delay ms, endpoint, the event record to store when there is
--       none (written with one open delivery and none dead), the attempt log (JSON lines, each
--       ended by a newline), own headers ('' for none), own payload, '1' when it has one.
-- Returns 1 when restored, 0 when Redis holds the delivery (replay it instead).
local now = now_ms()
local p, id = ARGV[1], ARGV[2]
local dkey = p .. 'd:' .. id
if redis.call('EXISTS', dkey) == 1 or redis.call('ZSCORE', KEYS[1], id) then
  return 0
end
local evid = event_of(id)
if not evid then
  return redis.error_reply('not a delivery id: ' .. id)
end
local ekey = event_key(p, evid)
local open, dead, w = event_counts(ekey)
if open then
  -- The record its deliveries were enqueued with counted this one when it was buried. (One stored
  -- again by an earlier restore did not: the floor at zero keeps that count from going negative,
  -- at worst one short, which only shortens the event's TTL once its last delivery closes.)
  set_event_counts(ekey, open + 1, math.max(dead - 1, 0), w)
  redis.call('PERSIST', ekey)
elseif redis.call('EXISTS', ekey) == 1 then
  return redis.error_reply('the event record of ' .. id .. ' is unreadable')
else
  redis.call('SET', ekey, ARGV[5])
end
local set = { 'HSET', dkey, 'endpoint', ARGV[4], 'status', 'pending', 'attempts', 0, 'lapsed', 0, 'lease', '',
  'last_error', '', 'updated', now }
if ARGV[7] ~= '' then
  set[#set + 1] = 'headers'
  set[#set + 1] = ARGV[7]
end
if ARGV[9] == '1' then
  set[#set + 1] = 'payload'
  set[#set + 1] = ARGV[8]
end
redis.call(unpack(set))
local record = '{"attempt":0,"at":' .. now .. ',"outcome":"replayed","status":null,"error":null,"latency_ms":0.0,"response":null}'
redis.call('SET', dkey .. ':log', ARGV[6] .. record .. '\n')
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), id)
return 1
