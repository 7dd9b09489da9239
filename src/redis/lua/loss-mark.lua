-- loss-mark: sets the epoch marker of a dataset that lost its data, and stores the records that say so, in one
-- step. The marker once set, no other recovery records this loss (SET NX: one record per loss); the records
-- written only after it, an attempt that failed between the two, or part-way through the records, left the rest
-- unwritten for good (test/audit/data-loss-record-retry.test.ts). Stored with the marker, they are written from
-- here, each once (AuditLog.appendOnce), by whichever attempt or instance gets there, then dropped.
-- KEYS[1] the epoch marker
-- KEYS[2] the records of losses still to be written (hash: epoch -> JSON)
-- ARGV[1] the new epoch (random)
-- ARGV[2] the records of this loss (JSON; '' for none: a fresh Redis, nothing lost)
-- Returns 1 when this call set the marker (and stored the records), 0 when the marker was there (nothing written).
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return 1
