-- signing-key-first: stores a signing key only if none exists (the first start, or after Redis lost
-- its data), activating it at once on Redis's clock. Exactly one of several starting instances wins.
-- Its activation is dated ARGV[3] ms back: there is no older key to overlap with, and an instance whose
-- estimate of Redis's clock runs behind (half a round trip, a process descheduled while it measured)
-- would otherwise have no active key, and refuse every issuance, until its estimate caught up.
-- KEYS[1] signing keys (hash kid -> JSON)
-- ARGV[1] kid
-- ARGV[2] the key as JSON (activateAt and createdAt are set here)
-- ARGV[3] how far back its activation is dated (ms)
-- Returns 1 when stored, 0 when a key already existed.
if redis.call('HLEN', KEYS[1]) > 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = cjson.decode(ARGV[2])
k.createdAt = now
k.activateAt = now - tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(k))
return 1
