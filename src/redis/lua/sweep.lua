-- sweep: one bucket's due work, decided on Redis's clock, in one step.
-- - Open tasks past their deadline end `expired` with their open subtree (returned for lease revocation).
-- - Due leases of providers with nothing to call upstream (`jwt`) end `expired` here, in bulk.
-- - Other due leases (upstream TTL expiry, interrupted issuances, revocations to retry) are handed to
--   the worker; their score moves `retry` ms ahead so each is handed over once, not every sweep.
-- uses: common
-- KEYS[1] live leases of the bucket (zset)
-- KEYS[2] open tasks of the bucket (zset)
-- ARGV[1] key base of the bucket
-- ARGV[2] max leases per call
-- ARGV[3] max tasks per call
-- ARGV[4] retention in ms
-- ARGV[5] retry in ms
-- ARGV[6] provider kinds that need no upstream call, space separated (e.g. 'jwt')
-- Returns {now, {expired lease: id, task, role, expiresAt, ...}, {handed-over lease ids}, {ended task groups, each {root, id...}}}
local base = ARGV[1]
local now = now_ms()
local retention = tonumber(ARGV[4])
local retry = tonumber(ARGV[5])
local localKinds = {}
for kind in string.gmatch(ARGV[6], '%S+') do localKinds[kind] = true end

local groups = {}
local overdue = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(overdue) do
  local k = base .. 'task:' .. id
  if redis.call('HGET', k, 'status') == 'open' then
    groups[#groups + 1] = end_subtree(base, KEYS[2], id, 'expired', 'task_expired', 'task_completed', retention, now)
  else
    redis.call('ZREM', KEYS[2], id)
  end
end

local expired, handoff = {}, {}
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
    expired[#expired + 1] = id
    expired[#expired + 1] = f[3]
    expired[#expired + 1] = f[4]
    expired[#expired + 1] = score
  else
    handoff[#handoff + 1] = id
    redis.call('ZADD', KEYS[1], now + retry, id)
  end
end
bulk_end_finish(acc, base, KEYS[1])
return { now, expired, handoff, groups }
