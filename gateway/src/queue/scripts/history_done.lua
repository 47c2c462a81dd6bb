-- Drops a history writer's batch from the head of a shard's `history:v2` stream once PostgreSQL
-- committed it, and takes the deliveries its entries held off the stream's count.
-- KEYS[1] = the shard's `history:v2` STREAM, KEYS[2] = its count of deliveries.
-- ARGV[1] = the id right after the batch's last entry; ARGV[2..] = how many deliveries each of
--           the batch's entries holds, in stream order.
-- The batch was the stream's head when it was read, and entries only join at the tail, so the
-- entries this trim finds are the batch's (all of them, or, when another writer or the age trim
-- dropped the first ones meanwhile, the last ones): the count drops by theirs alone, so it stays
-- exact however often a batch is marked.
-- Returns how many deliveries left the stream.
local removed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
local gone = 0
for i = math.max(2, #ARGV - removed + 1), #ARGV do
  gone = gone + tonumber(ARGV[i])
end
if gone > 0 then
  redis.call('DECRBY', KEYS[2], gone)
end
return gone
