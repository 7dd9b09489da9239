-- lease-fail-issuance: ends a given-up issuance `failed` once the worker revoked what its handle names,
-- unless a late activation recorded another handle meanwhile (then the worker revokes again, with it).
-- Its status is `issuing`, or `revoke_failed` once a revoke of it failed; ending it takes it off the
-- reconciler's work list too (end_lease). Its audit record (ARGV[6]) goes to the bucket's audit outbox in
-- the same step (lib/outbox.lua), so a worker that dies before appending it loses nothing.
-- Its task, the work list and the outbox are keys built from ARGV[3], not declared: lib/slot.lua.
-- uses: common, outbox, slot
-- KEYS[1] lease hash
-- KEYS[2] live leases of the bucket (zset)
-- ARGV[1] the handle JSON the worker revoked
-- ARGV[2] lease id
-- ARGV[3] key base of the bucket
-- ARGV[4] retention in ms
-- ARGV[5] lastError
-- ARGV[6] audit record (JSON) of the failure, '' (or absent) for none
-- Returns {'ended_now', now} (ended failed by this call, its record put in the outbox at `now`) | 'moved'
-- (another handle was recorded) | the status when not a given-up issuance (e.g. 'failed' when the issuing
-- process ended it first) | false | a TRYAGAIN error while the bucket's slot moves (nothing written)
local f = redis.call('HMGET', KEYS[1], 'status', 'handle', 'givenUp')
if not f[1] then return false end
if f[1] ~= 'issuing' and not (f[1] == 'revoke_failed' and f[3]) then return f[1] end
if (f[2] or '{}') ~= ARGV[1] then return 'moved' end
local moving = slot_guard(ARGV[3])
if moving then return moving end
redis.call('HSET', KEYS[1], 'lastError', ARGV[5])
local now = now_ms()
end_lease(ARGV[3], KEYS[2], ARGV[2], 'failed', '', tonumber(ARGV[4]), now)
if ARGV[6] and ARGV[6] ~= '' then outbox_add(ARGV[3], now, { ARGV[6] }) end
return { 'ended_now', now }
