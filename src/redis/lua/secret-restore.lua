-- secret-restore: writes a rotated secret (sealed) back unless Redis holds one of the same or a newer generation.
-- KEYS[1] the target's sealed secret (`g<generation>.<sealed>`; a value without the prefix is generation 0)
-- ARGV[1] the generation written back
-- ARGV[2] the value to write (`g<ARGV[1]>.<sealed>`)
-- Returns 1 when written, 0 when Redis already holds the same or a newer one.
local cur = redis.call('GET', KEYS[1])
if cur then
  local g = tonumber(string.match(cur, '^g(%d+)%.')) or 0
  if g >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
