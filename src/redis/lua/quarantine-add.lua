-- quarantine-add: puts a quarantine in force and, in the same step, its `quarantine.add` record in the ops
-- chain's audit outbox (lib/outbox.lua), so a process that dies between the two cannot leave a quarantine in
-- force without its record (which is also what restores the list after a data loss) or a record of one that
-- never took effect: the caller appends it naming the member, recovery (src/audit/outbox.ts) if it cannot.
-- uses: common
-- KEYS[1] the quarantine list (hash pattern -> entry JSON)
-- KEYS[2] the ops chain's audit outbox (zset)
-- ARGV[1] identity pattern
-- ARGV[2] entry JSON (without the pattern)
-- ARGV[3] outbox member (tagged record JSON)
-- Returns Redis's time (ms): the member's score, the record's time.
local now = now_ms()
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'NX', now, ARGV[3])
return now
