-- lease-give-up: the worker gives up an issuance whose process did not record the upstream's answer by
-- the orphan deadline. Decided here, on Redis's clock and in one step with the lease's state, so that an
-- activation arriving later is refused (lease-activate.lua reads `givenUp`) and one that arrived earlier
-- wins: the worker never fails a lease whose credential was handed out. A given-up issuance whose revoke
-- failed shows `revoke_failed` (worker.ts): it is still the given-up issuance, and its retry comes back here.
-- uses: common
-- KEYS[1] lease hash
-- Returns {'given_up', handle JSON} | {'early'} (the deadline has not passed) | {status} (no longer issuing,
-- nor a given-up issuance whose revoke is being retried) | {'no_lease'}
local f = redis.call('HMGET', KEYS[1], 'status', 'orphanAt', 'givenUp', 'handle')
if not f[1] then return { 'no_lease' } end
if f[1] ~= 'issuing' and not (f[1] == 'revoke_failed' and f[3]) then return { f[1] } end
if not f[3] then
  if now_ms() < (tonumber(f[2]) or 0) then return { 'early' } end
  redis.call('HSET', KEYS[1], 'givenUp', now_ms())
end
return { 'given_up', f[4] or '{}' }
