-- audit-append: appends a batch of hash-chained records to one chain, only if the chain head is still
-- what the caller hashed against (compare-and-set), so concurrent instances never fork a chain.
-- Records of a task are also indexed under the task, for evidence without scanning the chain.
-- A record may name a key that must exist for it to be written: the record of a lease is sent right
-- behind the script that creates the lease, without waiting for its answer, and is written only if the
-- lease was. One absent key refuses the whole batch (its hashes were chained through that record).
-- KEYS[1] chain head (`<seq>:<hash>`)
-- KEYS[2] chain stream
-- ARGV[1] expected head ('' for an empty chain)
-- ARGV[2] new head
-- ARGV[3] key base of the chain's bucket (for the task indexes)
-- ARGV[4] how long a task index is kept, in ms
-- ARGV[5..] triples: record JSON, task id ('' for none), key that must exist ('' for none; in the chain's slot)
-- Returns false when appended (or when the head already is the new head: this batch was written before);
-- else nothing is written and it returns the real head, or
-- {real head, n} when the n-th record's key is absent.
local cur = redis.call('GET', KEYS[1]) or ''
-- Already written: the client sent it again after a dropped connection lost the answer.
if cur == ARGV[2] then return false end
if cur ~= ARGV[1] then return cur end
for i = 7, #ARGV, 3 do
  if ARGV[i] ~= '' and redis.call('EXISTS', ARGV[i]) == 0 then return { cur, (i - 4) / 3 } end
end
local keep = tonumber(ARGV[4])
-- Each task's index gets one RPUSH of its ids (in chain order) and one PEXPIRE per batch, not one of each
-- per record: a batch usually holds many records of few tasks, and every command costs Redis time here.
local ids, tasks = {}, {}
for i = 5, #ARGV, 3 do
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
redis.call('SET', KEYS[1], ARGV[2])
return false
