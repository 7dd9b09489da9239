-- lock-acquire: takes a lock (SET NX PX), or takes over a lock key that no broker could have set.
-- Every holder of a lock sets it with a TTL of at most ARGV[2] (acquire and extend alike, in this release and
-- the previous one), so a key without an expiry (PTTL -1) or with a longer one was written by someone else (a
-- process with Redis write access that wants the broker to skip the export, sealing or a rotation for good): it
-- would never lapse, so waiting for it is not an option. It is replaced in the same step it was judged in.
-- A holder may set a shorter TTL (ARGV[3]) and keep extending it while it works, so that a killed holder's lock
-- lapses soon; ARGV[2] stays the longest any release sets, so a previous release's longer lock is waited for.
-- KEYS[1] lock
-- ARGV[1] our token
-- ARGV[2] ttl in ms (the longest any holder of this lock ever sets)
-- ARGV[3] optional: the ttl in ms this holder sets (at most ARGV[2]; default ARGV[2])
-- Returns {1} when taken, {2, pttl} when taken over from a key with that PTTL (-1: none), {0, pttl} when held.
local px = ARGV[3] or ARGV[2]
if redis.call('SET', KEYS[1], ARGV[1], 'PX', px, 'NX') then return {1} end
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -1 or pttl > tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', px)
  return {2, pttl}
end
return {0, pttl}
