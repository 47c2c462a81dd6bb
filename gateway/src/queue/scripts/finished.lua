-- Reads up to ARGV[2] finished deliveries of one shard not yet in history (oldest first, from the
-- ARGV[3]th on), with all that history keeps of them, in one round trip.
-- KEYS[1] = the shard's `done` ZSET.
-- ARGV: shard key prefix, limit, offset.
-- Returns per delivery { id, endpoint, status, attempts, updated, last_error, lapsed, log, event
-- record (this version's, or false), event id named by an older version's delivery hash (or
-- false), own headers (or false), own payload (or false) }; a delivery whose hash is gone has false
-- for its endpoint.
local p = ARGV[1]
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[3]) + tonumber(ARGV[2]) - 1)) do
  local dkey = p .. 'd:' .. id
  local d = redis.call('HMGET', dkey, 'endpoint', 'status', 'attempts', 'updated', 'last_error', 'lapsed', 'log',
    'event', 'headers', 'payload')
  -- An older version's log (in the hash) first, then the appended log string.
  local log = (d[7] and (d[7] .. '\n') or '') .. (redis.call('GET', dkey .. ':log') or '')
  local record = false
  if not d[8] and event_of(id) then
    record = redis.call('GET', event_key(p, (event_of(id)))) or false
  end
  out[#out + 1] = { id, d[1] or false, d[2] or '', d[3] or '0', d[4] or '', d[5] or '', d[6] or '0', log, record,
    d[8] or false, d[9] or false, d[10] or false }
end
return out
