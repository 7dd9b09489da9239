-- task-audit-page: the next ids of some tasks' audit records in chain order, merged here from each task's
-- audit index (a list of stream ids appended in chain order, so each sorted): a page of evidence costs its
-- page, not every record the tasks ever had. Each index is entered by binary search (LINDEX), then read in
-- small LRANGE chunks as the merge takes from it.
-- Each index's head is parsed once, when it becomes the head, and the indexes are kept in a heap by their
-- heads. Parsing and comparing every head for every id taken (51 indexes of a tree, 500 ids a page: 25,500
-- parses) held Redis ~20 ms a call, and one agent may read its own tree's evidence 50 times a second.
-- KEYS[1] the first task's audit index (Keys.taskAudit), KEYS[2..] the others' (one task tree: one slot)
-- ARGV[1] the stream id to start after ('' = from the start)
-- ARGV[2] at most this many ids
-- Returns {ids in chain order (an id in two indexes once), 1 if any index has more after them else 0}
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a_ms, a_seq, b_ms, b_seq)
  return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
end
local after_ms, after_seq
if ARGV[1] ~= '' then after_ms, after_seq = parse(ARGV[1]) end
local count = tonumber(ARGV[2])
local n = #KEYS
local CHUNK = 64
-- The first read of each index takes about its share of the page (the rest as the merge needs it): 51
-- indexes of 64 ids each would copy 3,264 ids for a page of 500.
local first = math.max(4, math.min(CHUNK, math.ceil(count / n) + 1))
-- Per index: next position, length, buffered ids, where in the buffer the head is, and the head parsed.
local pos, len, buf, at, hm, hs = {}, {}, {}, {}, {}, {}
local function head(i)
  hm[i], hs[i] = parse(buf[i][at[i]])
end
local function refill(i, size)
  if pos[i] >= len[i] then
    buf[i] = nil
    return
  end
  buf[i] = redis.call('LRANGE', KEYS[i], pos[i], pos[i] + size - 1)
  at[i] = 1
  pos[i] = pos[i] + #buf[i]
  head(i)
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
  refill(i, first)
end
-- A binary min-heap of the indexes that have a head, ordered by their heads: taking an id costs
-- log(indexes) comparisons, not one per index.
local heap, size = {}, 0
local function less(a, b)
  return hm[a] < hm[b] or (hm[a] == hm[b] and hs[a] < hs[b])
end
local function down(k)
  while true do
    local l, smallest = k * 2, k
    if l <= size and less(heap[l], heap[smallest]) then smallest = l end
    if l + 1 <= size and less(heap[l + 1], heap[smallest]) then smallest = l + 1 end
    if smallest == k then return end
    heap[k], heap[smallest] = heap[smallest], heap[k]
    k = smallest
  end
end
for i = 1, n do
  if buf[i] then
    size = size + 1
    heap[size] = i
  end
end
for k = math.floor(size / 2), 1, -1 do down(k) end
local out = {}
while #out < count and size > 0 do
  local best = heap[1]
  local id = buf[best][at[best]]
  if out[#out] ~= id then out[#out + 1] = id end
  at[best] = at[best] + 1
  if at[best] > #buf[best] then refill(best, CHUNK) else head(best) end
  if not buf[best] then
    heap[1] = heap[size]
    heap[size] = nil
    size = size - 1
  end
  down(1)
end
return { out, size > 0 and 1 or 0 }
