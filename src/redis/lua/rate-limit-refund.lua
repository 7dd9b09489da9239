-- rate-limit-refund: gives back points a rate-limit window counted but did not spend, in that same window only.
-- KEYS[1] the window's key (a count living as long as the window: rate-limit-charge.lua)
-- ARGV[1] points to give back
-- ARGV[2] the counted window's end on Redis's clock (ms), as rate-limit-charge.lua named it when it counted them
-- Returns the count after the refund, or false when nothing was given back. The key's window now ends at
-- TIME + PTTL; two windows of one key end at least a window's length (1 s or more) apart, and one window's end
-- read twice differs by a millisecond or two of rounding, so an end more than 250 ms from the named one is another
-- window (the counted one ended meanwhile, however long ago): giving back there would take points from that
-- window's requests, more than the budget in one window, so nothing is given back. Nor below zero, nor to a key
-- with no TTL.
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return false end
local now = redis.call('TIME')
local ends = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl
if math.abs(ends - tonumber(ARGV[2])) > 250 then return false end
local n = tonumber(redis.call('GET', KEYS[1]))
if not n then return false end
local back = math.min(tonumber(ARGV[1]), n)
if back <= 0 then return n end
return redis.call('INCRBY', KEYS[1], -back)
