-- Enables an endpoint in one shard: removes it from the shard's disabled HASH and moves up to
-- ARGV[3] of its paused deliveries back into the queue ZSET, due now. Called until it returns 0.
-- KEYS[1] = the shard's queue ZSET, KEYS[2] = the shard's HASH of disabled endpoints.
-- ARGV: shard key prefix, endpoint name, most deliveries to move.
-- Returns the number of deliveries moved.
local now = now_ms()
local p = ARGV[1]
redis.call('HDEL', KEYS[2], ARGV[2])
local paused = p .. 'paused:' .. ARGV[2]
local ids = redis.call('ZRANGE', paused, 0, tonumber(ARGV[3]) - 1)
for _, id in ipairs(ids) do
  redis.call('HSET', p .. 'd:' .. id, 'status', 'pending', 'updated', now)
  redis.call('ZADD', KEYS[1], now, id)
end
if #ids > 0 then
  redis.call('ZREM', paused, unpack(ids))
end
return #ids
