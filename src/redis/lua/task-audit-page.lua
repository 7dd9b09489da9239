-- task-audit-page: the next ids of some tasks' audit records in chain order, merged here from each task's
-- audit index (a list of stream ids appended in chain order, so each sorted): a page of evidence costs its
-- page, not every record the tasks ever had. Each index is entered by binary search (LINDEX), then read in
-- small LRANGE chunks as the merge takes from it.
-- KEYS[1] the first task's audit index (Keys.taskAudit), KEYS[2..] the others' (one task tree: one slot)
-- ARGV[1] the stream id to start after ('' = from the start)
-- ARGV[2] at most this many ids
-- Returns {ids in chain order (an id in two indexes once), 1 if any index has more after them else 0}
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function before(a_ms, a_seq, b_ms, b_seq)
  return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
end
local after_ms, after_seq
if ARGV[1] ~= '' then after_ms, after_seq = parse(ARGV[1]) end
local count = tonumber(ARGV[2])
local CHUNK = 64
-- Per index: next position, length, buffered ids and where in the buffer the head is.
local pos, len, buf, at = {}, {}, {}, {}
local function refill(i)
  if pos[i] >= len[i] then
    buf[i] = nil
    return
  end
  buf[i] = redis.call('LRANGE', KEYS[i], pos[i], pos[i] + CHUNK - 1)
  at[i] = 1
  pos[i] = pos[i] + #buf[i]
end
for i, key in ipairs(KEYS) do
  local lo, hi = 0, redis.call('LLEN', key)
  len[i] = hi
  if after_ms then
    -- the first index whose id is later than ARGV[1]
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local ms, seq = parse(redis.call('LINDEX', key, mid))
      if before(after_ms, after_seq, ms, seq) then hi = mid else lo = mid + 1 end
    end
  end
  pos[i] = lo
  refill(i)
end
local out = {}
while #out < count do
  local best, best_ms, best_seq
  for i = 1, #KEYS do
    if buf[i] then
      local ms, seq = parse(buf[i][at[i]])
      if not best or before(ms, seq, best_ms, best_seq) then best, best_ms, best_seq = i, ms, seq end
    end
  end
  if not best then break end
  local id = buf[best][at[best]]
  if out[#out] ~= id then out[#out + 1] = id end
  at[best] = at[best] + 1
  if at[best] > #buf[best] then refill(best) end
end
local more = 0
for i = 1, #KEYS do
  if buf[i] then more = 1 end
end
return { out, more }
