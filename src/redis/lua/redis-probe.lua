-- redis-probe: runs each command the broker's scripts and BullMQ's scripts call once, on throwaway keys, and
-- returns every command Redis refused, with its error. A Redis user whose ACL lacks one write command
-- (`-xadd`) passes a plain SET probe yet fails every task: startup and /readyz run this to name it
-- (src/redis/requirements.ts decides which refusals are missing permissions and which are OOM and alike).
-- Each call is a pcall: one refusal does not hide the next. Every key is deleted again at the end.
-- KEYS[1] a string
-- KEYS[2] a hash
-- KEYS[3] a sorted set
-- KEYS[4] a set
-- KEYS[5] a stream
-- KEYS[6] a list
-- KEYS[7] RENAME's target
-- Returns {command, error, command, error, ...}: empty when Redis ran every one
local s, h, z, set, x, l, moved = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local calls = {
  { 'DEL', s, h, z, set, x, l, moved },
  { 'SET', s, '1', 'PX', '60000' },
  { 'GET', s },
  { 'INCR', s },
  { 'INCRBY', s, '2' },
  { 'EXISTS', s },
  { 'TYPE', s },
  { 'PEXPIREAT', s, '9999999999999' },
  { 'PEXPIRE', s, '60000' },
  { 'PTTL', s },
  { 'PERSIST', s },
  { 'TIME' },
  { 'HSET', h, 'a', '1' },
  { 'HSETNX', h, 'b', '2' },
  { 'HMSET', h, 'c', '3' },
  { 'HGET', h, 'a' },
  { 'HMGET', h, 'a', 'b' },
  { 'HGETALL', h },
  { 'HINCRBY', h, 'a', '1' },
  { 'HEXISTS', h, 'a' },
  { 'HLEN', h },
  { 'HDEL', h, 'b' },
  { 'ZADD', z, '1', 'a', '2', 'b' },
  { 'ZSCORE', z, 'a' },
  { 'ZMSCORE', z, 'a', 'b' },
  { 'ZRANK', z, 'a' },
  { 'ZCARD', z },
  { 'ZCOUNT', z, '0', '3' },
  { 'ZRANGE', z, '0', '-1' },
  { 'ZRANGEBYSCORE', z, '0', '3' },
  { 'ZREVRANGE', z, '0', '-1' },
  { 'ZREVRANGEBYSCORE', z, '3', '0' },
  { 'ZRANGEBYLEX', z, '-', '+' },
  { 'ZLEXCOUNT', z, '-', '+' },
  { 'ZSCAN', z, '0' },
  { 'ZREM', z, 'a' },
  { 'ZPOPMIN', z },
  { 'ZREMRANGEBYRANK', z, '0', '0' },
  { 'ZREMRANGEBYSCORE', z, '0', '3' },
  { 'SADD', set, 'a', 'b' },
  { 'SISMEMBER', set, 'a' },
  { 'SMISMEMBER', set, 'a', 'b' },
  { 'SCARD', set },
  { 'SMEMBERS', set },
  { 'SSCAN', set, '0' },
  { 'SREM', set, 'a' },
  { 'XADD', x, '*', 'f', 'v' },
  { 'XLEN', x },
  { 'XRANGE', x, '-', '+' },
  { 'XREVRANGE', x, '+', '-' },
  { 'XREAD', 'COUNT', '1', 'STREAMS', x, '0' },
  { 'XTRIM', x, 'MAXLEN', '1' },
  { 'XDEL', x, '0-1' },
  { 'RPUSH', l, 'a', 'b' },
  { 'LPUSH', l, 'c' },
  { 'LLEN', l },
  { 'LINDEX', l, '0' },
  { 'LSET', l, '0', 'd' },
  { 'LRANGE', l, '0', '-1' },
  { 'LPOS', l, 'a' },
  { 'LREM', l, '1', 'c' },
  { 'LTRIM', l, '0', '-1' },
  { 'RPOPLPUSH', l, l },
  { 'LPOP', l },
  { 'RPOP', l },
  { 'RENAME', s, moved },
  { 'UNLINK', moved },
  { 'DEL', s, h, z, set, x, l, moved },
}
local refused = {}
for _, c in ipairs(calls) do
  local r = redis.pcall(unpack(c))
  if type(r) == 'table' and r.err then
    refused[#refused + 1] = c[1]
    refused[#refused + 1] = r.err
  end
end
return refused
