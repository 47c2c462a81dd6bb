-- Marks finished deliveries of one shard as held by history (PostgreSQL committed them): they leave
-- the shard's `done` index, and a succeeded one expires after ARGV[2] seconds (sooner than
-- `queue.retention`), with its attempt log, and with its event once none of the event's deliveries
-- is open or dead. Dead letters keep their TTL (`queue.dead_retention`): listed and replayable.
-- A delivery whose `updated` is not the one read for history changed since (replayed): it is left
-- for the next round.
-- Cheap on purpose (it runs for every finished delivery): one EXPIRE per key, no TTL read first.
-- The caller passes 0 for ARGV[2] when `keep_in_redis` is not shorter than `queue.retention`
-- (nothing to shorten). A record whose remaining TTL was already below `keep` (history was away
-- for most of the retention) may so gain up to `keep`: PostgreSQL holds it by then.
-- KEYS[1] = the shard's `done` ZSET.
-- ARGV: shard key prefix, keep seconds (0: leave TTLs alone), then per delivery: id, `updated` as
--       read ('' for none).
-- Returns how many were marked.
local p = ARGV[1]
local keep = tonumber(ARGV[2])
local marked = {}

for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local dkey = p .. 'd:' .. id
  local d = redis.call('HMGET', dkey, 'status', 'updated', 'event')
  if (d[2] or '') == ARGV[i + 1] and (d[1] == 'succeeded' or d[1] == 'dead') then
    marked[#marked + 1] = id
    if d[1] == 'succeeded' and keep > 0 then
      redis.call('EXPIRE', dkey, keep)
      redis.call('EXPIRE', dkey .. ':log', keep)
      -- An older version's event (a hash, named in the delivery) keeps its own TTL.
      if not d[3] then
        local ekey = event_key(p, (event_of(id)))
        local open, dead = event_counts(ekey)
        if open == 0 and dead == 0 then
          redis.call('EXPIRE', ekey, keep)
        end
      end
    end
  end
end
for i = 1, #marked, 1000 do
  redis.call('ZREM', KEYS[1], unpack(marked, i, math.min(i + 999, #marked)))
end
return #marked
