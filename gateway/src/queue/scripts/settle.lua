-- Records an attempt and settles its delivery, but only for the holder of the current lease: a worker
-- whose lease ran out and was taken over must not overwrite the new holder's work.
-- KEYS[1] = the shard's due ZSET, KEYS[2] = the shard's dead ZSET.
-- ARGV: shard key prefix, delivery id, lease token, attempt record JSON, action ('ack', 'retry',
--       'bury'), retry delay ms, retention seconds, last error ('' for none).
-- Returns 1 when applied, 0 when the lease was lost.
local p = ARGV[1]
local id = ARGV[2]
local dkey = p .. 'd:' .. id
if redis.call('HGET', dkey, 'lease') ~= ARGV[3] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local akey = p .. 'attempts:' .. id
redis.call('RPUSH', akey, ARGV[4])
redis.call('HSET', dkey, 'lease', '', 'updated', now, 'last_error', ARGV[8])
local action = ARGV[5]
if action == 'retry' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[6]), id)
  return 1
end
redis.call('ZREM', KEYS[1], id)
if action == 'bury' then
  redis.call('HSET', dkey, 'status', 'dead')
  redis.call('ZADD', KEYS[2], now, id)
  return 1
end
-- ack: finished; keep it for the retention period, and the event until its last delivery is done.
local retention = tonumber(ARGV[7])
redis.call('HSET', dkey, 'status', 'succeeded')
redis.call('EXPIRE', dkey, retention)
redis.call('EXPIRE', akey, retention)
local evkey = p .. 'ev:' .. redis.call('HGET', dkey, 'event')
if redis.call('HINCRBY', evkey, 'open', -1) <= 0 then
  redis.call('EXPIRE', evkey, retention)
end
return 1
