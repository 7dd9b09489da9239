-- reconcile-tasks: of one page of a bucket's work list of ended tasks that had live leases when they
-- ended, those that still have some: a job that should have ended them was lost, and their leases are
-- the reconciler's to finish. The others (every lease ended, the task gone, or the id open again as a
-- new task) leave the list here.
-- KEYS[1] ended tasks with live leases of the bucket (zset, Keys.tasksEnding)
-- ARGV[1] key base of the bucket
-- ARGV[2..] task ids
-- Returns the task ids whose leases need the reconciler
local out = {}
for i = 2, #ARGV do
  local f = redis.call('HMGET', ARGV[1] .. 'task:' .. ARGV[i], 'status', 'live')
  if f[1] and f[1] ~= 'open' and tonumber(f[2] or '0') > 0 then
    out[#out + 1] = ARGV[i]
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return out
