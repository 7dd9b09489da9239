-- approval-request: the approval of one exact request (task, role, scopes, ttl as sent), creating a
-- pending one if there is none, under the task's bound on pending approvals. The `credential.pending` record
-- of one it creates (ARGV[8]) goes to the bucket's audit outbox in the same step (lib/outbox.lua), so a
-- process that dies before appending it loses nothing.
-- The approval the request index names is a key built from ARGV[1], not declared: lib/slot.lua (on a slot half
-- moved it could read as absent, and a second approval of the same request be created).
-- uses: common, slot
-- KEYS[1] index: the current approval of this exact request
-- KEYS[2] task hash
-- KEYS[3] the task's pending approvals (set)
-- KEYS[4] approvals of the bucket (zset, by request time)
-- KEYS[5] new approval hash (used only when one is created)
-- KEYS[6] approvals of the task's agent (zset, by request time)
-- KEYS[7] approvals of the task's opener (zset, by request time; may be KEYS[6])
-- KEYS[8..] approvals of each party to a task above (zset, by request time; a sub-task's readers, any may repeat)
-- ARGV[1] key base of the bucket
-- ARGV[2] new approval id
-- ARGV[3] immutable part as JSON
-- ARGV[4] maxPendingApprovals (0 = no bound)
-- ARGV[5] retention in ms after the task's deadline
-- ARGV[6] how long after its request any approval's index entry may stay (ms): the longest task ttl plus ARGV[5]
-- ARGV[7] createdAt (ms) of the task incarnation the caller decided on ('' = any)
-- ARGV[8] (optional) outbox member (tagged record JSON) added at `now` when one is created, '' for none
-- ARGV[9] (optional) 'find': create nothing, answer {'absent'} where one would be created (the caller reads a
--   sub-task's readers, KEYS[8..], only then, and asks again with them)
-- Returns {'existing', id} | {'created', id, now} | {'absent'} | {'stale'} | {'task_closed'} | {'limit'} | a TRYAGAIN
--   error while the bucket's slot moves (nothing written)
local t = redis.call('HMGET', KEYS[2], 'status', 'createdAt', 'expiresAt')
local st, created = t[1], t[2]
local want = ARGV[7] or ''
if want ~= '' and created and tonumber(created) ~= tonumber(want) then return { 'stale' } end
local cur = redis.call('GET', KEYS[1])
if cur then
  local moving = slot_guard(ARGV[1])
  if moving then return moving end
  -- Only an approval of this incarnation of the task: a task id that was purged and opened again is
  -- another task (approvals written before `taskCreatedAt` existed are matched by the task's deadline).
  local a = redis.call('HMGET', ARGV[1] .. 'approval:' .. cur, 'status', 'taskCreatedAt', 'expiresAt')
  if a[1] and created then
    local same
    if a[2] then same = tonumber(a[2]) == tonumber(created) else same = tonumber(a[3]) == tonumber(t[3]) end
    if same then return { 'existing', cur } end
  end
end
local now = now_ms()
if st ~= 'open' then return { 'task_closed' } end
local deadline = tonumber(t[3])
if now >= deadline then return { 'task_closed' } end
local max = tonumber(ARGV[4])
if max > 0 and redis.call('SCARD', KEYS[3]) >= max then return { 'limit' } end
if ARGV[9] == 'find' then return { 'absent' } end
redis.call('HSET', KEYS[5], 'd', ARGV[3], 'status', 'pending', 'requestedAt', now, 'expiresAt', deadline, 'taskCreatedAt', created)
redis.call('PEXPIREAT', KEYS[5], deadline + tonumber(ARGV[5]))
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', deadline)
redis.call('SADD', KEYS[3], ARGV[2])
local horizon, keep_until = tonumber(ARGV[6]), deadline + tonumber(ARGV[5])
index_add(KEYS[4], ARGV[2], now, horizon, keep_until)
local indexed = {}
for i = 6, #KEYS do
  if not indexed[KEYS[i]] then
    indexed[KEYS[i]] = true
    index_add(KEYS[i], ARGV[2], now, horizon, keep_until)
  end
end
if ARGV[8] and ARGV[8] ~= '' then redis.call('ZADD', ARGV[1] .. 'audit-outbox', 'NX', now, ARGV[8]) end
return { 'created', ARGV[2], now }
