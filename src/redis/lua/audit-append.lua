-- audit-append: appends a batch of hash-chained records to one chain, only if the chain head is still
-- what the caller hashed against (compare-and-set), so concurrent instances never fork a chain.
-- Records of a task are also indexed under the task, for evidence without scanning the chain.
-- A record may name its member of the chain's audit outbox (lib/outbox.lua), which the script that made
-- the decision added in its own step: it is written only while that member is there, and the member
-- leaves in this step, so such a record is written exactly once, by its caller or by recovery, whichever
-- comes first. The record of a lease is sent right behind the script that creates the lease (and adds its
-- member), without waiting for its answer: it is written only if the lease was. One absent member refuses
-- the whole batch (its hashes were chained through that record); the reply names every such record, and
-- the caller drops them and sends the rest again.
-- A record may instead name its own identity, `once:<id>` in place of an outbox member (AuditLog.appendOnce: a
-- record a retried step writes, e.g. a rollback's `broker.data_loss`): it is written only while the id is not in
-- the chain's written ids (`<base>audit-once`), and the id joins them in this step, so it is written once however
-- often it is sent. An id written before refuses its record as an absent member does. No outbox member starts so
-- (src/audit/outbox-member.ts refuses one).
-- The task indexes, the outbox, the written ids and the recovery steps kept in the chain (`<base>rollback-repair`,
-- `<base>loss-continued`: src/audit/kept-steps.ts) are keys built from ARGV[3], not declared: lib/slot.lua.
-- uses: slot
-- KEYS[1] chain head (`<seq>:<hash>`)
-- KEYS[2] chain stream
-- ARGV[1] expected head ('' for an empty chain)
-- ARGV[2] new head
-- ARGV[3] key base of the chain (for the task indexes and the outbox `<base>audit-outbox`)
-- ARGV[4] how long a task index is kept, in ms
-- ARGV[5] how long the chain's written ids are kept after the last, in ms (ONCE_KEEP_MS, src/audit/outbox-member.ts)
-- ARGV[6..] triples: record JSON, task id ('' for none), outbox member or `once:<id>` ('' for none)
-- Returns false when appended (or when the head already is the new head: this batch was written before);
-- else nothing is written and it returns the real head, or
-- {real head, n, ...} naming the records (1-based) whose outbox member is absent; a TRYAGAIN error while
-- the chain's slot moves (nothing written).
local moving = slot_guard(ARGV[3])
if moving then return moving end
local cur = redis.call('GET', KEYS[1]) or ''
-- Already written: the client sent it again after a dropped connection lost the answer. Its outbox members
-- leave again (a script resent before it may have put one back): each record is in the chain once.
if cur == ARGV[2] then
  local again = {}
  for i = 8, #ARGV, 3 do
    if ARGV[i] ~= '' and string.sub(ARGV[i], 1, 5) ~= 'once:' then again[#again + 1] = ARGV[i] end
  end
  if #again > 0 then redis.call('ZREM', ARGV[3] .. 'audit-outbox', unpack(again)) end
  return false
end
if cur ~= ARGV[1] then return cur end
local outbox = ARGV[3] .. 'audit-outbox'
local written = ARGV[3] .. 'audit-once'
local absent, members, at, seen, onces, onceAt = {}, {}, {}, {}, {}, {}
for i = 6, #ARGV, 3 do
  local n = (i - 3) / 3
  local m = ARGV[i + 2]
  if seen[m] then
    -- The same member twice in one batch (its caller's append and recovery's, queued in one process): once.
    absent[#absent + 1] = n
  elseif string.sub(m, 1, 5) == 'once:' then
    seen[m] = true
    onces[#onces + 1] = string.sub(m, 6)
    onceAt[#onceAt + 1] = n
  elseif m ~= '' then
    seen[m] = true
    members[#members + 1] = m
    at[#at + 1] = n
  end
end
if #onces > 0 then
  local known = redis.call('SMISMEMBER', written, unpack(onces))
  for j = 1, #onces do
    if known[j] == 1 then absent[#absent + 1] = onceAt[j] end
  end
end
-- One ZMSCORE for the batch's outbox records (at most 500, within unpack's limit), not one command per record.
if #members > 0 then
  local scores = redis.call('ZMSCORE', outbox, unpack(members))
  for j = 1, #members do
    if not scores[j] then absent[#absent + 1] = at[j] end
  end
end
if #absent > 0 then
  table.sort(absent)
  local out = { cur }
  for _, n in ipairs(absent) do out[#out + 1] = n end
  return out
end
local keep = tonumber(ARGV[4])
-- Each task's index gets one RPUSH of its ids (in chain order) and one PEXPIRE per batch, not one of each
-- per record: a batch usually holds many records of few tasks, and every command costs Redis time here.
local ids, tasks = {}, {}
for i = 6, #ARGV, 3 do
  local id = redis.call('XADD', KEYS[2], '*', 'r', ARGV[i])
  local t = ARGV[i + 1]
  if t ~= '' then
    local of = ids[t]
    if not of then
      of = {}
      ids[t] = of
      tasks[#tasks + 1] = t
    end
    of[#of + 1] = id
  end
end
for _, t in ipairs(tasks) do
  local idx = ARGV[3] .. 'task-audit:' .. t
  redis.call('RPUSH', idx, unpack(ids[t]))
  redis.call('PEXPIRE', idx, keep)
end
if #members > 0 then redis.call('ZREM', outbox, unpack(members)) end
if #onces > 0 then
  redis.call('SADD', written, unpack(onces))
  if redis.call('EXISTS', ARGV[3] .. 'rollback-repair', ARGV[3] .. 'loss-continued') > 0 then
    -- A recovery step kept in this chain (a rollback repair, a data-loss continuation) waits for its recovery's
    -- next attempt or for an instance to start, which may take longer than a week (its instance died): the
    -- records it appends again must still find their ids then. Kept until the step is dropped (KeptSteps.drop,
    -- src/audit/kept-steps.ts, sets the week again).
    redis.call('PERSIST', written)
  else
    -- A week after the last (ARGV[5]): far longer than any retry of the step that writes them (rare: one per
    -- rollback).
    redis.call('PEXPIRE', written, ARGV[5])
  end
end
redis.call('SET', KEYS[1], ARGV[2])
return false
