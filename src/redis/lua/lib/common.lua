-- Library prepended to scripts that declare `-- uses: common`. Functions only; no KEYS of its own.

-- Redis's own clock in ms: every deadline, expiry and activation is decided on it, not on a process's clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local ENDED = { revoked = true, expired = true, failed = true }
-- A revocation asked for and not confirmed yet: only such a lease is on the work list of revocations in progress.
local REVOKING = { revoking = true, revoke_failed = true }

-- The reconciler's two work lists (Keys.tasksEnding, Keys.leasesRevoking), written in the same step as the
-- state they list, so a replica or a restart that has the state has the entry too: a reconcile pass visits
-- these, not every live lease.
local function tasks_ending_key(base) return base .. 'tasks-ending' end
local function leases_revoking_key(base) return base .. 'leases-revoking' end

-- Whether a lease issued at `issued` belongs to an earlier task under the id of a task created at `created`
-- (purged after its retention, then opened again). Such a lease was issued before the earlier task ended and
-- that task's records lived on for its retention (at least 60 s), so it predates `created` by a minute or
-- more; the 30-s margin keeps a lease of the current task that a failed-over Redis, its clock behind the old
-- master's, stamped a little before `created` from ever counting as an earlier task's. Unknown times: not earlier.
local EARLIER_TASK_MARGIN_MS = 30000
local function of_earlier_task(issued, created)
  issued, created = tonumber(issued), tonumber(created)
  return issued ~= nil and created ~= nil and issued < created - EARLIER_TASK_MARGIN_MS
end

-- Leases of task `t` ended: its live-lease count goes down by those issued under the task as it is now, and
-- once none is left the task needs no reconciling. `issued`: the leases' `issuedAt` (Redis time). A lease of
-- an earlier task of the same id neither counts against the new task nor takes it off the work list.
local function task_lease_gone(base, t, issued)
  local tk = base .. 'task:' .. t
  local created = tonumber(redis.call('HGET', tk, 'createdAt'))
  if not created then return end
  local n = 0
  for _, at in ipairs(issued) do
    if not of_earlier_task(at, created) then n = n + 1 end
  end
  if n > 0 and redis.call('HINCRBY', tk, 'live', -n) <= 0 then
    redis.call('ZREM', tasks_ending_key(base), t)
  end
end

-- Ends one lease: status, reason, revokedAt (Redis time), leaves the live index, kept for `retention` ms,
-- and the task's live-lease count goes down. Returns false when it had already ended.
local function end_lease(base, live_key, id, status, reason, retention, now)
  local k = base .. 'lease:' .. id
  local st = redis.call('HGET', k, 'status')
  if not st or ENDED[st] then return false end
  redis.call('HSET', k, 'status', status, 'revokedAt', now)
  if reason and reason ~= '' and not redis.call('HGET', k, 'reason') then redis.call('HSET', k, 'reason', reason) end
  redis.call('PEXPIRE', k, retention)
  redis.call('ZREM', live_key, id)
  if REVOKING[st] then redis.call('ZREM', leases_revoking_key(base), id) end
  local tf = redis.call('HMGET', k, 't', 'issuedAt')
  if tf[1] then task_lease_gone(base, tf[1], { tf[2] or false }) end
  return true
end

-- Bulk form of end_lease for scripts that end many leases whose fields they just read (status live,
-- `t`, `reason`): the same writes with fewer commands. Call bulk_end_lease per lease, then
-- bulk_end_finish once: it takes them out of the live index and lowers each task's live-lease count
-- (one command per task, not per lease). `issued`: the lease's `issuedAt`; `was`: its status before (one
-- `revoking` or `revoke_failed` also leaves the work list of revocations in progress).
local function bulk_end_lease(acc, base, id, task, had_reason, status, reason, retention, now, issued, was)
  local k = base .. 'lease:' .. id
  if had_reason or not reason or reason == '' then
    redis.call('HSET', k, 'status', status, 'revokedAt', now)
  else
    redis.call('HSET', k, 'status', status, 'revokedAt', now, 'reason', reason)
  end
  redis.call('PEXPIRE', k, retention)
  acc.ids[#acc.ids + 1] = id
  if REVOKING[was] then acc.revoking[#acc.revoking + 1] = id end
  if task then
    local list = acc.tasks[task]
    if list then list[#list + 1] = issued or false else acc.tasks[task] = { issued or false } end
  end
end

local function bulk_end_new()
  return { ids = {}, tasks = {}, revoking = {} }
end

local function bulk_end_finish(acc, base, live_key)
  for i = 1, #acc.ids, 500 do
    redis.call('ZREM', live_key, unpack(acc.ids, i, math.min(i + 499, #acc.ids)))
  end
  for i = 1, #acc.revoking, 500 do
    redis.call('ZREM', leases_revoking_key(base), unpack(acc.revoking, i, math.min(i + 499, #acc.revoking)))
  end
  for t, issued in pairs(acc.tasks) do task_lease_gone(base, t, issued) end
end

-- Ends one open task: status, endedAt, reason; leaves the open index; its keys are kept for `retention` ms.
local function end_task(base, open_key, id, status, reason, retention, now)
  local k = base .. 'task:' .. id
  redis.call('HSET', k, 'status', status, 'endedAt', now, 'reason', reason)
  redis.call('ZREM', open_key, id)
  -- Its live leases are ended next, by the caller's job; if that job is lost, the reconciler finds the task here.
  -- NX: an entry already there is an earlier task's under this id (purged after its retention, opened again;
  -- a task ends once), whose leases only its older score tells reconcile-tasks to look for. Re-stamped with
  -- this task's end time, it would be taken for this task's and only this task's lease set walked.
  if tonumber(redis.call('HGET', k, 'live') or '0') > 0 then redis.call('ZADD', tasks_ending_key(base), 'NX', now, id) end
  redis.call('PEXPIRE', k, retention)
  -- 'task-leases:': the task's lease set as the previous release reads it (lease-create.lua writes it too).
  for _, kind in ipairs({ 'task-lease-ids:', 'task-leases:', 'task-children:', 'task-approvals:' }) do
    redis.call('PEXPIRE', base .. kind .. id, retention)
  end
end

-- Ends an open task and every open task below it (sub-tasks end `completed`). Returns the ended ids, root first.
local function end_subtree(base, open_key, root, status, reason, child_reason, retention, now)
  local ended = { root }
  end_task(base, open_key, root, status, reason, retention, now)
  local i = 1
  while i <= #ended do
    local children = redis.call('SMEMBERS', base .. 'task-children:' .. ended[i])
    for _, c in ipairs(children) do
      if redis.call('HGET', base .. 'task:' .. c, 'status') == 'open' then
        end_task(base, open_key, c, 'completed', child_reason, retention, now)
        ended[#ended + 1] = c
      end
    end
    i = i + 1
  end
  return ended
end

-- Adds `id` to a list index (a sorted set by creation time, newest listed first) and keeps the index bounded:
-- entries created more than `horizon` ms ago are dropped (no record they point to can still exist), and the
-- index key lives until `keep_until` (ms) at least, the last moment a record it lists can exist, so an index
-- nobody writes to any more leaves Redis whole.
local function index_add(key, id, now, horizon, keep_until)
  redis.call('ZADD', key, now, id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%d', now - horizon))
  local left = redis.call('PTTL', key)
  if left < 0 or now + left < keep_until then redis.call('PEXPIREAT', key, string.format('%d', keep_until)) end
end
