-- Records attempts and settles their deliveries (a batch of one shard), each only for the holder of
-- its current lease: a worker whose lease ran out and was taken over must not overwrite the new
-- holder's work.
-- KEYS[1] = the shard's queue ZSET, KEYS[2] = the shard's dead ZSET, KEYS[3] = the shard's HASH of
-- disabled endpoints (name -> reason), KEYS[4] = the shard's `history:v2` STREAM (with
-- `[history]`: finished deliveries on their way to PostgreSQL, one entry per call that finished
-- any, holding all that history keeps of each), KEYS[5] = the count of deliveries that stream holds.
-- ARGV: shard key prefix, retention seconds, dead-letter retention seconds, `history.keep_in_redis`
--       seconds ('0' without `[history]`), number of settlements S;
--       then per settlement: delivery
--       id, lease token, attempt record JSON ('' when no attempt was made), action ('ack' | 'retry' |
--       'bury' | 'defer' | 'pause' | 'park' | 'discard'), retry delay ms, last error ('' for none),
--       its history entry as the gateway packed it ('' when it did not: see `to_history`), its
--       event's id without `evt_` (the record's key's end; '' to have it worked out from the
--       delivery id here, which costs Redis about 2 µs per delivery).
-- 'defer' puts back a delivery that was claimed but not attempted (its endpoint was busy), without
-- counting an attempt. 'pause' parks it in the endpoint's paused ZSET while the endpoint is disabled;
-- checked here, atomically with enabling (which empties that set), so a delivery is never parked
-- after its endpoint came back: it is deferred instead. 'park' parks it whatever the endpoint's
-- state: no endpoint of its name is configured (a reload removed it), and the shard's `gone` HASH
-- notes the endpoint, so a gateway whose config has it puts its deliveries back (resume.lua).
-- 'discard' takes a parked delivery (its lease token is '', as parking left it) out of its paused
-- ZSET and buries it, with the operator's reason as its last error: what an operator does with the
-- deliveries of an endpoint that is not coming back.
-- The attempt log is the string beside the delivery (`d:<id>:log`, one JSON record per line, each
-- ended by a newline; older versions kept it in the hash's `log` field, still read): appended to,
-- not rewritten, and out of the hash so the hash stays small (a listpack). Recording a record counts the attempt (a claim
-- does not).
-- A burial closes the delivery (`closed` = 1): it expires after the dead-letter retention, and its
-- event counts it in `dead` instead of `open`. An event whose last open delivery closes is kept for
-- the retention period, or the dead-letter retention when one of its deliveries is dead.
-- With `[history]`, a delivery that finishes (acked or buried) is also appended to the shard's
-- history stream, whole: state, attempts, its attempt log, its own headers and body, and its
-- event's record, packed (the deliveries a call finishes share one stream entry). The history
-- writer takes them from there to PostgreSQL and deletes the entries once PostgreSQL committed
-- them, so the stream is what history is written from, and a succeeded
-- delivery's keys (and its event's, once none of its deliveries is open or dead) are only the copy
-- the admin API reads fast: they expire after `keep_in_redis` instead of `queue.retention`. Entries
-- older than `queue.retention` and `queue.dead_retention` (PostgreSQL away that long) are dropped:
-- that bounds Redis' memory as the TTLs bound it without `[history]`. The stream's count of
-- deliveries (KEYS[5]) follows both, so the backlog is known without reading the entries.
-- A lease taken without a hash (its token starts with `~`, see claim.lua) holds while the
-- delivery's score is still the one the claim gave it; its settle makes the hash, endpoint
-- included, unless its first attempt succeeded: then the attempt log alone is left, and readers
-- take a delivery that is neither queued nor hashed but logged for a success.
-- Returns one integer per settlement: 1 applied, 0 lease lost.
local now = now_ms()
local p = ARGV[1]
local retention = tonumber(ARGV[2])
local dead_retention = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local history = keep > 0
local now_s = tostring(now)
-- Stream ids are `<ms>-<seq>`: entries of this ms or older hold deliveries that finished longer
-- ago than Redis keeps finished records without `[history]` (PostgreSQL away that long); they are
-- dropped as the call that appends next finds them.
local expired_ms = tostring(now - math.max(retention, dead_retention) * 1000 - 1)
-- The history entries of this call's finished deliveries, appended as one stream entry at the end.
local entries = {}
local results = {}
local at = 6
-- ARGV per settlement.
local STRIDE = 8
-- Redis formats a number handed to redis.call with sprintf each time: the TTLs go as the strings
-- they came as.
local retention_s, dead_retention_s, keep_s = ARGV[2], ARGV[3], ARGV[4]
-- Deliveries that leave the queue (acked, buried, parked) go in one ZREM at the end.
local leaving = { 'ZREM', KEYS[1] }

-- How long an event is kept once none of its deliveries is open.
local longest_s = tostring(math.max(retention, dead_retention))
local function event_ttl(dead)
  if dead > 0 then
    return longest_s
  end
  if history then
    return keep_s
  end
  return retention_s
