-- Releases an idempotency key claimed for an event that was not stored, so a retry can proceed:
-- deletes it only while it still holds that request's pending mark. After this, an enqueue of the
-- event that was still on its way (a lost reply) finds the mark gone and stores nothing.
-- KEYS[1] = the key. ARGV[1] = the pending mark.
-- Returns the answer the key holds when the event was stored after all, else nil.
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return false
end
if value and string.sub(value, 1, 8) ~= 'pending:' then
  return value
end
return false
