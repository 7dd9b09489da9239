-- bucket-mark-set: writes a bucket's data-loss marker only while it holds what the recovery writing it last saw
-- (src/ops/bucket-marks.ts). A recovery continues the lost buckets' chains, then writes their markers back: the
-- bucket's master losing its data again in between took the continued chain heads, and a plain SET put the
-- marker back over that second loss, so nothing noticed it and the next record forked the chain at seq 1
-- (test/topologies/shard-loss-races.test.ts). Refused, the marker stays gone and the next check recovers again.
-- KEYS[1] the bucket's marker
-- ARGV[1] the value the recovery saw (or wrote) before it continued the chains; '' for none
-- ARGV[2] the value to write
-- Returns 1 when written, 0 when the marker holds something else now (left as it is).
local now = redis.call('GET', KEYS[1])
if (now or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
