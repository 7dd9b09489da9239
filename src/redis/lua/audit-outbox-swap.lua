-- audit-outbox-swap: puts the outcome of an operation made in many steps (the kill switch, a rotation, a policy
-- reload) in a chain's audit outbox in place of its `interrupted` intent (src/audit/outbox-intent.ts, outboxIntent),
-- in one step, before the outcome is appended: from the moment the operation is done, what recovery would
-- append is its outcome, never the intent, whether the append right after fails or the process dies first.
-- An intent that has left the outbox already was appended by recovery (the operation outlasted the grace
-- period): the outcome is added all the same and follows it in the chain.
-- A swap made is remembered by the intent's tag (KEYS[2], for ARGV[4] ms), so the same call sent again (its
-- answer lost to a timeout or a dropped connection while Redis ran it) adds nothing: were its outcome appended
-- meanwhile, adding it again would write it twice.
-- uses: common
-- KEYS[1] the chain's audit outbox (zset)
-- KEYS[2] the chain's swapped intents (zset: intent tag -> Redis ms of the swap)
-- ARGV[1] the intent's outbox member
-- ARGV[2] the outcome's outbox member
-- ARGV[3] the intent's tag (its member up to the first space)
-- ARGV[4] how long a swap is remembered, in ms
-- ARGV[5] optional, '1': only while the intent is in the outbox (recovery's swap, src/audit/outbox.ts: an
--         intent gone meanwhile had its own outcome, or was appended, and nothing more is to be added)
-- Returns the outcome member's score (Redis ms: the outcome's time) while it is in the outbox; false when this
-- swap was made before and its outcome has been appended since, or (ARGV[5]) the intent is gone.
local now = now_ms()
if redis.call('ZSCORE', KEYS[2], ARGV[3]) then
  local at = redis.call('ZSCORE', KEYS[1], ARGV[2])
  if not at then return false end
  return tonumber(at)
end
if ARGV[5] == '1' and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return false end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]))
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], 'NX', now, ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[3])
-- Gone a while after the last swap: nothing else ever reads or trims it.
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return now
