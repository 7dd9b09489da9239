-- audit-append: appends a batch of hash-chained records to one chain, only if the chain head is still
-- what the caller hashed against (compare-and-set), so concurrent instances never fork a chain.
-- Records of a task are also indexed under the task, for evidence without scanning the chain.
-- KEYS[1] chain head (`<seq>:<hash>`)
-- KEYS[2] chain stream
-- ARGV[1] expected head ('' for an empty chain)
-- ARGV[2] new head
-- ARGV[3] key base of the chain's bucket (for the task indexes)
-- ARGV[4] how long a task index is kept, in ms
-- ARGV[5..] pairs: record JSON, task id ('' for none)
-- Returns false when appended, else the real head (nothing written).
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return cur end
local keep = tonumber(ARGV[4])
-- Each task's index gets one RPUSH of its ids (in chain order) and one PEXPIRE per batch, not one of each
-- per record: a batch usually holds many records of few tasks, and every command costs Redis time here.
local ids, tasks = {}, {}
for i = 5, #ARGV, 2 do
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
