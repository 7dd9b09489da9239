-- rollback-claim: claims the recording of one rollback, in one step: the `broker.data_loss` record of a rollback
-- is written by the instance whose id is listed first. A look (LRANGE) and a separate push left a window: an
-- instance stalled between them (its recovery lock lapsed; another instance took it, recorded and pushed) went
-- on and recorded the same rollback again (test/ops/rollback-recorded-twice.test.ts).
-- KEYS[1] the ids of the last rollback recoveries (list, newest first)
-- ARGV[1] this instance's id for this rollback (the same at every attempt of its recovery)
-- ARGV[2..] the ids listed at this instance's last good look (before the rollback)
-- Returns the id of the recovery that records this rollback: one listed since that look (another instance's,
--   or ARGV[1] from an earlier attempt), else ARGV[1], pushed now (the list keeps 20).
local seen = {}
for i = 2, #ARGV do seen[ARGV[i]] = true end
local listed = redis.call('LRANGE', KEYS[1], 0, -1)
for _, id in ipairs(listed) do
  if not seen[id] then return id end
end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, 19)
return ARGV[1]
