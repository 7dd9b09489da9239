-- leases-end: ends many leases of one bucket at once where nothing upstream needs to be called
-- (the broker's own JWTs: introspection reads the lease), e.g. 10,000 leases of a completed task.
-- Leases still `issuing` are left alone (activation hands them over).
-- uses: common
-- KEYS[1] live leases of the bucket (zset)
-- ARGV[1] key base of the bucket
-- ARGV[2] status: revoked | expired
-- ARGV[3] reason
-- ARGV[4] retention in ms
-- ARGV[5..] lease ids
-- Returns {now, id, id, ...}: the leases this call ended.
local now = now_ms()
local out = { now }
for i = 5, #ARGV do
  local st = redis.call('HGET', ARGV[1] .. 'lease:' .. ARGV[i], 'status')
  if st and st ~= 'issuing' and end_lease(ARGV[1], KEYS[1], ARGV[i], ARGV[2], ARGV[3], tonumber(ARGV[4]), now) then
    out[#out + 1] = ARGV[i]
  end
end
return out
