-- Records attempts and settles their deliveries (a batch of one shard), each only for the holder of
-- its current lease: a worker whose lease ran out and was taken over must not overwrite the new
-- holder's work.
-- KEYS[1] = the shard's due ZSET, KEYS[2] = the shard's dead ZSET.
-- ARGV: shard key prefix, retention seconds, number of settlements S; then per settlement: delivery
--       id, lease token, attempt record JSON, action ('ack' | 'retry' | 'bury'), retry delay ms,
--       last error ('' for none).
-- The attempt log is the delivery's `log` field: one JSON record per line.
-- Returns one integer per settlement: 1 applied, 0 lease lost.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = ARGV[1]
local retention = ARGV[2]
local results = {}
local at = 4
for i = 1, tonumber(ARGV[3]) do
  local id, token, record, action = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local delay, last_error = tonumber(ARGV[at + 4]), ARGV[at + 5]
  at = at + 6
  local dkey = p .. 'd:' .. id
  local d = redis.call('HMGET', dkey, 'lease', 'log', 'event')
  if d[1] ~= token then
    results[i] = 0
  else
    results[i] = 1
    local log = record
    if d[2] then
      log = d[2] .. '\n' .. record
    end
    if action == 'retry' then
      redis.call('HSET', dkey, 'lease', '', 'log', log, 'updated', now, 'last_error', last_error)
      redis.call('ZADD', KEYS[1], now + delay, id)
    elseif action == 'bury' then
      redis.call('HSET', dkey, 'lease', '', 'log', log, 'updated', now, 'last_error', last_error,
        'status', 'dead')
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZADD', KEYS[2], now, id)
    else
      -- ack: keep it for the retention period, and its event until the event's last delivery is done.
      redis.call('HSET', dkey, 'lease', '', 'log', log, 'updated', now, 'last_error', last_error,
        'status', 'succeeded')
      redis.call('ZREM', KEYS[1], id)
      redis.call('EXPIRE', dkey, retention)
      local evkey = p .. 'ev:' .. d[3]
      if redis.call('HINCRBY', evkey, 'open', -1) <= 0 then
        redis.call('EXPIRE', evkey, retention)
      end
    end
  end
end
return results
