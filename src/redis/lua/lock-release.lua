-- lock-release: deletes a lock only if it still holds our token (a lapsed lock may be someone else's).
-- KEYS[1] lock
-- ARGV[1] our token
-- Returns 1 when released, 0 when it was not ours any more.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
