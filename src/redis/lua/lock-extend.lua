-- lock-extend: extends a lock only while it still holds our token.
-- KEYS[1] lock
-- ARGV[1] our token
-- ARGV[2] new ttl in ms
-- Returns 1 when extended, 0 when it was not ours any more.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
