-- reconcile-page: of one page of a bucket's live leases, the few the reconciler must finish, decided in
-- Redis: leases whose task is no longer open (or gone) and leases left `revoking` / `revoke_failed`
-- (a lost job). A lease of an earlier task under its task id (common.lua `of_earlier_task`) is one whose
-- own task is gone. Healthy leases of open tasks, nearly all of them, are not sent back, so a pass over
-- 100,000 live leases costs the broker's event loop a page of ids each, not 100,000 parsed records.
-- `issuing` and ended leases are skipped, as the reconciler skips them.
-- The leases and tasks it reads are keys built from ARGV[1], not declared: lib/slot.lua (an absent read on a
-- slot half moved would drop a lease still revoking from KEYS[2]).
-- uses: common, slot
-- KEYS[1] live leases of the bucket (zset; names the bucket's slot, not read)
-- KEYS[2] optional: the work list the ids were read from (Keys.leasesRevoking); ids that need nothing
--         (ended, gone) leave it here
-- ARGV[1] key base of the bucket
-- ARGV[2..] lease ids
-- Returns the ids that need the reconciler; a TRYAGAIN error while the bucket's slot moves (nothing written)
local base = ARGV[1]
local moving = slot_guard(base)
if moving then return moving end
local prune = KEYS[2]
local out = {}
local tasks = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local f = redis.call('HMGET', base .. 'lease:' .. id, 'status', 't', 'issuedAt')
  local st = f[1]
  if st and not ENDED[st] and st ~= 'issuing' then
    local t = f[2]
    if REVOKING[st] or not t then
      -- (a record without its task id field is decided by the reconciler from the full record)
      out[#out + 1] = id
    else
      local task = tasks[t]
      if task == nil then
        local tf = redis.call('HMGET', base .. 'task:' .. t, 'status', 'createdAt')
        task = { open = tf[1] == 'open', created = tonumber(tf[2]) }
        tasks[t] = task
      end
      if not task.open or of_earlier_task(f[3], task.created) then out[#out + 1] = id end
    end
  elseif prune then
    redis.call('ZREM', prune, id)
  end
end
return out
