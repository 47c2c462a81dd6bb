-- Takes (or keeps) the history-writer lease of one shard, so one gateway at a time writes a shard's
-- finished deliveries to PostgreSQL instead of every gateway writing the same batch. A writer that
-- stops lets the lease run out, and another gateway's writer takes the shard over.
-- KEYS[1] = the shard's writer lease. ARGV: this writer's id, lease ms.
-- Returns 1 when this writer holds the lease (taken or renewed), else 0.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
