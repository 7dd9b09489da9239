-- rate-limit-refund: gives back points a rate-limit window counted but did not spend, in that same window only.
-- KEYS[1] the window's key (rate-limiter-flexible's: a count living as long as the window)
-- ARGV[1] points to give back
-- ARGV[2] the key's PTTL (ms) when it counted them (rate-limiter-flexible's msBeforeNext)
-- Returns the count after the refund, or false when nothing was given back. A window's TTL only shrinks, so a key
-- whose PTTL is longer than it was is a newer window (the counted one ended meanwhile): giving back there would
-- take points from requests of the new window, so nothing is given back. Nor below zero, nor to a key with no TTL.
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 or ttl > tonumber(ARGV[2]) then return false end
local n = tonumber(redis.call('GET', KEYS[1]))
if not n then return false end
local back = math.min(tonumber(ARGV[1]), n)
if back <= 0 then return n end
return redis.call('INCRBY', KEYS[1], -back)
