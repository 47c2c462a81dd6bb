-- Records attempts and settles their deliveries (a batch of one shard), each only for the holder of
-- its current lease: a worker whose lease ran out and was taken over must not overwrite the new
-- holder's work.
-- KEYS[1] = the shard's queue ZSET, KEYS[2] = the shard's dead ZSET, KEYS[3] = the shard's HASH of
-- disabled endpoints (name -> reason), KEYS[4] = the shard's `done` ZSET (finished deliveries not
-- yet in history, by time finished; kept only with `[history]`).
-- ARGV: shard key prefix, retention seconds, dead-letter retention seconds, '1' to index finished
--       deliveries for history ('0' without), number of settlements S;
--       then per settlement: delivery
--       id, lease token, attempt record JSON ('' when no attempt was made), action ('ack' | 'retry' |
--       'bury' | 'defer' | 'pause'), retry delay ms, last error ('' for none).
-- 'defer' puts back a delivery that was claimed but not attempted (its endpoint was busy), without
-- counting an attempt. 'pause' parks it in the endpoint's paused ZSET while the endpoint is disabled;
-- checked here, atomically with enabling (which empties that set), so a delivery is never parked
-- after its endpoint came back: it is deferred instead.
-- The attempt log is the string beside the delivery (`d:<id>:log`, one JSON record per line, each
-- ended by a newline; older versions kept it in the hash's `log` field, still read): appended to,
-- not rewritten, and out of the hash so the hash stays small (a listpack). Recording a record counts the attempt (a claim
-- does not).
-- A burial closes the delivery (`closed` = 1): it expires after the dead-letter retention, and its
-- event counts it in `dead` instead of `open`. An event whose last open delivery closes is kept for
-- the retention period, or the dead-letter retention when one of its deliveries is dead.
-- Returns one integer per settlement: 1 applied, 0 lease lost.
local now = now_ms()
local p = ARGV[1]
local retention = tonumber(ARGV[2])
local dead_retention = tonumber(ARGV[3])
local history = ARGV[4] == '1'
local results = {}
local at = 6

-- How long an event is kept once none of its deliveries is open.
local function event_ttl(dead)
  if dead > 0 then
    return math.max(retention, dead_retention)
  end
  return retention
end

-- One delivery of the event closed (acked or buried): once none is open, the event expires.
-- `older`: the event id an older version's delivery hash names (its event is a hash).
local function close(id, older, buried)
  if older then
    local evkey = p .. 'ev:' .. older
    if buried then
      redis.call('HINCRBY', evkey, 'dead', 1)
    end
    if redis.call('HINCRBY', evkey, 'open', -1) <= 0 then
      local ttl = event_ttl(tonumber(redis.call('HGET', evkey, 'dead')) or 0)
      redis.call('EXPIRE', evkey, ttl)
      redis.call('EXPIRE', evkey .. ':b', ttl)
    end
    return
  end
  local ekey = event_key(p, (event_of(id)))
  local open, dead, w = event_counts(ekey)
  if not open then
    return
  end
  open = math.max(open - 1, 0)
  if buried then
    dead = dead + 1
  end
  set_event_counts(ekey, open, dead, w)
  if open == 0 then
    redis.call('EXPIRE', ekey, event_ttl(dead))
  end
end

for i = 1, tonumber(ARGV[5]) do
  local id, token, record, action = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local delay, last_error = tonumber(ARGV[at + 4]), ARGV[at + 5]
  at = at + 6
  local dkey = p .. 'd:' .. id
  local d = redis.call('HMGET', dkey, 'lease', 'event', 'endpoint')
  if d[1] ~= token then
    results[i] = 0
  else
    results[i] = 1
    local logkey = dkey .. ':log'
    -- No record: no attempt was made, nothing to count, the log stays as it is.
    if record ~= '' then
      redis.call('HINCRBY', dkey, 'attempts', 1)
      redis.call('APPEND', logkey, record .. '\n')
    end
    if action == 'pause' and not redis.call('HGET', KEYS[3], d[3]) then
      action = 'defer'
    end
    if action == 'retry' then
      redis.call('HSET', dkey, 'lease', '', 'updated', now, 'last_error', last_error)
      redis.call('ZADD', KEYS[1], now + delay, id)
    elseif action == 'defer' then
      -- Not attempted: the last attempt's error still stands.
      redis.call('HSET', dkey, 'lease', '', 'updated', now)
      redis.call('ZADD', KEYS[1], now + delay, id)
    elseif action == 'pause' then
      redis.call('HSET', dkey, 'lease', '', 'updated', now, 'status', 'paused')
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZADD', p .. 'paused:' .. d[3], now, id)
    elseif action == 'bury' then
      redis.call('HSET', dkey, 'lease', '', 'updated', now, 'last_error', last_error,
        'status', 'dead', 'closed', 1)
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZADD', KEYS[2], now, id)
      redis.call('EXPIRE', dkey, dead_retention)
      redis.call('EXPIRE', logkey, dead_retention)
      close(id, d[2], true)
      if history then
        redis.call('ZADD', KEYS[4], now, id)
      end
    else
      -- ack: keep it for the retention period, and its event until the event's last delivery is done.
      redis.call('HSET', dkey, 'lease', '', 'updated', now, 'last_error', last_error,
        'status', 'succeeded')
      redis.call('ZREM', KEYS[1], id)
      redis.call('EXPIRE', dkey, retention)
      redis.call('EXPIRE', logkey, retention)
      close(id, d[2], false)
      if history then
        redis.call('ZADD', KEYS[4], now, id)
      end
    end
  end
end
return results
