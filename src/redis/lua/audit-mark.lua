-- audit-mark: moves a chain's export marker (`<seq>:<hash>` of the last exported record) from the value the
-- exporter read to the new one, only if nobody moved it meanwhile (an exporter whose lock lapsed loses here).
-- KEYS[1] the chain's export marker
-- ARGV[1] the value read ('' when there was none)
-- ARGV[2] the new value
-- Returns 1 when moved, 0 when the marker had changed (nothing written).
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
