-- task-audit-page: for each of some tasks' audit indexes (lists of stream ids, appended in chain order, so
-- each sorted), the ids after a given one, at most ARGV[2] of them: a page of evidence costs its page, not
-- every record the tasks ever had (binary search with LINDEX, then one LRANGE per list).
-- KEYS[1] the first task's audit index (Keys.taskAudit), KEYS[2..] the others' (one task tree: one slot)
-- ARGV[1] the stream id to start after ('' = from the start)
-- ARGV[2] at most this many ids per list
-- Returns one array of ids per key, in KEYS order
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local after_ms, after_seq
if ARGV[1] ~= '' then after_ms, after_seq = parse(ARGV[1]) end
local function later(id)
  local ms, seq = parse(id)
  return ms > after_ms or (ms == after_ms and seq > after_seq)
end
local count = tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local lo, hi = 0, redis.call('LLEN', key)
  if after_ms then
    -- the first index whose id is later than ARGV[1]
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if later(redis.call('LINDEX', key, mid)) then hi = mid else lo = mid + 1 end
    end
  end
  out[i] = redis.call('LRANGE', key, lo, lo + count - 1)
end
return out
