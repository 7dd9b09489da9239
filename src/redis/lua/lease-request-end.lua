-- lease-request-end: asks for a lease to end. A live lease goes to `revoking` (its first reason kept);
-- an `issuing` one is marked so that activation hands it to revocation instead of the caller.
-- A credential made but not handed out after all (its confirmation failed) withdraws its issue record from
-- the bucket's audit outbox in the same step (ARGV[3], put there by lease-activate.lua): no `credential.issue`
-- for what nobody received, unless recovery appended it already.
-- uses: common
-- KEYS[1] lease hash
-- KEYS[2] leases revoking in the bucket (zset, the reconciler's work list: a lost job is found there)
-- KEYS[3] (optional) the bucket's audit outbox (zset), with ARGV[3]
-- ARGV[1] reason
-- ARGV[2] lease id
-- ARGV[3] (optional) outbox member to withdraw, '' for none
-- Returns {'revoking', reason} | {'deferred'} | {'ended', status} | {'no_lease'}
if KEYS[3] and ARGV[3] and ARGV[3] ~= '' then redis.call('ZREM', KEYS[3], ARGV[3]) end
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return { 'no_lease' } end
if st == 'revoked' or st == 'expired' or st == 'failed' then return { 'ended', st } end
if st == 'issuing' then
  if not redis.call('HGET', KEYS[1], 'endRequested') then redis.call('HSET', KEYS[1], 'endRequested', ARGV[1]) end
  return { 'deferred' }
end
-- A given-up issuance whose revoke failed (`revoke_failed`, `givenUp`) is already being revoked, and ends
-- `failed`, not for a reason: its revocation is just asked for again (the caller's job retries it now).
if redis.call('HGET', KEYS[1], 'givenUp') then
  redis.call('ZADD', KEYS[2], 'NX', now_ms(), ARGV[2])
  return { 'revoking', ARGV[1] }
end
local reason = redis.call('HGET', KEYS[1], 'reason')
if not reason then
  reason = ARGV[1]
  redis.call('HSET', KEYS[1], 'reason', reason)
end
if st == 'active' then redis.call('HSET', KEYS[1], 'status', 'revoking') end
redis.call('ZADD', KEYS[2], 'NX', now_ms(), ARGV[2])
return { 'revoking', reason }
