-- Puts dead-lettered deliveries of one shard back in the queue, with a fresh schedule, spaced
-- ARGV[2] ms apart (a replay of many must not flood the endpoint). The attempt log keeps the old
-- attempts and gains a `replayed` record. A replayed delivery is open again (no longer expiring),
-- and so is its event.
-- KEYS[1] = the shard's queue ZSET, KEYS[2] = the shard's dead ZSET, KEYS[3] = the shard's `done`
-- ZSET (a replayed delivery is not finished any more; it is indexed again when it is).
-- ARGV: shard key prefix, spacing ms, spacings already used (the first is due that many from now),
--       then delivery ids.
-- Returns the ids replayed (ids that were not dead are skipped).
local now = now_ms()
local p = ARGV[1]
local step = tonumber(ARGV[2])
local offset = tonumber(ARGV[3])
local replayed = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local dkey = p .. 'd:' .. id
  local d = redis.call('HMGET', dkey, 'status', 'closed', 'event')
  if d[1] == 'dead' then
    redis.call('PERSIST', dkey)
    if d[2] == '1' then
      if d[3] then
        -- An older version's delivery: its event is a hash.
        local evkey = p .. 'ev:' .. d[3]
        redis.call('HINCRBY', evkey, 'open', 1)
        redis.call('HINCRBY', evkey, 'dead', -1)
        redis.call('PERSIST', evkey)
        redis.call('PERSIST', evkey .. ':b')
      else
        local ekey = event_key(p, (event_of(id)))
        local open, dead, w = event_counts(ekey)
        if open then
          set_event_counts(ekey, open + 1, math.max(dead - 1, 0), w)
          redis.call('PERSIST', ekey)
        end
      end
      redis.call('HDEL', dkey, 'closed')
    end
    local record = '{"attempt":0,"at":' .. now .. ',"outcome":"replayed","status":null,"error":null,"latency_ms":0.0,"response":null}'
    local logkey = dkey .. ':log'
    redis.call('APPEND', logkey, record .. '\n')
    redis.call('PERSIST', logkey)
    redis.call('HSET', dkey, 'status', 'pending', 'attempts', 0, 'lapsed', 0, 'lease', '', 'last_error', '',
      'updated', now)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZADD', KEYS[1], now + (offset + #replayed) * step, id)
    replayed[#replayed + 1] = id
  end
end
return replayed
