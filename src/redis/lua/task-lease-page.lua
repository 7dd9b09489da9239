-- task-lease-page: one page of a task's lease ids in issue order (the Redis time lease-create gave each),
-- read from the task's lease index. A task whose leases an older release recorded in a plain set has them
-- moved into the index first, in this same step and once (score 0: listed first, in id order).
-- KEYS[1] the task's lease index (zset, score = issuedAt in ms)
-- KEYS[2] the task's lease set as older releases wrote it (moved into KEYS[1], then deleted)
-- ARGV[1] the last lease id of the previous page ('' = from the start)
-- ARGV[2] its score: where to go on if that id has left the index (the task was purged and opened again)
-- ARGV[3] how many ids at most (0 = all)
-- Returns {id, score, id, score, ...}
if redis.call('EXISTS', KEYS[2]) == 1 then
  local ttl = redis.call('PTTL', KEYS[2])
  local ids = redis.call('SMEMBERS', KEYS[2])
  for i = 1, #ids, 500 do
    local args = {}
    for j = i, math.min(i + 499, #ids) do
      args[#args + 1] = 0
      args[#args + 1] = ids[j]
    end
    redis.call('ZADD', KEYS[1], 'NX', unpack(args))
  end
  -- An ended task's set was kept for its retention: so is the index it became.
  if ttl > 0 and redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ttl) end
  redis.call('DEL', KEYS[2])
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
