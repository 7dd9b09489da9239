-- rollback-repair: moves a chain that went on with another history after a rollback onto the export's end, and
-- keeps what that did, in one step. The records Redis wrote on the rolled-back history are taken off the chain
-- here and appended again behind the export's end afterwards: with nothing kept, an attempt that failed between
-- the two lost them (the next one found the chain repaired and nothing to append again), and what the repair
-- found (the chain's part of the `broker.data_loss` records, the endings to apply again) with them
-- (test/ops/rollback-repair-retry.test.ts). Kept here, a later attempt or instance takes them from KEYS[4], and
-- appends each record once (AuditLog.appendOnce); the recovery deletes KEYS[4] once it is recorded.
-- KEYS[1] the chain head (`<seq>:<hash>`)
-- KEYS[2] the chain's export marker
-- KEYS[3] the chain stream
-- KEYS[4] what rollback repairs did to the chain (list of JSON, one entry per repair)
-- ARGV[1] the head read when the repair began ('' for none)
-- ARGV[2] the new head and export marker (the export's last record)
-- ARGV[3] what this repair did (JSON)
-- ARGV[4..] the stream ids of the records taken off the chain
-- Returns 1 when done, 0 when the head moved since it was read (nothing written).
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[4], ARGV[3])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[2])
-- In pages: unpack has a limit, and a busy chain may have written many records before the rollback was noticed.
for i = 4, #ARGV, 1000 do
  redis.call('XDEL', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 1
