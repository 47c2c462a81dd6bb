-- Marks finished deliveries of one shard as held by history (PostgreSQL committed them): they leave
-- the shard's `done` index, and a succeeded one expires after ARGV[2] seconds (sooner than
-- `queue.retention`), with its attempt log, and with its event once none of the event's deliveries
-- is open or dead. Dead letters keep their TTL (`queue.dead_retention`): listed and replayable.
-- A delivery whose `updated` is not the one read for history changed since (replayed): it is left
-- for the next round.
-- KEYS[1] = the shard's `done` ZSET.
-- ARGV: shard key prefix, keep seconds, then per delivery: id, `updated` as read ('' for none).
-- Returns how many were marked.
local p = ARGV[1]
local keep = tonumber(ARGV[2])
local marked = 0

-- Expires `key` after `keep` unless it expires sooner already.
local function shorten(key)
  local ttl = redis.call('TTL', key)
  if ttl == -1 or ttl > keep then
    redis.call('EXPIRE', key, keep)
  end
end

for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local dkey = p .. 'd:' .. id
  local d = redis.call('HMGET', dkey, 'status', 'updated', 'event')
  if (d[2] or '') == ARGV[i + 1] and (d[1] == 'succeeded' or d[1] == 'dead') then
    redis.call('ZREM', KEYS[1], id)
    marked = marked + 1
    if d[1] == 'succeeded' then
      shorten(dkey)
      shorten(dkey .. ':log')
      -- An older version's event (a hash, named in the delivery) keeps its own TTL.
      if not d[3] then
        local ekey = event_key(p, (event_of(id)))
        local open, dead = event_counts(ekey)
        if open == 0 and dead == 0 then
          shorten(ekey)
        end
      end
    end
  end
end
return marked
