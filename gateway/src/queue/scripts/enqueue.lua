-- Stores one event and all its deliveries, and schedules the deliveries, atomically.
-- KEYS[1] = the shard's due ZSET.
-- ARGV: shard key prefix, event id, source, type, headers JSON, payload, delivery list JSON,
--       retention seconds (used when there are no deliveries), number of deliveries N, then per
--       delivery: id, endpoint, delay ms, headers JSON, has-payload ('1'/'0'), payload.
-- Returns the Redis clock in ms. Time comes from Redis, not the gateway: gateways' clocks drift.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = ARGV[1]
local n = tonumber(ARGV[9])
local evkey = p .. 'ev:' .. ARGV[2]
redis.call('HSET', evkey, 'source', ARGV[3], 'type', ARGV[4], 'headers', ARGV[5], 'payload', ARGV[6],
  'deliveries', ARGV[7], 'received', now, 'open', n)
if n == 0 then
  redis.call('EXPIRE', evkey, ARGV[8])
end
for i = 0, n - 1 do
  local b = 10 + i * 6
  local id = ARGV[b]
  local due = now + tonumber(ARGV[b + 2])
  local dkey = p .. 'd:' .. id
  redis.call('HSET', dkey, 'event', ARGV[2], 'endpoint', ARGV[b + 1], 'headers', ARGV[b + 3],
    'attempts', 0, 'status', 'pending', 'created', now, 'lease', '')
  if ARGV[b + 4] == '1' then
    redis.call('HSET', dkey, 'payload', ARGV[b + 5])
  end
  redis.call('ZADD', KEYS[1], due, id)
end
return now
