-- leases-end: ends many leases of one bucket in one step, e.g. a page of the 10,000 leases of a completed
-- task, without reading them into the process first.
-- - Live leases of providers with nothing to call upstream (the broker's JWTs: introspection reads the
--   lease) end here with ARGV[2].
-- - Live leases of other providers are asked to end (as lease-request-end does: `active` becomes
--   `revoking`, the first reason is kept): the intent is recorded before the worker's upstream call,
--   and their ids are returned for lease-end jobs.
-- - Leases still `issuing` are left alone (their activation sees the task closed and hands them to
--   revocation), ended or missing ones skipped. A given-up issuance whose revoke failed (`revoke_failed`,
--   `givenUp`) is handed over again as it is: no reason is recorded, it ends `failed`.
-- - The audit record of each lease it ends (lease.revoke, or lease.expire for ARGV[2] `expired`) goes to the
--   bucket's audit outbox in this step (lib/outbox.lua), so a process that dies before appending it loses none.
-- The leases, their tasks and the outbox are keys built from ARGV[1], not declared: lib/slot.lua.
-- uses: common, outbox, slot
-- KEYS[1] live leases of the bucket (zset)
-- ARGV[1] key base of the bucket
-- ARGV[2] status: revoked | expired
-- ARGV[3] reason
-- ARGV[4] retention in ms
-- ARGV[5] provider kinds that need no upstream call, space separated (e.g. 'jwt')
-- ARGV[6..] lease ids
-- Returns {now, {provider of each lease it ended}, {handed-over lease ids}, {the audit records it put in the outbox, at
--   `now`, one per lease ended, in the same order}} (the records name the leases); a TRYAGAIN error while the
--   bucket's slot moves (nothing written)
local base = ARGV[1]
local moving = slot_guard(base)
if moving then return moving end
local now = now_ms()
local retention = tonumber(ARGV[4])
local localKinds = {}
for kind in string.gmatch(ARGV[5], '%S+') do localKinds[kind] = true end
local revoking = leases_revoking_key(base)
local ended, handoff, records, heads = {}, {}, {}, {}
local action = ARGV[2] == 'expired' and 'lease.expire' or 'lease.revoke'
local acc = bulk_end_new()
for i = 6, #ARGV do
  local id = ARGV[i]
  local k = base .. 'lease:' .. id
  local f = redis.call('HMGET', k, 'status', 'p', 't', 'r', 'reason', 'issuedAt', 'givenUp')
  local st = f[1]
  if st and not ENDED[st] and st ~= 'issuing' then
    if localKinds[f[2]] then
      bulk_end_lease(acc, base, id, f[3], f[5], ARGV[2], ARGV[3], retention, now, f[6], st)
      ended[#ended + 1] = f[2]
      records[#records + 1] = lease_record(heads, now, action, f[3], f[4], id, ARGV[3])
    else
      -- A given-up issuance (`revoke_failed` while its revoke fails) ends `failed`, for no reason: handed over only.
      if not f[5] and not f[7] then redis.call('HSET', k, 'reason', ARGV[3]) end
      if st == 'active' then redis.call('HSET', k, 'status', 'revoking') end
      redis.call('ZADD', revoking, 'NX', now, id)
      handoff[#handoff + 1] = id
    end
  end
end
bulk_end_finish(acc, base, KEYS[1])
outbox_add(base, now, records)
return { now, ended, handoff, records }