end

-- The settlement at hand, for `set_settled`: its delivery's hash key, its attempt count (nil when
-- no attempt was made), and its endpoint when its lease had no hash (nil otherwise); for
-- `record_key`, its event's id as the gateway sent it.
local dkey, attempts, fresh_endpoint, event_bare

-- The key of the event record of delivery `id`, the settlement at hand.
local function record_key(id)
  if event_bare ~= '' then
    return p .. 'e:' .. event_bare
  end
  return record_key_of(p, id)
end

-- Appends a finished delivery to the history stream. `d`: its hash's fields as read (see below),
-- `logkey`: its attempt log's key, `appended`: the log's length after this settlement's record (nil
-- when none was added).
local function to_history(id, d, logkey, state, record, appended, last_error)
  local log
  if appended and appended == #record + 1 then
    -- The log is just this attempt's record: no need to read it back.
    log = record .. '\n'
  else
    log = redis.call('GET', logkey) or ''
  end
  if d[8] then
    -- An older version kept the log in the hash.
    log = d[8] .. '\n' .. log
  end
  local attempts = (tonumber(d[4]) or 0) + ((record ~= '') and 1 or 0)
  local event_record, older = nil, nil
  if d[2] then
    -- An older version's event (a hash): the writer reads it from there.
    older = d[2]
  else
    event_record = redis.call('GET', record_key(id)) or ''
  end
  -- The delivery's parts packed in order (strings, nil where absent): one value for Redis to keep
  -- and the writer to read instead of a dozen (see `packed.rs`).
  entries[#entries + 1] = cmsgpack.pack(id, d[3] or '',
    state .. ' ' .. now_s .. ' ' .. attempts .. ' ' .. (d[5] or '0'), last_error, log, event_record, older,
    d[6] or nil, d[7] or nil)
end

-- Sets a settled delivery's fields: its lease released (or its hash made, endpoint included), the
-- time, its attempt count, and `...`. One HSET: counting the attempt is part of it.
local function set_settled(...)
  -- The first field pair: what makes the hash whole, or releases the lease.
  local field, value = 'lease', ''
  if fresh_endpoint then
    field, value = 'endpoint', fresh_endpoint
  end
  if attempts then
    redis.call('HSET', dkey, field, value, 'updated', now_s, 'attempts', attempts, ...)
  else
    redis.call('HSET', dkey, field, value, 'updated', now_s, ...)
  end
end

-- One delivery of the event closed (acked or buried): once none is open, the event expires.
-- `older`: the event id an older version's delivery hash names (its event is a hash). `only`: the
-- delivery is its event's only one (its lease token says so, see claim.lua), so the counts
-- after it are known without reading them: none open, one dead when it was buried (a replay moved
-- it from dead back to open). EXPIRE says whether the record is there; a gone one is not made.
local function close(id, older, buried, only)
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
  local ekey = record_key(id)
  if only then
    if redis.call('EXPIRE', ekey, event_ttl(buried and 1 or 0)) == 1 then
      -- A single delivery's counts are one hex digit each.
      redis.call('SETRANGE', ekey, '0', buried and '01' or '00')
    end
    return
  end
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

