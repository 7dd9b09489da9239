-- sweep: one bucket's due work, decided on Redis's clock, in one step.
-- - Open tasks past their deadline end `expired` with their open subtree (returned for lease revocation).
-- - Due leases of providers with nothing to call upstream (`jwt`) end `expired` here, in bulk.
-- - Other due leases (upstream TTL expiry, interrupted issuances, revocations to retry) are handed to
--   the worker; their score moves `retry` ms ahead so each is handed over once, not every sweep.
-- - The audit record of each lease and task it ends goes to the bucket's audit outbox in this step
--   (lib/outbox.lua), so a process that dies before appending them loses none: lease.expire per lease,
--   task.expire per overdue task, task.complete (parent_task_expired) per sub-task ended with it.
-- Every task and lease it reads is a key built from ARGV[1], not declared: lib/slot.lua.
-- uses: common, outbox, slot
-- KEYS[1] live leases of the bucket (zset)
-- KEYS[2] open tasks of the bucket (zset)
-- ARGV[1] key base of the bucket
-- ARGV[2] max leases per call
-- ARGV[3] max tasks per call
-- ARGV[4] retention in ms
-- ARGV[5] retry in ms
-- ARGV[6] provider kinds that need no upstream call, space separated (e.g. 'jwt')
-- Returns {now, {expiresAt of each lease it ended}, {handed-over lease ids}, {ended task groups, each {root, id...}},
--   {the audit records it put in the outbox, at `now`}} (the records name the leases: nothing else is returned
--   per lease, as every returned string costs Redis time in a burst); a TRYAGAIN error while the bucket's slot
--   moves (nothing written)
local base = ARGV[1]
local moving = slot_guard(base)
if moving then return moving end
local now = now_ms()
local retention = tonumber(ARGV[4])
local retry = tonumber(ARGV[5])
local localKinds = {}
for kind in string.gmatch(ARGV[6], '%S+') do localKinds[kind] = true end

local groups, records = {}, {}
local overdue = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(overdue) do
  local k = base .. 'task:' .. id
  if redis.call('HGET', k, 'status') == 'open' then
    local ended = end_subtree(base, KEYS[2], id, 'expired', 'task_expired', 'task_completed', retention, now)
    groups[#groups + 1] = ended
    records[#records + 1] = outbox_member(now, audit_json({ 'action', 'task.expire', 'actor', 'broker', 'decision', 'ok', 'taskId', id }))
    for j = 2, #ended do
      records[#records + 1] = outbox_member(now, audit_json({
        'action', 'task.complete', 'actor', 'broker', 'decision', 'ok', 'taskId', ended[j], 'reason', 'parent_task_expired',
      }))
    end
  else
    redis.call('ZREM', KEYS[2], id)
  end
end

local expired, handoff, heads = {}, {}, {}
local acc = bulk_end_new()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due, 2 do
  local id, score = due[i], due[i + 1]
  local f = redis.call('HMGET', base .. 'lease:' .. id, 'status', 'p', 't', 'r', 'reason', 'issuedAt')
  local st = f[1]
  if not st or ENDED[st] then
    redis.call('ZREM', KEYS[1], id)
  elseif localKinds[f[2]] and st ~= 'issuing' then
    bulk_end_lease(acc, base, id, f[3], f[5], 'expired', 'ttl_expired', retention, now, f[6], st)
    expired[#expired + 1] = score
    records[#records + 1] = lease_record(heads, now, 'lease.expire', f[3], f[4], id, 'ttl_expired')
  else
    handoff[#handoff + 1] = id
    redis.call('ZADD', KEYS[1], now + retry, id)
  end
end
bulk_end_finish(acc, base, KEYS[1])
outbox_add(base, now, records)
return { now, expired, handoff, groups, records }
