-- rollback-claim: claims the recording of one rollback, in one step: the `broker.data_loss` records of a rollback
-- are those of the instance whose id is listed first. A look (LRANGE) and a separate push left a window: an
-- instance stalled between them (its recovery lock lapsed; another instance took it, recorded and pushed) went
-- on and recorded the same rollback again (test/ops/rollback-recorded-twice.test.ts).
-- The claimant's records are stored with its claim, in the same step: whichever attempt (or instance) writes
-- them writes those, each once (AuditLog.appendOnce). Computed again at a later attempt, they would differ (the
-- first attempt repaired the chains), and a partial write was written again whole
-- (test/ops/rollback-record-retry.test.ts).
-- KEYS[1] the ids of the last rollback recoveries (list, newest first)
-- KEYS[2] the records of those recoveries still to be written (hash: id -> JSON)
-- ARGV[1] this instance's id for this rollback (the same at every attempt of its recovery)
-- ARGV[2] this instance's records for this rollback (JSON), stored if this call claims it
-- ARGV[3..] the ids listed at this instance's last good look (before the rollback)
-- Returns {id, records}: the id of the recovery that records this rollback, one listed since that look (another
--   instance's, or ARGV[1] from an earlier attempt), else ARGV[1], pushed now (the list keeps 20); and its records
--   still to be written (false: all written, or a recovery that stored none).
local seen = {}
for i = 3, #ARGV do seen[ARGV[i]] = true end
local listed = redis.call('LRANGE', KEYS[1], 0, -1)
for _, id in ipairs(listed) do
  if not seen[id] then return { id, redis.call('HGET', KEYS[2], id) } end
end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
-- The records of ids that leave the list leave with them.
local gone = redis.call('LRANGE', KEYS[1], 20, -1)
if #gone > 0 then redis.call('HDEL', KEYS[2], unpack(gone)) end
redis.call('LTRIM', KEYS[1], 0, 19)
return { ARGV[1], ARGV[2] }
