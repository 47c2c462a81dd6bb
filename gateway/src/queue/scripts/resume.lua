-- Puts an endpoint's parked deliveries of one shard back into the queue ZSET, due now, up to ARGV[3]
-- per call; called until it returns fewer. Mode 'enable' (the endpoint was enabled): removes it
-- from the shard's disabled HASH first. Mode 'returned' (a gateway's config has the endpoint again,
-- after deliveries were parked for want of it, see settle.lua's 'park'): only when the shard's
-- `gone` HASH notes the endpoint, and only if it is not disabled (then they stay parked until it
-- is enabled). Either way the `gone` note goes once nothing is left to move.
-- KEYS[1] = the shard's queue ZSET, KEYS[2] = the shard's HASH of disabled endpoints, KEYS[3] = the
-- shard's `gone` HASH.
-- ARGV: shard key prefix, endpoint name, most deliveries to move, mode ('enable' | 'returned').
-- Returns the number of deliveries moved.
local now = now_ms()
local p = ARGV[1]
local limit = tonumber(ARGV[3])
if ARGV[4] == 'returned' then
  if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 0 then
    return 0
  end
  if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
    redis.call('HDEL', KEYS[3], ARGV[2])
    return 0
  end
else
  redis.call('HDEL', KEYS[2], ARGV[2])
end
local paused = p .. 'paused:' .. ARGV[2]
local ids = redis.call('ZRANGE', paused, 0, limit - 1)
for _, id in ipairs(ids) do
  redis.call('HSET', p .. 'd:' .. id, 'status', 'pending', 'updated', now)
  redis.call('ZADD', KEYS[1], now, id)
end
if #ids > 0 then
  redis.call('ZREM', paused, unpack(ids))
end
if #ids < limit then
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return #ids
