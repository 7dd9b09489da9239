-- lease-fail-issuance: ends a given-up issuance `failed` once the worker revoked what its handle names,
-- unless a late activation recorded another handle meanwhile (then the worker revokes again, with it).
-- uses: common
-- KEYS[1] lease hash
-- KEYS[2] live leases of the bucket (zset)
-- ARGV[1] the handle JSON the worker revoked
-- ARGV[2] lease id
-- ARGV[3] key base of the bucket
-- ARGV[4] retention in ms
-- ARGV[5] lastError
-- Returns 'ended_now' (ended failed by this call) | 'moved' (another handle was recorded) | the status when not
-- issuing (e.g. 'failed' when the issuing process ended it first) | false
local f = redis.call('HMGET', KEYS[1], 'status', 'handle')
if not f[1] then return false end
if f[1] ~= 'issuing' then return f[1] end
if (f[2] or '{}') ~= ARGV[1] then return 'moved' end
redis.call('HSET', KEYS[1], 'lastError', ARGV[5])
end_lease(ARGV[3], KEYS[2], ARGV[2], 'failed', '', tonumber(ARGV[4]), now_ms())
return 'ended_now'
