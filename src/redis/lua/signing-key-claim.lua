-- signing-key-claim: records on a signing key that an instance signs tokens living up to ARGV[2] ms with
-- it, before that instance signs with it (at startup, on a reload that finds a key it will sign with, or
-- at its first signature with one). A key's maxTokenTtlMs only grows: it is the longest TTL any instance
-- could sign with while the key signed, whatever instances run with now, and a rotation retires the key
-- after that (signing-key-rotate). A key a rotation already retires but that still signs (its successor is
-- only published, or an instance's clock estimate runs a moment behind) keeps its retireAt at least the
-- successor's activation + ARGV[2] + ARGV[3]: the only way a retireAt moves later, never for a key an
-- immediate rotation dropped (dropped, or retired no later than its successor began signing).
-- KEYS[1] signing keys (hash kid -> JSON)
-- ARGV[1] kid
-- ARGV[2] the longest token TTL (ms) the calling instance signs with
-- ARGV[3] the calling instance's retire grace (ms)
-- Returns the key's JSON as stored after the claim, or false when it is gone or retired (it may not sign).
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
local k = cjson.decode(raw)
local ttl = tonumber(ARGV[2])
if k.maxTokenTtlMs ~= nil and k.maxTokenTtlMs >= ttl then return raw end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if k.dropped or (k.retireAt ~= nil and k.retireAt <= now) then return false end
k.maxTokenTtlMs = ttl
if k.retireAt ~= nil then
  -- It stops signing when the first newer key activates.
  local stops = nil
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if all[i] ~= ARGV[1] then
      local o = cjson.decode(all[i + 1])
      if o.activateAt > k.activateAt and (stops == nil or o.activateAt < stops) then stops = o.activateAt end
    end
  end
  if stops ~= nil and k.retireAt > stops then
    local until_ = stops + ttl + tonumber(ARGV[3])
    if until_ > k.retireAt then k.retireAt = until_ end
  end
end
local out = cjson.encode(k)
redis.call('HSET', KEYS[1], ARGV[1], out)
return out
