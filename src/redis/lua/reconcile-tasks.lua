-- reconcile-tasks: of one page of a bucket's work list of ended tasks that had live leases when they
-- ended, those that still have some: a job that should have ended them was lost, and their leases are
-- the reconciler's to finish. The others (every lease ended, or the id open again as a new task) leave
-- the list here. A task whose records are gone (its retention passed while the list still counted live
-- leases) cannot name its leases any more: it is returned apart, and left on the list until the caller
-- has walked the bucket's live leases and asks again with ARGV[2] = '1'. So is an entry written (its score)
-- well before its id's current task was created (common.lua `of_earlier_task`), whether that task is open or
-- ended too: the entry is the earlier task's (end_task keeps its score), and the current task's lease set does
-- not name the earlier task's leases. Once the bucket was walked, such an entry of an ended task that still
-- counts live leases stays as that task's own (re-scored with its endedAt); otherwise it goes.
-- The tasks it reads are keys built from ARGV[1], not declared: lib/slot.lua (an absent read on a slot half
-- moved would take a task that is still there for one that is gone).
-- uses: common, slot
-- KEYS[1] ended tasks with live leases of the bucket (zset, Keys.tasksEnding)
-- ARGV[1] key base of the bucket
-- ARGV[2] '1': drop entries whose task is gone (the caller walked every live lease of the bucket); '0': keep them
-- ARGV[3..] task ids
-- Returns {task ids whose leases need the reconciler, task ids that are gone}; a TRYAGAIN error while the bucket's
-- slot moves (nothing written)
local moving = slot_guard(ARGV[1])
if moving then return moving end
local out, gone = {}, {}
for i = 3, #ARGV do
  local f = redis.call('HMGET', ARGV[1] .. 'task:' .. ARGV[i], 'status', 'live', 'createdAt', 'endedAt')
  -- Not only an open task: a task opened again and ended since has its own leases in its lease set, not the
  -- earlier task's, and one that ended holding none would otherwise drop the entry below.
  local reopened = f[1] and of_earlier_task(redis.call('ZSCORE', KEYS[1], ARGV[i]), f[3])
  if not f[1] or reopened then
    if ARGV[2] ~= '1' then
      gone[#gone + 1] = ARGV[i]
    elseif f[1] ~= 'open' and tonumber(f[2] or '0') > 0 and tonumber(f[4]) then
      redis.call('ZADD', KEYS[1], 'XX', f[4], ARGV[i])
    else
      redis.call('ZREM', KEYS[1], ARGV[i])
    end
  elseif f[1] ~= 'open' and tonumber(f[2] or '0') > 0 then
    out[#out + 1] = ARGV[i]
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return { out, gone }
