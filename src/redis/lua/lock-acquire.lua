-- lock-acquire: takes a lock (SET NX PX), or takes over a lock key that no broker could have set.
-- Every holder of a lock sets it with a TTL of at most ARGV[2] (acquire and extend alike), so a key
-- without an expiry (PTTL -1) or with a longer one was written by someone else (a process with Redis
-- write access that wants the broker to skip the export, sealing or a rotation for good): it would never
-- lapse, so waiting for it is not an option. It is replaced in the same step it was judged in.
-- KEYS[1] lock
-- ARGV[1] our token
-- ARGV[2] ttl in ms (the longest any holder of this lock ever sets)
-- Returns {1} when taken, {2, pttl} when taken over from a key with that PTTL (-1: none), {0, pttl} when held.
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then return {1} end
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -1 or pttl > tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, pttl}
end
return {0, pttl}
