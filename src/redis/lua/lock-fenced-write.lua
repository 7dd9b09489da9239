-- lock-fenced-write: writes (or deletes) a key only while a lock still holds our token, in one step: an
-- instance whose lock lapsed while it worked (cut off from Redis, stalled) can no longer write what the
-- lock guards, e.g. a rotation's sealed secret or intent, or an AWS role's deny ledger, over the work of
-- the instance that holds it now.
-- KEYS[1] lock
-- KEYS[2] key to write (in the lock's slot)
-- ARGV[1] our token
-- ARGV[2] 'set' | 'del'
-- ARGV[3] value (set)
-- ARGV[4] time to live in ms (set; absent: none)
-- Returns 1 when written (or already holding exactly that value), 0 when the lock is not ours any more.
-- Already holding the value counts as written: the client sends a command again after a dropped
-- connection lost its answer, and by then the lock may have lapsed; a sealed secret (random IV) can only
-- match the write that made it, so "refused" there would make the rotation delete a key Redis names.
if ARGV[2] == 'set' and redis.call('GET', KEYS[2]) == ARGV[3] then return 1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'del' then
  redis.call('DEL', KEYS[2])
elseif ARGV[4] then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[2], ARGV[3])
end
return 1