-- The scores of the deliveries whose leases have no hash, read in one call: such a lease holds
-- while the delivery's score is still the one its claim gave it.
local scores = {}
do
  local ids = { 'ZMSCORE', KEYS[1] }
  for j = 6, 5 + STRIDE * tonumber(ARGV[5]), STRIDE do
    if string.byte(ARGV[j + 1], 1) == 126 then -- '~'
      ids[#ids + 1] = ARGV[j]
    end
  end
  if #ids > 2 then
    local got = redis.call(unpack(ids))
    for j = 3, #ids do
      scores[ids[j]] = got[j - 2]
    end
  end
end

for i = 1, tonumber(ARGV[5]) do
  local id, token, record, action = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local delay, last_error, entry = tonumber(ARGV[at + 4]), ARGV[at + 5], ARGV[at + 6]
  event_bare = ARGV[at + 7]
  at = at + STRIDE
  dkey, attempts, fresh_endpoint = p .. 'd:' .. id, nil, nil
  local d
  local only
  if string.byte(token, 1) == 126 then -- '~': a lease without a hash
    local colon = string.find(token, ':', 3, true)
    local lease = colon and tonumber(string.sub(token, 3, colon - 1))
    local score = scores[id]
    -- Taken: a second settlement of the same lease in this batch finds it gone.
    scores[id] = nil
    if lease and score and tonumber(score) == lease + 0.25 then
      fresh_endpoint = string.sub(token, colon + 1)
      -- The hash's fields as read below (lease, event, endpoint): the lease is still held.
      d, only = { token, nil, fresh_endpoint }, string.byte(token, 2) == 115 -- 's'
    else
      d = {}
    end
  elseif action == 'discard' then
    if redis.call('HGET', dkey, 'status') == 'paused' then
      redis.call('ZREM', p .. 'paused:' .. redis.call('HGET', dkey, 'endpoint'), id)
      action = 'bury'
    else
      token = false
    end
  end
  if not d then
    if history then
      d = redis.call('HMGET', dkey, 'lease', 'event', 'endpoint', 'attempts', 'lapsed', 'headers', 'payload', 'log')
    else
      d = redis.call('HMGET', dkey, 'lease', 'event', 'endpoint', 'attempts')
    end
    only = token and string.byte(token, -1) == 115 -- 's'
  end
  if d[1] ~= token then
    results[i] = 0
  else
    results[i] = 1
    local logkey = dkey .. ':log'
    -- No record: no attempt was made, nothing to count, the log stays as it is.
    local appended
    -- How long a delivery that finishes here is kept, its hash and its log alike (nil: it does not
    -- finish).
    local finished_ttl = nil
    if action == 'bury' then
      finished_ttl = dead_retention_s
    elseif action ~= 'retry' and action ~= 'defer' and action ~= 'pause' and action ~= 'park' then
      finished_ttl = history and keep_s or retention_s
    end
    local log_expires = false
    if record ~= '' then
      attempts = (tonumber(d[4]) or 0) + 1
      local line = record .. '\n'
      if finished_ttl and redis.call('SET', logkey, line, 'NX', 'EX', finished_ttl) then
        -- No log yet (its first attempt finished it): written with its TTL in one command.
        appended, log_expires = #line, true
      else
        appended = redis.call('APPEND', logkey, line)
      end
    end
    if action == 'pause' and not redis.call('HGET', KEYS[3], d[3]) then
      action = 'defer'
    end
    if action == 'retry' then
      set_settled('last_error', last_error)
      redis.call('ZADD', KEYS[1], now + delay, id)
    elseif action == 'defer' then
      -- Not attempted: the last attempt's error still stands.
      set_settled()
      redis.call('ZADD', KEYS[1], now + delay, id)
    elseif action == 'pause' or action == 'park' then
      if action == 'park' then
        redis.call('HSETNX', p .. 'gone', d[3], now_s)
      end
      set_settled('status', 'paused')
      leaving[#leaving + 1] = id
      redis.call('ZADD', p .. 'paused:' .. d[3], now, id)
    elseif action == 'bury' then
      set_settled('last_error', last_error, 'status', 'dead', 'closed', '1')
      leaving[#leaving + 1] = id
      redis.call('ZADD', KEYS[2], now_s, id)
      redis.call('EXPIRE', dkey, finished_ttl)
      if not log_expires then
        redis.call('EXPIRE', logkey, finished_ttl)
      end
      close(id, d[2], true, only)
      if history then
        to_history(id, d, logkey, 'dead', record, appended, last_error)
      end
    else
      -- ack: keep it for the retention period, and its event until the event's last delivery is done.
      -- A delivery no hash describes whose first attempt succeeded gets none: its log, one success
      -- record, says all a hash would (succeeded, one attempt, no error; see `redis/view.rs`).
      if not (fresh_endpoint and log_expires and last_error == '') then
        set_settled('last_error', last_error, 'status', 'succeeded')
        redis.call('EXPIRE', dkey, finished_ttl)
      end
      leaving[#leaving + 1] = id
      if not log_expires then
        redis.call('EXPIRE', logkey, finished_ttl)
      end
      close(id, d[2], false, only)
      if history then
        if entry ~= '' and fresh_endpoint and appended == #record + 1 then
          -- A first attempt's success of a lease without a hash: the gateway knew all the entry
          -- holds (its log is this one record) and packed it, with the finish time the admin API
          -- shows for it (see `redis/batch.rs`). Nothing to read back or pack here.
          entries[#entries + 1] = entry
        else
          to_history(id, d, logkey, 'succeeded', record, appended, last_error)
        end
      end
    end
  end
end
if #leaving > 2 then
  redis.call(unpack(leaving))
end
if #entries > 0 then
  -- One entry for the call's finished deliveries: `n`, how many, and `v2`, each one's packed parts
  -- packed in turn (a string each). An entry per delivery cost Redis an `XADD` and the writer a
  -- reply entry to parse per delivery.
  redis.call('XADD', KEYS[4], '*', 'n', tostring(#entries), 'v2', cmsgpack.pack(unpack(entries)))
  redis.call('INCRBY', KEYS[5], #entries)
  local expired = redis.call('XRANGE', KEYS[4], '-', expired_ms, 'COUNT', 100)
  if #expired > 0 then
    local ids, gone = { 'XDEL', KEYS[4] }, 0
    for _, e in ipairs(expired) do
      ids[#ids + 1] = e[1]
      for j = 1, #e[2], 2 do
        if e[2][j] == 'n' then
          gone = gone + tonumber(e[2][j + 1])
        end
      end
    end
    redis.call(unpack(ids))
    redis.call('DECRBY', KEYS[5], gone)
  end
end
return results
