-- Puts dead-lettered deliveries of one shard back in the queue, with a fresh schedule, spaced
-- ARGV[2] ms apart (a replay of many must not flood the endpoint). The attempt log keeps the old
-- attempts and gains a `replayed` record.
-- KEYS[1] = the shard's due ZSET, KEYS[2] = the shard's dead ZSET.
-- ARGV: shard key prefix, spacing ms, then delivery ids.
-- Returns the ids replayed (ids that were not dead are skipped).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = ARGV[1]
local step = tonumber(ARGV[2])
local replayed = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local dkey = p .. 'd:' .. id
  local d = redis.call('HMGET', dkey, 'status', 'log')
  if d[1] == 'dead' then
    local record = '{"attempt":0,"at":' .. now .. ',"outcome":"replayed","status":null,"error":null,"latency_ms":0.0,"response":null}'
    local log = record
    if d[2] then
      log = d[2] .. '\n' .. record
    end
    redis.call('HSET', dkey, 'status', 'pending', 'attempts', 0, 'lease', '', 'last_error', '', 'log', log,
      'updated', now)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[1], now + #replayed * step, id)
    replayed[#replayed + 1] = id
  end
end
return replayed
