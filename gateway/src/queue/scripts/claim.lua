-- Claims up to ARGV[2] due deliveries of one shard: each gets a fresh lease token and its score moves
-- to the lease expiry, so a worker that dies lets the lease run out and the delivery falls due again.
-- A claim counts no attempt: the settle that records an attempt does (a claim whose reply was lost
-- must not spend one). A delivery still holding a lease when claimed again had its lease run out
-- unsettled; `lapsed` counts those, so a delivery that keeps killing its workers can be given up.
-- Also trims the shard's dead letters older than the dead-letter retention: their records expire by
-- themselves, this drops their index entries (and removes records buried by a version that did not
-- let them expire).
-- KEYS[1] = the shard's due ZSET, KEYS[2] = the shard's dead ZSET.
-- ARGV: shard key prefix, limit, lease ms, token prefix (unique per worker and call), dead-letter
--       retention ms, retention s.
-- Returns { {id, token, endpoint, attempt, event id, type, payload, headers, lapsed}..., wait ms,
-- now ms }, where attempt is the number the next attempt will have and wait is the time until the
-- next delivery falls due (-1: none queued).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local lease_until = now + tonumber(ARGV[3])
local out = {}
local zadd = { 'ZADD', KEYS[1] }
local stale = { 'ZREM', KEYS[1] }
for i, id in ipairs(ids) do
  local dkey = p .. 'd:' .. id
  local d = redis.call('HMGET', dkey, 'event', 'endpoint', 'attempts', 'payload', 'headers', 'status', 'lease',
    'lapsed')
  if not d[1] or d[6] ~= 'pending' then
    -- An id without a pending delivery behind it (expired, or settled elsewhere): drop it.
    stale[#stale + 1] = id
  else
    local token = ARGV[4] .. '.' .. i
    -- A record from another version may lack a field: count from zero rather than fail the batch.
    local attempt = (tonumber(d[3]) or 0) + 1
    local lapsed = tonumber(d[8]) or 0
    if d[7] and d[7] ~= '' then
      lapsed = lapsed + 1
      redis.call('HSET', dkey, 'lease', token, 'lapsed', lapsed)
    else
      redis.call('HSET', dkey, 'lease', token)
    end
    zadd[#zadd + 1] = lease_until
    zadd[#zadd + 1] = id
    local evkey = p .. 'ev:' .. d[1]
    local e = redis.call('HMGET', evkey, 'type', 'payload')
    local payload = d[4]
    if not payload then
      -- The event's body: after the headers and a newline in its `:b` string (a record of an
      -- older version keeps it in the hash).
      local b = redis.call('GET', evkey .. ':b')
      if b then
        payload = string.sub(b, (string.find(b, '\n', 1, true) or 0) + 1)
      else
        payload = e[2] or ''
      end
    end
    out[#out + 1] = { id, token, d[2], attempt, d[1], e[1] or '', payload, d[5] or '', lapsed }
  end
end
if #zadd > 2 then
  redis.call(unpack(zadd))
end
if #stale > 2 then
  redis.call(unpack(stale))
end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - tonumber(ARGV[5])), 'LIMIT', 0, 100)
for _, id in ipairs(old) do
  local dkey = p .. 'd:' .. id
  local d = redis.call('HMGET', dkey, 'status', 'event', 'closed')
  if d[1] == 'dead' then
    redis.call('DEL', dkey, dkey .. ':log')
    if d[3] ~= '1' and d[2] then
      -- Buried before burials closed their delivery: its event still counts it as open.
      local evkey = p .. 'ev:' .. d[2]
      if redis.call('HINCRBY', evkey, 'open', -1) <= 0 then
        redis.call('EXPIRE', evkey, ARGV[6])
        redis.call('EXPIRE', evkey .. ':b', ARGV[6])
      end
    end
  end
  redis.call('ZREM', KEYS[2], id)
end
local wait = -1
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then
  wait = math.max(0, tonumber(head[2]) - now)
end
return { out, wait, now }
