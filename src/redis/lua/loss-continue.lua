-- loss-continue: continues one audit chain from the export after Redis lost its data, and keeps what that did,
-- in one step. A chain that started over at seq 1 after the loss (records written before recovery) has its
-- stream deleted here, its records to be appended again behind the export's end afterwards: with nothing kept,
-- an attempt that failed between the two lost them, and the next attempt, finding the chain continued, left it
-- out of its `broker.data_loss` records (test/audit/data-loss-continue-retry.test.ts). Kept here, a later attempt
-- or instance takes them from KEYS[4] and appends each record once (AuditLog.appendOnce); the recovery deletes
-- KEYS[4] once the loss is recorded (its records stored with the marker, loss-mark.lua).
-- KEYS[1] the chain head (`<seq>:<hash>`)
-- KEYS[2] the chain's export marker
-- KEYS[3] the chain stream
-- KEYS[4] what data-loss continuations did to the chain (list of JSON, one entry per step)
-- ARGV[1] the head read when the step was planned ('' for none)
-- ARGV[2] the new head and export marker (the export's last record; '' when the export has none of the chain)
-- ARGV[3] what this step did (JSON: the chain's continuation, with the records taken off it)
-- ARGV[4] '1' to delete the stream (its records are in ARGV[3]), '0' to leave it
-- Returns 1 when done, 0 when the head moved since it was read (nothing written).
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[4], ARGV[3])
if ARGV[4] == '1' then redis.call('DEL', KEYS[3]) end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
