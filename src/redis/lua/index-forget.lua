-- index-forget: drops list-index entries whose record has left Redis, as a list read comes across them.
-- An entry goes only if it still has the score the reader saw and its record is still absent, so a
-- record created again under the same id meanwhile keeps its entry.
-- The records it checks are keys built from ARGV[1], not declared: lib/slot.lua (on a slot half moved a record
-- that has not arrived yet would read as gone, and its entry be dropped).
-- uses: slot
-- KEYS[1] the index (zset)
-- ARGV[1] key base of the index's bucket
-- ARGV[2] record kind marker ('task:' | 'approval:')
-- ARGV[3..] pairs: id, score seen
-- Returns how many entries were dropped; a TRYAGAIN error while the index's slot moves (nothing written).
local moving = slot_guard(ARGV[1])
if moving then return moving end
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) == tonumber(ARGV[i + 1]) and redis.call('EXISTS', ARGV[1] .. ARGV[2] .. id) == 0 then
    n = n + redis.call('ZREM', KEYS[1], id)
  end
end
return n
