-- task-reserve: takes a place for a top-level task among the open tasks of its opener (tasks.maxOpenTasks).
-- uses: common
-- KEYS[1] the opener's open tasks (zset: task id -> deadline in ms, Redis's clock)
-- ARGV[1] the bound (at least 1; with no bound the broker does not call this)
-- ARGV[2] the task id
-- ARGV[3] the task's ttl (ms)
-- Returns 'held' (the id already has a place: a repeated open), 'added', or 'limit' (nothing written).
-- Entries past their deadline leave first: an expired task frees its place whether or not the sweeper ended it
-- yet, and an entry whose removal was lost (a process that died between taking a place and failing to open, or
-- after ending the task) lapses at its deadline. The key lives as long as its furthest entry.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 'held' end
local max = tonumber(ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= max then return 'limit' end
local deadline = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], deadline, ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.max(deadline, tonumber(last[2])) + 1000)
return 'added'
