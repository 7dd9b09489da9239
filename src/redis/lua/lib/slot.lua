-- Library prepended to scripts that declare `-- uses: slot`: the guard of scripts that reach keys they do not
-- declare in KEYS (keys built from the bucket's base: sub-tasks, leases, indexes, the audit outbox).
--
-- On a Redis Cluster whose slot is being moved (a reshard: MIGRATING on its master, IMPORTING on another, keys
-- leaving in batches with MIGRATE), Redis checks only the declared KEYS before it runs a script. Inside it, a
-- command on a key that has already left (or does not exist) fails on the source ("non local key"), and on the
-- destination, where the script runs after an ASK, a key that has not arrived yet reads as absent and a write
-- creates it there (a MIGRATE of the source's copy then fails with BUSYKEY). Redis does not roll a script back:
-- a failure after the first write leaves half of a decision (a parent task ended, its sub-task left open), and
-- an absent read decides on nothing. So such a script asks, before its first write, whether its slot is stable,
-- and refuses with Redis's own TRYAGAIN while it is not, having written nothing: ioredis resends a TRYAGAIN, and
-- a caller still refused when its time is up answers 503 not_ready (src/redis/unavailable.ts). A slot stays as
-- it is while a script runs (Redis runs nothing else meanwhile), so one check covers the whole script.

-- The check: EXISTS on two keys of the slot that are never written. A stable slot answers 0 on its master. While
-- the slot moves, Redis refuses it everywhere: on the source (MIGRATING) keys it does not hold are redirected
-- (ASK), on the destination (IMPORTING, reached with ASKING) a multi-key command on keys it does not hold all is
-- TRYAGAIN; inside a script either is an error, caught here by pcall. One command, no round trip.
-- Returns an error reply to return as it is, or nil when the slot is stable.
local function slot_guard(base)
  local r = redis.pcall('EXISTS', base .. 'slot-probe:a', base .. 'slot-probe:b')
  if type(r) == 'table' and r.err then
    return redis.error_reply('TRYAGAIN the slot of ' .. base .. ' is being moved; nothing was written (' .. tostring(r.err) .. ')')
  end
  return nil
end
