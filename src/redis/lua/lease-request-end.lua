-- lease-request-end: asks for a lease to end. A live lease goes to `revoking` (its first reason kept);
-- an `issuing` one is marked so that activation hands it to revocation instead of the caller.
-- KEYS[1] lease hash
-- ARGV[1] reason
-- Returns {'revoking', reason} | {'deferred'} | {'ended', status} | {'no_lease'}
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return { 'no_lease' } end
if st == 'revoked' or st == 'expired' or st == 'failed' then return { 'ended', st } end
if st == 'issuing' then
  if not redis.call('HGET', KEYS[1], 'endRequested') then redis.call('HSET', KEYS[1], 'endRequested', ARGV[1]) end
  return { 'deferred' }
end
local reason = redis.call('HGET', KEYS[1], 'reason')
if not reason then
  reason = ARGV[1]
  redis.call('HSET', KEYS[1], 'reason', reason)
end
if st == 'active' then redis.call('HSET', KEYS[1], 'status', 'revoking') end
return { 'revoking', reason }
