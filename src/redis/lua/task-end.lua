-- task-end: ends an open task and its whole open subtree in one step (so no sub-task can take a lease
-- after its parent ended). An expiry only happens once the deadline has passed on Redis's clock.
-- The audit records of the ending (ARGV[8..10]) go to the bucket's audit outbox in this step
-- (lib/outbox.lua), so a process that dies before appending them loses none.
-- Its sub-tasks, their counts and the outbox are keys it builds from ARGV[1]: lib/slot.lua.
-- uses: common, outbox, slot
-- KEYS[1] task hash
-- KEYS[2] open tasks of the bucket (zset)
-- ARGV[1] key base of the bucket
-- ARGV[2] status: completed | expired
-- ARGV[3] reason recorded on the task and given to its leases (task_completed | task_expired | revoked_by_admin)
-- ARGV[4] reason for the sub-tasks it ends
-- ARGV[5] retention of ended records in ms
-- ARGV[6] task id
-- ARGV[7] (optional) adminScope recorded on every task it ends: 'task' when an admin ended them without
--         suspecting their agent (quarantining the orchestrator that opened them)
-- ARGV[8] (optional) audit record of the task's ending (a JSON object), '' for none
-- ARGV[9] (optional) audit record of each sub-task it ends, without its `taskId` (added here), '' for none
-- ARGV[10] (optional) '1': the task's record gets `detail: {tasks, leases}` (tasks ended, their live leases)
-- Returns {'ended', endedAt, live, {audit records put in the outbox at endedAt}, id, id, ...} | {'missing'} |
--   {'already', status} | {'early'} | a TRYAGAIN error while the bucket's slot moves (nothing written)
--   live: leases of the ended tasks that had not ended yet (what this call hands to revocation)
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return { 'missing' } end
if st ~= 'open' then return { 'already', st } end
local now = now_ms()
if ARGV[2] == 'expired' and now < tonumber(redis.call('HGET', KEYS[1], 'expiresAt')) then return { 'early' } end
local moving = slot_guard(ARGV[1])
if moving then return moving end
local ended = end_subtree(ARGV[1], KEYS[2], ARGV[6], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), now)
local live = 0
for _, id in ipairs(ended) do
  live = live + tonumber(redis.call('HGET', ARGV[1] .. 'task:' .. id, 'live') or '0')
  if ARGV[7] and ARGV[7] ~= '' then redis.call('HSET', ARGV[1] .. 'task:' .. id, 'adminScope', ARGV[7]) end
end
local records = {}
if ARGV[8] and ARGV[8] ~= '' then
  local counts = ARGV[10] == '1' and { raw = audit_json({ 'tasks', #ended, 'leases', live }) } or false
  records[1] = outbox_member(now, audit_extend(ARGV[8], { 'detail', counts }))
end
if ARGV[9] and ARGV[9] ~= '' then
  for i = 2, #ended do records[#records + 1] = outbox_member(now, audit_extend(ARGV[9], { 'taskId', ended[i] })) end
end
outbox_add(ARGV[1], now, records)
local out = { 'ended', now, live, records }
for _, id in ipairs(ended) do out[#out + 1] = id end
return out
