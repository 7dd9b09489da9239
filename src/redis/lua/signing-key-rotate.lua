-- signing-key-rotate: adds a rotation's new signing key and retires the older ones, in one step. A
-- rotation only ever moves a key's retireAt earlier: a rotation that stalled (its lock lapsed) and lands
-- after a later immediate one cannot put a key that one took out of the JWKS back in. A command sent again
-- after its answer was lost finds its key already stored and changes nothing (it would retire newer keys).
-- A normal rotation retires each older key once the longest token it could have signed has expired: at
-- the new key's activation + the longer of the key's maxTokenTtlMs (the longest TTL any instance recorded
-- signing with it, signing-key-claim) and ARGV[5] (the rotating instance's; all there is for a key written
-- by a release before maxTokenTtlMs) + ARGV[6]. An immediate one (ARGV[5] = -1) retires them at ARGV[3]
-- and marks them dropped: no later claim brings them back.
-- KEYS[1] signing keys (hash kid -> JSON)
-- ARGV[1] the new key's kid
-- ARGV[2] the new key as JSON
-- ARGV[3] the new key's activateAt (ms, Redis's clock)
-- ARGV[4] now (ms, the caller's estimate of Redis's clock): keys retired by then are forgotten
-- ARGV[5] the rotating instance's longest token TTL (ms), or -1 for an immediate rotation
-- ARGV[6] retire grace (ms)
-- Returns the kids given a new (earlier) retireAt.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {} end
local activateAt = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local grace = tonumber(ARGV[6])
local immediate = ttl < 0
local all = redis.call('HGETALL', KEYS[1])
local retired = {}
for i = 1, #all, 2 do
  local kid = all[i]
  if kid ~= ARGV[1] then
    local k = cjson.decode(all[i + 1])
    local retireAt = activateAt
    if not immediate then retireAt = activateAt + math.max(ttl, k.maxTokenTtlMs or 0) + grace end
    if k.retireAt ~= nil and k.retireAt <= now then
      redis.call('HDEL', KEYS[1], kid)
    else
      local sooner = k.retireAt == nil or k.retireAt > retireAt
      local drop = immediate and not k.dropped
      if sooner then
        k.retireAt = retireAt
        retired[#retired + 1] = kid
      end
      if drop then k.dropped = true end
      if sooner or drop then redis.call('HSET', KEYS[1], kid, cjson.encode(k)) end
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return retired
