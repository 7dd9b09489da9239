-- reconcile-subtasks: of one page of a bucket's open sub-tasks, those whose parent is no longer open. task-end and
-- sweep end a task with its open subtree in one step, so none should exist; one does when such a step was cut
-- short after ending the parent (an older release's script during a Cluster reshard, lib/slot.lua) or by what
-- nobody foresaw, and the reconciler ends it as ending its parent would have. Reads only: one HMGET per parent
-- (sub-tasks of one parent share it), none per sub-task, whose deadline comes with its id from the open index.
-- The parents it reads are keys built from ARGV[1], not declared: lib/slot.lua (an absent read on a slot half
-- moved would take a parent that is still there for one that is gone, and end a healthy sub-task).
-- uses: slot
-- KEYS[1] open tasks of the bucket (zset; names the bucket's slot, not read)
-- ARGV[1] key base of the bucket
-- ARGV[2..] pairs: sub-task id (`<parent>~<name>`: no name holds a `~`, so the parent is the id before the last
--   `~`), its deadline (its score in the open index, ms)
-- Returns {id, reason, adminScope, ...}: per sub-task to end, the reason its parent ended for ('' when the parent is
--   gone) and the parent's adminScope ('' for none); a TRYAGAIN error while the bucket's slot moves
local base = ARGV[1]
local moving = slot_guard(base)
if moving then return moving end
local out, parents = {}, {}
for i = 2, #ARGV, 2 do
  local id, deadline = ARGV[i], tonumber(ARGV[i + 1])
  local pid = string.match(id, '^(.*)~[^~]*$')
  if pid then
    local p = parents[pid]
    if not p then
      local pf = redis.call('HMGET', base .. 'task:' .. pid, 'status', 'createdAt', 'reason', 'adminScope')
      p = { status = pf[1], created = tonumber(pf[2]), reason = pf[3] or '', scope = pf[4] or '' }
      parents[pid] = p
    end
    -- A sub-task's deadline falls within its parent's life: a parent created after it is a later task under the
    -- parent's id (the sub-task's own parent was purged after its retention, then the id opened again), whatever
    -- the later one's status, and the sub-task's parent is gone.
    local later = p.created ~= nil and deadline ~= nil and p.created > deadline
    if not p.status or later then
      out[#out + 1] = id
      out[#out + 1] = ''
      out[#out + 1] = ''
    elseif p.status ~= 'open' then
      out[#out + 1] = id
      out[#out + 1] = p.reason
      out[#out + 1] = p.scope
    end
  end
end
return out
