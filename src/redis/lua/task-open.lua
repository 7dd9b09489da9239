-- task-open: creates a task if its id is free, registers it in every index in the same step,
-- and for a sub-task checks the parent (open, deadline) and the tree's sub-task budget.
-- Its `task.open` record (ARGV[10]) goes to the bucket's audit outbox in the same step (lib/outbox.lua), so a
-- process that dies before appending it loses nothing (recovery appends it).
-- It deletes an earlier task's audit index, a key built from the task hash's base, not declared: lib/slot.lua.
-- uses: common, slot
-- KEYS[1] task hash
-- KEYS[2] open tasks (zset, by deadline)
-- KEYS[3] all tasks (zset, by creation time)
-- KEYS[4] tasks of the agent (zset)
-- KEYS[5] tasks of the opener (zset)
-- KEYS[6] parent task hash        (sub-tasks only)
-- KEYS[7] parent's children (set) (sub-tasks only)
-- KEYS[8] root task hash          (sub-tasks only: holds the tree's sub-task count, which numbers them: `seq`)
-- ARGV[1] immutable part as JSON
-- ARGV[2] ttl in ms (deadline = Redis time + ttl)
-- ARGV[3] task id
-- ARGV[4] maxSubtasks over the tree's whole life (0 = no bound; the config allows 1-1000)
-- ARGV[5] agent (kept as a plain field too, for filters and the kill switch)
-- ARGV[6] tenant (likewise)
-- ARGV[7] how long after its deadline the task's index entries must stay (ms): its retention, plus slack
-- ARGV[8] how long after its creation any task's index entry may stay (ms): the longest ttl plus ARGV[7]
-- ARGV[9] createdAt (ms) of the parent incarnation the caller decided on ('' = any; sub-tasks only):
--         a parent id that was purged and opened again is another task
-- ARGV[10] (optional) outbox member (tagged record JSON) added at createdAt when the task is created, '' for none
-- ARGV[11] (optional) opener, kept as a plain field so list filters need not read `d` (tasks opened before it
--          was kept have none: readers fall back to `d`)
-- Returns {'exists', <hash as flat list>} | {'created', createdAt, expiresAt} | {'parent_stale'}
--       | {'parent_missing'} | {'parent_not_open'} | {'outlives_parent', parentExpiresAt} | {'limit'}
--       | a TRYAGAIN error while the bucket's slot moves (nothing written)
if #KEYS >= 8 and ARGV[9] and ARGV[9] ~= '' then
  local pcreated = redis.call('HGET', KEYS[6], 'createdAt')
  if pcreated and tonumber(pcreated) ~= tonumber(ARGV[9]) then return { 'parent_stale' } end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return { 'exists', redis.call('HGETALL', KEYS[1]) } end
local base = string.sub(KEYS[1], 1, #KEYS[1] - #('task:' .. ARGV[3]))
local moving = slot_guard(base)
if moving then return moving end
local now = now_ms()
local expires = now + tonumber(ARGV[2])
local seq
if #KEYS >= 8 then
  local pst = redis.call('HGET', KEYS[6], 'status')
  if not pst then return { 'parent_missing' } end
  local pexp = tonumber(redis.call('HGET', KEYS[6], 'expiresAt'))
  if pst ~= 'open' or now >= pexp then return { 'parent_not_open' } end
  if expires > pexp then return { 'outlives_parent', pexp } end
  local max = tonumber(ARGV[4])
  -- Counted on the root and never decremented: ending and reopening, or nesting, cannot get round it.
  seq = redis.call('HINCRBY', KEYS[8], 'subtasks', 1)
  if max > 0 and seq > max then
    redis.call('HINCRBY', KEYS[8], 'subtasks', -1)
    return { 'limit' }
  end
  redis.call('SADD', KEYS[7], ARGV[3])
end
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'status', 'open', 'createdAt', now, 'expiresAt', expires, 'live', 0,
  'agent', ARGV[5], 'tenant', ARGV[6])
-- A sub-task's place in its tree's opening order (the root's count when it opened): tree pages follow it, so a
-- sub-task opened while a client pages through the tree comes after every page already read (src/tasks/task-store.ts).
if seq then redis.call('HSET', KEYS[1], 'seq', seq) end
if ARGV[11] and ARGV[11] ~= '' then redis.call('HSET', KEYS[1], 'openedBy', ARGV[11]) end
redis.call('ZADD', KEYS[2], expires, ARGV[3])
local horizon, keep_until = tonumber(ARGV[8]), expires + tonumber(ARGV[7])
for i = 3, 5 do index_add(KEYS[i], ARGV[3], now, horizon, keep_until) end
-- An earlier task under this id (purged after its retention) left its audit index, which outlives the task
-- record: it is not this task's, and its orchestrator may be another. Its records stay in the chain.
redis.call('DEL', base .. 'task-audit:' .. ARGV[3])
if ARGV[10] and ARGV[10] ~= '' then redis.call('ZADD', base .. 'audit-outbox', 'NX', now, ARGV[10]) end
return { 'created', now, expires }
