-- Disables an endpoint in one step: its shared state and every shard's `off` hash (which the settle
-- script checks before parking a delivery) change together, so no failure between the two can leave
-- the endpoint disabled in one place and enabled in the other.
-- KEYS[1] = the endpoint's HASH, KEYS[2..] = each shard's `off` HASH.
-- ARGV: endpoint name, reason, disabled-at ms.
-- Returns 1 when this call disabled it, 0 when it was disabled already (the reason is kept).
local first = redis.call('HSETNX', KEYS[1], 'disabled', ARGV[2])
if first == 1 then
  redis.call('HSET', KEYS[1], 'disabled_at', ARGV[3])
end
local reason = redis.call('HGET', KEYS[1], 'disabled')
for i = 2, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[1], reason)
end
return first
