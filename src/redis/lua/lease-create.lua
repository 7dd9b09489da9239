-- lease-create: records a lease only while its task is open (on Redis's clock) and under the task's
-- live-lease bound, in one step with the task's lease set and the bucket's live index. Once a task has
-- left `open`, no lease can join it, so ending a task sees every lease it will ever have.
-- An `issuing` lease is the intent written before an upstream call: its live-index score is the orphan
-- deadline, after which the sweeper treats the issuance as interrupted.
-- The issue record of an `active` lease (ARGV[13], the broker's own JWT) goes to the bucket's audit outbox
-- in the same step (lib/outbox.lua): the caller's append, sent right behind this script, names it, and a
-- process that dies before that append reaches Redis loses nothing (recovery appends it).
-- uses: common
-- KEYS[1] task hash
-- KEYS[2] lease hash
-- KEYS[3] task's lease index (zset, score = issuedAt)
-- KEYS[4] live leases of the bucket (zset)
-- KEYS[5] the task's lease set as the previous release reads it (set): written too, so that a worker of that
--         release ending the task during a rolling upgrade finds this lease (see task-lease-page.lua)
-- KEYS[6] (optional) the bucket's audit outbox (zset), with ARGV[13] (given, unused, when only KEYS[7] is needed)
-- KEYS[7] (optional) the bucket's leases issued under an approval (zset, scored by the latest its credential can be
--         valid): this lease is added (its approver is in ARGV[1]), so that quarantining the approver finds it
--         (AdminService.endApproved); entries whose credential has died are dropped (ARGV[15])
-- ARGV[1] immutable part as JSON
-- ARGV[2] status: active | issuing
-- ARGV[3] expiresAt (ms): the credential's expiry (active) or the latest it could have (issuing)
-- ARGV[4] orphan window in ms (issuing only): the upstream credential dies by itself or is revocable by then
-- ARGV[5] lease id
-- ARGV[6] handle as JSON (what revoke needs, known before the call)
-- ARGV[7] maxLeases live per task (0 = no bound)
-- ARGV[8] task id
-- ARGV[9] provider kind
-- ARGV[10] role name
-- ARGV[11] maxLeasesTotal per task over its life, ended leases included (0 = no bound)
-- ARGV[12] createdAt (ms) of the task incarnation the caller decided on ('' = any): a task id that was
--          purged and opened again is another task, and what was decided about the old one does not hold
-- ARGV[13] (optional) outbox member (tagged record JSON) added at `now` when the lease is recorded, '' for none
-- ARGV[14] (optional) retention of ended records in ms: the task's lease index, when this lease creates it, expires
--          at the task's deadline plus this (see below); '' or absent: no expiry given here
-- ARGV[15] (with KEYS[7]) how long past that score an entry stays (ms): clock skew (the broker's, Redis's, the
--          upstream's) and an upstream credential's confirmation; older entries are dropped on this write
-- Returns {'ok', now} | {'no_task'} | {'stale'} | {'task_closed'} | {'limit'} | {'limit_total'}
-- A lease id is 112 random bits: the lease already there is this call's own, sent again by the client after
-- a dropped connection lost the answer (ioredis resends what was unanswered). Done already: counting it in
-- the task twice, or putting its issue record back in the outbox the append emptied, would be wrong.
local issued = redis.call('HGET', KEYS[2], 'issuedAt')
if issued then return { 'ok', tonumber(issued) } end
local f = redis.call('HMGET', KEYS[1], 'status', 'createdAt', 'expiresAt', 'live', 'leases')
local st = f[1]
if not st then return { 'no_task' } end
local want = ARGV[12] or ''
if want ~= '' and tonumber(f[2]) ~= tonumber(want) then return { 'stale' } end
local now = now_ms()
if st ~= 'open' or now >= tonumber(f[3]) then return { 'task_closed' } end
local max = tonumber(ARGV[7])
if max > 0 and tonumber(f[4] or '0') >= max then return { 'limit' } end
-- Ended lease records stay for the retention period: a live-lease bound alone would let a loop of
-- issue and revoke grow Redis without limit within one task.
local total = tonumber(ARGV[11] or '0')
if total > 0 and tonumber(f[5] or '0') >= total then return { 'limit_total' } end
redis.call('HINCRBY', KEYS[1], 'live', 1)
redis.call('HINCRBY', KEYS[1], 'leases', 1)
local score = tonumber(ARGV[3])
redis.call('HSET', KEYS[2], 'd', ARGV[1], 't', ARGV[8], 'p', ARGV[9], 'r', ARGV[10], 'status', ARGV[2],
  'issuedAt', now, 'expiresAt', ARGV[3], 'handle', ARGV[6])
if ARGV[2] == 'issuing' then
  score = now + tonumber(ARGV[4])
  redis.call('HSET', KEYS[2], 'orphanAt', score)
end
redis.call('ZADD', KEYS[3], now, ARGV[5])
-- The index ends up with the task's retention when the task ends (end_task), but a process of the previous
-- release ending the task (a rolling upgrade) does not know it, and it would stay for good. So it is created
-- with the latest its task's records can live: the deadline (the sweeper ends the task then) plus the
-- retention. Should it still go first (a sweeper down longer than the retention), the lease set (KEYS[5])
-- holds every id, and task-lease-page.lua copies them back.
-- At least that long: an index an earlier task under this id left (ended by the previous release, so expiring
-- at its own deadline plus the retention) is this task's now, and must not expire while it is open.
local keep = tonumber(ARGV[14] or '')
if keep and keep > 0 then
  local until_ms = tonumber(f[3]) + keep
  local left = redis.call('PTTL', KEYS[3])
  if left == -1 or (left > 0 and now + left < until_ms) then
    redis.call('PEXPIREAT', KEYS[3], string.format('%d', until_ms))
  end
end
redis.call('SADD', KEYS[5], ARGV[5])
redis.call('ZADD', KEYS[4], score, ARGV[5])
if KEYS[6] and ARGV[13] and ARGV[13] ~= '' then redis.call('ZADD', KEYS[6], 'NX', now, ARGV[13]) end
-- Scored by when its credential dies, not by its issue: a quarantine reads the leases that may still be worth
-- revoking, not every approved lease of the last week (the list indexes' horizon), and the key leaves Redis with
-- the last of them. An `issuing` lease's credential is made by its orphan deadline at the latest (else given up).
if KEYS[7] then
  local dies = tonumber(ARGV[3])
  if ARGV[2] == 'issuing' then dies = dies + tonumber(ARGV[4]) end
  local slack = tonumber(ARGV[15])
  redis.call('ZADD', KEYS[7], dies, ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. string.format('%d', now - slack))
  local left = redis.call('PTTL', KEYS[7])
  if left < 0 or now + left < dies + slack then redis.call('PEXPIREAT', KEYS[7], string.format('%d', dies + slack)) end
end
return { 'ok', now }
