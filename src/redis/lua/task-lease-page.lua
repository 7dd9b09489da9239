-- task-lease-page: one page of a task's lease ids in issue order (the Redis time lease-create gave each),
-- read from the task's lease index. The previous release kept a task's lease ids in a plain set, and its
-- processes read only that set (its worker ends a task's leases from it). So that one of them still running
-- beside this release (a rolling upgrade) finds every lease, lease-create writes both and the set is left in
-- place here; what only the previous release added to it is copied into the index, once (score 0: listed
-- first, in id order). The index holds a subset of the set (every id goes to both, or to the set only), so a
-- set no larger than the index has nothing to copy: a read costs its page, not the set.
-- KEYS[1] the task's lease index (zset, score = issuedAt in ms)
-- KEYS[2] the task's lease set as the previous release reads and writes it
-- ARGV[1] the last lease id of the previous page ('' = from the start)
-- ARGV[2] its score: where to go on if that id has left the index (the task was purged and opened again)
-- ARGV[3] how many ids at most (0 = all)
-- KEYS[3] (optional) the task hash, with ARGV[4] (retention of ended records in ms): an index still without an
--         expiry after the copy gets the one lease-create.lua gives it (the task's deadline plus the retention)
-- Returns {id, score, id, score, ...}
if redis.call('SCARD', KEYS[2]) > redis.call('ZCARD', KEYS[1]) then
  local ids = redis.call('SMEMBERS', KEYS[2])
  for i = 1, #ids, 500 do
    local args = {}
    for j = i, math.min(i + 499, #ids) do
      args[#args + 1] = 0
      args[#args + 1] = ids[j]
    end
    redis.call('ZADD', KEYS[1], 'NX', unpack(args))
  end
end
-- A task the previous release ended had only its set's expiry set (its retention): the index keeps as long.
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 and redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ttl) end
-- An index the copy created for a task still open (only the previous release had issued under it) has no expiry,
-- and a process of that release ending the task would leave it for good: it gets lease-create.lua's.
local keep = tonumber(ARGV[4] or '')
if KEYS[3] and keep and keep > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  local deadline = tonumber(redis.call('HGET', KEYS[3], 'expiresAt') or '')
  if deadline then redis.call('PEXPIREAT', KEYS[1], string.format('%d', deadline + keep)) end
end
local limit = tonumber(ARGV[3])
local from = 0
if ARGV[1] ~= '' then
  local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
  if not rank then
    return redis.call('ZRANGE', KEYS[1], '(' .. ARGV[2], '+inf', 'BYSCORE', 'LIMIT', 0, limit > 0 and limit or -1, 'WITHSCORES')
  end
  from = rank + 1
end
return redis.call('ZRANGE', KEYS[1], from, limit > 0 and from + limit - 1 or -1, 'WITHSCORES')
