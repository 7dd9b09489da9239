-- audit-outbox-park: moves a member of a chain's audit outbox that is not a record (poison: nothing the
-- broker writes there is, but it cannot be appended, and it would sit there for good) to the chain's parked
-- set, and in the same step puts the record of that (ARGV[2], `audit.outbox_poison`) in the outbox, so the
-- parking is audited even if the process dies right after. The parked set keeps the newest ARGV[3] members.
-- uses: common
-- KEYS[1] the chain's audit outbox (zset)
-- KEYS[2] the chain's parked outbox members (zset, by the time they were parked)
-- ARGV[1] the member to park
-- ARGV[2] outbox member (tagged record JSON) recording the parking
-- ARGV[3] how many parked members the chain keeps (the oldest leave first)
-- Returns Redis's time (ms) when it parked the member (the record's outbox score), false when it was not there.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return false end
local now = now_ms()
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[3]) + 1))
redis.call('ZADD', KEYS[1], 'NX', now, ARGV[2])
return now
