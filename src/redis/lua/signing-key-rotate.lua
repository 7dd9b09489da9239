-- signing-key-rotate: adds a rotation's new signing key and retires the older ones, in one step. A key's
-- retireAt only ever moves earlier: a rotation that stalled (its lock lapsed) and lands after a later
-- immediate one cannot put a key that one took out of the JWKS back in. A command sent again after its
-- answer was lost finds its key already stored and changes nothing (it would retire newer keys).
-- KEYS[1] signing keys (hash kid -> JSON)
-- ARGV[1] the new key's kid
-- ARGV[2] the new key as JSON
-- ARGV[3] retireAt (ms, Redis's clock) for every older key not already retiring sooner
-- ARGV[4] now (ms, the caller's estimate of Redis's clock): keys retired by then are forgotten
-- Returns the kids given ARGV[3] as their retireAt.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {} end
local retireAt = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local all = redis.call('HGETALL', KEYS[1])
local retired = {}
for i = 1, #all, 2 do
  local kid = all[i]
  if kid ~= ARGV[1] then
    local k = cjson.decode(all[i + 1])
    if k.retireAt ~= nil and k.retireAt <= now then
      redis.call('HDEL', KEYS[1], kid)
    elseif k.retireAt == nil or k.retireAt > retireAt then
      k.retireAt = retireAt
      redis.call('HSET', KEYS[1], kid, cjson.encode(k))
      retired[#retired + 1] = kid
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return retired
