-- lease-activate: records the upstream's answer on an `issuing` lease. If the task ended (or its
-- deadline passed) or an end was requested while the upstream call was in flight, the lease goes
-- straight to `revoking` with the handle recorded, so what the upstream made is revoked, never lost.
-- Past the orphan deadline (or once the worker gave the issuance up), nothing may be handed out: the handle
-- is recorded for the worker, which revokes it and ends the lease `failed` (`revoke_failed` while that revoke
-- fails, refused here alike), and the lease is made due so the
-- sweeper hands it over even if the worker's job is gone. A task
-- now under the lease's task id that was created after the lease (common.lua `of_earlier_task`: the lease's
-- own task was purged and the id opened again while the upstream call ran, possible when `orphanMs` exceeds
-- the retention) is not the lease's task: its own is gone.
-- When the credential is recorded for its caller (`ok`), its issue record (ARGV[4]) goes to the bucket's
-- audit outbox in the same step (lib/outbox.lua), so a process that dies before appending it loses nothing.
-- uses: common
-- KEYS[1] lease hash
-- KEYS[2] task hash
-- KEYS[3] live leases of the bucket (zset)
-- KEYS[4] leases revoking in the bucket (zset, the reconciler's work list)
-- KEYS[5] (optional) the bucket's audit outbox (zset), with ARGV[4]
-- ARGV[1] handle as JSON
-- ARGV[2] expiresAt (ms) of the credential
-- ARGV[3] lease id
-- ARGV[4] (optional) outbox member (tagged record JSON) added on `ok`, '' for none
-- Returns {'ok', now} | {'revoke', reason} | {'gone', status} | {'no_lease'}
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return { 'no_lease' } end
local late = redis.call('HMGET', KEYS[1], 'givenUp', 'orphanAt')
-- A given-up issuance whose revoke failed shows `revoke_failed`; it is refused like one still `issuing`, and
-- its handle recorded all the same, so the worker's retry revokes what this answer names.
if st ~= 'issuing' and not (st == 'revoke_failed' and late[1]) then return { 'gone', st } end
if late[1] or now_ms() >= (tonumber(late[2]) or math.huge) then
  redis.call('HSET', KEYS[1], 'handle', ARGV[1], 'expiresAt', ARGV[2], 'givenUp', late[1] or now_ms())
  redis.call('ZADD', KEYS[3], now_ms(), ARGV[3])
  return { 'gone', 'issuing' }
end
redis.call('HSET', KEYS[1], 'handle', ARGV[1], 'expiresAt', ARGV[2])
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]), ARGV[3])
local requested = redis.call('HGET', KEYS[1], 'endRequested')
local tst = redis.call('HGET', KEYS[2], 'status')
if tst and of_earlier_task(redis.call('HGET', KEYS[1], 'issuedAt'), redis.call('HGET', KEYS[2], 'createdAt')) then tst = nil end
local reason = requested
if not reason and tst and tst ~= 'open' then reason = redis.call('HGET', KEYS[2], 'reason') or 'task_completed' end
if not reason and tst == 'open' and now_ms() >= tonumber(redis.call('HGET', KEYS[2], 'expiresAt')) then reason = 'task_expired' end
if not tst then reason = reason or 'task_completed' end
if reason then
  redis.call('HSET', KEYS[1], 'status', 'revoking', 'reason', reason)
  redis.call('ZADD', KEYS[4], 'NX', now_ms(), ARGV[3])
  return { 'revoke', reason }
end
redis.call('HSET', KEYS[1], 'status', 'active')
local now = now_ms()
if KEYS[5] and ARGV[4] and ARGV[4] ~= '' then redis.call('ZADD', KEYS[5], 'NX', now, ARGV[4]) end
return { 'ok', now }
