-- lease-update: changes a lease that has not ended. With ARGV[1] ~= '0' it is an ending
-- (revoked | expired | failed): revokedAt is set on Redis's clock, the lease leaves the live index,
-- is kept for that many ms, and its task's live-lease count goes down. An audit record of the change
-- (ARGV[6]) goes to the bucket's audit outbox in the same step (lib/outbox.lua), only if the lease
-- changed, so a process that dies before appending it loses nothing.
-- Ending it, or recording a revocation or a record, reaches keys built from ARGV[3] (its task, the work list of
-- revocations in progress, the outbox), not declared: lib/slot.lua.
-- uses: common, outbox, slot
-- KEYS[1] lease hash
-- KEYS[2] live leases of the bucket (zset)
-- ARGV[1] retention in ms, or '0' for a change that does not end the lease
-- ARGV[2] lease id
-- ARGV[3] key base of the bucket
-- ARGV[4] new status ('' = keep)
-- ARGV[5] reason, set only if none is recorded yet (the first reason wins)
-- ARGV[6] audit record (JSON) to put in the outbox when the lease changes, '' (or absent) for none
-- ARGV[7..] more field/value pairs
-- Returns the status before the call, or false when there is no lease; {status before, now} when it put
-- ARGV[6] in the outbox at `now`; a TRYAGAIN error while the bucket's slot moves and the change reaches such keys
-- (nothing written).
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
if ENDED[st] then return st end
if ARGV[1] ~= '0' or REVOKING[ARGV[4]] or (ARGV[6] and ARGV[6] ~= '') then
  local moving = slot_guard(ARGV[3])
  if moving then return moving end
end
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local now = now_ms()
if ARGV[1] ~= '0' then
  end_lease(ARGV[3], KEYS[2], ARGV[2], ARGV[4], ARGV[5], tonumber(ARGV[1]), now)
else
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[4]) end
  if REVOKING[ARGV[4]] then
    redis.call('ZADD', leases_revoking_key(ARGV[3]), 'NX', now, ARGV[2])
  end
  if ARGV[5] ~= '' and not redis.call('HGET', KEYS[1], 'reason') then redis.call('HSET', KEYS[1], 'reason', ARGV[5]) end
end
if ARGV[6] and ARGV[6] ~= '' then
  outbox_add(ARGV[3], now, { ARGV[6] })
  return { st, now }
end
return st
