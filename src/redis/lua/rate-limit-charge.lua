-- rate-limit-charge: counts the points that fit in a fixed rate-limit window and names the window, so that a refund reaches it only.
-- KEYS[1] the window's key: a count living as long as the window (the layout rate-limiter-flexible's script, which
--         the previous release used, keeps: during a rolling upgrade both releases count in the same windows)
-- ARGV[1] points asked for
-- ARGV[2] the window's length (seconds)
-- ARGV[3] the window's points (its budget)
-- Returns {count after, ms before the window ends, the window's end on Redis's clock (ms), points admitted}. Only
-- the points that fit are counted: a refused point is never in the count, so no refund has to take it out again
-- (one that did not arrive, or arrived after another instance read the window full, left the window fuller than
-- what was spent until it ended). A count already past the budget (the previous release counted every point asked
-- for) admits nothing and is left as it is. A window's end is set when it opens and nothing moves it (the refund
-- only decrements), and the key's next window opens only once it has ended, so it ends at least one window's length
-- (1 s or more) later: the end names the window (rate-limit-refund.lua). Redis keeps and replicates an expiry as an
-- absolute time, so the name survives a failover whatever the new master's clock says.
local length = 1000 * tonumber(ARGV[2])
redis.call('SET', KEYS[1], 0, 'PX', length, 'NX')
local count = tonumber(redis.call('GET', KEYS[1]))
local fit = math.min(tonumber(ARGV[1]), math.max(0, tonumber(ARGV[3]) - count))
if fit > 0 then count = redis.call('INCRBY', KEYS[1], fit) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 then
  -- A count left without a TTL (written by hand): give it one window, or it would never end.
  redis.call('PEXPIRE', KEYS[1], length)
  ttl = length
end
local now = redis.call('TIME')
return { count, ttl, tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl, fit }
