-- Records attempts and settles their deliveries (a batch of one shard), each only for the holder of
-- its current lease: a worker whose lease ran out and was taken over must not overwrite the new
-- holder's work.
-- KEYS[1] = the shard's due ZSET, KEYS[2] = the shard's dead ZSET, KEYS[3] = the shard's HASH of
-- disabled endpoints (name -> reason).
-- ARGV: shard key prefix, retention seconds, number of settlements S; then per settlement: delivery
--       id, lease token, attempt record JSON ('' when no attempt was made), action ('ack' | 'retry' |
--       'bury' | 'defer' | 'pause'), retry delay ms, last error ('' for none).
-- 'defer' puts back a delivery that was claimed but not attempted (its endpoint was busy), without
-- counting an attempt. 'pause' parks it in the endpoint's paused ZSET while the endpoint is disabled;
-- checked here, atomically with enabling (which empties that set), so a delivery is never parked
-- after its endpoint came back: it is deferred instead.
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
  local d = redis.call('HMGET', dkey, 'lease', 'log', 'event', 'endpoint')
  if d[1] ~= token then
    results[i] = 0
  else
    results[i] = 1
    local log = record
    if record == '' then
      -- No attempt was made: take back the one the claim counted, keep the log as it is.
      redis.call('HINCRBY', dkey, 'attempts', -1)
      log = d[2] or ''
    elseif d[2] then
      log = d[2] .. '\n' .. record
    end
    if action == 'pause' and not redis.call('HGET', KEYS[3], d[4]) then
      action = 'defer'
    end
    if action == 'retry' then
      redis.call('HSET', dkey, 'lease', '', 'log', log, 'updated', now, 'last_error', last_error)
      redis.call('ZADD', KEYS[1], now + delay, id)
    elseif action == 'defer' then
      -- Not attempted: the last attempt's error still stands.
      redis.call('HSET', dkey, 'lease', '', 'log', log, 'updated', now)
      redis.call('ZADD', KEYS[1], now + delay, id)
    elseif action == 'pause' then
      redis.call('HSET', dkey, 'lease', '', 'log', log, 'updated', now, 'status', 'paused')
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZADD', p .. 'paused:' .. d[4], now, id)
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
